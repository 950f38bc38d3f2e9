"""What a write lease per unlink would cost ``leakguard.sweep()`` (issue 14, item 5).

``sweep --foreign`` unlinks a leftover only while it holds a write lease on it
(leakguard/_os/lease.py). The journaled sweep could take the same lease as an extra
guard against a live mapper; this measures what that would cost, on files of 4 KiB
in a fresh folder on /dev/shm (tmpfs), in rounds taken side by side:

- ``unlink``: ``os.unlink`` by known name (bench_foundation.py's floor);
- ``lease``: open + ``F_SETLEASE`` + unlink + close, the bare sequence;
- ``guarded``: what ``sweep --foreign`` does per file: open through the folder's
  descriptor, fstat, the lease (``F_SETSIG``, ``F_SETLEASE``, ``F_SETOWN``), ``F_GETLEASE``,
  fstatat, unlinkat, release, close.

Prints medians (ms for ``--files`` files, 10,000 by default) and the paired ratios
to ``unlink``. ``python bench/bench_lease.py [--files N] [--rounds R] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchkit import check, paired_ratios, summarise

from leakguard._os import lease

SHM = "/dev/shm"
BLOCK = 4096


def _make(folder: str, n: int) -> list[str]:
    names = [f"psm_{i:08x}" for i in range(n)]
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for name in names:
        fd = os.open(os.path.join(folder, name), flags, 0o600)
        try:
            os.posix_fallocate(fd, 0, BLOCK)
        finally:
            os.close(fd)
    return names


def _unlink(folder: str, names: list[str]) -> None:
    for name in names:
        os.unlink(os.path.join(folder, name))


def _lease(folder: str, names: list[str]) -> None:
    for name in names:
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        os.unlink(path)
        os.close(fd)


def _guarded(folder: str, names: list[str]) -> None:
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            fd = lease.open_for_lease(name, dir_fd)
            try:
                os.fstat(fd)
                answer, why = lease.take_write_lease(fd)
                check(answer is lease.LeaseAnswer.GRANTED, f"no lease on {name}: {why}")
                check(not lease.lease_broken(fd), f"the lease on {name} was broken")
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                os.unlink(name, dir_fd=dir_fd)
                lease.release_lease(fd)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


WAYS: dict[str, Callable[[str, list[str]], None]] = {"unlink": _unlink, "lease": _lease, "guarded": _guarded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if not lease.LEASES:
        raise SystemExit("this system has no file leases")
    root = tempfile.mkdtemp(prefix="leakguard-bench-lease-", dir=SHM)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        for _ in range(args.rounds):
            for way, run in WAYS.items():
                folder = os.path.join(root, way)
                os.mkdir(folder, 0o700)
                names = _make(folder, args.files)
                started = time.perf_counter()
                run(folder, names)
                times[way].append((time.perf_counter() - started) * 1000)
                check(not os.listdir(folder), f"{way}: files left in {folder}")
                os.rmdir(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "files": args.files,
        "rounds": args.rounds,
        "ms": {way: summarise(t) for way, t in times.items()},
        "ratio_to_unlink": {way: paired_ratios(times[way], times["unlink"]) for way in WAYS if way != "unlink"},
    }
    for way in WAYS:
        line = f"{way:<8} {result['ms'][way]['median']:8.1f} ms for {args.files:,} files"
        if way != "unlink":
            line += f"  ({result['ratio_to_unlink'][way]['median']:.2f} x unlink)"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
