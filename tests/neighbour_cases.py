"""Tests run by tests/test_suite_isolation.py in a pytest session of their own, on a
/dev/shm it treats as the machine's (``LEAKGUARD_TEST_REAL_SHM=1``): not collected by
the suite itself (the file name does not start with ``test_``).

During the first test another program (not a process of the session: no marker, not
a descendant) creates two objects in /dev/shm, one it holds open and one it does not;
the test itself leaves nothing. The second test leaks a block of its own: a process it
started dies with the block in its journal. ``LG_NEIGHBOUR_DIR`` is where the neighbour
says its pid and its entries' names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import python, read_line, wait_for

NEIGHBOUR = """
    import json, os, sys, time
    if os.fork():
        os._exit(0)  # the neighbour is the grandchild: reparented, no descendant of the session
    os.setsid()
    folder = sys.argv[1]
    held, left = f"psm_neighbour_held_{os.getpid()}", f"psm_neighbour_left_{os.getpid()}"
    fd = os.open(f"/dev/shm/{held}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)  # held open for the neighbour's life, as a live block is
    os.close(os.open(f"/dev/shm/{left}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    with open(f"{folder}/ready.tmp", "w") as f:
        json.dump({"pid": os.getpid(), "entries": [held, left]}, f)
    os.rename(f"{folder}/ready.tmp", f"{folder}/ready")
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{folder}/stop") and time.monotonic() < deadline:
        time.sleep(0.05)  # the poll interval of a wait with a deadline (60 s at most)
"""

LEAKER = """
    import json, sys, leakguard
    a = leakguard.shared_array(1000, named=True)
    print(json.dumps(a.shm_name), flush=True)
    sys.stdin.read()
"""


def test_a_neighbour_creates_objects_during_the_test() -> None:
    folder = os.environ["LG_NEIGHBOUR_DIR"]
    env = {k: v for k, v in os.environ.items() if k not in ("LEAKGUARD_TEST_RUN", "LEAKGUARD_DIR")}
    argv = [sys.executable, "-c", textwrap.dedent(NEIGHBOUR), folder]
    assert subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=30, check=False).returncode == 0
    wait_for(lambda: Path(folder, "ready").exists(), timeout=30, what="the neighbour's objects")


def test_a_leak_of_the_test() -> None:
    leaker = python(LEAKER)
    name = json.loads(read_line(leaker))
    os.killpg(leaker.pid, signal.SIGKILL)
    leaker.wait(timeout=30)
    for stream in (leaker.stdin, leaker.stdout, leaker.stderr):
        assert stream is not None
        stream.close()
    Path(os.environ["LG_NEIGHBOUR_DIR"], "leak").write_text(name)
