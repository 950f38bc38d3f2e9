"""Scenarios for tests/test_foreign.py that remove leftovers for real, each in a private /dev/shm.

A scenario sweeps with ``older_than=0`` and no ``only=``: everything of the
known patterns that nothing holds goes, so it must not run where another
program's leftovers could be. And where leases cannot answer (``disable_leases``)
a process we may not read that sees /dev/shm (a sandbox's init, pid 1 here and
on CI) makes the /proc evidence keep everything there (fail closed).
test_foreign.py runs these in a private mount namespace with a fresh tmpfs on
/dev/shm that no such process can see::

    unshare -m --propagation private sh -c \\
        'mount -t tmpfs tmpfs /dev/shm && exec python -m tests.foreign_scenarios NAME [ARG...]'

run from the repository root. A scenario makes its leftovers, sweeps, and
prints one JSON object on its last line: the reports, and every path under
/dev/shm before and after. It reaps every process it starts before it returns:
the tmpfs goes with the namespace, processes would not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from leakguard._sweep.foreign import sweep_foreign
from tests.helpers import SHM, descendants, finish, kill_group, process_gone, python, read_line, wait_for

Result = dict[str, Any]

STDLIB_JOB = """
    import multiprocessing, sys
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=1 << 16)
    lock = multiprocessing.get_context("spawn").Lock()  # starts a resource_tracker in our group
    print("READY", flush=True)
    sys.stdin.read()
    block.close()
    block.unlink()  # the lock is unlinked by its finalizer at exit
"""

HOLD = """
    import ctypes, mmap, os, sys

    path, how = os.environ["HOLD_PATH"], os.environ["HOLD_HOW"]
    if how == "open":
        f = open(path, "rb")
    else:  # a mapping with no fd left open, as native code makes (Python's mmap keeps a dup)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        fd = os.open(path, os.O_RDONLY)
        address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        os.close(fd)
    print("READY", flush=True)
    sys.stdin.read()
"""


# ---------------------------------------------------------------------------- shared with test_foreign.py


def psm() -> str:
    return f"psm_{secrets.token_hex(4)}"


def make_file(path: str, data: bytes = b"x" * 100) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def joblib_folder(where: str) -> tuple[str, int]:
    """A folder like joblib's, with a nested file; returns (path, bytes inside)."""
    path = os.path.join(where, f"joblib_memmapping_folder_{os.getpid()}_{secrets.token_hex(16)}_0")
    os.makedirs(os.path.join(path, "inner"), mode=0o700)
    for name, size in (("a.pkl", 4096), ("inner/b.pkl", 1000)):
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"\0" * size)
    return path, 5096


def disable_leases() -> None:
    """From now on, in this process, F_SETLEASE fails as where leases are disabled
    (``/proc/sys/fs/leases-enable`` = 0) or a filesystem has none: EINVAL. A stub, not
    the machine-wide setting."""
    real = fcntl.fcntl

    def refusing(fd: int, cmd: int, arg: int = 0) -> Any:
        if cmd == fcntl.F_SETLEASE and arg != fcntl.F_UNLCK:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, cmd, arg)

    fcntl.fcntl = refusing  # type: ignore[assignment]


def start_stdlib_job() -> tuple[subprocess.Popen[str], set[str]]:
    """A live job holding a ``psm_`` block and a ``sem.mp-`` lock; returns it and their paths."""
    before = _entries()
    proc = python(STDLIB_JOB)
    assert read_line(proc) == "READY"
    new = _entries() - before
    assert len(new) == 2, new
    assert len([n for n in new if n.startswith("psm_")]) == 1, new
    assert len([n for n in new if n.startswith("sem.mp-")]) == 1, new
    return proc, {os.path.join(SHM, n) for n in new}


def _entries() -> set[str]:
    return {n for n in os.listdir(SHM) if not n.startswith(".")}


# ---------------------------------------------------------------------------- scenarios


def tree() -> list[str]:
    """Every path under /dev/shm, symlinks not followed."""
    found: list[str] = []
    for top, dirs, files in os.walk(SHM):
        found.extend(os.path.join(top, n) for n in dirs + files)
    return sorted(found)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill the child's group unless the scenario already waited for it, whatever happens."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            kill_group(proc)


def temp_folder() -> str:
    """A temp folder for joblib folders, on the private /dev/shm."""
    path = os.path.join(SHM, f"lgtest-{secrets.token_hex(4)}")
    os.mkdir(path, 0o700)
    return path


def killed_stdlib_job() -> Result:
    job, paths = start_stdlib_job()
    with reaped(job):
        trackers = psutil.Process(job.pid).children()
        assert len(trackers) == 1, trackers  # the resource_tracker, which would unlink them if it survived
        kill_group(job)
        wait_for(lambda: process_gone(trackers[0]), what="the resource_tracker to die")
    before = tree()
    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[])
    return {"paths": sorted(paths), "before": before, "report": report.to_dict(), "after": tree()}


