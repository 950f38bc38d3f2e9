"""How leakguard's cost grows with the number of workers (and, read from bench_foundation.py,
with the entries a sweep meets).

For 1, 2, 4, 8 and 16 workers, ``leakguard.Pool`` beside ``multiprocessing.Pool`` (spawn
for both), each measured in the same run, taking turns in an order that rotates:

1. Tiny tasks, on a fresh pool whose every worker has run a task (untimed):
   - ``map`` of a trivial function over 20,000 ints, chunksize 100 (200 chunks at every
     worker count): time per item and items per second;
   - ``apply_async(...).get()`` one at a time: the round trip, per task;
   - 2,000 ``apply_async`` in flight, then every ``get()``: time per task and tasks per second.
2. Memory per worker, in the same pools after that warm-up: USS (the memory only that
   process holds: what its exit frees) and RSS of each worker (psutil), beside loky's
   workers (``loky.get_reusable_executor``, if installed); and the USS of any other process
   the pool started with it (leakguard's guardian).
3. Start-up: start n workers, run one task, close, join.

Medians over the repetitions (5; 2 with ``--quick``), with p10/p90; ratios are
leakguard / multiprocessing.Pool, paired per repetition. How a sweep's time grows with
the entries it meets (1k, 10k, 100k) is bench_foundation.py's to measure: give its JSON
with ``--sweep-json`` and its sweep rows are printed here beside the rest.

Usage::

    python bench/bench_scaling.py [--quick] [--reps N] [--workers N,N,...] [--json FILE]
                                  [--plot FILE.png] [--sweep-json FOUNDATION.json]

``--plot`` draws three panels (per-task time, start-up, memory per worker, each against
the number of workers) with matplotlib (``pip install -e '.[bench]'``).

As bench_pool.py does, the measurements run in a child process of its own session with
its own journal folder; when it is done (or fails, or is interrupted) this process waits
for every process the run started to exit, sweeps the folder, and checks that /dev/shm is
as it found it (exit 1 if not). Heavy modules are imported inside the functions that use
them: spawned workers import this script as ``__mp_main__``, and their memory should be
the pool's, not this script's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from benchkit import Summary, check, paired_ratios, raise_exit, signals_ignored, summarise
from pool_tasks import task_inc, task_pid

SHM = "/dev/shm"
LEAKGUARD = "leakguard"
ANCHOR = "multiprocessing"
LOKY = "loky"
LABELS = {LEAKGUARD: "leakguard.Pool", ANCHOR: "multiprocessing.Pool", LOKY: "loky"}
WARM_TASK_SECONDS = 0.05  # long enough that a worker that is up gets a warm-up task
READY_TIMEOUT = 300.0  # seconds for a fresh pool's workers to run their first task
MIB = 2**20


@dataclass(frozen=True)
class Config:
    reps: int
    workers: tuple[int, ...]
    map_items: int
    chunksize: int
    round_trips: int  # apply_async().get(), one at a time
    in_flight: int  # apply_async() all at once, then every get()


FULL = Config(reps=5, workers=(1, 2, 4, 8, 16), map_items=20_000, chunksize=100, round_trips=1_000, in_flight=2_000)
QUICK = Config(reps=2, workers=(1, 2), map_items=2_000, chunksize=100, round_trips=100, in_flight=200)


# ---------------------------------------------------------------------------- the measuring child


class Pool(Protocol):
    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = ...) -> list[Any]: ...

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = ...) -> Any: ...

    def close(self) -> None: ...

    def join(self) -> None: ...

    def terminate(self) -> None: ...


def start_pool(impl: str, workers: int) -> Pool:
    if impl == LEAKGUARD:
        import leakguard

        return leakguard.Pool(workers, start_method="spawn")
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(workers)


def worker_pids(run: Callable[[list[float]], list[int]], workers: int) -> set[int]:
    """Run warm-up tasks until each of ``workers`` workers has run one; their pids."""
    seen: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while len(seen) < workers:
        check(time.monotonic() < deadline, f"{workers} workers did not all run a task in {READY_TIMEOUT} s")
        seen |= set(run([WARM_TASK_SECONDS] * workers))
    check(len(seen) == workers, f"{len(seen)} workers ran tasks; the pool has {workers}")
    return seen


def children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def memory(pids: set[int]) -> tuple[list[float], list[float]]:
    """USS and RSS of each process, in MiB."""
    import psutil

    uss, rss = [], []
    for pid in sorted(pids):
        info = psutil.Process(pid).memory_full_info()
        uss.append(info.uss / MIB)
        rss.append(info.rss / MIB)
    return uss, rss


def _median(values: list[float]) -> float:
    return summarise(values)["median"] if values else 0.0


def session(impl: str, workers: int, cfg: Config) -> dict[str, float]:
    """One fresh pool: the three task timings and its processes' memory."""
    before = children()
    pool = start_pool(impl, workers)
    try:
        pids = worker_pids(lambda delays: pool.map(task_pid, delays, 1), workers)
        uss, rss = memory(pids)
        others = children() - before - pids  # leakguard's guardian; none for multiprocessing.Pool
        other_uss, _ = memory(others)

        items = range(cfg.map_items)
        t0 = time.perf_counter()
        out = pool.map(task_inc, items, cfg.chunksize)
        t_map = time.perf_counter() - t0
        check(out == [x + 1 for x in items], f"{impl}: wrong map result")

        t0 = time.perf_counter()
        wrong = sum(pool.apply_async(task_inc, (i,)).get() != i + 1 for i in range(cfg.round_trips))
        t_trip = time.perf_counter() - t0
        check(wrong == 0, f"{impl}: {wrong} round trips returned a wrong value")

        t0 = time.perf_counter()
        pending = [pool.apply_async(task_inc, (i,)) for i in range(cfg.in_flight)]
        got = [p.get() for p in pending]
        t_flight = time.perf_counter() - t0
        check(got == [i + 1 for i in range(cfg.in_flight)], f"{impl}: wrong results in flight")
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return {
        "map_us": t_map * 1e6 / cfg.map_items,
        "round_trip_us": t_trip * 1e6 / cfg.round_trips,
        "in_flight_us": t_flight * 1e6 / cfg.in_flight,
        "uss_mib": _median(uss),
        "rss_mib": _median(rss),
        "others": float(len(others)),
        "others_uss_mib": sum(other_uss),
    }


