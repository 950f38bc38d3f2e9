"""``leakguard.Executor``: a ``concurrent.futures.Executor`` on ``leakguard.Pool``.

What it owns: the futures, a queue of work not yet handed to the pool (so that
``Future.cancel()`` and ``shutdown(cancel_futures=True)`` can still stop it), and
the hand-over from that queue to the pool. Everything about processes, lost
workers, timeouts and shared memory is the pool's.

::

    submit / map -> the executor's queue (futures PENDING, cancellable)
                 -> at most 2 x max_workers tasks in the pool (futures RUNNING)
                 -> the pool's I/O thread delivers each result -> set_result / set_exception
                 -> one slot is free: the next queued future goes to the pool

The hand-over runs on whichever thread frees a slot or submits: a caller's, or
the pool's I/O thread when a result arrives; one thread at a time moves work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import _RemoteTraceback
from dataclasses import dataclass, field
from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
from typing import Any, ParamSpec, TypeVar

from leakguard._journal import owner as _owner

from ._errors import PoolClosedError
from ._pool import pool as pool_api
from ._pool import progress as _progress
from ._pool.pool import Pool, callable_name, chunks
from ._pool.results import refuse_to_wait

__all__ = ["Executor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Futures handed to the pool beyond the running ones: one queued behind each running
# task keeps every worker busy between results; the rest stay cancellable here.
_IN_POOL_PER_WORKER = 2


@dataclass
class _Item:
    future: concurrent.futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Chunk:
    """One task of ``map(chunksize > 1)``: calls ``fn`` on each argument tuple of its chunk.

    Its ``__name__`` is what a ``WorkerLostError`` or ``TaskTimeoutError`` names.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.__name__ = name

    def __call__(self, chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [self.fn(*args) for args in chunk]


class _Future(concurrent.futures.Future[_T]):
    """A Future whose blocking calls refuse, with RuntimeError, to run on the pool's I/O
    thread (in a done-callback): that thread settles the futures, so they would wait forever."""

    def __init__(self, io_thread: threading.Thread) -> None:
        super().__init__()
        self._io_thread = io_thread

    def result(self, timeout: float | None = None) -> _T:
        if not self.done() and (timeout is None or timeout > 0):
            refuse_to_wait(self._io_thread, "Future.result()")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done() and (timeout is None or timeout > 0):
            refuse_to_wait(self._io_thread, "Future.exception()")
        return super().exception(timeout)


class Executor(concurrent.futures.Executor):
    """A process pool executor whose workers may die without breaking it.

    Same methods and semantics as ``concurrent.futures.ProcessPoolExecutor``
    (``submit``, ``map`` with ``timeout`` and ``chunksize``, ``shutdown`` with
    ``wait`` and ``cancel_futures``, context manager), on ``leakguard.Pool``:

    - a worker that dies fails only the future of the task it ran, with
      ``leakguard.WorkerLostError`` once ``retries`` are used up; other futures
      complete and the executor stays usable (ProcessPoolExecutor raises
      ``BrokenProcessPool`` for every pending future and accepts no more work);
    - ``start_method`` defaults to ``"spawn"`` on every OS; ``task_timeout``,
      ``max_memory_per_child`` and ``share_threshold`` are the pool's;
    - submitting after ``shutdown()`` raises ``RuntimeError``, as the standard
      library's executors do (the pool itself raises ``PoolClosedError``, a
      ``ValueError``, like ``multiprocessing.Pool``).

    At most ``2 * max_workers`` futures are handed to the pool at a time (they are
    then running: ``cancel()`` returns False); the others wait here and can be
    cancelled.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        start_method: str = "spawn",
        retries: int = 0,
        task_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        share_threshold: int | None = 1 << 20,
        max_tasks_per_child: int | None = None,
    ) -> None:
        self._shutdown = False
        self._closed = False  # the pool was told to close
        for name, value in (("max_workers", max_workers), ("max_tasks_per_child", max_tasks_per_child)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                # The standard library's words ("max_workers must be greater than 0"), which
                # code and concurrent.futures' own tests match on.
                raise ValueError(f"{name} must be greater than 0 (an integer, or None), got {value!r}")
        self._pool = pool = Pool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            start_method=start_method,
            retries=retries,
            task_timeout=task_timeout,
            max_memory_per_child=max_memory_per_child,
            share_threshold=share_threshold,
        )
        # dask's local scheduler reads this (ProcessPoolExecutor's name) to size its batches.
        self._max_workers: int = pool_api.size(pool)
        self._io_thread = pool_api.io_thread(pool)  # runs the futures' callbacks: it must never wait on one
        self._limit = _IN_POOL_PER_WORKER * self._max_workers
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when the last outstanding task ends
        self._queue: collections.deque[_Item] = collections.deque()
        self._in_pool = 0
        self._moving = False  # a thread is moving work from the queue to the pool
        _owner.track_executor(self)  # its work is finished at exit, before any pool stops

    # ------------------------------------------------------------------ submitting

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; the future fails with the task's own exception,
        ``WorkerLostError`` or ``TaskTimeoutError``. RuntimeError after ``shutdown()``."""
        future: concurrent.futures.Future[_T] = _Future(self._io_thread)
        self._enqueue([_Item(future, fn, args, kwargs)])
        return future

    def _enqueue(self, items: list[_Item]) -> None:
        pool_api.refuse_if_inherited(self._pool)  # InheritedPoolError: a forked copy takes no work
        with self._lock:
            if self._shutdown:
                raise RuntimeError(
                    "cannot schedule new futures after shutdown: the executor was shut down; "
                    "create a new leakguard.Executor for more work"
                )
            self._queue.extend(items)
        self._move()

    def _move(self) -> None:
        """Hand queued work to the pool while it has room (one thread at a time does it)."""
        with self._lock:
            if self._moving:
                return  # that thread will see what was just queued before it stops
            self._moving = True
        try:
            while True:
                with self._lock:
                    item = self._next_item()
                    if item is None:
                        self._moving = False
                        self._check_idle()
                        return
                    self._in_pool += 1
                self._hand_over(item)
        except BaseException:
            with self._lock:
                self._moving = False
            raise

    def _next_item(self) -> _Item | None:
        while self._queue and self._in_pool < self._limit:
            item = self._queue.popleft()
            if item.future.set_running_or_notify_cancel():
                return item
        return None

    def _hand_over(self, item: _Item) -> None:
        future = item.future
        try:
            self._pool.apply_async(
                item.fn,
                item.args,
                item.kwargs,
                functools.partial(self._settle, future, True),
                functools.partial(self._settle, future, False),
            )
        except PoolClosedError as exc:  # terminated under us (interpreter exit, Ctrl-C in shutdown)
            self._settle(future, False, exc)

    def _settle(self, future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
        # On the pool's I/O thread: the future's callbacks run here, as they run on
        # ProcessPoolExecutor's management thread.
        try:
            if ok:
                future.set_result(value)
            else:
                if type(value.__cause__) is RemoteTraceback:
                    # As ProcessPoolExecutor: the worker's traceback is concurrent.futures'
                    # own class (its tests check the exact type), not multiprocessing.pool's.
                    value.__cause__ = _RemoteTraceback(value.__cause__.tb)
                future.set_exception(value)
        finally:
            # Also when a done-callback raised SystemExit (Future runs them catching only
            # Exception): the slot is freed, or shutdown(wait=True) would wait forever.
            with self._lock:
                self._in_pool -= 1
            self._move()

    def _check_idle(self) -> None:
        """Lock held: once shut down and nothing is left, the pool closes."""
        if self._shutdown and not self._queue and self._in_pool == 0 and not self._closed:
            self._closed = True
            self._pool.close()
            self._idle.notify_all()

    # ------------------------------------------------------------------ map

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[Any]:
        """``ProcessPoolExecutor.map``: the inputs are read and submitted at once, in chunks
        of ``chunksize`` items (one task each); results come in order, lazily; ``timeout``
        counts from this call; a task's error is raised when its chunk is reached.
        ``progress=True`` shows a tqdm bar of the items done."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an integer >= 1, got {chunksize!r}")
        end = None if timeout is None else timeout + time.monotonic()
        name = callable_name(fn)
        items: list[_Item] = []
        sizes: list[int] = []
        for i, chunk in enumerate(chunks(zip(*iterables, strict=False), chunksize)):
            future: concurrent.futures.Future[Any] = _Future(self._io_thread)
            if chunksize == 1:
                items.append(_Item(future, fn, chunk[0]))
            else:
                first = i * chunksize
                desc = f"chunk {i} (items {first}-{first + len(chunk) - 1}) of map({name})"
                items.append(_Item(future, _Chunk(fn, desc), (chunk,)))
            sizes.append(len(chunk))
        bar = _progress.open_bar(sum(sizes), f"map({name})") if progress else None
        if bar is not None:
            _track(bar, [item.future for item in items], sizes)
        try:
            self._enqueue(items)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        return _results([item.future for item in items], end, chunksize > 1, bar)

    # ------------------------------------------------------------------ lifetime

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work. ``cancel_futures`` cancels what is not yet handed to the pool;
        ``wait`` waits until the rest is done and the workers have exited. Without
        ``wait``, the pool closes by itself once the last task ends. In a process forked
        from the executor's owner, it does nothing (the pool is the owner's)."""
        if pool_api.inherited(self._pool):
            return
        if wait:  # refused before anything changes: the executor goes on
            refuse_to_wait(self._io_thread, "shutdown(wait=True)")
        with self._lock:
            self._shutdown = True
            dropped: list[_Item] = []
            if cancel_futures:
                dropped = list(self._queue)
                self._queue.clear()
            self._check_idle()
        for item in dropped:
            item.future.cancel()
            item.future.set_running_or_notify_cancel()  # so that wait() and as_completed() see it done
        if not wait:
            return
        try:
            with self._lock:
                self._idle.wait_for(lambda: self._closed)
            self._pool.join()
        except BaseException:
            # Interrupted while waiting (Ctrl-C): stop now rather than leave workers running.
            self._pool.terminate()
            raise

    def finish_at_exit(self) -> None:
        """The exit sequence's first phase (_journal/owner.py): work already given completes, as
        ``concurrent.futures`` does at exit."""
        if not self._closed:
            self.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"<leakguard.Executor max_workers={getattr(self, '_max_workers', None)} shutdown={self._shutdown}>"

    def __del__(self) -> None:
        # Dropped without shutdown(): as ProcessPoolExecutor, finish what was given, then stop.
        if getattr(self, "_pool", None) is not None and not self._shutdown:
            self.shutdown(wait=False)


def _results(
    futures: list[concurrent.futures.Future[Any]], end: float | None, chunked: bool, bar: _progress.Bar | None
) -> Iterator[Any]:
    # bpo-14406: nothing here may hold a result once it is handed out (the caller may
    # drop a large one), so each future and each chunk's list is let go as it is read.
    try:
        futures.reverse()
        while futures:
            if chunked:
                chunk = _result_or_cancel(futures.pop(), end)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield _result_or_cancel(futures.pop(), end)
    finally:
        for future in futures:
            future.cancel()
        if bar is not None:
            bar.close()


def _result_or_cancel(future: concurrent.futures.Future[Any], end: float | None) -> Any:
    try:
        return future.result(None if end is None else end - time.monotonic())
    finally:
        future.cancel()  # on a timeout: it never runs, if it has not started
        del future  # the future holds the result: not kept by this frame's traceback either


def _track(bar: _progress.Bar, futures: list[concurrent.futures.Future[Any]], sizes: list[int]) -> None:
    """Advance ``bar`` as each future ends, and close it when the last one has."""
    left = [len(futures)]
    lock = threading.Lock()

    def done(size: int, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled():
            bar.advance(size)
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            bar.close()

    for future, size in zip(futures, sizes, strict=True):
        future.add_done_callback(functools.partial(done, size))
    if not futures:
        bar.close()
