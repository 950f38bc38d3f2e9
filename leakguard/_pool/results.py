"""What ``apply_async``, ``map_async`` and ``imap`` hand back: the standard library's
result objects, with the same methods, errors and ordering.

The pool's I/O thread hands each task's answer to its result object through
``deliver`` (a map task is a chunk of items); callbacks run on that thread, as in
multiprocessing. The pool makes them and, for imap, says where the input ended
(``input_ended``); nothing outside this module touches their insides.
"""

from __future__ import annotations

import collections
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import TimeoutError as MPTimeoutError
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "Delivery",
    "IMapIterator",
    "IMapUnorderedIterator",
    "MapResult",
    "deliver",
    "input_ended",
    "refuse_to_wait",
]

T = TypeVar("T")


@dataclass(slots=True)
class Delivery:
    """A task's answer, on its way to its result object (``deliver``)."""

    job: Any  # the result object
    index: int  # the task's place in its job
    ok: bool  # succeeded: value is its result; else value is its error
    value: Any


_NOT_READY = object()


class Progress(Protocol):
    """What ``progress=True`` hands a result object (progress.py's Bar): told of items done."""

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


def _run_callback(callback: Callable[[Any], object], value: Any) -> None:
    # Nothing a user's callback raises may stop the pool's I/O thread, SystemExit and
    # KeyboardInterrupt included: they would end the thread, not the program, and leave
    # this result, and every later one, never ready (SPEC 6).
    try:
        callback(value)
    except BaseException as exc:  # noqa: BLE001 - printed, as threading does for an uncaught error
        print(
            f"Exception in a leakguard.Pool callback ({type(exc).__name__}): it was ignored; the result is "
            "settled and the pool goes on (callbacks run on the pool's I/O thread, which must not stop).",
            file=sys.stderr,
        )
        traceback.print_exception(exc)


def refuse_to_wait(io_thread: threading.Thread | None, call: str) -> None:
    """A wait on the thread that would end it never ends: raise instead of deadlocking."""
    if io_thread is not None and threading.current_thread() is io_thread:
        raise RuntimeError(
            f"{call} was called from a callback of the same pool or executor, and would wait forever: "
            "callbacks run on the pool's I/O thread, the very thread that delivers results. Pass the "
            "work on with a callback instead (apply_async, map_async, Future.add_done_callback), or "
            "wait for it on another thread."
        )


