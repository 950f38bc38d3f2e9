"""The suite's own checks. On the machine's /dev/shm (not root, or LEAKGUARD_TEST_REAL_SHM=1):
another program's objects neither fail a test nor are removed by its clean-up, while a
leak of the test's own still fails it and is removed.

A pytest session of its own runs tests/neighbour_cases.py with LEAKGUARD_TEST_REAL_SHM=1
(as root, inside this session's private /dev/shm, which it then treats as the machine's).

The scan for the processes carrying a marker (stress.observe.marked, used by the
suite, stress and the benchmarks) counts a process whose main thread alone exited as
running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from stress.observe import live_threads, marked
from tests.helpers import SHM, finish, kill_group, python, read_line, run, wait_for
from tests.private_shm import ROOT


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_neighbours_objects_neither_fail_a_test_nor_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "neighbour"
    folder.mkdir()
    env = {**os.environ, "LEAKGUARD_TEST_REAL_SHM": "1", "LG_NEIGHBOUR_DIR": str(folder)}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/neighbour_cases.py"]
    neighbour: dict[str, Any] = {}
    try:
        done = run(argv, env=env, cwd=str(ROOT), timeout=100)
        neighbour = json.loads((folder / "ready").read_text())
        entries: list[str] = neighbour["entries"]
        survived = [e for e in entries if os.path.exists(os.path.join(SHM, e))]
        leak = (folder / "leak").read_text()
        out = done.stdout
        assert survived == entries, f"the suite removed a neighbour's objects:\n{out}"
        # The leak fails its test at the fixture's check (an error in teardown); nothing else fails.
        assert "2 passed, 1 error" in out, out
        assert "ERROR tests/neighbour_cases.py::test_a_leak_of_the_test" in out, out
        assert f"test left in /dev/shm: ['{leak}']" in out, f"the test's own leak did not fail it:\n{out}"
        assert not os.path.exists(os.path.join(SHM, leak)), "the test's own leak was not removed"
        # The one the neighbour does not hold cannot be told from a leak of ours: listed, not failed.
        assert "/dev/shm entries not attributed to a test" in out, out
        assert f"test_a_neighbour_creates_objects_during_the_test: ['{entries[1]}']" in out, out
    finally:
        (folder / "stop").touch()
        pid = neighbour.get("pid")
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="the neighbour to exit")
        for entry in neighbour.get("entries", []):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM, entry))


# The main thread exits (pthread_exit(3)); another thread runs on until stdin closes.
MAIN_THREAD_EXITS = """
    import ctypes, sys, threading
    def other():
        print("READY", flush=True)
        sys.stdin.read()
    threading.Thread(target=other).start()
    ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.mark.timeout(60)
def test_a_process_whose_main_thread_alone_exited_is_still_running() -> None:
    token = secrets.token_hex(8)
    proc = python(MAIN_THREAD_EXITS, env={"LG_MARK_TEST": token})
    try:
        assert read_line(proc) == "READY"
        # psutil (and /proc/PID/stat) call it a zombie: its main thread's state.
        wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, what="the main thread to exit")
        assert live_threads(proc.pid), "its other thread runs on"
        assert [p.pid for p in marked("LG_MARK_TEST", token)] == [proc.pid]
        code, _, _ = finish(proc)  # stdin closed: the last thread ends
        assert code == 0
        assert not marked("LG_MARK_TEST", token)
        assert not live_threads(proc.pid)
    finally:
        if proc.returncode is None:
            kill_group(proc)
