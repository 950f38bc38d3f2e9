"""Running a scenario module of the tests in a private /dev/shm (root only), and
reaching the machine's /dev/shm from a session that runs in its own.

A scenario that sweeps every leftover of other libraries (``sweep_foreign`` with
no ``only=``) must not run where another program's could be, and where leases cannot
answer, ``sweep_foreign`` keeps everything a process it may not read (pid 1 of a
sandbox, as here and on CI) could see (fail closed). Such scenarios run in a new
mount namespace with a fresh tmpfs on /dev/shm, and the test reads the JSON line
they print last. ``machine_shm`` leads a child back to the /dev/shm the suite was
started with.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from stress.observe import enter_private_shm
from tests.helpers import SHM, main_code

ROOT = Path(__file__).resolve().parent.parent


def enter_for_session() -> str:
    """Move this process (and so every process it starts) to a mount namespace of its
    own with a fresh tmpfs on /dev/shm; returns why it could not, or "".

    The suite compares /dev/shm before and after every test. On the machine's own
    /dev/shm another program's objects (a multiprocessing job, another copy of this
    suite) would disturb those comparisons (tests/conftest.py attributes what it can).
    In a private /dev/shm the suite sees, and can touch, only its own. This runs as the
    conftest is imported, before pytest starts anything (stress.observe.enter_private_shm).
    """
    if os.environ.get("LEAKGUARD_TEST_REAL_SHM"):
        return "LEAKGUARD_TEST_REAL_SHM is set"
    return enter_private_shm()


def unshare(*command: str, size: str | None = None) -> list[str]:
    """``command`` in a new mount namespace (root only) with a fresh tmpfs on /dev/shm (of
    ``size``, as mount's option says it: ``64m`` is Docker's default)."""
    options = "mode=1777" if size is None else f"size={size},mode=1777"
    mount = f'mount -t tmpfs -o {options} tmpfs /dev/shm && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, *command]


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on a timeout or an error here, kill it and all it started, then re-raise."""
    env = {**os.environ, "LG_OUTER_SHM_DEV": str(os.stat(SHM).st_dev)}  # what a scenario must not touch
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.returncode is None:
            tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(tree, timeout=10)
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@functools.cache
def unavailable() -> str:
    """Why no private /dev/shm can be had here, or ""."""
    if os.geteuid() != 0:
        # In a user namespace, this user's own processes outside it cannot be inspected,
        # so sweep_foreign rightly keeps everything (fail closed): nothing to prove there.
        return "needs root for a private mount namespace"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = run(unshare(sys.executable, "-c", "import os; assert not os.listdir('/dev/shm')"), timeout=60)
    if probe.returncode != 0:
        return f"cannot mount a private /dev/shm: {probe.stderr.strip()}"
    return ""


def in_small_shm(main: Callable[..., object], *args: str, why: str, timeout: float = 100) -> dict[str, Any]:
    """Run ``main(*args)`` (a function of a module under tests/) with a 64 MiB tmpfs as its
    /dev/shm, as Docker gives a container by default; return the JSON it printed last. Skips,
    saying ``why``, where there can be no private /dev/shm (not root, no unshare)."""
    problem = unavailable()
    if problem:
        pytest.skip(f"{why}: {problem}")
    done = run(unshare(sys.executable, "-W", "error", "-c", main_code(main), *args, size="64m"), timeout)
    assert done.returncode == 0, f"{main.__name__}{args} failed (exit {done.returncode}):\n{done.stderr}"
    assert done.stderr == "", done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def scenario(module: str, name: str, *args: str, why: str, timeout: float = 100) -> dict[str, Any]:
    """Run ``python -m module name args...`` in a private /dev/shm; return the JSON it printed
    last. Skips, saying ``why`` it needs a private /dev/shm, where there can be none."""
    problem = unavailable()
    if problem:
        pytest.skip(f"{why}: {problem}")
    done = run(unshare(sys.executable, "-W", "error", "-m", module, name, *args), timeout)
    assert done.returncode == 0, f"scenario {name} failed (exit {done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def machine_shm() -> tuple[list[str], str]:
    """How to start a process on the /dev/shm the suite was started with (the machine's,
    outside the session's private one: the command to put in front of its own), and the
    path under which this process sees that /dev/shm. Skips where it cannot be reached."""
    launcher = os.getppid()  # pytest's parent lives in the mount namespace the suite started in
    outer = f"/proc/{launcher}/root{SHM}"
    try:
        if os.stat(outer).st_dev == os.stat(SHM).st_dev:
            return [], SHM  # the session runs on it (not root, or LEAKGUARD_TEST_REAL_SHM=1)
    except OSError as exc:
        pytest.skip(f"cannot see the /dev/shm of pid {launcher}, which started the suite: {exc.strerror}")
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is not installed")
    return ["nsenter", "--target", str(launcher), "--mount", "--"], outer
