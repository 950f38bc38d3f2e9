"""How an anonymous block's descriptor should travel between processes: measured.

An anonymous block (a memfd) has no name; another process gets a descriptor of it either by
opening ``/proc/<holder pid>/fd/<n>`` (what a pickled SharedArray says, checked: the link's
name, the inode, the size, the holder's start time) or by receiving it over a unix socket
(SCM_RIGHTS). Named blocks (``shm_open`` by name) are the anchor. In the same run:

1. attach: a process gets a descriptor of a 1 MiB block another process holds, maps it,
   reads one byte of each page, unmaps it. Per block, in microseconds.
2. pool_task: ``Pool.apply`` of a task that takes a 1 MiB array and returns one (both
   shared automatically), on a 1-worker pool: anonymous blocks (the pool's arguments go by
   /proc, its results by SCM_RIGHTS) against named ones. Per task, in microseconds.

Rounds interleave the ways, in an order that rotates; the table shows medians (p10-p90) and
each way's ratio to the named anchor in the same round.

Usage::

    python bench/bench_descriptors.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import numpy as np
from benchkit import check, paired_ratios, summarise

import leakguard
from leakguard._journal.identity import start_time
from leakguard._os import ipc, memfd
from leakguard._os.names import make_name

BLOCK = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
WAYS = ("named (shm_open)", "/proc/PID/fd/N", "SCM_RIGHTS")


def _touch(mapping: Any) -> int:
    view = np.frombuffer(mapping, dtype=np.uint8)
    total = int(view[::PAGE].sum())
    del view
    return total


def _receiver(conn: Any, sock: socket.socket, n: int) -> None:
    """The other process: for each request, attach the block the way it names, n times; send the time."""
    while True:
        request = conn.recv()
        if request is None:
            return
        way, payload = request
        t0 = time.perf_counter()
        for _ in range(n):
            if way == WAYS[0]:
                fd = ipc.shm_attach(payload)
            elif way == WAYS[1]:
                fd = memfd.open_holder(payload[0], payload[1], payload[2])
                os.fstat(fd)
                start_time(payload[0])
            else:
                _, fds, _, _ = socket.recv_fds(sock, 1, 1, socket.MSG_CMSG_CLOEXEC)
                fd = fds[0]
                os.fstat(fd)
            mapping = ipc.shm_map(fd, BLOCK)
            os.close(fd)
            check(_touch(mapping) == 0, "a fresh block reads as zeros")
            mapping.close()
        conn.send((time.perf_counter() - t0) / n * 1e6)


def attach_rounds(rounds: int, n: int) -> dict[str, list[float]]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = socket.socketpair()
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(there, theirs, n))
    proc.start()
    name, anon_name = make_name(), make_name()
    fd = ipc.shm_open_new(name)
    ipc.shm_reserve(fd, BLOCK)
    os.close(fd)
    anon = memfd.create(anon_name, BLOCK)
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    try:
        for r in range(rounds):
            order = WAYS[r % 3 :] + WAYS[: r % 3]
            for way in order:
                if way == WAYS[0]:
                    here.send((way, name))
                elif way == WAYS[1]:
                    here.send((way, (os.getpid(), anon, anon_name)))
                else:
                    here.send((way, None))
                    for _ in range(n):
                        socket.send_fds(ours, [b"x"], [anon])
                times[way].append(here.recv())
    finally:
        here.send(None)
        proc.join()
        ipc.shm_unlink(name)
        os.close(anon)
        ours.close()
        theirs.close()
    return times


def echo(x: Any) -> Any:
    return x + 1


def pool_rounds(rounds: int, n: int) -> dict[str, list[float]]:
    big = np.zeros(BLOCK // 8)
    times: dict[str, list[float]] = {"named": [], "anonymous": []}
    for r in range(rounds):
        for kind in ("named", "anonymous") if r % 2 == 0 else ("anonymous", "named"):
            os.environ["LEAKGUARD_NAMED_BLOCKS"] = "1" if kind == "named" else ""
            with leakguard.Pool(1) as pool:
                pool.apply(echo, (big,))  # up, and its spare block made
                t0 = time.perf_counter()
                for _ in range(n):
                    out = pool.apply(echo, (big,))
                    check(out[0] == 1.0, "the task's result")
                    del out
                times[kind].append((time.perf_counter() - t0) / n * 1e6)
    os.environ.pop("LEAKGUARD_NAMED_BLOCKS", None)
    return times


def table(title: str, times: dict[str, list[float]], anchor: str) -> tuple[str, dict[str, Any]]:
    lines = [title, f"  {'':<22} {'median':>9} {'p10':>9} {'p90':>9}  ratio to {anchor}"]
    found: dict[str, Any] = {}
    for way, values in times.items():
        s = summarise(values)
        ratio = paired_ratios(values, times[anchor])
        found[way] = {"time_us": s, "ratio": ratio}
        lines.append(
            f"  {way:<22} {s['median']:9.1f} {s['p10']:9.1f} {s['p90']:9.1f}  "
            f"{ratio['median']:.3f} ({ratio['p10']:.3f}-{ratio['p90']:.3f})"
        )
    return "\n".join(lines), found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    args = parser.parse_args(argv)
    if not memfd.available():
        print("bench_descriptors: no anonymous blocks on this system; nothing to measure", file=sys.stderr)
        return 0
    folder = tempfile.mkdtemp(prefix="leakguard-bench-descriptors-")
    os.environ["LEAKGUARD_DIR"] = folder  # this run's journals, swept and removed at the end
    rounds, n, tasks = (3, 200, 50) if args.quick else (15, 2000, 300)
    text1, attach = table(
        f"1. attach a 1 MiB block another process holds, map it, touch each page, unmap "
        f"(us per block, {rounds} rounds)",
        attach_rounds(rounds, n),
        WAYS[0],
    )
    text2, task = table(
        f"2. Pool.apply of a task taking and returning a 1 MiB array, 1 worker (us per task, {rounds} rounds)",
        pool_rounds(rounds, tasks),
        "named",
    )
    print(f"{text1}\n\n{text2}")
    report = leakguard.sweep(folder=folder)
    check(not report.removed and not report.errors, f"the run left {report.removed or report.errors}")
    shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"quick": args.quick, "attach": attach, "pool_task": task}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
