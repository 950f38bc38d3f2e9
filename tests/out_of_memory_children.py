"""Child programs of tests/test_out_of_memory.py, each a function its test starts with
``main_code`` (tests/helpers.py); they read their settings from the environment."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from typing import Any

import numpy as np

import leakguard
from leakguard._journal.format import parse_journal


def huge() -> None:
    """Try to create one block of LG_SIZE bytes (LG_API: SharedMemory or shared_array), report
    the error, then (on a line of input) SIGKILL itself, so that no exit handler can tidy up
    after the failed creation."""
    size = int(os.environ["LG_SIZE"])
    result: dict[str, Any]
    try:
        if os.environ["LG_API"] == "SharedMemory":
            leakguard.SharedMemory(create=True, size=size)
        else:
            leakguard.shared_array(size, dtype=np.uint8, named=True)
    except Exception as exc:
        result = {
            "error": type(exc).__name__,
            "oom": isinstance(exc, leakguard.OutOfSharedMemoryError),
            "memory": isinstance(exc, MemoryError),
            "size": getattr(exc, "size", None),
            "available": getattr(exc, "available", None),
            "message": str(exc),
        }
    else:
        result = {"error": None}
    print(json.dumps(result), flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- a really full /dev/shm

SHM = "/dev/shm"
FILLER = os.path.join(SHM, "filler")
JOURNAL_FULL = "journal folder is full"
# /dev/shm entry -> the object that keeps it; a global, so that what is held lives until exit.
held: dict[str, Any] = {}  # blocks, arrays, semaphores


def _objects() -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(("lg_", "sem.lg_"))}


def _create(what: str, size: int) -> tuple[leakguard.SharedMemory | leakguard.SharedArray | leakguard.Semaphore, str]:
    if what == "shm":
        block = leakguard.SharedMemory(create=True, size=size)
        return block, block.name
    if what == "array":
        array = leakguard.shared_array(size // 8, dtype=np.float64, named=True)
        assert array.shm_name is not None  # a named array
        return array, array.shm_name
    sem = leakguard.Semaphore(1)
    return sem, "sem." + sem.name


def _attempt(what: str, size: int = 4096) -> dict[str, Any]:
    before = _objects()
    try:
        obj, entry = _create(what, size)
    except Exception as exc:
        return {
            "error": type(exc).__name__,
            "oom": isinstance(exc, leakguard.OutOfSharedMemoryError),
            "memory": isinstance(exc, MemoryError),
            "detail": getattr(exc, "detail", str(exc)),
            "added": sorted(_objects() - before),
            "removed": sorted(before - _objects()),
        }
    held[entry] = obj
    return {"error": None}


def _snapshot(folder: str) -> dict[str, Any]:
    live: set[str] = set()
    problems: list[str] = []
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in files:
        if name.endswith(".journal"):
            with open(os.path.join(folder, name), "rb") as f:
                contents = parse_journal(f.read())
            problems += [p.detail for p in contents.problems]
            live |= {e.name[1:] if e.kind == "shm" else "sem." + e.name[1:] for e in contents.live()}
    present = _objects()
    return {
        "unheld": sorted(present - set(held)),  # an object nobody holds: half-made
        "missing": sorted(set(held) - present),
        "unjournaled": sorted(set(held) - live),  # an object the journal does not name
        "stale": sorted(live - present),  # a journal entry for an object that is gone
        "problems": problems,
        "files": files,
    }


def full() -> None:
    """In a 2 MiB /dev/shm: fill it (LG_LOCATION: "journal-elsewhere": with blocks, journal on
    another filesystem; "journal-in-shm": with blocks, then with failed attempts until the
    journal itself is refused; "no-journal-yet": with a plain file, before leakguard has
    written anything), try to create an LG_KIND object three times, make room, create one
    again, and report all of it as JSON."""
    location, kind = os.environ["LG_LOCATION"], os.environ["LG_KIND"]
    folder = os.environ["LEAKGUARD_DIR"]
    result: dict[str, Any] = {}
    if location == "no-journal-yet":
        with open(FILLER, "wb", buffering=0) as f:
            for chunk in (1 << 16, 4096):
                try:
                    while True:
                        f.write(b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc  # noqa: PT017 (a child program: no pytest here)
    else:
        result["fill"] = []
        for size in (1 << 18, 4096):
            for _ in range(1024):  # 2 MiB hold 512 pages at most: a refusal must come before this ends
                r = _attempt("shm", size)
                if r["error"]:
                    break
            result["fill"].append(r)
        if location == "journal-in-shm":
            # Failed attempts use up what is left of the journal's last page.
            result["exhaust"] = []
            for _ in range(200):
                r = _attempt("shm", 1)
                result["exhaust"].append(r)
                if r["error"] and r["detail"] == JOURNAL_FULL:
                    break
    st = os.statvfs(SHM)
    result["free_bytes"] = st.f_bavail * st.f_frsize
    result["held"] = len(held)
    result["refusals"] = [_attempt(kind) for _ in range(3)]
    result["full"] = _snapshot(folder)

    result["free_errors"] = []
    if location == "no-journal-yet":
        os.unlink(FILLER)
    else:
        for entry in [e for e in held if e.startswith("lg_")][:2]:  # two 256 KiB blocks
            block = held.pop(entry)
            try:
                block.unlink()
            except Exception as exc:
                result["free_errors"].append(f"{type(exc).__name__}: {exc}")
            block.close()
    result["again"] = _attempt(kind)
    result["after"] = _snapshot(folder)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- a pool in a full /dev/shm


def describe(a: np.ndarray[Any, Any]) -> list[object]:
    from leakguard._blocks.arrays import SharedArray, block_name

    return [type(a).__name__, isinstance(a, SharedArray) and block_name(a) is not None, float(a.sum())]


def make(n: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.full(n, 3, dtype=np.uint8)


def pool_full() -> None:
    """A pool in a 2 MiB /dev/shm: with named blocks (LEAKGUARD_NAMED_BLOCKS=1), arrays too large
    for it travel through the pipes instead; with anonymous ones, /dev/shm is no limit at all."""
    result: dict[str, Any] = {}
    with leakguard.Pool(2, share_threshold=64 << 10) as pool:
        big = np.ones(4 << 20, dtype=np.uint8)  # twice the size of /dev/shm
        small = np.ones(256 << 10, dtype=np.uint8)  # fits: shared as usual
        result["big_argument"] = pool.apply(describe, (big,))
        result["small_argument"] = pool.apply(describe, (small,))
        back = pool.apply(make, (4 << 20,))
        result["big_result"] = [type(back).__name__, int(back.sum())]
        result["files_while_running"] = sorted(n for n in os.listdir("/dev/shm") if not n.startswith("."))
    result["files_after"] = sorted(n for n in os.listdir("/dev/shm") if not n.startswith("."))
    print(json.dumps(result))


# ---------------------------------------------------------------------------- anonymous blocks


def _memfds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            found.add(target)
    return found


def anonymous_refused() -> None:
    """An anonymous block the kernel will not reserve: a file size limit (ulimit -f) below its
    size makes posix_fallocate (and pwrite) fail with EFBIG, as a memory cgroup's limit makes
    them fail with ENOMEM, without risking the OOM killer. Report each refusal as JSON."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death by SIGXFSZ
    limit = 1 << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    small = leakguard.shared_array(limit // 16, dtype=np.uint8, fill=1)  # under the limit: made as usual
    results = []
    for how in ("shared_array", "share", "shared_array"):
        fds = sorted(os.listdir("/proc/self/fd"))
        memfds = _memfds()
        shm = sorted(os.listdir("/dev/shm"))
        try:
            if how == "shared_array":
                leakguard.shared_array(4 * limit, dtype=np.uint8)
            else:
                leakguard.share(np.ones(4 * limit, dtype=np.uint8))
        except Exception as exc:
            results.append(
                {
                    "how": how,
                    "error": type(exc).__name__,
                    "memory": isinstance(exc, MemoryError),
                    "limit": getattr(exc, "limit", None),
                    "size": getattr(exc, "size", None),
                    "message": str(exc),
                    "fds_same": sorted(os.listdir("/proc/self/fd")) == fds,
                    "memfds_same": _memfds() == memfds,
                    "shm_same": sorted(os.listdir("/dev/shm")) == shm,
                }
            )
        else:
            results.append({"how": how, "error": None})
    folder = os.environ["LEAKGUARD_DIR"]
    live = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            live += [(e.kind, e.name) for e in parse_journal(f.read()).live()]
    print(json.dumps({"refusals": results, "small": int(small.sum()), "live": live}), flush=True)
