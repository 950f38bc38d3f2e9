"""Child programs of tests/test_concurrent_sweeps.py, each a function its test starts with
``child_main`` (tests/children.py)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import posix_ipc

import leakguard
from leakguard._journal import owner as _owner
from leakguard._os.names import posix_name


def sweeper() -> None:
    """Wait on a pipe (LG_GO_FD) that the test closes: every sweeper reads end-of-file at the
    same instant; then sweep and print the report."""
    go = int(os.environ["LG_GO_FD"])
    print("ready", flush=True)
    assert os.read(go, 1) == b""
    print(json.dumps(leakguard.sweep().to_dict()), flush=True)


# Globals, so that the long-lived objects live until exit.
keep: leakguard.SharedArray
keep_sem: leakguard.Semaphore


def looper() -> None:
    """Keep an array and a semaphore for the whole life; on a line of input, create and free
    blocks and semaphores in a loop, checking each by name before freeing it, until the
    journal has been compacted twice (the moment a sweep could mistake the old or new file for
    an orphan); report, then wait for a line of input."""
    global keep, keep_sem
    keep = leakguard.shared_array(4096, dtype=np.int64, named=True)
    keep[:] = np.arange(4096)
    keep_sem = leakguard.Semaphore(2)
    print(json.dumps([keep.shm_name, keep_sem.name]), flush=True)
    sys.stdin.readline()

    failures = []
    journals = {_owner.journal().path}
    i = 0
    while i < 40000 and (i < 1000 or len(journals) < 3):
        block = leakguard.SharedMemory(create=True, size=4096)
        block.buf[:8] = i.to_bytes(8, "little")
        try:
            again = leakguard.SharedMemory(block.name)
        except FileNotFoundError:
            failures.append(f"iteration {i}: my block {block.name} is gone")
        else:
            if bytes(again.buf[:8]) != i.to_bytes(8, "little"):
                failures.append(f"iteration {i}: my block {block.name} holds other data")
            again.close()
        block.unlink()
        block.close()
        sem = leakguard.Semaphore(0)
        try:
            other = posix_ipc.Semaphore(posix_name(sem.name))
        except posix_ipc.ExistentialError:
            failures.append(f"iteration {i}: my semaphore {sem.name} is gone")
        else:
            other.release()
            other.close()
            if not sem.acquire(block=False):
                failures.append(f"iteration {i}: my semaphore's name opens another semaphore")
        sem.unlink()
        journals.add(_owner.journal().path)
        i += 1
    if not (keep == np.arange(4096)).all() or keep_sem.get_value() != 2:
        failures.append("the long-lived array or semaphore changed")
    try:
        assert keep.shm_name is not None  # a named array
        leakguard.SharedMemory(keep.shm_name).close()
        posix_ipc.Semaphore(posix_name(keep_sem.name)).close()
    except Exception as exc:
        failures.append(f"a long-lived object's name no longer opens: {exc!r}")
    print(json.dumps({"iterations": i, "journals": len(journals), "failures": failures[:10]}), flush=True)
    sys.stdin.readline()


blocks: list[leakguard.SharedMemory] = []


def grower() -> None:
    """Make 200 blocks and print their names; then, per line of input, one more block, and
    print its name. End of input: exit normally (freeing them all)."""
    for _ in range(200):
        blocks.append(leakguard.SharedMemory(create=True, size=4096))
    print(json.dumps([b.name for b in blocks]), flush=True)
    for _ in sys.stdin:
        blocks.append(leakguard.SharedMemory(create=True, size=4096))
        print(json.dumps(blocks[-1].name), flush=True)
