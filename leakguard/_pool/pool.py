"""``leakguard.Pool``: the interface of ``multiprocessing.Pool`` on workers that may die.

How tasks and results flow (the machinery is in engine.py; the parent's records of
workers and tasks in processes.py; the worker's loop in worker.py; the pipes' format
in wire.py; result objects in results.py)::

    caller threads                  the pool's I/O thread                   workers (spawned)
    apply_async / map / imap
      -> Calls -> pending Tasks --dispatch: pickle, write--> task pipe  --> run the TaskBody
                         (either thread)                     one each         |
    result objects <-- deliver <-- read Frames <-- result socket, one each <-- one frame per task
      (Deliveries)                 a worker's sentinel fires: read what it sent, retry or
                                     fail its task, settle its journal, start a replacement
                                   the guardian's pipe closes: start a new guardian

    guardian (own session) <-- stdin: "w PID START" per worker -- the pool
        end of file without "x": the pool died -> kill its workers, sweep, exit

    Core.state:   running -> closing -> done, or -> terminating -> done; inherited in a fork
    Worker.state: starting -> ready -> retiring | stopping | timed out -> dead

Large numpy arrays in arguments and results travel through journaled blocks
(wire.py, on _blocks/shm.py); a ``SharedArray`` or a view of one travels by name.

The functions at the end (``size``, ``io_thread``, ``inherited``, ``refuse_if_inherited``)
are what the integrations (executor.py) may know of a pool; leakguard does not export them.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal, TypeVar, overload

from leakguard._errors import InheritedPoolError, NestedPoolError, PoolClosedError

from . import progress as _progress
from .engine import START_METHODS, Core, State
from .processes import Call
from .results import (
    ApplyResult,
    Delivery,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    deliver,
    input_ended,
    refuse_to_wait,
)
from .worker import APPLY, MAP, STARMAP

__all__ = [
    "Pool",
    "callable_name",
    "chunks",
    "cpu_count",
    "inherited",
    "io_thread",
    "refuse_if_inherited",
    "running",
    "size",
]

S = TypeVar("S")
T = TypeVar("T")


def cpu_count() -> int:
    """The number of workers ``processes=None`` means: the CPUs this process may use."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_int(name: str, value: object, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return value


