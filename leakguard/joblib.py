"""The ``"leakguard"`` joblib backend: ``joblib.Parallel`` on a ``leakguard.Pool``.

``register()`` adds the backend to joblib's registry; then
``Parallel(n_jobs=2, backend="leakguard")`` (or ``parallel_config(backend="leakguard", ...)``)
runs each batch of tasks on a pool whose lost worker costs one batch (``WorkerLostError``, or a
retry with ``retries=N``) and whose shared memory cannot outlive the job. Large numpy arguments,
also those inside joblib's batches, travel through the pool's journaled blocks, so joblib's
memmapping folders are never made. One pool lives from ``configure`` to ``terminate``: one
``Parallel`` call, or a ``with Parallel(...)`` block.

Inside a worker, a nested ``Parallel`` runs on threads (joblib's rule for the first level of
nesting), then sequentially: a worker never starts processes of its own.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Mapping
from typing import Any

from joblib import cpu_count
from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
    register_parallel_backend,
)

from ._errors import WorkerLostError
from ._pool.pool import Pool

__all__ = ["BACKEND_NAME", "POOL_OPTIONS", "LeakguardBackend", "register"]

BACKEND_NAME = "leakguard"

# Keyword arguments of leakguard.Pool a user may give to parallel_config / Parallel.
POOL_OPTIONS = frozenset(
    {
        "retries",
        "task_timeout",
        "start_method",
        "share_threshold",
        "max_memory_per_child",
        "maxtasksperchild",
        "initializer",
        "initargs",
    }
)
# What Parallel itself passes to configure() for its memmapping backends: not ours to act on,
# except max_nbytes, which stands in for share_threshold when that is not given.
_JOBLIB_KEYWORDS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose", "context"})


def _check_options(options: Mapping[str, Any], *, where: str) -> None:
    unknown = sorted(set(options) - POOL_OPTIONS)
    if unknown:
        raise TypeError(
            f"the leakguard joblib backend got unknown option(s) {', '.join(map(repr, unknown))} from {where}. "
            f"It accepts {', '.join(sorted(POOL_OPTIONS))} (the keyword arguments of leakguard.Pool); "
            "check the spelling."
        )


class _Batch:
    """A batch of joblib tasks (``BatchedCalls``), named for the pool's error messages."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        # Pool names a task by its function's __qualname__ (a WorkerLostError says which).
        self.__qualname__ = f"a joblib batch of {len(batch)} task{'' if len(batch) == 1 else 's'}"

    def __call__(self) -> Any:
        # A task may itself ask for Parallel(backend="leakguard"): the name must resolve in
        # the worker too (it then runs on threads, see configure()).
        register()
        return self.batch()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Batch, (self.batch,))


class LeakguardBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend interface on a ``leakguard.Pool``; options are ``Pool``'s keyword arguments.

    Options come from ``parallel_config(backend="leakguard", **options)`` (or
    ``parallel_backend``), and from ``Parallel(backend="leakguard", **options)``, which win.
    ``share_threshold`` defaults to joblib's ``max_nbytes`` (1 MiB unless set; ``None`` sends
    every array through the pipes).
    """

    default_n_jobs = 1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, **options: Any):
        _check_options(options, where="parallel_config/parallel_backend")
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options = dict(options)
        self._pool: Pool | None = None
        self._pool_args: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._outstanding = 0  # batches submitted and not yet answered

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """joblib's convention: -1 is every CPU, -2 all but one, None is 1; 0 is an error."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(int(cpu_count()) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Start the pool for one Parallel call (or one ``with Parallel()`` block); returns its size."""
        options = {k: v for k, v in kwargs.items() if k not in _JOBLIB_KEYWORDS}
        _check_options(options, where="Parallel(...)")
        if self.nesting_level or multiprocessing.current_process().daemon:
            # In a worker of an outer Parallel (or of any pool: its processes are daemons,
            # which may not have children): threads, then sequential, never a process tree.
            raise FallbackToBackend(ThreadingBackend(nesting_level=self.nesting_level))
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        merged = {**self._options, **options}
        if "share_threshold" not in merged and "max_nbytes" in kwargs:
            merged["share_threshold"] = kwargs["max_nbytes"]
        self.parallel = parallel
        self._stop_pool(graceful=False)  # a configure without terminate: never two pools
        self._pool_args = (n, merged)
        self._pool = Pool(n, **merged)
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], object] | None = None) -> Any:
        """Run one batch; ``callback`` gets its result or its exception (joblib's BatchCompletionCallBack)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(
                "the leakguard joblib backend has no pool: this Parallel call was already terminated "
                "or aborted. Start a new Parallel call."
            )

        def done(out: Any) -> None:
            with self._lock:
                self._outstanding -= 1
            if callback is not None:
                callback(out)

        with self._lock:
            self._outstanding += 1
        try:
            return pool.apply_async(_Batch(func), callback=done, error_callback=done)
        except BaseException:
            with self._lock:
                self._outstanding -= 1
            raise

    # joblib before 1.4 calls apply_async; later versions call submit.
    apply_async = submit

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's list of results, or its error raised (with its own type)."""
        if isinstance(out, BaseException):
            if isinstance(out, WorkerLostError) and hasattr(out, "add_note"):  # Python 3.11+
                out.add_note(
                    'With joblib, ask for retries through the backend: parallel_config(backend="leakguard", retries=N).'
                )
            raise out
        return out

    def terminate(self) -> None:
        """End of the Parallel call: the workers exit, their journals are settled."""
        self._stop_pool(graceful=True)
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed (or the caller stopped reading): kill the workers; a fresh pool if more is to come."""
        self._stop_pool(graceful=False)
        if ensure_ready and self._pool_args is not None:
            n, options = self._pool_args
            self._pool = Pool(n, **options)

    def _stop_pool(self, *, graceful: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with self._lock:
            idle = self._outstanding == 0
            self._outstanding = 0
        if graceful and idle:
            pool.close()  # workers finish and release what they own themselves
            pool.join()
        else:
            pool.terminate()


def register(name: str = BACKEND_NAME, *, make_default: bool = False) -> None:
    """Make ``Parallel(backend=name)`` and ``parallel_config(backend=name)`` run on ``leakguard.Pool``.

    With ``make_default=True`` it also becomes the backend of every ``Parallel`` that names
    none (libraries that use joblib internally included).
    """
    register_parallel_backend(name, LeakguardBackend, make_default=make_default)