class ApplyResult(Generic[T]):
    """The result of ``apply_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(
        self,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        io_thread: threading.Thread | None = None,
    ) -> None:
        # Settled: ``_ready`` is set, then ``_done`` released. A waiter takes ``_done`` and passes
        # it straight on to the next. Not a threading.Event: its wait() and set() are Python code
        # around a Condition (a lock made per wait, a second lock to take back after waking), run
        # on the round trip of every apply, by the caller and by the I/O thread that holds the GIL
        # the caller needs; a bare lock's acquire and release are one C call each (issue 15).
        self._ready = False
        self._done = threading.Lock()
        self._done.acquire()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = _NOT_READY
        # The pool's I/O thread, which delivers this result: a wait on it is refused
        # (see refuse_to_wait).
        self._io_thread = io_thread

    def ready(self) -> bool:
        return self._ready

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        if self._ready:
            return
        if timeout is not None and not timeout > 0:  # as threading.Event: a wait of 0 or less only looks
            return
        refuse_to_wait(self._io_thread, "wait() or get() on a result not yet ready")
        if self._done.acquire(True, -1 if timeout is None else timeout):
            self._done.release()  # the next waiter's turn

    def get(self, timeout: float | None = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise MPTimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _finish(self, ok: bool, value: Any) -> None:
        self._success = ok
        self._value = value
        try:
            if ok and self._callback is not None:
                _run_callback(self._callback, value)
            if not ok and self._error_callback is not None:
                _run_callback(self._error_callback, value)
        finally:
            self._settle()  # whatever happened above, get() returns

    def _settle(self) -> None:
        self._ready = True  # before the release: a waiter that wakes finds it ready
        self._done.release()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        self._finish(ok, value)


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[T]]):
    """The result of ``map_async``: chunks fill a list; the first error ends it."""

    def __init__(
        self,
        chunks: int,
        length: int,
        chunksize: int,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        io_thread: threading.Thread | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(callback, error_callback, io_thread=io_thread)
        self._items: list[Any] = [None] * length
        self._chunksize = chunksize
        self._left = chunks
        self._error: BaseException | None = None
        self._length = length
        self._progress = progress
        if chunks == 0:
            # As in multiprocessing: ready at once, and no callback for an empty input.
            self._success, self._value = True, []
            self._settle()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        # As in multiprocessing: the first error is the answer, but only once every
        # chunk is done, so the other tasks of the map complete before get() returns.
        self._left -= 1
        if self._progress is not None:
            self._progress.advance(min(self._chunksize, self._length - index * self._chunksize))
            if self._left == 0:
                self._progress.close()  # before get() returns: the bar reads n/n when the caller goes on
        if not ok and self._error is None:
            self._error = value
            self._items = []
        elif ok and self._error is None:
            start = index * self._chunksize
            self._items[start : start + len(value)] = value
        if self._left == 0:
            if self._error is not None:
                self._finish(False, self._error)
            else:
                self._finish(True, self._items)


class IMapIterator(Iterator[T], Generic[T]):
    """``imap``'s iterator: results in the order of the input; ``next(timeout)``.

    With ``progress``, it advances the bar by the items of each task delivered (tasks of
    ``chunksize`` items, ``total`` items if known) and closes it after the last.
    """

    def __init__(
        self,
        *,
        io_thread: threading.Thread | None = None,
        progress: Progress | None = None,
        chunksize: int = 1,
        total: int | None = None,
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._index = 0  # next index to move from _unsorted to _items
        self._unsorted: dict[int, tuple[bool, Any]] = {}
        self._length: int | None = None  # known once the input is exhausted
        self._io_thread = io_thread  # as ApplyResult's
        self._progress = progress
        self._chunksize = chunksize
        self._total = total
        self._delivered = self._counted = 0

    def __iter__(self) -> IMapIterator[T]:
        return self

    def next(self, timeout: float | None = None) -> T:
        with self._cond:
            if not self._items and self._index != self._length and (timeout is None or timeout > 0):
                refuse_to_wait(self._io_thread, "next() on an imap iterator")
            if not self._cond.wait_for(lambda: self._items or self._index == self._length, timeout):
                raise MPTimeoutError
            if not self._items:
                raise StopIteration
            ok, value = self._items.popleft()
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    __next__ = next

    def _count(self, ok: bool, value: Any) -> None:
        # A chunk's size is its result's length; a failed chunk counts as a full one
        # (but never past the total, so a short last chunk does not overshoot).
        n = len(value) if ok and self._chunksize > 1 else self._chunksize
        if self._total is not None:
            n = max(0, min(n, self._total - self._counted))
        self._counted += n
        self._delivered += 1
        assert self._progress is not None
        self._progress.advance(n)
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._progress is not None and self._delivered == self._length:
            self._progress.close()

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            if self._progress is not None:
                self._count(ok, value)
            if index == self._index:
                self._items.append((ok, value))
                self._index += 1
                while self._index in self._unsorted:
                    self._items.append(self._unsorted.pop(self._index))
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[index] = (ok, value)
            if self._index == self._length:
                self._cond.notify()

    def _deliver_many(self, results: list[Delivery]) -> None:
        """Several results at once (one read brought them): one lock, one wake-up."""
        with self._cond:
            for d in results:
                self._deliver(d.index, d.ok, d.value)

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._close_if_done()
            if self._index == length:
                self._cond.notify()


class IMapUnorderedIterator(IMapIterator[T]):
    """``imap_unordered``'s iterator: results as they come."""

    def _deliver(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            if self._progress is not None:
                self._count(ok, value)
            self._items.append((ok, value))
            self._index += 1
            self._cond.notify()


def input_ended(result: IMapIterator[Any], tasks: int) -> None:
    """An imap's input is read to its end, or stopped being read: ``tasks`` tasks in all."""
    result._set_length(tasks)


def deliver(todo: list[Delivery]) -> None:
    """Hand results to their result objects (outside the pool's lock: callbacks run here)."""
    i = 0
    while i < len(todo):
        job = todo[i].job
        j = i + 1
        while j < len(todo) and todo[j].job is job:
            j += 1
        if j - i > 1 and hasattr(job, "_deliver_many"):
            job._deliver_many(todo[i:j])  # an imap's consumer wakes once per read, not per item
        else:
            for d in todo[i:j]:
                job._deliver(d.index, d.ok, d.value)
        i = j