def joblib_folder_in_use(how: str, leases: str) -> Result:
    """``how`` a file inside is held: "open" or "mapped"; ``leases``: "on", or "off"
    (``disable_leases``: /proc decides)."""
    if leases == "off":
        disable_leases()
    temp = temp_folder()
    folder, size = joblib_folder(temp)
    # The nested file: the sweep leases a.pkl first, then is refused this one, and must keep both.
    held = os.path.join(folder, "inner", "b.pkl")
    with reaped(python(HOLD, env={"HOLD_PATH": held, "HOLD_HOW": how})) as holder:
        assert read_line(holder) == "READY"
        before = tree()
        in_use = sweep_foreign(older_than=0, dry_run=False, temp_folders=[temp])
        during = tree()
        code, _, err = finish(holder)
    assert code == 0, err
    idle = sweep_foreign(older_than=0, dry_run=False, temp_folders=[temp])  # now idle
    return {
        "folder": folder,
        "size": size,
        "holder": holder.pid,
        "before": before,
        "in_use": in_use.to_dict(),
        "during": during,
        "idle": idle.to_dict(),
        "after": tree(),
    }


def idle_joblib_folder(outside: str) -> Result:
    """``outside``: a file elsewhere, which a symlink inside the folder points to."""
    folder, size = joblib_folder(temp := temp_folder())
    os.symlink(outside, os.path.join(folder, "inner", "link"))
    before = tree()
    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[temp])
    return {"folder": folder, "size": size, "before": before, "report": report.to_dict(), "after": tree()}


def dry_run() -> Result:
    block = make_file(os.path.join(SHM, psm()), b"x" * 1000)
    sem = make_file(os.path.join(SHM, f"sem.mp-{secrets.token_hex(4)}"), b"\0" * 32)
    loky = make_file(os.path.join(SHM, f"sem.loky-{os.getpid()}-{secrets.token_hex(4)}"), b"\0" * 32)
    folder, size = joblib_folder(temp := temp_folder())
    before = tree()
    report = sweep_foreign(older_than=0, dry_run=True, temp_folders=[temp])
    return {
        "paths": {"block": block, "sem": sem, "loky": loky, "folder": folder},
        "size": size,
        "before": before,
        "report": report.to_dict(),
        "after": tree(),
        "block_size": os.path.getsize(block),
    }


def by_default() -> Result:
    block = make_file(os.path.join(SHM, psm()))
    report = sweep_foreign(older_than=0, temp_folders=[])  # no dry_run: removes, as sweep() does
    return {"block": block, "report": report.to_dict(), "after": tree()}


def only_named() -> Result:
    mine = make_file(os.path.join(SHM, psm()))
    other = make_file(os.path.join(SHM, psm()))
    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[], only={os.path.basename(mine)})
    return {"mine": mine, "other": other, "report": report.to_dict(), "after": tree()}


def young() -> Result:
    block = make_file(os.path.join(SHM, psm()))
    an_hour_ago = time.time() - 3600
    os.utime(block, (an_hour_ago, an_hour_ago))  # an old mtime; the ctime stays now: still young
    kept = [
        sweep_foreign(dry_run=False, temp_folders=[]),  # the default limit: 10 minutes
        sweep_foreign(older_than=1800, dry_run=False, temp_folders=[]),
    ]
    before = tree()
    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[])
    return {
        "block": block,
        "kept": [r.to_dict() for r in kept],
        "before": before,
        "report": report.to_dict(),
        "after": tree(),
    }


def leases_disabled() -> Result:
    """Leases unavailable (``disable_leases``): a killed job's leftovers and a live job's objects."""
    disable_leases()
    dead, dead_paths = start_stdlib_job()
    with reaped(dead):
        trackers = psutil.Process(dead.pid).children()
        kill_group(dead)
        wait_for(lambda: all(process_gone(t) for t in trackers), what="the resource_tracker to die")
    live, live_paths = start_stdlib_job()
    with reaped(live):
        report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[])
        after = tree()
        code, _, err = finish(live)
    assert code == 0, err
    return {
        "dead": sorted(dead_paths),
        "live": sorted(live_paths),
        "holder": live.pid,
        "report": report.to_dict(),
        "after": after,
    }


SCENARIOS: dict[str, Callable[..., Result]] = {
    f.__name__: f
    for f in (
        killed_stdlib_job,
        joblib_folder_in_use,
        idle_joblib_folder,
        dry_run,
        by_default,
        young,
        only_named,
        leases_disabled,
    )
}


def _not_private() -> str:
    """Why /dev/shm may hold someone's leftovers, which a scenario would remove, or ""."""
    # The caller names the device of the /dev/shm to keep away from: a user namespace
    # cannot look at the caller's mounts through /proc.
    outer = os.environ.get("LG_OUTER_SHM_DEV", "")
    if not outer.isdigit():
        return "LG_OUTER_SHM_DEV, the device number of the caller's /dev/shm, is not set"
    if os.stat(SHM).st_dev == int(outer):
        return "it is the caller's /dev/shm"
    return f"it holds {tree()[:3]}" if tree() else ""


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCENARIOS:
        print(f"usage: python -m tests.foreign_scenarios {{{','.join(SCENARIOS)}}} [ARG...]", file=sys.stderr)
        return 2
    problem = _not_private()
    if problem:
        print(f"refused: /dev/shm must be a fresh tmpfs of our own ({problem}); see the docstring", file=sys.stderr)
        return 2
    result = SCENARIOS[argv[0]](*argv[1:])
    try:
        wait_for(lambda: not descendants(), what="the scenario's child processes to exit")
    finally:
        for proc in descendants():
            with contextlib.suppress(psutil.Error):
                proc.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
