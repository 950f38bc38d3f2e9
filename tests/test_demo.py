"""``leakguard demo`` (SPEC 3), run as a user runs it, each time in a private /dev/shm.

The demo removes multiprocessing's leftovers with ``sweep_foreign``, limited to the
names it saw its own job create. It runs in a private mount namespace with a fresh
tmpfs on /dev/shm (root only; tests/demo_scenarios.py), so that what it finds there
is known: a foreign leftover and a leakguard orphan made before the demo must
survive it, and /dev/shm and the process table must be as they were. One test runs
it as a user would, on the session's /dev/shm.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import private_shm
from tests.helpers import run

# Out of the quick selection (pytest -m "not slow"): each test runs the demo, or part of it, for a second or more.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def scenario(name: str, *args: str) -> dict[str, Any]:
    why = "the demo runs its foreign sweep only in a private /dev/shm here"
    return private_shm.scenario("tests.demo_scenarios", name, *args, why=why)


def leaves_nothing(result: dict[str, Any]) -> None:
    """/dev/shm as before, no process of the demo's left, and the unrelated things kept."""
    assert result["after"] == result["before"]
    assert result["processes_left"] == []
    assert result["survived"] == result["unrelated"]
    assert len(result["unrelated"]) == 3  # a psm_ file, and an orphaned leakguard block and semaphore


def census(stdout: str, row: str) -> tuple[str, str]:
    """The leakguard and multiprocessing cells of a census row."""
    found = re.search(rf"^ +{re.escape(row)} +(.+?)  +(.+)$", stdout, re.MULTILINE)
    assert found, f"no census row {row!r} in:\n{stdout}"
    return found[1].strip(), found[2].strip()


@pytest.mark.timeout(120)
def test_demo_shows_leakguard_cleaning_up_and_removes_what_multiprocessing_left() -> None:
    result = scenario("full")
    out = result["stdout"]
    assert result["code"] == 0, out + result["stderr"]
    assert result["stderr"] == ""

    # Step 1: a worker killed mid-task, its task run again elsewhere, every result right.
    killed = re.search(r"kill -9 (\d+): a worker busy with task (\d+)", out)
    assert killed, out
    again = re.search(rf"task {killed[2]} runs again \(attempt 2\) on pid (\d+)", out)
    assert again, out
    assert again[1] != killed[1]
    assert "results equal to numpy's in this process: 16 of 16" in out

    lg, mp = census(out, "a worker SIGKILLed mid-map")
    assert lg == "task retried, 16/16 right"
    assert mp.startswith("map hung")

    lg, mp = census(out, "left after kill -9")
    found = re.fullmatch(r"0 of (\d+) \(.*\)", lg)
    assert found, lg
    assert int(found[1]) == 8  # 3 arrays, a lock, a semaphore, the board, a block per worker
    leftovers = re.fullmatch(r"(\d+): 1 segment \+ (\d+) semaphores \(.*\)", mp)
    assert leftovers, mp
    assert int(leftovers[2]) > 0

    lg, mp = census(out, "processes left")
    assert re.fullmatch(r"0 of [1-9]\d*", lg), lg
    assert re.fullmatch(r"0 of [1-9]\d*", mp), mp

    lg, mp = census(out, "time to clean")
    assert lg.endswith("(its guardian)")
    assert "removed by leakguard sweep --foreign" in mp
    assert f"removed {leftovers[1]}, " in out  # what sweep_foreign reported removing: all of them

    # Step 2 shows both kinds: the job's arrays and its workers' blocks are anonymous, its lock
    # and semaphore are named; none is left after the kill.
    kinds = re.search(r"(\d+) objects, (\d+) of them in /dev/shm, (\d+) anonymous blocks", out)
    assert kinds, out
    assert (int(kinds[2]), int(kinds[3])) == (2, 6)

    # Step 4, Docker's 64 MiB /dev/shm: the standard library dies of SIGBUS, leakguard carries a
    # 256 MiB array (and 64 MiB there and back) through it without touching /dev/shm.
    assert "killed by SIGBUS (bus error)" in out
    assert "results right" in out
    assert "/dev/shm used meanwhile: at most 0 bytes" in out
    lg, mp = census(out, "a 256.0 MiB array, 64.0 MiB /dev/shm")
    assert (lg, mp) == ("carried, results right", "died of SIGBUS")
    leaves_nothing(result)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "marker",
    [
        "map started",  # step 1: this process's pool is mid-map
        "[2/5]",  # step 2: the leakguard job is starting
        "kill -9 -",  # step 2: the job was just killed; its guardian is at work
        "[3/5]",  # step 3: the multiprocessing job is starting
        "tasks done, the map",  # step 3: its map hangs
        "filling it with numpy",  # step 4: the standard library's job in a 64 MiB /dev/shm
        "killed by SIGBUS",  # step 4: leakguard's job is starting in its namespace
    ],
)
def test_ctrl_c_anywhere_stops_everything_and_leaves_nothing(marker: str) -> None:
    result = scenario("interrupted", marker)
    assert marker in result["stdout"]
    assert result["code"] == 130, result["stdout"] + result["stderr"]
    assert "interrupted" in result["stderr"]
    assert "Traceback" not in result["stderr"]
    leaves_nothing(result)


