"""An ``apply_async().get()`` round trip beside its floor, in the same run (issue 15, item 2).

Three ways to send ``(f, mode, args)`` to one spawned process and get ``f``'s result back,
one at a time, taking turns round by round:

- floor: a bare ``multiprocessing.Connection`` ping-pong of the same pickled tuple and result;
- leakguard: ``leakguard.Pool(1).apply_async(f, (i,)).get()``;
- multiprocessing: ``multiprocessing.Pool(1)`` (spawn), the same.

Each round's time is the median of its round trips; the table shows the median of the rounds
and each round's ratio to the floor of the same round (median, p10-p90). ``f`` is this file's
``inc`` imported as a module, so that all three send it by reference. With ``--main``, it is
``__main__.inc``, which leakguard sends by value (byvalue.py) and the other two by reference.

Usage::

    python bench/bench_roundtrip.py [--rounds N] [--trips N] [--main]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchkit import paired_ratios


def inc(x: int) -> int:
    return x + 1


def _echo(conn: Connection) -> None:
    """The floor's worker: unpickle (f, mode, args), run, pickle the result back."""
    while data := conn.recv_bytes():
        f, _mode, (args, kwds) = pickle.loads(data)
        conn.send_bytes(pickle.dumps(f(*args, **kwds)))


def _floor(conn: Connection, f: Callable[[int], int], trips: int) -> float:
    times = []
    for i in range(trips):
        start = time.perf_counter()
        conn.send_bytes(pickle.dumps((f, 0, ((i,), {}))))
        if pickle.loads(conn.recv_bytes()) != i + 1:
            raise SystemExit("floor: a wrong answer")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pool(pool: Any, f: Callable[[int], int], trips: int) -> float:
    times = []
    for i in range(trips):
        start = time.perf_counter()
        if pool.apply_async(f, (i,)).get() != i + 1:
            raise SystemExit("pool: a wrong answer")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--trips", type=int, default=2000, help="round trips per round")
    parser.add_argument("--main", action="store_true", help="a function of __main__ (sent by value)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="leakguard-bench-")
    os.environ["LEAKGUARD_DIR"] = folder  # our own journal folder: a sweep of it touches nobody else's
    import leakguard  # after LEAKGUARD_DIR is set

    if args.main:
        f: Callable[[int], int] = inc
    else:
        import bench_roundtrip  # this file as a module: f goes by reference

        f = bench_roundtrip.inc
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    echo = ctx.Process(target=_echo, args=(theirs,))
    echo.start()
    times: dict[str, list[float]] = {"floor": [], "leakguard": [], "multiprocessing": []}
    try:
        with leakguard.Pool(1) as lg, ctx.Pool(1) as stdlib:
            runs: dict[str, Callable[[], float]] = {
                "floor": lambda: _floor(ours, f, args.trips),
                "leakguard": lambda: _pool(lg, f, args.trips),
                "multiprocessing": lambda: _pool(stdlib, f, args.trips),
            }
            for run in runs.values():  # warm: imports, caches, the first pickling of f
                run()
            names = list(runs)
            for r in range(args.rounds):
                for name in names[r % 3 :] + names[: r % 3]:  # turns rotate: noise hits all alike
                    times[name].append(runs[name]())
    finally:
        ours.send_bytes(b"")
        echo.join()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"apply round trip, {args.rounds} rounds of {args.trips:,}; f of {'__main__' if args.main else 'a module'}")
    print("| way | median of round medians | ratio to the floor (p10-p90) |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        ratio = paired_ratios(values, times["floor"])
        print(
            f"| {name} | {statistics.median(values) * 1e6:.1f} us | "
            f"{ratio['median']:.2f} ({ratio['p10']:.2f}-{ratio['p90']:.2f}) |"
        )


if __name__ == "__main__":
    main()
