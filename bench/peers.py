"""The pools a user might pick instead of leakguard's, and the floor of a round trip.

Each peer sits behind the calls bench_pool.py's workloads make (``map``, ``imap``,
``apply``, ``close``, ``abort``), with its nearest equivalent of each:

- loky: ``loky.get_reusable_executor`` (loky's own start method, spawn-like); a fresh
  executor per pool, shut down on close (loky would keep it warm: the benchmark starts
  every implementation afresh alike).
- joblib: ``joblib.Parallel`` with the loky backend and its default memmapping of arrays
  over 1 MB (``max_nbytes="1M"``); ``batch_size`` is the chunksize. Its executor (joblib
  keeps one per process) is terminated on close, which also removes its memmap folders.
  joblib has no call that runs one task on its own: a round trip is not measured on it.
- mpire: ``mpire.WorkerPool`` (spawn, ``keep_alive=True`` so that its workers outlive one
  ``map``), numpy outputs not concatenated.
- billiard (Celery's fork of multiprocessing): ``billiard.get_context("spawn").Pool``.

A peer that is not installed is reported as such; ``pip install -e '.[bench]'`` installs
them all. The floor (``on_pipe``): a bare ``multiprocessing.connection.Pipe`` between this
process and one spawned process, which receives the task tuple ``(func, args, kwargs)``,
calls it, and sends back ``(True, result)``: what any pool must do for one task, and
nothing else.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from benchkit import PoolRunner

START_METHOD = "spawn"
# (key, label): the order of the columns
PEERS: list[tuple[str, str]] = [
    ("loky", "loky get_reusable_executor"),
    ("joblib", "joblib Parallel (loky, memmap)"),
    ("mpire", "mpire WorkerPool"),
    ("billiard", "billiard Pool"),
]
PEER_KEYS = [key for key, _ in PEERS]
NOT_APPLICABLE = {("joblib", "apply_roundtrip")}  # (peer, workload): no call runs one task alone
# Where joblib puts its own memmaps: /dev/shm when it has this much room, else the temporary folder
# (joblib/_memmapping_reducer.py, SYSTEM_SHARED_MEM_FS_MIN_SIZE).
JOBLIB_SHM_MIN_BYTES = 2_000_000_000

MEASURED = "measured"
NOT_INSTALLED = "not installed"
NOT_APPLIES = "not applicable"


def installed(key: str) -> bool:
    return importlib.util.find_spec(key) is not None


def versions() -> dict[str, str]:
    """Each peer's version, or "not installed"."""
    found = {}
    for key in PEER_KEYS:
        try:
            found[key] = importlib.metadata.version(key)
        except importlib.metadata.PackageNotFoundError:
            found[key] = NOT_INSTALLED
    return found


def status(key: str, workload: str) -> str:
    if not installed(key):
        return NOT_INSTALLED
    if (key, workload) in NOT_APPLICABLE:
        return NOT_APPLIES
    return MEASURED


def default_chunksize(n: int, workers: int) -> int:
    """``multiprocessing.Pool.map``'s default: about four chunks per worker."""
    chunksize, extra = divmod(n, workers * 4)
    return chunksize + (1 if extra else 0)


# ---------------------------------------------------------------------------- the peers


class LokyRunner:
    def __init__(self, workers: int) -> None:
        import loky

        self.workers = workers
        self.executor = loky.get_reusable_executor(max_workers=workers)

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        chunksize = chunksize or default_chunksize(len(items), self.workers)
        return list(self.executor.map(func, items, chunksize=chunksize))

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return iter(self.executor.map(func, items, chunksize=chunksize))

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self.executor.submit(func, arg).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def abort(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)


