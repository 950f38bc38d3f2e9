"""Runs ``leakguard demo`` for tests/test_demo.py, each time in a private /dev/shm.

So that everything in /dev/shm is known (what the demo makes, and what a scenario
leaves for it not to touch), test_demo.py runs these in a private mount namespace
with a fresh tmpfs on /dev/shm::

    unshare -m --propagation private sh -c \\
        'mount -t tmpfs tmpfs /dev/shm && exec python -m tests.demo_scenarios NAME [ARG...]'

from the repository root. Before the demo, a scenario leaves things the demo
must not touch: a multiprocessing-style leftover (idle, of a dead process) and a
leakguard orphan in the journal folder ``LEAKGUARD_DIR`` names. It prints one
JSON object on its last line, and removes what it made before it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import leakguard
from stress.observe import marked
from tests.foreign_scenarios import make_file, tree
from tests.helpers import SHM, kill_group, python, read_line, wait_for

Result = dict[str, Any]
TOKEN = "LG_DEMO_RUN"  # marks every process the demo starts, wherever it is reparented to

ORPHAN = """
    import json, sys, leakguard
    a = leakguard.shared_array(4096, named=True)
    s = leakguard.Lock()
    print(json.dumps([a.shm_name, "sem." + s.name]), flush=True)
    sys.stdin.read()
"""


def _unrelated(folder: str) -> list[str]:
    """A foreign leftover and a leakguard orphan (in ``folder``'s journals); their paths."""
    foreign = make_file(os.path.join(SHM, f"psm_{secrets.token_hex(4)}"))
    owner = python(ORPHAN, env={"LEAKGUARD_DIR": folder})
    entries = json.loads(read_line(owner))
    kill_group(owner)  # dead: its objects are orphans a sweep of ``folder`` would remove
    return [foreign, *(os.path.join(SHM, e) for e in entries)]


def _remove_unrelated(paths: list[str], folder: str) -> None:
    leakguard.sweep(folder=folder)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _demo(token: str, folder: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LEAKGUARD_DIR": folder, TOKEN: token}
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "leakguard", "demo"],
        env=env,
        start_new_session=True,  # its own foreground group, as in a terminal: a Ctrl-C reaches all of it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _marked(token: str) -> list[int]:
    """Running processes the demo started (its jobs, workers, guardians, trackers)."""
    return [p.pid for p in marked(TOKEN, token)]


def _settled(token: str) -> tuple[list[str], list[int]]:
    """/dev/shm and the demo's processes once they stop changing (at most 10 s)."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not _marked(token), timeout=10, what="the demo's processes to exit")
    return tree(), _marked(token)


def _watched(act: Callable[[subprocess.Popen[str]], tuple[str, str]]) -> Result:
    """Run the demo beside things it must leave alone; ``act`` drives it to its end and
    returns (stdout, stderr). Whatever happens, the demo's group is killed and reaped."""
    token = secrets.token_hex(8)
    with tempfile.TemporaryDirectory() as folder:
        unrelated = _unrelated(folder)
        before = tree()
        demo = _demo(token, folder)
        try:
            out, err = act(demo)
        finally:
            if demo.returncode is None:
                kill_group(demo)
        after, left = _settled(token)
        survived = [p for p in unrelated if os.path.lexists(p)]
        _remove_unrelated(unrelated, folder)
    return {
        "code": demo.returncode,
        "stdout": out,
        "stderr": err,
        "before": before,
        "after": after,
        "processes_left": left,
        "unrelated": unrelated,
        "survived": survived,
    }


def full() -> Result:
    """The demo from start to end, beside things it must leave alone."""
    return _watched(lambda demo: demo.communicate(timeout=90))


def interrupted(marker: str) -> Result:
    """Ctrl-C (SIGINT to the demo's process group) once ``marker`` was printed."""

    def interrupt(demo: subprocess.Popen[str]) -> tuple[str, str]:
        lines = []
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if marker in line:
                os.killpg(demo.pid, signal.SIGINT)
                break
        out, err = demo.communicate(timeout=60)
        return "".join(lines) + out, err

    return _watched(interrupt)


def small_shm(size: str) -> Result:
    """The demo on a /dev/shm too small for it: it fails at its first array, and says why."""
    subprocess.run(["mount", "-o", f"remount,size={size}", SHM], check=True)
    return full()


SCENARIOS: dict[str, Callable[..., Result]] = {"full": full, "interrupted": interrupted, "small_shm": small_shm}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCENARIOS:
        print(f"usage: python -m tests.demo_scenarios {{{','.join(SCENARIOS)}}} [ARG...]", file=sys.stderr)
        return 2
    outer = os.environ.get("LG_OUTER_SHM_DEV", "")
    if not outer.isdigit() or os.stat(SHM).st_dev == int(outer) or tree():
        print("refused: /dev/shm must be a fresh tmpfs of our own; see the docstring", file=sys.stderr)
        return 2
    print(json.dumps(SCENARIOS[argv[0]](*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
