"""Child programs of tests/test_cli.py, each a function its test starts with ``python_main``
(tests/helpers.py)."""

from __future__ import annotations

import json
import sys

import leakguard

# Globals, so that what the child made lives until exit.
a: leakguard.SharedArray
s: leakguard.Semaphore  # a Lock()


def orphan_maker() -> None:
    """Create an array and a lock, print their names, wait for end of input (or a SIGKILL)."""
    global a, s
    a = leakguard.shared_array(4096, named=True)
    s = leakguard.Lock()
    print(json.dumps([a.shm_name, s.name]), flush=True)
    sys.stdin.read()
