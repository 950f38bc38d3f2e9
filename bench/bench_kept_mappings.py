"""A repeated ``map`` over one SharedArray, against the memory bandwidth floor (issue 15, item 3).

In one run:

- the floor: numpy's single-process ``sum`` of a 400 MB float64 array (median of several),
  as bandwidth, times the number of workers: no pool can sum faster than that;
- leakguard: one 2-worker pool sums the 16 slices of a 400 MB SharedArray (``map``,
  chunksize 1) again and again; the median of the rounds after the first. Once with the
  workers keeping no mappings between tasks (``LEAKGUARD_KEPT_MAPPINGS=0``: each task maps
  its block and faults its pages in again), once with the default (kept), taking turns.

Target: the kept run at 0.7 of the floor or better (its time at most floor / 0.7).

A second floor is printed beside it: numpy's single-process sum over the SharedArray's own
pages (the same block, mapped in this process), times the workers. The two differ where the
kernel gives shared memory no huge pages: ``/sys/kernel/mm/transparent_hugepage/shmem_enabled``
at ``never`` (the default of most kernels) backs every block with 4 KiB pages, while numpy's
private arrays get transparent huge pages (``enabled`` at ``madvise``; numpy asks for them).
Every TLB miss then costs a page walk, dearer still under a hypervisor, and no pool over shared
memory reaches the first floor; the second is what the pages allow. Both settings are printed.

Usage::

    python bench/bench_kept_mappings.py [--rounds N] [--pools N] [--mb SIZE]

It runs in a journal folder of its own (LEAKGUARD_DIR, a fresh temporary folder, removed
at the end); its blocks are anonymous, so it leaves nothing in /dev/shm.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

WORKERS = 2
PARTS = 16
TARGET = 0.7


def task_sum(part: np.ndarray) -> float:
    return float(part.sum())


def floor_seconds(array: np.ndarray, repeats: int) -> tuple[float, float]:
    """(numpy's single-process sum bandwidth in bytes/s, median; the floor time for ``array``
    summed by WORKERS processes at that bandwidth each)."""
    array.sum()  # faulted in
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        array.sum()
        times.append(time.perf_counter() - t0)
    bandwidth = array.nbytes / statistics.median(times)
    return bandwidth, array.nbytes / (bandwidth * WORKERS)


def _thp(knob: str) -> str:
    """The chosen value of a transparent huge pages setting (``[madvise]`` in the file), or "?"."""
    try:
        with open(f"/sys/kernel/mm/transparent_hugepage/{knob}", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return "?"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def pool_rounds(shared: np.ndarray, rounds: int, kept: bool, expected: list[float]) -> list[float]:
    import leakguard  # after LEAKGUARD_DIR is set

    os.environ["LEAKGUARD_KEPT_MAPPINGS"] = "" if kept else "0"
    step = len(shared) // PARTS
    parts = [shared[i * step : (i + 1) * step] for i in range(PARTS)]
    times = []
    with leakguard.Pool(WORKERS, start_method="spawn") as pool:
        pool.map(task_sum, [np.zeros(1)] * WORKERS, 1)  # the workers are up
        for _ in range(rounds):
            t0 = time.perf_counter()
            sums = pool.map(task_sum, parts, 1)
            times.append(time.perf_counter() - t0)
            if sums != expected:
                raise SystemExit(f"wrong sums: {sums[:3]}..., expected {expected[:3]}...")
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="maps per pool (the first is not counted)")
    parser.add_argument("--pools", type=int, default=3, help="pools of each kind, taking turns")
    parser.add_argument("--mb", type=int, default=400, help="the array's size in MB")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="leakguard-bench-kept-")
    os.environ["LEAKGUARD_DIR"] = folder
    os.environ.pop("LEAKGUARD_NAMED_BLOCKS", None)
    import leakguard  # after LEAKGUARD_DIR is set

    try:
        plain = np.arange(args.mb * 1_000_000 // 8, dtype=np.float64)
        bandwidth, floor = floor_seconds(plain, 15)
        step = len(plain) // PARTS
        expected = [float(plain[i * step : (i + 1) * step].sum()) for i in range(PARTS)]
        shared = leakguard.share(plain)
        del plain
        shared_bandwidth, shared_floor = floor_seconds(shared, 15)
        found: dict[bool, list[float]] = {False: [], True: []}
        firsts: dict[bool, list[float]] = {False: [], True: []}
        for n in range(args.pools):
            for kept in (n % 2 == 0, n % 2 != 0):
                times = pool_rounds(shared, args.rounds, kept, expected)
                firsts[kept].append(times[0])
                found[kept].extend(times[1:])
        leakguard.free(shared)
        del shared
        floor_ms, shared_ms = floor * 1000, shared_floor * 1000
        print(f"transparent huge pages: private memory [{_thp('enabled')}], shared memory [{_thp('shmem_enabled')}]")
        print(
            f"numpy single-process sum: {bandwidth / 1e9:.1f} GB/s (median); floor for {args.mb} MB on "
            f"{WORKERS} workers: {floor_ms:.1f} ms"
        )
        print(
            f"the same over the SharedArray's pages: {shared_bandwidth / 1e9:.1f} GB/s; floor on its pages: "
            f"{shared_ms:.1f} ms"
        )
        for kept, label in ((False, "mappings not kept (before)"), (True, "mappings kept (after)")):
            median = statistics.median(found[kept]) * 1000
            first = statistics.median(firsts[kept]) * 1000
            print(
                f"{label:28}: median {median:6.1f} ms ({args.mb / median:.1f} GB/s), first map "
                f"{first:6.1f} ms; ratio to floor {floor_ms / median:.2f} (target >= {TARGET}), "
                f"to the floor on its pages {shared_ms / median:.2f}"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