def _joblib_terminate(kill: bool) -> None:
    """Shut joblib's executor down (it keeps one per process, for reuse) and remove its
    memmap folders. joblib keeps it in its vendored loky's ``_executor``: no public call
    reaches it without making a new one first."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.terminate(kill_workers=kill)  # joblib.executor.MemmappingExecutor.terminate


class JoblibRunner:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def _parallel(self, batch_size: int, generator: bool = False) -> Any:
        import joblib

        return joblib.Parallel(
            n_jobs=self.workers, backend="loky", batch_size=batch_size, return_as="generator" if generator else "list"
        )

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        import joblib

        chunksize = chunksize or default_chunksize(len(items), self.workers)
        call = joblib.delayed(func)
        out: list[Any] = self._parallel(chunksize)(call(x) for x in items)
        return out

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        import joblib

        call = joblib.delayed(func)
        return iter(self._parallel(chunksize, generator=True)(call(x) for x in items))

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        """One task in a call of its own (start-up and warm-up only: see NOT_APPLICABLE)."""
        import joblib

        return self._parallel(1)([joblib.delayed(func)(arg)])[0]

    def close(self) -> None:
        _joblib_terminate(kill=False)

    def abort(self) -> None:
        _joblib_terminate(kill=True)


class MpireRunner:
    def __init__(self, workers: int) -> None:
        from mpire.pool import WorkerPool

        self.workers = workers
        self.pool = WorkerPool(n_jobs=workers, start_method=START_METHOD, keep_alive=True)

    @staticmethod
    def _args(items: Sequence[Any]) -> Sequence[Any]:
        # mpire passes a tuple item as the function's arguments: one that is the argument
        # itself goes in a tuple of its own (mpire's documented way).
        return [(x,) for x in items] if len(items) and isinstance(items[0], tuple) else items

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        chunksize = chunksize or default_chunksize(len(items), self.workers)
        out: list[Any] = self.pool.map(func, self._args(items), chunk_size=chunksize, concatenate_numpy_output=False)
        return out

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return iter(self.pool.imap(func, self._args(items), chunk_size=chunksize))

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self.pool.apply(func, (arg,))

    def close(self) -> None:
        self.pool.stop_and_join()

    def abort(self) -> None:
        self.pool.terminate()


class BilliardRunner(PoolRunner):
    def __init__(self, workers: int) -> None:
        import billiard

        super().__init__(billiard.get_context(START_METHOD).Pool(workers))


Peer = LokyRunner | JoblibRunner | MpireRunner | BilliardRunner
_RUNNERS: dict[str, Callable[[int], Peer]] = {
    "loky": LokyRunner,
    "joblib": JoblibRunner,
    "mpire": MpireRunner,
    "billiard": BilliardRunner,
}


def start(key: str, workers: int) -> Peer:
    return _RUNNERS[key](workers)


def shutdown_all() -> None:
    """At the end of a run: no executor that loky or joblib keep for reuse is left running."""
    if installed("loky"):
        from loky import reusable_executor as loky_reusable

        storage = getattr(loky_reusable, "_executor_storage", None)  # loky keeps one per thread
        executor = getattr(storage, "executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
    if installed("joblib"):
        _joblib_terminate(kill=True)


@contextlib.contextmanager
def joblib_memmap(array: Any) -> Iterator[Any]:
    """``array`` as joblib shares it: dumped once (``joblib.dump``), loaded as a read-only
    ``numpy.memmap`` whose slices joblib sends by reference; in /dev/shm where joblib would
    put its own memmaps. The file is removed on the way out."""
    import joblib

    st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    room = st is not None and st.f_bavail * st.f_frsize >= JOBLIB_SHM_MIN_BYTES + array.nbytes
    folder = tempfile.mkdtemp(prefix="leakguard-bench-joblib-", dir="/dev/shm" if room else None)
    try:
        path = os.path.join(folder, "array.pkl")
        joblib.dump(array, path)
        memmap = joblib.load(path, mmap_mode="r")
        yield memmap
        del memmap
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- the floor


def _answer(conn: Connection) -> None:
    """The far end of the floor: run each task tuple it receives, send its result back."""
    while True:
        message = conn.recv()
        if message is None:
            return
        func, args, kwargs = message
        conn.send((True, func(*args, **kwargs)))


class PipeFloor:
    """One spawned process at the end of a ``multiprocessing.connection.Pipe``."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, far = ctx.Pipe()
        self.proc = ctx.Process(target=_answer, args=(far,), name="PipeFloor", daemon=True)
        try:
            self.proc.start()
        finally:
            far.close()

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        self.conn.send((func, (arg,), {}))
        ok, value = self.conn.recv()
        return value if ok else None

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()
        self.conn.close()

    def abort(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def on_pipe(body: Callable[[PipeFloor], Any], warm: Callable[[PipeFloor], Any]) -> tuple[float, Any]:
    """Start the floor's far end, run ``warm`` on it untimed (it has started), then time
    ``body`` alone (seconds); stop it after."""
    floor = PipeFloor()
    try:
        warm(floor)
        t0 = time.perf_counter()
        value = body(floor)
        elapsed = time.perf_counter() - t0
    except BaseException:
        floor.abort()
        raise
    floor.close()
    return elapsed, value
