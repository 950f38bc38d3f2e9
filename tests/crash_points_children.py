"""Child programs of tests/test_crash_points.py, each a function its test starts with
``child_main`` (tests/children.py) or ``run_main`` (tests/helpers.py); they read their
settings from the environment (LEAKGUARD_FAILPOINT arms the step to die at)."""

from __future__ import annotations

import json
import os
import sys

import leakguard

# Globals, so that what the crasher made lives until exit.
whole: leakguard.SharedMemory | leakguard.Semaphore
target: leakguard.SharedMemory | leakguard.Semaphore


def crasher() -> None:
    """On a line of input, create one whole object of the other kind than LG_KIND (the sweep
    must remove it too), then the target, which the armed failpoint interrupts; free the
    target if LG_FREE is "1"."""
    global whole, target
    kind = os.environ["LG_KIND"]
    sys.stdin.readline()
    if kind == "shm":
        whole = leakguard.Semaphore(1)
        print(json.dumps({"kind": "sem", "name": whole.name}), flush=True)
        target = leakguard.SharedMemory(create=True, size=65536)
    else:
        whole = leakguard.SharedMemory(create=True, size=8192)
        print(json.dumps({"kind": "shm", "name": whole.name}), flush=True)
        target = leakguard.Semaphore(3)
    if os.environ["LG_FREE"] == "1":
        target.unlink()
    print("survived the failpoint", flush=True)


def one_block() -> None:
    """Create a block (the armed failpoint ends the process), then say it survived."""
    leakguard.SharedMemory(create=True, size=4096)
    print("survived")
