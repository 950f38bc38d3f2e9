"""What starting a pool costs: ``leakguard.Pool`` beside ``multiprocessing.Pool``, and what
``leakguard.get_pool`` saves by keeping one warm (issue 15).

Each round, in an order that rotates, measures (2 workers, spawn):

1. ``multiprocessing.Pool``: start, run one task, close, join (the anchor);
2. ``leakguard.Pool``: the same;
3. ``leakguard.get_pool(2)`` already warm: the call, then one task (no start, no close).

For each, the wall time and the CPU time of every process involved (this one and its
children, guardian included): on a machine whose cores are busy, the CPU time is what
start-up costs the others, and it is less disturbed by the load than the wall time.
Then the cost of ``get_pool(2)`` alone when it returns the warm pool, per call.

The main module imports nothing heavy, so that the spawned workers of multiprocessing,
which run it again, are not charged for it (bench/bench_pool.py's ``startup`` workload
measures with a main module that imports numpy). Usage::

    LEAKGUARD_DIR=$(mktemp -d) python bench/bench_startup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable

from benchkit import check, paired_ratios, summarise

import leakguard

WORKERS = 2


def task_inc(x: int) -> int:
    return x + 1


def _cpu() -> float:
    """CPU seconds of this process and of its children reaped so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def anchor() -> None:
    pool = multiprocessing.get_context("spawn").Pool(WORKERS)
    check(pool.apply_async(task_inc, (1,)).get() == 2, "multiprocessing: the task failed")
    pool.close()
    pool.join()


def cold() -> None:
    pool = leakguard.Pool(WORKERS)
    check(pool.apply_async(task_inc, (1,)).get() == 2, "leakguard: the task failed")
    pool.close()
    pool.join()


def warm() -> None:
    pool = leakguard.get_pool(WORKERS)
    check(pool.apply_async(task_inc, (1,)).get() == 2, "leakguard.get_pool: the task failed")


CASES: list[tuple[str, str, Callable[[], None]]] = [
    ("anchor", "multiprocessing.Pool: start, one task, close, join", anchor),
    ("cold", "leakguard.Pool: start, one task, close, join", cold),
    ("warm", "leakguard.get_pool (warm): one task", warm),
]


def measure(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall ms, CPU ms of every process involved). Every child of a cold start is
    reaped before its call returns, so its CPU time is counted in RUSAGE_CHILDREN."""
    gc.collect()
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000, (_cpu() - c0) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    check("LEAKGUARD_DIR" in os.environ, "set LEAKGUARD_DIR to a fresh folder (mktemp -d)")
    for _, _, fn in CASES:
        fn()  # imports, the resource tracker, the warm pool itself
    wall: dict[str, list[float]] = {key: [] for key, _, _ in CASES}
    cpu: dict[str, list[float]] = {key: [] for key, _, _ in CASES}
    for r in range(args.rounds):
        shift = r % len(CASES)
        for key, _, fn in CASES[shift:] + CASES[:shift]:
            w, c = measure(fn)
            wall[key].append(w)
            cpu[key].append(c)
    calls = []
    for _ in range(2000):
        t0 = time.perf_counter()
        leakguard.get_pool(WORKERS)
        calls.append((time.perf_counter() - t0) * 1e6)
    leakguard.get_pool(WORKERS).terminate()

    load = os.getloadavg()[0]
    python = sys.version.split()[0]
    print(f"start-up, {WORKERS} workers, spawn; {args.rounds} rounds interleaved; load {load:.2f}; Python {python}")
    print(f"  {'':52} {'wall ms':>9} {'ratio':>7} {'CPU ms':>8} {'ratio':>7}   (medians; ratio: paired, to the anchor)")
    for key, title, _ in CASES:
        wall_ms, cpu_ms = summarise(wall[key]), summarise(cpu[key])
        wr = paired_ratios(wall[key], wall["anchor"])["median"]
        cr = paired_ratios(cpu[key], cpu["anchor"])["median"]
        print(f"  {title:52} {wall_ms['median']:9.1f} {wr:7.3f} {cpu_ms['median']:8.1f} {cr:7.3f}")
    call = summarise(calls)
    print(f"  get_pool({WORKERS}) returning the warm pool: {call['median']:.1f} us per call (p90 {call['p90']:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
