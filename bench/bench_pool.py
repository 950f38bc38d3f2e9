"""What ``leakguard.Pool`` costs beside ``multiprocessing.Pool``, ``ProcessPoolExecutor``
and the pools a user might pick instead (loky, joblib, mpire, billiard).

Seven workloads, each run in the same run on every implementation (2 workers, spawn
start method, or loky's own for loky and joblib). Within a workload the implementations take turns
round by round, in an order that rotates, so that the machine's noise hits them alike.
Each round gives one time per implementation and a ratio of each time to the anchor's
(``multiprocessing.Pool``) in that round; the table shows medians with p10/p90:

1. shared_slices: the sum of 16 slices of a 400 MB float64 array. leakguard gets the
   slices of a SharedArray (they travel by name); the anchor and the executor get the
   same slices of a plain array (pickled). Target: leakguard 20x faster than the anchor.
2. plain_slices: the same, with the plain array's slices for all three (leakguard sends
   arrays of ``share_threshold`` bytes or more through shared memory by itself). 3x.
3. large_results: 16 tasks each return a 25 MB array; the caller sums each one. 3x.
4. map_small: ``map`` of a trivial function over 200,000 ints, default chunksize. 1x.
5. imap_small: ``imap`` of a trivial function over 20,000 ints, chunksize 1. 1x.
6. apply_roundtrip: ``apply_async(...).get()``, one at a time, 2,000 per round; the
   time per round trip. At most a third of the anchor's.
7. startup: start a 2-worker pool, run one task, close and join. At most 1.5x the
   anchor's time.

The executor does the nearest equivalent: ``map`` with the anchor's default chunksize,
``submit().result()``, ``shutdown(wait=True)``. In 1-6 every round starts a fresh pool,
waits until each worker has run a task, and times only the workload; closing the pool
is not timed either. A missed target is reported in the table, not in the exit code.

The peers (peers.py says what each one's calls are) take their turns in the same
rotation, where the workload applies to them; the table shows each one's time and
leakguard's ratio to the best of them, round by round. One that is not installed
(``pip install -e '.[bench]'``) is reported as such. On shared_slices joblib gets the
slices of a memmap it made of the array beforehand (``joblib.dump``, then ``load`` with
``mmap_mode="r"``): joblib's way of sharing an array once, as the SharedArray is
leakguard's. The round trip (6) is also measured on its floor: a bare
``multiprocessing.connection.Pipe`` to one spawned process that runs the same task
tuple and sends the result back; target: leakguard within 2x of it.

The three data workloads (1-3) are measured twice more:

- with named blocks too (``LEAKGUARD_NAMED_BLOCKS=1``: a fourth implementation in the same
  rotation), on the same /dev/shm: anonymous blocks (the default on Linux) should cost at
  most 10 % more than named ones;
- in a mount namespace whose /dev/shm is a 64 MiB tmpfs, Docker's default (root only; the
  run says why it is skipped otherwise), beside the same two anchors: there a named block of
  these sizes does not fit at all, and leakguard's anonymous blocks should keep the targets.

Usage::

    python bench/bench_pool.py [--quick] [--rounds N] [--only WORKLOAD ...] [--peers all|none|NAME,...]
                               [--json FILE]

The measurements run in a child process of its own session with its own journal folder
(LEAKGUARD_DIR, in a fresh temporary folder). When it is done (or fails, or the run is
interrupted), this process waits for every process the run started to exit, sweeps
the folder, and checks that /dev/shm is exactly as it found it; if it is not, it says
what changed and exits with 1. On a shared machine, run it in a private /dev/shm::

    unshare -m --propagation private sh -c \\
        'mount -t tmpfs -o size=4g tmpfs /dev/shm && python bench/bench_pool.py'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import peers
import psutil
from benchkit import PoolRunner, check, paired_ratios, raise_exit, signals_ignored, summarise
from pool_tasks import task_full, task_inc, task_pid_with_numpy, task_sum

import leakguard

# The repository root, for stress.observe: the one scan of a run's marked processes.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress.observe import marked

SHM = "/dev/shm"
WORKERS = 2
START_METHOD = "spawn"
PARTS = 16  # slices summed (workloads 1, 2) and results returned (3) per round
WARM_TASK_SECONDS = 0.02  # long enough that one worker cannot take every warm-up task
READY_TIMEOUT = 120.0  # seconds for a fresh pool's workers to run their first task

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Config:
    rounds: int
    warmup: int  # untimed rounds first, in every workload
    array_bytes: int  # the float64 array whose PARTS slices are summed
    result_bytes: int  # each of the PARTS results
    map_items: int
    imap_items: int
    round_trips: int  # apply_async().get() per round


FULL = Config(
    rounds=10,
    warmup=1,
    array_bytes=400_000_000,
    result_bytes=25_000_000,
    map_items=200_000,
    imap_items=20_000,
    round_trips=2_000,
)
# Arrays stay above the default share_threshold (1 MiB), so the same paths are taken.
QUICK = Config(
    rounds=2,
    warmup=0,
    array_bytes=32_000_000,
    result_bytes=2_000_000,
    map_items=20_000,
    imap_items=2_000,
    round_trips=200,
)

IMPLS = [
    ("multiprocessing", "multiprocessing.Pool (anchor)"),
    ("leakguard", "leakguard.Pool"),
    ("executor", "ProcessPoolExecutor"),
]
ANCHOR = IMPLS[0][0]
LEAKGUARD = "leakguard"
NAMED = "leakguard-named"  # leakguard.Pool with named blocks (LEAKGUARD_NAMED_BLOCKS=1)
NAMED_IMPL = (NAMED, "leakguard.Pool, named blocks")
NAMED_MAX_RATIO = 1.10  # anonymous blocks' time, at most this fraction of named ones'
SMALL_SHM = "64m"  # Docker's default /dev/shm
FLOOR = "floor"  # the round trip's floor: a bare Pipe to one spawned process (peers.on_pipe)
FLOOR_IMPL = (FLOOR, "Pipe ping-pong (floor)")
FLOOR_MAX_RATIO = 2.0  # leakguard's round trip, at most this multiple of the floor's


# ---------------------------------------------------------------------------- the pools


class Runner(Protocol):
    """One pool of one implementation, behind the calls the workloads make."""

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]: ...

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]: ...

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any: ...

    def close(self) -> None:
        """No more work: wait for the workers to exit."""

    def abort(self) -> None:
        """Something failed: stop now."""


def default_chunksize(n: int) -> int:
    return peers.default_chunksize(n, WORKERS)


class ExecutorRunner:
    """``ProcessPoolExecutor``'s nearest equivalents (its own default chunksize is 1)."""

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self.executor = executor

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        return list(self.executor.map(func, items, chunksize=chunksize or default_chunksize(len(items))))

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return self.executor.map(func, items, chunksize=chunksize)

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self.executor.submit(func, arg).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def abort(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def blocks_for(impl: str) -> Iterator[None]:
    """While ``impl`` runs: named blocks for NAMED (the pool's process, and so its workers),
    the default (anonymous, on Linux) for every other."""
    old = os.environ.get("LEAKGUARD_NAMED_BLOCKS")
    os.environ["LEAKGUARD_NAMED_BLOCKS"] = "1" if impl == NAMED else ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["LEAKGUARD_NAMED_BLOCKS"]
        else:
            os.environ["LEAKGUARD_NAMED_BLOCKS"] = old


def start(impl: str) -> Runner:
    if impl in (LEAKGUARD, NAMED):
        return PoolRunner(leakguard.Pool(WORKERS, start_method=START_METHOD))
    if impl in peers.PEER_KEYS:
        return peers.start(impl, WORKERS)
    ctx = multiprocessing.get_context(START_METHOD)
    if impl == ANCHOR:
        return PoolRunner(ctx.Pool(WORKERS))
    return ExecutorRunner(ProcessPoolExecutor(WORKERS, mp_context=ctx))


def wait_until_up(runner: Runner) -> None:
    """Until every worker has run a task with numpy imported: no worker's start-up, nor its
    import of numpy, may land in a timed region (pool_tasks.task_pid_with_numpy)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while len(set(runner.map(task_pid_with_numpy, [WARM_TASK_SECONDS] * WORKERS, 1))) < WORKERS:
        check(time.monotonic() < deadline, f"the pool's {WORKERS} workers did not all start in {READY_TIMEOUT} s")


def timed_on_pool(impl: str, body: Callable[[Runner], Any]) -> tuple[float, Any]:
    """Start a pool and wait for its workers, then time ``body`` alone (seconds)."""
    with blocks_for(impl):
        runner = start(impl)
        try:
            wait_until_up(runner)
            gc.collect()
            t0 = time.perf_counter()
            value = body(runner)  # what it made and did not return is dropped inside the timing
            elapsed = time.perf_counter() - t0
        except BaseException:
            runner.abort()
            raise
        runner.close()
    return elapsed, value


# ---------------------------------------------------------------------------- workloads

Measure = Callable[[str], float]  # an implementation's key -> one round's time, in the workload's unit


@dataclass(frozen=True)
class Workload:
    key: str
    unit: str
    max_ratio: float  # the most leakguard's time may be, as a fraction of the anchor's
    target: str
    title: Callable[[Config], str]
    setup: Callable[[Config], contextlib.AbstractContextManager[Measure]]
    data: bool = False  # moves arrays: measured with named blocks too, and in a 64 MiB /dev/shm


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:g} MB"


def _parts(array: Array) -> list[Array]:
    step = len(array) // PARTS
    return [array[i * step : (i + 1) * step] for i in range(PARTS)]


def _sums_on_pool(inputs: dict[str, list[Array]], expected: list[float]) -> Measure:
    def measure(impl: str) -> float:
        elapsed, sums = timed_on_pool(impl, lambda runner: runner.map(task_sum, inputs[impl], 1))
        check(sums == expected, f"{impl}: wrong sums {sums[:3]}..., expected {expected[:3]}...")
        return elapsed * 1000

    return measure


@contextlib.contextmanager
def shared_slices(cfg: Config) -> Iterator[Measure]:
    # Whole numbers below 2**53: every order of summation gives the same exact sums.
    plain = np.arange(cfg.array_bytes // 8, dtype=np.float64)
    shared = leakguard.share(plain)
    named = leakguard.share(plain, named=True) if _with_named else None
    try:
        with contextlib.ExitStack() as stack:
            expected = [float(part.sum()) for part in _parts(plain)]
            inputs = {ANCHOR: _parts(plain), LEAKGUARD: _parts(shared), "executor": _parts(plain)}
            if named is not None:
                inputs[NAMED] = _parts(named)
            for key in _peers:  # the others pickle the plain array's slices; joblib shares its own way
                inputs[key] = _parts(stack.enter_context(peers.joblib_memmap(plain)) if key == "joblib" else plain)
            yield _sums_on_pool(inputs, expected)
    finally:
        leakguard.free(shared)
        if named is not None:
            leakguard.free(named)
        del plain, shared, named  # (and `inputs` with this frame): the arrays are gone before the next workload


@contextlib.contextmanager
def plain_slices(cfg: Config) -> Iterator[Measure]:
    plain = np.arange(cfg.array_bytes // 8, dtype=np.float64)
    try:
        parts = _parts(plain)
        expected = [float(part.sum()) for part in parts]
        yield _sums_on_pool(dict.fromkeys([*(key for key, _ in [*IMPLS, NAMED_IMPL]), *_peers], parts), expected)
    finally:
        del plain


def _sum_each(items: list[tuple[int, int]]) -> Callable[[Runner], list[int]]:
    def body(runner: Runner) -> list[int]:
        results = runner.map(task_full, items, 1)
        return [int(r.sum()) for r in results]

    return body


@contextlib.contextmanager
def large_results(cfg: Config) -> Iterator[Measure]:
    n = cfg.result_bytes // 8
    items = [(i, n) for i in range(PARTS)]
    expected = [i * n for i in range(PARTS)]

    def measure(impl: str) -> float:
        elapsed, totals = timed_on_pool(impl, _sum_each(items))
        check(totals == expected, f"{impl}: wrong sums of the results {totals[:3]}...")
        return elapsed * 1000

    yield measure


@contextlib.contextmanager
def map_small(cfg: Config) -> Iterator[Measure]:
    items = range(cfg.map_items)
    expected = list(range(1, cfg.map_items + 1))

    def measure(impl: str) -> float:
        elapsed, out = timed_on_pool(impl, lambda runner: runner.map(task_inc, items, None))
        check(out == expected, f"{impl}: wrong map result")
        return elapsed * 1000

    yield measure


@contextlib.contextmanager
def imap_small(cfg: Config) -> Iterator[Measure]:
    items = range(cfg.imap_items)
    expected = list(range(1, cfg.imap_items + 1))

    def measure(impl: str) -> float:
        elapsed, out = timed_on_pool(impl, lambda runner: list(runner.imap(task_inc, items, 1)))
        check(out == expected, f"{impl}: wrong imap result")
        return elapsed * 1000

    yield measure


@contextlib.contextmanager
def apply_roundtrip(cfg: Config) -> Iterator[Measure]:
    n = cfg.round_trips

    def body(runner: Runner | peers.PipeFloor) -> int:
        wrong = 0
        for i in range(n):
            if runner.apply(task_inc, i) != i + 1:
                wrong += 1
        return wrong

    def measure(impl: str) -> float:
        if impl == FLOOR:
            elapsed, wrong = peers.on_pipe(body, lambda floor: floor.apply(task_inc, 0))
        else:
            elapsed, wrong = timed_on_pool(impl, body)
        check(wrong == 0, f"{impl}: {wrong} of {n} round trips returned a wrong value")
        return elapsed * 1e6 / n

    yield measure


@contextlib.contextmanager
def startup(cfg: Config) -> Iterator[Measure]:
    def measure(impl: str) -> float:
        gc.collect()
        t0 = time.perf_counter()
        runner = start(impl)
        try:
            value = runner.apply(task_inc, 1)
        except BaseException:
            runner.abort()
            raise
        runner.close()
        elapsed = time.perf_counter() - t0
        check(value == 2, f"{impl}: the task returned {value!r}")
        return elapsed * 1000

    yield measure


WORKLOADS = [
    Workload(
        "shared_slices",
        "ms",
        1 / 20,
        "at least 20x faster",
        lambda c: (
            f"sum of {PARTS} slices of a {_mb(c.array_bytes)} float64 array; "
            "leakguard gets a SharedArray's slices, joblib a memmap's, the others a plain array's (pickled)"
        ),
        shared_slices,
        data=True,
    ),
    Workload(
        "plain_slices",
        "ms",
        1 / 3,
        "at least 3x faster",
        lambda c: f"sum of {PARTS} slices of a {_mb(c.array_bytes)} float64 array; a plain array for all",
        plain_slices,
        data=True,
    ),
    Workload(
        "large_results",
        "ms",
        1 / 3,
        "at least 3x faster",
        lambda c: f"{PARTS} results of {_mb(c.result_bytes)} each (numpy.full), returned; the caller sums each",
        large_results,
        data=True,
    ),
    Workload(
        "map_small",
        "ms",
        1.0,
        "at least 1.0x (no slower)",
        lambda c: (
            f"map of a trivial function over {c.map_items:,} ints, default chunksize "
            f"({default_chunksize(c.map_items):,})"
        ),
        map_small,
    ),
    Workload(
        "imap_small",
        "ms",
        1.0,
        "at least 1.0x (no slower)",
        lambda c: f"imap of a trivial function over {c.imap_items:,} ints, chunksize 1",
        imap_small,
    ),
    Workload(
        "apply_roundtrip",
        "us",
        1 / 3,
        "at most 1/3 of the time",
        lambda c: (
            f"apply_async(...).get() round trip, one at a time ({c.round_trips:,} per round); time per round trip"
        ),
        apply_roundtrip,
    ),
    Workload(
        "startup",
        "ms",
        1.5,
        "at most 1.5x the time",
        lambda c: (
            f"start a {WORKERS}-worker pool, run one task, close and join "
            "(the executor starts only the 1 worker it needs)"
        ),
        startup,
    ),
]
WORKLOAD_KEYS = [w.key for w in WORKLOADS]


# ---------------------------------------------------------------------------- the measuring child


def warm_up() -> None:
    """Once per run: the first pool of each kind pays for imports and the resource tracker."""
    for impl in [*(key for key, _ in IMPLS), *_peers]:
        runner = start(impl)
        try:
            wait_until_up(runner)
            check(runner.apply(task_inc, 1) == 2, f"{impl}: warm-up task failed")
        except BaseException:
            runner.abort()
            raise
        runner.close()


_with_named = False  # this run measures named blocks too (the child on the machine's /dev/shm)
_asked: list[str] = []  # the peers asked for (--peers)
_peers: list[str] = []  # those of them this run measures: the installed ones


def run_workload(workload: Workload, cfg: Config) -> dict[str, Any]:
    impls = [*IMPLS, NAMED_IMPL] if (_with_named and workload.data) else list(IMPLS)
    statuses = {key: peers.status(key, workload.key) if key in _asked else "not asked for" for key in peers.PEER_KEYS}
    impls += [(key, label) for key, label in peers.PEERS if statuses[key] == peers.MEASURED]
    if workload.key == "apply_roundtrip":
        impls.append(FLOOR_IMPL)
    times: dict[str, list[float]] = {key: [] for key, _ in impls}
    with workload.setup(cfg) as measure:
        for r in range(cfg.warmup + cfg.rounds):
            shift = r % len(impls)
            for impl, _ in impls[shift:] + impls[:shift]:
                value = measure(impl)
                if r >= cfg.warmup:
                    times[impl].append(value)
    gc.collect()
    ratios = {key: paired_ratios(times[key], times[ANCHOR]) for key, _ in impls if key != ANCHOR}
    found: dict[str, Any] = {
        "title": workload.title(cfg),
        "unit": workload.unit,
        "rounds": cfg.rounds,
        "warmup_rounds": cfg.warmup,
        "rows": {key: summarise(values) for key, values in times.items()},
        "ratios": ratios,
        "target": {"max_ratio": workload.max_ratio, "text": workload.target},
        "met": ratios[LEAKGUARD]["median"] <= workload.max_ratio,
        "peers": statuses,
    }
    measured = [key for key in peers.PEER_KEYS if key in times]
    if measured:
        # Per round: leakguard's time over the fastest peer's in that round.
        best = [min(times[key][i] for key in measured) for i in range(cfg.rounds)]
        found["best_peer"] = {
            **paired_ratios(times[LEAKGUARD], best),
            "fastest": min(measured, key=lambda key: found["rows"][key]["median"]),  # by median time
        }
    if FLOOR in times:
        to_floor = paired_ratios(times[LEAKGUARD], times[FLOOR])
        found["floor"] = {**to_floor, "max_ratio": FLOOR_MAX_RATIO, "met": to_floor["median"] <= FLOOR_MAX_RATIO}
    if NAMED in times:
        versus = paired_ratios(times[LEAKGUARD], times[NAMED])
        found["anonymous_vs_named"] = {
            **versus,
            "max_ratio": NAMED_MAX_RATIO,
            "met": versus["median"] <= NAMED_MAX_RATIO,
        }
    return found


def child_main(cfg: Config, keys: list[str], out_path: str, quick: bool, named: bool, asked: list[str]) -> int:
    global _with_named, _asked, _peers
    _with_named = named
    _asked = asked
    _peers = [key for key in asked if peers.installed(key)]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)  # the pools in flight are terminated on the way out
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results: dict[str, Any] = {}
    try:
        warm_up()
        for workload in WORKLOADS:
            if workload.key in keys:
                t0 = time.monotonic()
                results[workload.key] = run_workload(workload, cfg)
                print(f"bench_pool: {workload.key} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        peers.shutdown_all()  # loky and joblib keep an executor for reuse: not past the run
    result = {
        "meta": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "leakguard": leakguard.__version__,
            "platform": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 0,
            "workers": WORKERS,
            "start_method": START_METHOD,
            "peers": {key: version if key in asked else "not asked for" for key, version in peers.versions().items()},
            "quick": quick,
            "shm_bytes": _shm_size(),
            "config": dataclasses.asdict(cfg),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "seconds": time.monotonic() - started,
        },
        "workloads": results,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


# ---------------------------------------------------------------------------- the parent: run, clean up, check

_RUN_MARK = "LEAKGUARD_BENCH_POOL_RUN"  # in the environment of every process the run starts
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_children: list[subprocess.Popen[bytes]] = []


def shm_listing() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _shm_size() -> int:
    st = os.statvfs(SHM)
    return st.f_blocks * st.f_frsize


def _in_small_shm(command: list[str]) -> list[str]:
    """``command`` in a mount namespace of its own whose /dev/shm is a 64 MiB tmpfs."""
    mount = f'mount -t tmpfs -o size={SMALL_SHM},mode=1777 tmpfs {SHM} && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, *command]


def small_shm_unavailable() -> str:
    """Why no 64 MiB /dev/shm of our own can be had here, or ""."""
    if os.geteuid() != 0:
        return "it needs root, for a mount namespace with a 64 MiB tmpfs on /dev/shm"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(_in_small_shm(["true"]), capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"no mount namespace with a tmpfs on /dev/shm here: {probe.stderr.strip()}"
    return ""


def _spawn(args: list[str], folder: str, token: str, *, small_shm: bool = False) -> subprocess.Popen[bytes]:
    """Start the measuring child in its own session, ``folder`` as its LEAKGUARD_DIR (with
    ``small_shm``, in a mount namespace whose /dev/shm is 64 MiB).

    Stop signals are held back until the child is in ``_children`` (so that a Ctrl-C
    cannot lose it); the child inherits the blocked mask and unblocks it first thing.
    """
    command = [sys.executable, *(f"-W{w}" for w in sys.warnoptions), os.path.abspath(__file__), *args]
    if small_shm:
        command = _in_small_shm(command)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        proc = subprocess.Popen(
            command,
            env=dict(os.environ, LEAKGUARD_DIR=folder, **{_RUN_MARK: token}),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _children.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return proc


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Ask the child to stop (it terminates its pools), then kill its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def _run_processes(token: str) -> list[psutil.Process]:
    """Running processes the run started (workers, guardians, trackers), wherever they are now."""
    return marked(_RUN_MARK, token)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # the poll interval of a wait with a deadline
    return True


def _cleanup(root: str, folder: str, token: str, shm_before: set[str]) -> list[str]:
    """Stop the child, wait for its processes, sweep its folder, compare /dev/shm; returns problems."""
    problems: list[str] = []
    for proc in list(_children):
        _stop(proc, grace=60)
    if not _wait_for(lambda: not _run_processes(token), timeout=10):
        left = _run_processes(token)
        problems.append(f"the run left processes running: {[(p.pid, p.name()) for p in left]} (now killed)")
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=5)
    if os.path.isdir(folder):
        report = leakguard.sweep(folder=folder)
        if report.removed:
            names = [item.name for item in report.removed]
            problems.append(f"the run left {len(names)} objects behind (swept now): {names[:5]}")
        problems += [f"sweep of {folder}: {e.name}: {e.reason}" for e in report.errors]
        problems += [f"sweep of {folder} kept {e.name}: {e.reason}" for e in report.kept]
        left_files = os.listdir(folder)
        if left_files:
            problems.append(f"the run left files in its journal folder: {left_files[:5]}")
    shutil.rmtree(root, ignore_errors=True)
    if not _wait_for(lambda: shm_listing() == shm_before, timeout=10):
        now = shm_listing()
        problems.append(
            f"{SHM} is not as the run found it: added {sorted(now - shm_before)[:20]}, "
            f"removed {sorted(shm_before - now)[:20]} (if other processes use this {SHM}, "
            "run the benchmark in a private one: unshare -m, see the docstring)"
        )
    return problems


# ---------------------------------------------------------------------------- report


def _speed(ratio: float) -> str:
    return f"{1 / ratio:.1f}x faster" if ratio <= 1 else f"{ratio:.2f}x slower"


def _spread(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.3f} ({ratio['p10']:.3f}-{ratio['p90']:.3f})"


def _workload_lines(number: str, key: str, wl: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"{number}. {key}: {wl['title']}",
        f"  {'':<32} {'median':>10} {'p10':>10} {'p90':>10}  ratio to anchor (p10-p90)",
    ]
    statuses = wl.get("peers", {})
    for impl, label in [*IMPLS, NAMED_IMPL, *peers.PEERS, FLOOR_IMPL]:
        if impl not in wl["rows"]:
            if statuses.get(impl, "not asked for") != "not asked for":
                lines.append(f"  {label:<32} {statuses[impl]:>32}")
            continue
        row = wl["rows"][impl]
        ratio = wl["ratios"].get(impl)
        r = "1.000 (anchor)" if ratio is None else _spread(ratio)
        speed = "" if ratio is None else f"  {_speed(ratio['median'])}"
        lines.append(
            f"  {label:<32} {row['median']:10.2f} {row['p10']:10.2f} {row['p90']:10.2f} {wl['unit']}  {r}{speed}"
        )
    target = wl["target"]
    lines.append(
        f"  target: leakguard {target['text']} (ratio <= {target['max_ratio']:.3f}): {'met' if wl['met'] else 'MISSED'}"
    )
    best = wl.get("best_peer")
    if best is not None:
        lines.append(
            f"  leakguard / the fastest peer in each round: {_spread(best)}  {_speed(best['median'])} "
            f"(fastest by median: {best['fastest']})"
        )
    floor = wl.get("floor")
    if floor is not None:
        lines.append(
            f"  leakguard / the Pipe floor: {_spread(floor)} (target <= {floor['max_ratio']:.1f}): "
            f"{'met' if floor['met'] else 'MISSED'}"
        )
    versus = wl.get("anonymous_vs_named")
    if versus is not None:
        lines.append(
            f"  anonymous / named blocks: {_spread(versus)} (target <= {versus['max_ratio']:.2f}): "
            f"{'met' if versus['met'] else 'MISSED'}"
        )
    return lines


def _summary_line(key: str, wl: dict[str, Any]) -> str:
    target = wl["target"]
    mine = wl["ratios"][LEAKGUARD]
    return (
        f"  {key:<28} {target['text']:<26} {_spread(mine):<20}  {_speed(mine['median']):<13} "
        f"<= {target['max_ratio']:.3f}  {'met' if wl['met'] else 'MISSED'}"
    )


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    cfg = meta["config"]
    lines = [
        f"leakguard {meta['leakguard']} pool benchmark: Python {meta['python']}, numpy {meta['numpy']}, "
        f"{meta['platform']}, {meta['cpus']} CPUs, {meta['workers']} workers, {meta['start_method']}, "
        f"load {meta['load_before']:.2f} -> {meta['load_after']:.2f}, {meta['seconds']:.0f} s"
        f"{', --quick' if meta['quick'] else ''}",
        f"{cfg['rounds']} rounds per workload (+{cfg['warmup']} untimed), implementations interleaved; "
        "ratio = time / multiprocessing.Pool's time in the same round (< 1: faster)",
        f"/dev/shm: this machine's ({meta['shm_bytes'] / 2**20:,.0f} MiB)",
        "peers: " + ", ".join(f"{key} {version}" for key, version in meta.get("peers", {}).items()),
    ]
    summary = []
    versus = []
    against_peers = []
    for number, (key, wl) in enumerate(result["workloads"].items(), 1):
        lines += _workload_lines(str(number), key, wl)
        summary.append(_summary_line(key, wl))
        if "anonymous_vs_named" in wl:
            v = wl["anonymous_vs_named"]
            versus.append(
                f"  {key:<28} {'anonymous within 10% of named':<26} {_spread(v):<20}  {'':<13} "
                f"<= {v['max_ratio']:.3f}  {'met' if v['met'] else 'MISSED'}"
            )
        if "floor" in wl:
            f = wl["floor"]
            versus.append(
                f"  {key:<28} {'within 2x of the Pipe floor':<26} {_spread(f):<20}  {'':<13} "
                f"<= {f['max_ratio']:.3f}  {'met' if f['met'] else 'MISSED'}"
            )
        if "best_peer" in wl:
            b = wl["best_peer"]
            against_peers.append(f"  {key:<28} {_spread(b):<20}  {_speed(b['median']):<13}  {b['fastest']}")
    met = sum(1 for wl in result["workloads"].values() if wl["met"])
    met += sum(1 for wl in result["workloads"].values() if wl.get("anonymous_vs_named", {}).get("met"))
    met += sum(1 for wl in result["workloads"].values() if wl.get("floor", {}).get("met"))
    small = result.get("small_shm")
    if small is not None and "skipped" in small:
        lines += ["", f"In a {SMALL_SHM[:-1]} MiB /dev/shm (Docker's default): skipped, {small['skipped']}"]
    elif small is not None:
        lines += ["", f"In a {SMALL_SHM[:-1]} MiB /dev/shm (Docker's default; named blocks do not fit there):"]
        for number, (key, wl) in enumerate(small["workloads"].items(), 1):
            lines += _workload_lines(f"{number}'", key, wl)
            summary.append(_summary_line(f"{key} (64 MiB /dev/shm)", wl))
            met += wl["met"]
    lines += [
        "",
        "Targets: leakguard.Pool against multiprocessing.Pool (met: the median per-round ratio is within the limit)",
        f"  {'workload':<28} {'target':<26} {'ratio (p10-p90)':<20}  {'':<13} {'limit':<8}  verdict",
        *summary,
        *versus,
        f"  {met} of {len(summary) + len(versus)} targets met",
    ]
    if against_peers:
        lines += [
            "",
            "Against the peers: leakguard.Pool / the fastest peer in each round (no target; < 1: leakguard is faster)",
            f"  {'workload':<28} {'ratio (p10-p90)':<20}  {'':<13}  fastest peer by median",
            *against_peers,
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds, small sizes (a smoke test; under a minute)")
    parser.add_argument("--rounds", type=int, metavar="N", help="timed rounds per workload")
    parser.add_argument(
        "--only", action="append", choices=WORKLOAD_KEYS, metavar="WORKLOAD", help=f"one of {', '.join(WORKLOAD_KEYS)}"
    )
    parser.add_argument(
        "--peers",
        default="all",
        metavar="all|none|NAME,...",
        help=f"the peers to measure beside leakguard, of {', '.join(peers.PEER_KEYS)} (default: all)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--named", action="store_true", help=argparse.SUPPRESS)  # the child: named blocks too
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    asked = {"all": peers.PEER_KEYS, "none": []}.get(args.peers, args.peers.split(","))
    unknown = sorted(set(asked) - set(peers.PEER_KEYS))
    if unknown:
        parser.error(f"--peers: no peer named {', '.join(unknown)}; the peers are {', '.join(peers.PEER_KEYS)}")
    cfg = QUICK if args.quick else FULL
    if args.rounds is not None:
        cfg = dataclasses.replace(cfg, rounds=args.rounds)
    keys = args.only or WORKLOAD_KEYS
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # see _spawn()
    if args.child:
        return child_main(cfg, keys, args.child, args.quick, args.named, asked)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)
    shm_before = shm_listing()
    root = tempfile.mkdtemp(prefix="leakguard-bench-pool-")
    folder = os.path.join(root, "journal")
    token = secrets.token_hex(8)
    forward = [*(["--quick"] if args.quick else []), "--rounds", str(cfg.rounds), "--peers", ",".join(asked) or "none"]
    data_keys = [w.key for w in WORKLOADS if w.data and w.key in keys]
    result: dict[str, Any] | None = None
    problems: list[str] = []
    try:
        # On this machine's /dev/shm: every workload, the data ones with named blocks too.
        result = _measure(["--named", *forward, *_only(keys)], root, "result.json", folder, token, problems)
        if result is not None and data_keys:
            # In a 64 MiB /dev/shm: the data workloads, anonymous blocks only (named ones do not fit).
            why = small_shm_unavailable()
            if why:
                result["small_shm"] = {"skipped": why}
            else:
                small = _measure(
                    [*forward, *_only(data_keys)], root, "small.json", folder, token, problems, small_shm=True
                )
                result["small_shm"] = {"skipped": "the measuring process failed"} if small is None else small
    finally:
        with signals_ignored():
            problems += _cleanup(root, folder, token, shm_before)
    if result is not None:
        print(render(result))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
    for problem in problems:
        print(f"bench_pool: ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _only(keys: list[str]) -> list[str]:
    return [arg for key in keys for arg in ("--only", key)]


def _measure(
    args: list[str], root: str, name: str, folder: str, token: str, problems: list[str], *, small_shm: bool = False
) -> dict[str, Any] | None:
    """Run one measuring child; its result, or None (and a problem) if it failed."""
    out_path = os.path.join(root, name)
    proc = _spawn(["--child", out_path, *args], folder, token, small_shm=small_shm)
    code = proc.wait()
    _children.remove(proc)
    if code != 0:
        where = " in a 64 MiB /dev/shm" if small_shm else ""
        problems.append(f"the measuring process{where} failed (exit {code}); its error is above")
        return None
    with open(out_path, encoding="utf-8") as f:
        found: dict[str, Any] = json.load(f)
    return found


if __name__ == "__main__":
    sys.exit(main())