def _positive_number(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    if math.isinf(value):
        return None  # no limit, as None says (a deadline at infinity cannot be waited for)
    return float(value)


def callable_name(func: Any) -> str:
    """How errors name a task's function (``WorkerLostError``, ``TaskTimeoutError``)."""
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


def chunks(items: Iterable[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in pieces of ``size`` (the last may be shorter), read as they are needed:
    slices of a list, tuple or range (a range's slice pickles as a range), else lists."""
    if isinstance(items, (list, tuple, range)):
        for i in range(0, len(items), size):
            yield items[i : i + size]
        return
    it = iter(items)
    while part := list(itertools.islice(it, size)):
        yield part


class Pool:
    """A process pool with ``multiprocessing.Pool``'s methods whose workers may die.

    ``start_method`` is ``"spawn"`` unless told otherwise (on every OS); a
    lost worker's task is retried ``retries`` times, then fails alone with
    ``WorkerLostError``; ``task_timeout`` stops a task (and its worker) with
    ``TaskTimeoutError``; ``max_memory_per_child`` replaces a worker whose resident
    memory passed it after a task; numpy arrays of ``share_threshold`` bytes or
    more (None: never) travel through shared memory in both directions.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        start_method: str = "spawn",
        retries: int = 0,
        task_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        share_threshold: int | None = 1 << 20,
    ) -> None:
        self._core: Core | None = None
        processes = _positive_int("processes", processes) or cpu_count()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}; got {start_method!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method {start_method!r} is not available on this platform")
        if multiprocessing.current_process().daemon:
            # multiprocessing would refuse the first worker, after the guardian had started.
            raise NestedPoolError(os.getpid())
        self._core = Core(
            processes,
            initializer,
            tuple(initargs),
            _positive_int("maxtasksperchild", maxtasksperchild),
            start_method=start_method,
            retries=_positive_int("retries", retries, allow_none=False, minimum=0) or 0,
            task_timeout=_positive_number("task_timeout", task_timeout),
            max_memory=_positive_int("max_memory_per_child", max_memory_per_child),
            threshold=_positive_int("share_threshold", share_threshold, minimum=0),
        )
        self._processes = processes

    # ------------------------------------------------------------------ submitting

    def _running(self) -> Core:
        core = self._core
        assert core is not None
        if core.failure is not None:  # broken, not closed (it was never told to stop)
            raise PoolClosedError(f"stopped by {core.failure!r} on its I/O thread")
        if core.state is not State.RUNNING:
            if core.state is State.INHERITED:
                raise InheritedPoolError(core.identity.pid, os.getpid())
            raise PoolClosedError("closed" if core.state in (State.CLOSING, State.DONE) else "terminated")
        return core

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` in a worker; waits and returns its result or raises its error."""
        refuse_to_wait(self._running().thread, "apply()")  # before the task is sent
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[T]:
        """``func(*args, **kwds)`` in a worker; the result object's ``get()`` waits for it.
        ``callback`` or ``error_callback`` runs on the pool's I/O thread when it ends."""
        core = self._running()
        result: ApplyResult[T] = ApplyResult(callback, error_callback, io_thread=core.thread)
        desc = f"apply({callable_name(func)})"
        core.submit([Call(result, 0, func, APPLY, (tuple(args), dict(kwds or {})), desc)])
        return result

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        mode: int,
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        bar: _progress.Bar | None = None,
    ) -> MapResult[T]:
        core = self._running()
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += 1 if extra else 0
        else:
            _positive_int("chunksize", chunksize, allow_none=False)
        parts = list(chunks(items, chunksize)) if items else []
        # The bar is given before the first chunk can be delivered.
        result: MapResult[T] = MapResult(
            len(parts), len(items), chunksize or 1, callback, error_callback, io_thread=core.thread, progress=bar
        )
        method = "starmap" if mode == STARMAP else "map"
        name = callable_name(func)
        core.submit(
            Call(
                result,
                i,
                func,
                mode,
                part,
                f"chunk {i} (items {i * chunksize}-{i * chunksize + len(part) - 1}) of {method}({name})",
            )
            for i, part in enumerate(parts)
        )
        return result

    def _map(
        self, func: Callable[..., T], iterable: Iterable[Any], mode: int, chunksize: int | None, progress: bool
    ) -> list[T]:
        refuse_to_wait(self._running().thread, "map() or starmap()")  # before any task is sent
        if not progress:
            return self._map_async(func, iterable, mode, chunksize, None, None).get()
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        method = "starmap" if mode == STARMAP else "map"
        bar = _progress.open_bar(len(items), f"{method}({callable_name(func)})")
        try:
            return self._map_async(func, items, mode, chunksize, None, None, bar).get()
        finally:
            bar.close()  # also when the wait was interrupted: the rest of the map goes on unseen

    def map(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        *,
        progress: bool = False,
    ) -> list[T]:
        """``multiprocessing.Pool.map``; ``progress=True`` shows a tqdm bar of the items done."""
        return self._map(func, iterable, MAP, chunksize, progress)

    def map_async(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``map`` without waiting: ``get()`` returns the list in order, or raises the first
        error once every chunk has ended (as multiprocessing does)."""
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: bool = False,
    ) -> list[T]:
        """``multiprocessing.Pool.starmap``; ``progress=True`` shows a tqdm bar of the items done."""
        return self._map(func, iterable, STARMAP, chunksize, progress)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``starmap`` without waiting: each item of ``iterable`` is unpacked as ``func``'s arguments."""
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

    def _imap(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int, ordered: bool, progress: bool
    ) -> Iterator[T]:
        core = self._running()
        _positive_int("chunksize", chunksize, allow_none=False)
        desc = f"{'imap' if ordered else 'imap_unordered'}({callable_name(func)})"
        bar = total = None
        if progress:
            total = len(iterable) if isinstance(iterable, Sized) else None
            bar = _progress.open_bar(total, desc)
        kind = IMapIterator if ordered else IMapUnorderedIterator
        result: IMapIterator[Any] = kind(io_thread=core.thread, progress=bar, chunksize=chunksize, total=total)
        calls = _imap_calls(result, func, iterable, chunksize, desc, bar, total)
        if hasattr(iterable, "__len__"):
            core.submit(list(calls))
        else:
            core.feed(calls)
        if chunksize == 1:
            return result  # as in multiprocessing: an error is raised at its place, and iteration may go on
        return (item for chunk in result for item in chunk)

    # As multiprocessing's (and typeshed's): an IMapIterator with chunksize 1; with larger
    # chunks, a generator over the chunks' items (which has no next(timeout)).
    @overload
    def imap(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: Literal[1] = 1, *, progress: bool = False
    ) -> IMapIterator[T]: ...

    @overload
    def imap(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int, *, progress: bool = False
    ) -> Iterator[T]: ...

    def imap(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int = 1, *, progress: bool = False
    ) -> Iterator[T]:
        """``multiprocessing.Pool.imap``; ``progress=True`` shows a tqdm bar of the items done
        (advanced as tasks end, closed once the last one has, whether or not it is read)."""
        return self._imap(func, iterable, chunksize, ordered=True, progress=progress)

    @overload
    def imap_unordered(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: Literal[1] = 1, *, progress: bool = False
    ) -> IMapUnorderedIterator[T]: ...

    @overload
    def imap_unordered(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int, *, progress: bool = False
    ) -> Iterator[T]: ...

    def imap_unordered(
        self, func: Callable[[S], T], iterable: Iterable[S], chunksize: int = 1, *, progress: bool = False
    ) -> Iterator[T]:
        """``multiprocessing.Pool.imap_unordered``; ``progress=True`` as for ``imap``."""
        return self._imap(func, iterable, chunksize, ordered=False, progress=progress)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """No more work; workers exit once what was submitted is done."""
        core = self._core
        assert core is not None
        core.close()  # in a forked copy, nothing: the owner's pool is not this process's to close

    def terminate(self) -> None:
        """Stop now: workers are killed, work not yet done fails with PoolClosedError."""
        core = self._core
        if core is None:
            return
        core.terminate()
        self.join()

    def join(self) -> None:
        """Wait for the workers (and the guardian) to exit, after close() or terminate()."""
        core = self._core
        assert core is not None
        if core.state is State.RUNNING:
            raise ValueError("Pool is still running; call close() or terminate() before join()")
        if core.inherited:
            return  # the owner's workers are not ours to wait for
        if core.thread is not threading.current_thread():
            core.thread.join()

    def __enter__(self) -> Pool:
        self._running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "not started" if self._core is None else self._core.state.value
        return f"<leakguard.Pool state={state} processes={getattr(self, '_processes', None)}>"

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.state is State.RUNNING:
            warnings.warn(f"unclosed running pool {self!r}", ResourceWarning, source=self, stacklevel=2)
            core.terminate()


def _imap_calls(
    result: IMapIterator[Any],
    func: Any,
    iterable: Iterable[Any],
    chunksize: int,
    desc: str,
    bar: _progress.Bar | None,
    total: int | None,
) -> Iterator[Call]:
    """imap's tasks, read from the input as they are needed; its length is known at the end."""
    mode = APPLY if chunksize == 1 else MAP
    count = items = 0
    try:
        # Inside the try: an input that is not iterable fails the first next(), as with
        # multiprocessing.Pool, instead of stopping the feeder thread and leaving imap waiting.
        for part in chunks(iter(iterable), chunksize):
            args = ((part[0],), {}) if chunksize == 1 else part
            index, count, items = count, count + 1, items + len(part)
            yield Call(result, index, func, mode, args, f"task {index} of {desc}")
    except Exception as exc:  # noqa: BLE001 - the input's own error, raised at its place
        deliver([Delivery(result, count, False, exc)])
        count += 1
    finally:  # also when the pool stops reading (terminate): the iterator ends after what it got
        if bar is not None and total is None:
            bar.set_total(items)  # before the length: the last delivery may close the bar
        input_ended(result, count)


# For the integrations (executor.py, joblib.py): what they need of a pool, not exported
# from leakguard.


def size(pool: Pool) -> int:
    """The number of worker processes."""
    return pool._processes


def io_thread(pool: Pool) -> threading.Thread:
    """The pool's I/O thread, which runs the callbacks: a wait on it would never end."""
    assert pool._core is not None
    return pool._core.thread


def inherited(pool: Pool) -> bool:
    """True in a process forked from the pool's owner: this copy is inert (SPEC 2.1)."""
    return pool._core is not None and pool._core.inherited


def running(pool: Pool) -> bool:
    """True while the pool takes work (not closed, terminated, broken or inherited)."""
    core = pool._core
    return core is not None and core.state is State.RUNNING and core.failure is None


def refuse_if_inherited(pool: Pool) -> None:
    """InheritedPoolError in a process forked from the pool's owner: a copy takes no work."""
    if inherited(pool):
        pool._running()