@pytest.mark.timeout(120)
def test_a_small_dev_shm_stops_only_the_standard_librarys_step_with_a_clear_message_and_leaves_nothing() -> None:
    result = scenario("small_shm", "32m")  # the multiprocessing job's segment is 48 MiB
    assert result["code"] == 1, result["stdout"] + result["stderr"]
    # leakguard's steps, 64 MiB of arrays among them, need no /dev/shm: anonymous blocks.
    assert "results equal to numpy's in this process: 16 of 16" in result["stdout"]
    assert "[3/5]" in result["stdout"]
    assert "leakguard demo failed: the multiprocessing job needs 48.0 MiB of /dev/shm" in result["stderr"]
    assert "--shm-size" in result["stderr"]
    assert "Traceback" not in result["stderr"]
    leaves_nothing(result)


@pytest.mark.timeout(60)
def test_the_small_shm_step_says_why_it_is_skipped_where_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leakguard.demo import jobs, scenes

    monkeypatch.setattr(jobs, "small_shm_unavailable", lambda: "it needs root, for a reason")
    demo = scenes._Demo("/nonexistent", scenes._Signals())
    try:
        demo.step_small_shm()
    finally:
        demo.signals.restore()
    out = capsys.readouterr().out
    assert "[4/5] Docker's default /dev/shm is 64.0 MiB" in out
    assert "skipped: it needs root, for a reason" in out
    assert demo.census.docker_lg == demo.census.docker_mp == "skipped"
    assert demo.jobs == []  # nothing was started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["session", "machine"])
def test_the_demo_as_a_new_user_runs_it(where: str) -> None:
    # sweep_foreign removes multiprocessing's leftovers under write leases, also where a process
    # /proc cannot inspect sees /dev/shm (pid 1 does on this machine's, as in many containers):
    # the demo has no fallback of its own. "session": the session's /dev/shm, whose fixture
    # checks that it and the process table are as they were; "machine": the machine's.
    enter, shm = private_shm.machine_shm() if where == "machine" else ([], "/dev/shm")
    argv = [*enter, sys.executable, "-W", "error", "-m", "leakguard", "demo"]
    done = run(argv, env=dict(os.environ), timeout=100)
    shown = re.findall(r"/dev/shm/((?:psm_|sem\.mp-)\S+)", done.stdout)  # what its multiprocessing job left
    left = [n for n in shown if os.path.lexists(os.path.join(shm, n))]
    for name in left:  # its job's own, whose processes are all dead by now: never left behind
        os.unlink(os.path.join(shm, name))
    assert shown
    assert not left, f"the demo left {left}:\n{done.stdout}"
    assert done.returncode == 0, done.stdout + done.stderr
    lg, mp = census(done.stdout, "left after kill -9")
    assert lg.startswith("0 of ")
    found = re.fullmatch(r"(\d+): 1 segment \+ \d+ semaphores \(.*\)", mp)
    assert found, mp
    lg, mp = census(done.stdout, "time to clean")
    assert lg.endswith("(its guardian)")
    assert "removed by leakguard sweep --foreign" in mp
    assert f"removed {found[1]}, " in done.stdout
