"""Child programs of tests/test_foreign.py, each a function its test starts with
``python_main`` (tests/helpers.py); arguments arrive as strings.

A child that becomes another user imports everything it needs first and starts
multiprocessing's resource_tracker while still root: the interpreter lives in /root,
which the other user may not read.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import multiprocessing
import multiprocessing.synchronize  # what a lock needs, imported while the interpreter's files can be read
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import posix_ipc

from leakguard._sweep.foreign import sweep_foreign
from tests.foreign_scenarios import disable_leases, make_file

SHM = "/dev/shm"
PAGE = 4096


def become(uid: str) -> None:
    """Become ``uid`` (its own group too, no others); "" stays who it is."""
    if uid:
        resource_tracker.ensure_running()  # as root: the tracker is a new interpreter
        os.setgroups([])
        os.setgid(int(uid))
        os.setuid(int(uid))


def non_dumpable() -> None:
    """PR_SET_DUMPABLE 0: not even its own user may read its /proc/PID/maps or fd/ now."""
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def as_nobody(uid: str) -> None:
    """Become ``uid``, then, as ROLE says: "idle" (unreadable even to its own user: say
    READY, wait for end of input), "look" (a dry-run foreign sweep) or "remove" (a foreign
    sweep); a sweep prints its report. ``ONLY`` (names, comma-separated) limits the
    sweep to those; ``LEASES=off`` makes F_SETLEASE fail as where leases are disabled."""
    if os.environ.get("LEASES") == "off":
        disable_leases()
    become(uid)
    if os.environ["ROLE"] == "idle":
        non_dumpable()
        print("READY", flush=True)
        sys.stdin.read()
    else:
        only = set(os.environ["ONLY"].split(",")) if os.environ.get("ONLY") else None
        report = sweep_foreign(older_than=0, dry_run=os.environ["ROLE"] == "look", temp_folders=[], only=only)
        print(json.dumps(report.to_dict()))


def holder(uid: str, block: str, dumpable: str) -> None:
    """Become ``uid`` ("": stay root), non-dumpable if ``dumpable`` is "0"; create the
    standard library's block ``block`` (4 KiB, its name written in it) and a
    multiprocessing lock (spawn: a named semaphore ``sem.mp-*``), and print both /dev/shm
    names as JSON. Then, for each line of input, attach both again by name and print
    what that found; at the end of input, unlink both (the lock's finalizer does)."""
    become(uid)
    if dumpable == "0":
        non_dumpable()
    shm = shared_memory.SharedMemory(name=block, create=True, size=PAGE)
    assert shm.buf is not None
    shm.buf[: len(block)] = block.encode()
    lock = multiprocessing.get_context("spawn").Lock()
    sem = lock._semlock.name  # type: ignore[attr-defined]  # "/mp-..."
    print(json.dumps({"block": block, "sem": "sem." + sem.lstrip("/")}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(_attach(block, sem)), flush=True)
    shm.close()
    shm.unlink()


def _attach(block: str, sem: str) -> dict[str, Any]:
    """Open the block and the semaphore by name, as another process of the job would."""
    found: dict[str, Any] = {}
    try:
        again = posix_ipc.SharedMemory("/" + block)  # no resource_tracker registration
        with mmap.mmap(again.fd, PAGE) as m:
            found["block"] = m[: len(block)].decode(errors="replace")
        again.close_fd()
    except posix_ipc.ExistentialError as exc:
        found["block"] = f"gone: {exc}"
    try:
        posix_ipc.Semaphore(sem).close()
        found["sem"] = "attached"
    except posix_ipc.ExistentialError as exc:
        found["sem"] = f"gone: {exc}"
    return found


def stdlib_job(uid: str) -> None:
    """Become ``uid``; make a standard library block and a multiprocessing lock, print
    their /dev/shm names as JSON, and wait to be killed (its group, tracker included)."""
    become(uid)
    block = shared_memory.SharedMemory(create=True, size=1 << 16)
    lock = multiprocessing.get_context("spawn").Lock()
    sem = "sem." + lock._semlock.name.lstrip("/")  # type: ignore[attr-defined]
    print(json.dumps({"block": block.name.lstrip("/"), "sem": sem}), flush=True)
    sys.stdin.read()


# ---------------------------------------------------------------------------- an opener meets the lease

OPENER = """
import os, sys, time
path, size = sys.argv[1], int(sys.argv[2])
print("READY", flush=True)
sys.stdin.readline()
started = time.monotonic()
try:
    fd = os.open(path, os.O_RDWR)  # as shm_open does to attach
except FileNotFoundError:
    print(f"gone {time.monotonic() - started:.6f}", flush=True)
else:
    waited = time.monotonic() - started
    data = os.pread(fd, size, 0)
    os.close(fd)
    name = os.path.basename(path).encode()
    print(f"opened {waited:.6f} {data == name * (size // len(name))}", flush=True)
"""


def opened_under_the_lease(moment: str, where: str) -> None:
    """Another process opens a block while the sweep holds its lease on it, at ``moment``:
    "granted" (right as the kernel grants it, before the sweep silenced the lease-break
    signal) or "unlink" (as the sweep is about to unlink it). The sweep runs in the main
    thread or, ``where`` = "thread", in another while the main thread waits. Prints what
    the sweep reported and what the opener got, as JSON; a lease-break signal that kills
    this process prints nothing."""
    name = f"psm_{secrets.token_hex(4)}"
    path = os.path.join(SHM, name)
    make_file(path, name.encode() * (PAGE // len(name)))
    size = os.path.getsize(path)
    opener = subprocess.Popen(
        [sys.executable, "-c", OPENER, path, str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert opener.stdin is not None
    assert opener.stdout is not None
    assert opener.stdout.readline().strip() == "READY"
    real_fcntl, real_unlink = fcntl.fcntl, os.unlink
    leased: list[int] = []

    def open_now_and_wait_for_the_break() -> None:
        assert opener.stdin is not None
        opener.stdin.write("open\n")
        opener.stdin.flush()
        deadline = time.monotonic() + 10
        while real_fcntl(leased[-1], fcntl.F_GETLEASE) == fcntl.F_WRLCK:  # its open() is waiting for us
            assert time.monotonic() < deadline, "the opener's open() never reached the lease"
            time.sleep(0.001)  # the poll interval of a deadline wait

    def watching_fcntl(fd: int, cmd: int, arg: int = 0) -> Any:
        result = real_fcntl(fd, cmd, arg)
        if cmd == fcntl.F_SETLEASE and arg == fcntl.F_WRLCK:
            leased.append(fd)
            if moment == "granted":
                open_now_and_wait_for_the_break()
        return result

    def watching_unlink(target: str, *, dir_fd: int | None = None) -> None:
        if moment == "unlink" and leased:
            open_now_and_wait_for_the_break()
        real_unlink(target, dir_fd=dir_fd)

    fcntl.fcntl = watching_fcntl  # type: ignore[assignment]
    os.unlink = watching_unlink  # type: ignore[assignment]
    reports = []

    def sweep() -> None:
        reports.append(sweep_foreign(older_than=0, dry_run=False, temp_folders=[], only={name}).to_dict())

    if where == "thread":
        worker = threading.Thread(target=sweep)
        worker.start()
        worker.join()
    else:
        sweep()
    fcntl.fcntl = real_fcntl
    os.unlink = real_unlink
    got = opener.communicate(timeout=30)[0].strip()
    left = os.path.lexists(path)
    if left:
        os.unlink(path)
    print(json.dumps({"path": path, "report": reports[0], "opener": got, "left": left}))


def race_sweeper() -> None:
    """For each name read, sweep it (``only``) until it is removed, at most 10 s; print the
    reasons it was kept meanwhile and what removed it, as JSON."""
    print("READY", flush=True)
    for line in sys.stdin:
        name, kept, removed = line.strip(), [], None
        deadline = time.monotonic() + 10
        while removed is None and time.monotonic() < deadline:
            report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[], only={name})
            kept += [i.reason for i in report.kept + report.errors]
            done = report.removed + report.gone
            removed = done[0].evidence if done else None  # type: ignore[attr-defined]
        print(json.dumps({"name": name, "kept": sorted(set(kept)), "removed": removed}), flush=True)


def race_opener() -> None:
    """For each path read, open it (as shm_open attaches: read-write) over and over until it
    is gone, at most 200 times, holding it a random moment each time; print how many opens
    found it whole, how many did not, and the longest any open waited, as JSON."""
    print("READY", flush=True)
    for line in sys.stdin:
        path = line.strip()
        expected = os.path.basename(path).encode() * (PAGE // len(os.path.basename(path)))
        whole = broken = 0
        longest = 0.0
        for _ in range(200):
            started = time.monotonic()
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                break
            longest = max(longest, time.monotonic() - started)
            data = os.pread(fd, len(expected), 0)
            time.sleep(random.uniform(0, 0.0003))  # holds it while it works, as an attached process does
            os.close(fd)
            if data == expected:
                whole += 1
            else:
                broken += 1
        print(json.dumps({"path": path, "whole": whole, "broken": broken, "longest": longest}), flush=True)