def loky_session(workers: int) -> dict[str, float]:
    """loky's workers' memory, after each has run a task (its executor shut down after)."""
    from peers import LokyRunner

    before = children()
    runner = LokyRunner(workers)
    try:
        pids = worker_pids(lambda delays: runner.map(task_pid, delays, 1), workers)
        uss, rss = memory(pids)
        others = children() - before - pids
        other_uss, _ = memory(others)
    except BaseException:
        runner.abort()
        raise
    runner.close()
    return {
        "uss_mib": _median(uss),
        "rss_mib": _median(rss),
        "others": float(len(others)),
        "others_uss_mib": sum(other_uss),
    }


def startup(impl: str, workers: int) -> float:
    """Start ``workers`` workers, run one task, close, join: milliseconds."""
    t0 = time.perf_counter()
    pool = start_pool(impl, workers)
    try:
        value = pool.apply_async(task_inc, (1,)).get()
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    elapsed = time.perf_counter() - t0
    check(value == 2, f"{impl}: the task returned {value!r}")
    return elapsed * 1000


def child_main(cfg: Config, out_path: str, quick: bool) -> int:
    import peers

    import leakguard

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)  # the pools in flight are terminated on the way out
    with_loky = peers.installed(LOKY)
    impls = [LEAKGUARD, ANCHOR]
    sessions: dict[str, dict[int, list[dict[str, float]]]] = {
        impl: {n: [] for n in cfg.workers} for impl in [*impls, *([LOKY] if with_loky else [])]
    }
    starts: dict[str, dict[int, list[float]]] = {impl: {n: [] for n in cfg.workers} for impl in impls}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        for impl in impls:  # the first pool of each kind pays for imports and the resource tracker
            startup(impl, 1)
        if with_loky:
            loky_session(1)
        for rep in range(cfg.reps):
            for n in cfg.workers:
                order = impls[rep % 2 :] + impls[: rep % 2]
                for impl in order:
                    sessions[impl][n].append(session(impl, n, cfg))
                for impl in order:
                    starts[impl][n].append(startup(impl, n))
                if with_loky:
                    sessions[LOKY][n].append(loky_session(n))
            print(f"bench_scaling: repetition {rep + 1} of {cfg.reps} done", file=sys.stderr, flush=True)
    finally:
        peers.shutdown_all()
    result = {
        "meta": {
            "python": platform.python_version(),
            "leakguard": leakguard.__version__,
            "loky": peers.versions()[LOKY],
            "platform": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 0,
            "start_method": "spawn",
            "quick": quick,
            "config": dataclasses.asdict(cfg),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "seconds": time.monotonic() - started,
        },
        **summarise_all(cfg, sessions, starts),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


TASK_KEYS = ("map_us", "round_trip_us", "in_flight_us")
MEMORY_KEYS = ("uss_mib", "rss_mib", "others", "others_uss_mib")


def summarise_all(
    cfg: Config, sessions: dict[str, dict[int, list[dict[str, float]]]], starts: dict[str, dict[int, list[float]]]
) -> dict[str, Any]:
    def column(impl: str, n: int, key: str) -> list[float]:
        return [s[key] for s in sessions[impl][n]]

    tasks: dict[str, dict[str, dict[str, Summary]]] = {}
    mem: dict[str, dict[str, dict[str, Summary]]] = {}
    for impl, by_n in sessions.items():
        if impl != LOKY:
            tasks[impl] = {str(n): {key: summarise(column(impl, n, key)) for key in TASK_KEYS} for n in by_n}
        mem[impl] = {str(n): {key: summarise(column(impl, n, key)) for key in MEMORY_KEYS} for n in by_n}
    return {
        "tasks": tasks,
        "task_ratios": {
            str(n): {key: paired_ratios(column(LEAKGUARD, n, key), column(ANCHOR, n, key)) for key in TASK_KEYS}
            for n in cfg.workers
        },
        "memory": mem,
        "memory_ratios": {
            str(n): {
                impl: paired_ratios(column(LEAKGUARD, n, "uss_mib"), column(impl, n, "uss_mib"))
                for impl in sessions
                if impl != LEAKGUARD
            }
            for n in cfg.workers
        },
        "startup": {impl: {str(n): summarise(values) for n, values in by_n.items()} for impl, by_n in starts.items()},
        "startup_ratios": {str(n): paired_ratios(starts[LEAKGUARD][n], starts[ANCHOR][n]) for n in cfg.workers},
    }


# ---------------------------------------------------------------------------- the sweep, from bench_foundation.py


def read_sweep(path: str) -> list[dict[str, Any]]:
    """The sweep rows of a bench_foundation.py JSON: one entry per folder size.

    Its sweep holds one size (``entries``, ``rows``, ``ratios``) or several (``sizes``, a list
    of those); either is read.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    sweep = data.get("sweep") if isinstance(data, dict) else None
    if not isinstance(sweep, dict):
        raise SystemExit(f"bench_scaling: {path} has no sweep; write one with bench/bench_foundation.py --json FILE")
    sizes = sweep.get("sizes", [sweep])
    found = []
    for size in sizes:
        try:
            rows, ratios = size["rows"], size["ratios"]
            found.append(
                {
                    "entries": int(size["entries"]),
                    "floor_ms": rows["floor_unlink"]["median"],
                    "orphaned_ms": rows["orphaned_shm"]["median"],
                    "orphaned_us_per_entry": rows["orphaned_shm"]["per_entry_us"],
                    "live_ms": rows["live_shm"]["median"],
                    "orphaned_to_floor": ratios["orphaned_shm"]["median"],
                }
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SystemExit(f"bench_scaling: {path}: a sweep size lacks {e}; is it bench_foundation.py's JSON?") from e
    return found


# ---------------------------------------------------------------------------- the parent: run, clean up, check

_RUN_MARK = "LEAKGUARD_BENCH_SCALING_RUN"  # in the environment of every process the run starts
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def shm_listing() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # the poll interval of a wait with a deadline
    return True


def measure(args: list[str], root: str, token: str, problems: list[str]) -> dict[str, Any] | None:
    """Run the measuring child, then clean up after it; its result, or None if it failed."""
    import psutil

    import leakguard

    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from stress.observe import marked

    folder = os.path.join(root, "journal")
    out_path = os.path.join(root, "result.json")
    shm_before = shm_listing()
    command = [sys.executable, *(f"-W{w}" for w in sys.warnoptions), os.path.abspath(__file__), "--child", out_path]
    # Stop signals wait until the child is known here (it unblocks them first thing).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        proc = subprocess.Popen(
            [*command, *args],
            env=dict(os.environ, LEAKGUARD_DIR=folder, **{_RUN_MARK: token}),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    code = None
    try:
        code = proc.wait()
    finally:
        with signals_ignored():
            if proc.poll() is None:  # interrupted: ask the child to stop (it terminates its pools), then kill
                os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not _wait_for(lambda: not marked(_RUN_MARK, token), timeout=10):
                left = marked(_RUN_MARK, token)
                problems.append(f"the run left processes running: {[(p.pid, p.name()) for p in left]} (now killed)")
                for p in left:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                psutil.wait_procs(left, timeout=5)
            if os.path.isdir(folder):
                report = leakguard.sweep(folder=folder)
                if report.removed:
                    problems.append(f"the run left {len(report.removed)} objects behind (swept now)")
                problems += [f"sweep of {folder}: {e.name}: {e.reason}" for e in report.errors]
            if not _wait_for(lambda: shm_listing() == shm_before, timeout=10):
                now = shm_listing()
                problems.append(
                    f"{SHM} is not as the run found it: added {sorted(now - shm_before)[:20]}, "
                    f"removed {sorted(shm_before - now)[:20]} (run it in a private {SHM}: see bench_pool.py)"
                )
    if code != 0:
        problems.append(f"the measuring process failed (exit {code}); its error is above")
        return None
    with open(out_path, encoding="utf-8") as f:
        found: dict[str, Any] = json.load(f)
    return found


# ---------------------------------------------------------------------------- report


def _spread(s: Summary) -> str:
    return f"{s['median']:.2f} ({s['p10']:.2f}-{s['p90']:.2f})"


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    cfg = meta["config"]
    ns = [str(n) for n in cfg["workers"]]
    tasks, ratios = result["tasks"], result["task_ratios"]
    lines = [
        f"leakguard {meta['leakguard']} scaling benchmark: Python {meta['python']}, {meta['platform']}, "
        f"{meta['cpus']} CPUs, spawn, load {meta['load_before']:.2f} -> {meta['load_after']:.2f}, "
        f"{meta['seconds']:.0f} s{', --quick' if meta['quick'] else ''}",
        f"medians of {cfg['reps']} repetitions (p10-p90); ratio = leakguard.Pool / multiprocessing.Pool, "
        "paired per repetition (< 1: leakguard is cheaper)",
        "",
        f"Tiny tasks: map of {cfg['map_items']:,} ints (chunksize {cfg['chunksize']}), apply_async().get() one at a "
        f"time ({cfg['round_trips']:,}), {cfg['in_flight']:,} apply_async in flight; us per task, k per second",
        f"  {'workers':>7}  {'map lg':>8} {'map mp':>8} {'ratio':>18} {'lg k/s':>7} {'mp k/s':>7}"
        f"  {'trip lg':>8} {'trip mp':>8} {'ratio':>18}  {'flight lg':>9} {'flight mp':>9} {'ratio':>18}"
        f" {'lg k/s':>7} {'mp k/s':>7}",
    ]
    for n in ns:
        lg, mp, r = tasks[LEAKGUARD][n], tasks[ANCHOR][n], ratios[n]
        lines.append(
            f"  {n:>7}  {lg['map_us']['median']:8.2f} {mp['map_us']['median']:8.2f} {_spread(r['map_us']):>18}"
            f" {1e3 / lg['map_us']['median']:7.0f} {1e3 / mp['map_us']['median']:7.0f}"
            f"  {lg['round_trip_us']['median']:8.1f} {mp['round_trip_us']['median']:8.1f}"
            f" {_spread(r['round_trip_us']):>18}"
            f"  {lg['in_flight_us']['median']:9.2f} {mp['in_flight_us']['median']:9.2f}"
            f" {_spread(r['in_flight_us']):>18}"
            f" {1e3 / lg['in_flight_us']['median']:7.1f} {1e3 / mp['in_flight_us']['median']:7.1f}"
        )
    mem, mem_ratios = result["memory"], result["memory_ratios"]
    impls = [impl for impl in (LEAKGUARD, ANCHOR, LOKY) if impl in mem]
    short = {LEAKGUARD: "lg", ANCHOR: "mp", LOKY: "loky"}
    lines += [
        "",
        "Memory per worker, after a task: USS (RSS) in MiB, median over the workers; ratio of the USS, paired per "
        "repetition; leakguard's other processes (the guardian): how many, and their total USS",
        f"  {'workers':>7}  "
        + "  ".join(f"{short[impl] + ' USS (RSS)':>16}" for impl in impls)
        + "  "
        + "  ".join(f"{'lg / ' + short[impl]:>18}" for impl in impls[1:])
        + f"  {'lg others':>14}",
    ]
    for n in ns:
        cells = [f"{mem[i][n]['uss_mib']['median']:.1f} ({mem[i][n]['rss_mib']['median']:.1f})" for i in impls]
        shares = [_spread(mem_ratios[n][i]) for i in impls[1:]]
        others = mem[LEAKGUARD][n]
        lines.append(
            f"  {n:>7}  "
            + "  ".join(f"{c:>16}" for c in cells)
            + "  "
            + "  ".join(f"{r:>18}" for r in shares)
            + f"  {others['others']['median']:3.0f}: {others['others_uss_mib']['median']:5.1f} MiB"
        )
    if LOKY not in mem:
        lines.append(f"  loky: {meta['loky']}")
    starts, start_ratios = result["startup"], result["startup_ratios"]
    lines += [
        "",
        "Start-up: start n workers, run one task, close, join (ms)",
        f"  {'workers':>7}  {'leakguard':>10} {'mp.Pool':>10}  {'ratio (p10-p90)':>18}",
    ]
    for n in ns:
        lines.append(
            f"  {n:>7}  {starts[LEAKGUARD][n]['median']:10.1f} {starts[ANCHOR][n]['median']:10.1f}"
            f"  {_spread(start_ratios[n]):>18}"
        )
    lines += ["", "Sweep (bench_foundation.py):"]
    sweep = result.get("sweep")
    if not sweep:
        lines.append(
            "  not read: run bench/bench_foundation.py --json FILE, then this script with --sweep-json FILE "
            "(or see its own scaling table)"
        )
    else:
        lines.append(
            f"  {'entries':>8}  {'orphaned ms':>12} {'us/entry':>9} {'unlink floor ms':>16} {'ratio':>6}"
            f" {'live owner ms':>14}"
        )
        for size in sweep:
            lines.append(
                f"  {size['entries']:>8,}  {size['orphaned_ms']:12.1f} {size['orphaned_us_per_entry']:9.2f}"
                f" {size['floor_ms']:16.1f} {size['orphaned_to_floor']:6.2f} {size['live_ms']:14.1f}"
            )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Three panels against the number of workers: per-task time, start-up, memory per worker."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ns = result["meta"]["config"]["workers"]
    keys = [str(n) for n in ns]
    colours = {LEAKGUARD: "tab:blue", ANCHOR: "tab:orange", LOKY: "tab:green"}
    fig, (ax_task, ax_start, ax_mem) = plt.subplots(1, 3, figsize=(15, 4.5))
    for impl in (LEAKGUARD, ANCHOR):
        by_n = result["tasks"][impl]
        for key, style, what in (
            ("round_trip_us", "-o", "round trip"),
            ("in_flight_us", "--s", "in flight"),
            ("map_us", ":^", "map, per item"),
        ):
            ax_task.plot(
                ns, [by_n[k][key]["median"] for k in keys], style, color=colours[impl], label=f"{LABELS[impl]}, {what}"
            )
        start = result["startup"][impl]
        ax_start.errorbar(
            ns,
            [start[k]["median"] for k in keys],
            yerr=[
                [start[k]["median"] - start[k]["p10"] for k in keys],
                [start[k]["p90"] - start[k]["median"] for k in keys],
            ],
            fmt="-o",
            capsize=3,
            color=colours[impl],
            label=LABELS[impl],
        )
    for impl, by_n in result["memory"].items():
        ax_mem.plot(ns, [by_n[k]["uss_mib"]["median"] for k in keys], "-o", color=colours[impl], label=LABELS[impl])
    ax_task.set(title="Tiny tasks", ylabel="microseconds per task", yscale="log")
    ax_start.set(title="Start n workers, one task, close, join", ylabel="milliseconds", ylim=(0, None))
    ax_mem.set(title="Memory per worker (USS)", ylabel="MiB", ylim=(0, None))
    for ax in (ax_task, ax_start, ax_mem):
        ax.set(xlabel="workers", xscale="log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    meta = result["meta"]
    fig.suptitle(
        f"leakguard {meta['leakguard']}: cost against the number of workers "
        f"({meta['cpus']} CPUs, Python {meta['python']}, medians of {meta['config']['reps']})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, 2 repetitions, small sizes")
    parser.add_argument("--reps", type=int, metavar="N", help="repetitions of every measurement")
    parser.add_argument("--workers", metavar="N,N,...", help="the worker counts (default 1,2,4,8,16)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the figures into FILE.png (needs matplotlib)")
    parser.add_argument("--sweep-json", metavar="FILE", help="the JSON of bench_foundation.py --json, for its sweep")
    parser.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.reps is not None:
        if args.reps < 1:
            parser.error("--reps must be at least 1")
        cfg = dataclasses.replace(cfg, reps=args.reps)
    if args.workers is not None:
        try:
            workers = tuple(int(n) for n in args.workers.split(","))
        except ValueError:
            parser.error(f"--workers takes counts separated by commas, like 1,2,4; got {args.workers!r}")
        if not workers or min(workers) < 1:
            parser.error("--workers: every count must be at least 1")
        cfg = dataclasses.replace(cfg, workers=workers)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # see measure()
    if args.child:
        return child_main(cfg, args.child, args.quick)

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install -e '.[bench]'")
    sweep = read_sweep(args.sweep_json) if args.sweep_json else None  # a bad file fails before the run
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)
    root = tempfile.mkdtemp(prefix="leakguard-bench-scaling-")
    problems: list[str] = []
    forward = [
        *(["--quick"] if args.quick else []),
        "--reps",
        str(cfg.reps),
        "--workers",
        ",".join(map(str, cfg.workers)),
    ]
    try:
        result = measure(forward, root, secrets.token_hex(8), problems)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if result is not None:
        if sweep is not None:
            result["sweep"] = sweep
        print(render(result))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        if args.plot:
            plot(result, args.plot)
            print(f"\nfigure: {args.plot}")
    for problem in problems:
        print(f"bench_scaling: ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
