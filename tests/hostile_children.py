"""Child programs of tests/test_hostile.py, each a function its test starts with
``python_main`` (tests/helpers.py); arguments arrive as strings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import posix_ipc

import leakguard
from leakguard._os import ipc
from leakguard._os.names import posix_name
from leakguard._sweep.journaled import sweep  # imported while the interpreter's files can be read


def owner(shm: str, sem: str) -> None:
    """Create ``shm`` blocks and ``sem`` semaphores, print them, wait for end of input."""
    blocks = [leakguard.SharedMemory(create=True, size=4096) for _ in range(int(shm))]
    sems = [leakguard.Semaphore() for _ in range(int(sem))]
    objects = [["shm", b.name] for b in blocks] + [["sem", s.name] for s in sems]
    print(json.dumps(objects), flush=True)
    sys.stdin.read()


def sweep_as(uid: str, folder: str, names: str) -> None:
    """Become ``uid`` (a user without privileges), sweep ``folder`` and print, as JSON, whether
    the sweep could read the objects' folder for ``names`` names instead of an lstat per name
    (``listing``), and its report."""
    os.setgroups([])
    os.setgid(int(uid))
    os.setuid(int(uid))
    with ipc.ObjectFolder() as objects:
        listing = objects.regular_files(int(names)) is not None
    report = sweep(folder=folder)
    print(json.dumps({"listing": listing, "report": report.to_dict()}), flush=True)


def squatter(name: str) -> None:
    """Create a block of another program at ``name`` (``lg_x``), print its inode, wait for end of input."""
    shm = posix_ipc.SharedMemory(posix_name(name), posix_ipc.O_CREX, mode=0o600, size=4096)
    print(os.fstat(shm.fd).st_ino, flush=True)
    sys.stdin.read()


def churn() -> None:
    """Create and free blocks until the journal is compacted, keeping four; print the facts."""
    from leakguard._journal import owner as _owner
    from leakguard._journal.writer import COMPACT_BYTES

    keep = [leakguard.SharedMemory(create=True, size=4096) for _ in range(3)]
    first = _owner.journal().path
    old = os.open(first, os.O_RDONLY)  # to see the old journal's final size after it is unlinked
    cycles = 0
    while _owner.journal().path == first:
        cycles += 1
        if cycles > 100_000:
            raise SystemExit("no compaction after 100,000 create/free cycles")
        block = leakguard.SharedMemory(create=True, size=4096)
        block.close()
        block.unlink()
    keep.append(leakguard.SharedMemory(create=True, size=4096))  # recorded in the new journal
    facts = {
        "names": [b.name for b in keep],
        "first": first,
        "journal": _owner.journal().path,
        "largest": os.fstat(old).st_size,
        "links": os.fstat(old).st_nlink,
        "threshold": COMPACT_BYTES,
    }
    print(json.dumps(facts), flush=True)
    sys.stdin.read()


def after_removeipc() -> None:
    """Lose the journal folder and a block as RemoveIPC= does, make more, print them, die."""
    first = leakguard.shared_array(10, named=True)  # this process has a journal now
    assert first.shm_name is not None  # a named array
    shutil.rmtree(os.environ["LEAKGUARD_DIR"])  # what RemoveIPC= does to the journal folder...
    os.unlink("/dev/shm/" + first.shm_name)  # ...and to the objects
    later = leakguard.shared_array(10, named=True)
    semaphore = leakguard.Semaphore(2)
    print(later.shm_name, semaphore.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
