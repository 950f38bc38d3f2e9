"""Child programs of tests/test_foreign.py, each a function its test starts with
``python_main`` (tests/helpers.py); arguments arrive as strings."""

from __future__ import annotations

import ctypes
import json
import os
import sys

# Imported before the child gives up root: the interpreter lives in /root.
from leakguard._sweep.foreign import sweep_foreign


def as_nobody(uid: str) -> None:
    """Become ``uid`` (its own group too, no others), then, as ROLE says: "idle" (unreadable
    even to its own user: say READY, wait for end of input), "look" (a dry-run foreign sweep)
    or "remove" (a foreign sweep); a sweep prints its report."""
    os.setgroups([])
    os.setgid(int(uid))
    os.setuid(int(uid))
    if os.environ["ROLE"] == "idle":
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: even its own user cannot read its maps
        print("READY", flush=True)
        sys.stdin.read()
    else:
        report = sweep_foreign(older_than=0, dry_run=os.environ["ROLE"] == "look", temp_folders=[])
        print(json.dumps(report.to_dict()))
