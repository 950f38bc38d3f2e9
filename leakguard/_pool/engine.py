"""The machinery behind ``leakguard.Pool`` (pool.py has the picture): worker
processes, their pipes, the dispatch of tasks, and the I/O thread that reads
results, buries dead workers, enforces deadlines and keeps a guardian running.
The pool's state (``State``) changes only through ``Core``'s methods; a worker's
(``processes.Life``) only through the worker record's.

Each worker has its own task pipe and result socket, so a worker's death costs exactly the
tasks it held: the first one it was sent and did not answer was running (retried
or failed with WorkerLostError), the ones after it never started (sent again).
Deaths are seen through the process sentinels in the same ``select`` as the
results, so watching for them costs nothing; so are task deadlines.
"""

from __future__ import annotations

import contextlib
import enum
import io
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any, Final, NamedTuple

from leakguard._blocks.shm import adopted_names, anonymous_by_default, received_descriptors
from leakguard._errors import BlockGoneError, PoolClosedError, TaskTimeoutError, WorkerLostError
from leakguard._failpoint import failpoint
from leakguard._journal import owner as _owner
from leakguard._journal.folder import open_folder
from leakguard._journal.identity import Identity
from leakguard._sweep.journaled import settle_worker

from . import processes as _procs
from . import wire as _wire
from . import worker as _worker
from .byvalue import Shipped
from .guardian import GuardianLink
from .processes import Call, Life, Task, Worker
from .results import Delivery, deliver

__all__ = ["START_METHODS", "Core", "State"]

START_METHODS = ("spawn", "forkserver", "fork")
# Tasks queued per worker, by how long its tasks take: enough that a worker never
# waits for the next one (waking a sleeping worker costs tens of microseconds here),
# few enough that a long task does not hold others hostage.
_PREFETCH = ((0.0002, 64), (0.002, 8))  # (average task time under, queue up to)
_TERMINATE_GRACE = 1.0  # seconds between SIGTERM and SIGKILL
_FEED_AHEAD = 256  # tasks a generator-fed imap may queue before waiting for room
_SPARE_PER_WORKER = 2  # argument blocks kept for reuse, per worker
_LONGEST_WAIT = 3600.0  # seconds: the longest single select() (see _next_deadline)


class State(enum.Enum):
    """A pool's life: running -> closing -> done, or -> terminating -> done; or inherited.

    Changed only by ``Core``'s methods: ``close()``, ``terminate()``, ``inherit()``,
    and the I/O thread as it ends (``done``).
    """

    RUNNING = "running"  # takes work
    CLOSING = "closing"  # close(): what was submitted completes, then the workers stop
    TERMINATING = "terminating"  # terminate(), or the I/O thread failed: workers are killed
    DONE = "done"  # the I/O thread has ended: no worker is left
    INHERITED = "inherited"  # a forked copy in a child of the owner: inert (SPEC 2.1)


_OVER: Final = frozenset({State.TERMINATING, State.DONE})  # no task is queued or sent any more
_REPLACING: Final = frozenset({State.RUNNING, State.CLOSING})  # lost workers are replaced
_IDLE_STOPS: Final = frozenset({Life.STARTING, Life.READY, Life.RETIRING})  # told STOP once closed and idle


class Ready(enum.Enum):
    """What a descriptor in the I/O thread's selector says when it is ready."""

    RESULT = enum.auto()  # a worker's result socket: frames (and descriptors) to read
    SENTINEL = enum.auto()  # a worker's process sentinel: it exited
    WRITE = enum.auto()  # a worker's task pipe has room for what waits to be written
    WAKE = enum.auto()  # the wake-up pipe: another thread queued work or changed the state
    GUARDIAN = enum.auto()  # the guardian's pipe closed: it died


class _Tag(NamedTuple):
    """A selector key's data: what became ready, and for which worker."""

    what: Ready
    worker: Worker | None = None


# Made once: registering them runs no Python code, so an interrupt cannot land between a
# descriptor's making and its registration any more than it could before (SPEC 6).
_WAKE: Final = _Tag(Ready.WAKE)
_GUARDIAN: Final = _Tag(Ready.GUARDIAN)


class Core:
    """Everything a pool's I/O thread touches (the Pool object itself may be collected)."""

    def __init__(self, processes: int, initializer: Any, initargs: tuple[Any, ...], maxtasks: int | None, *,
                 start_method: str, retries: int, task_timeout: float | None, max_memory: int | None,
                 threshold: int | None) -> None:  # fmt: skip
        self.ctx = multiprocessing.get_context(start_method)
        self.processes = processes
        self.retries = retries
        self.task_timeout = task_timeout
        self.maxtasks = maxtasks
        self.folder = open_folder()
        self.identity = Identity.current()
        self.threshold = threshold
        init = None if initializer is None else (initializer, initargs)
        self.config = _worker.WorkerConfig(
            self.folder, self.identity, Shipped(init), maxtasks, max_memory, threshold, anonymous_by_default()
        )
        self.lock = threading.RLock()
        self.room = threading.Condition(self.lock)  # generator-fed imaps wait here for room
        self.state = State.RUNNING  # read anywhere; changed only by the methods below
        self.kill_at: float | None = None  # terminating: when SIGTERM turns into SIGKILL
        self.broken: BaseException | None = None  # the initializer's error: every task fails with it
        self.failure: BaseException | None = None  # what stopped the I/O thread, if anything did
        self.pending: deque[Task] = deque()
        self.spare = _wire.SpareBlocks(_SPARE_PER_WORKER * processes)
        self.pickler = _wire.ArgPickler(io.BytesIO(), threshold, self.spare.share)
        self.feeders = 0  # imap inputs still being read
        self.workers: dict[int, Worker] = {}
        # Each worker's result socket, as a socket object (wire.borrow), made by its first read;
        # detached before the descriptor is closed (_bury).
        self.channels: dict[Worker, socket.socket] = {}
        self.next_tid = 1
        self.sel = selectors.DefaultSelector()
        self.wake_r = self.wake_w = self.lifeline_w = -1
        self.thread = threading.Thread(target=self._run, name="leakguard-pool-io", daemon=True)
        try:  # SPEC 6: whatever interrupts Pool() (Ctrl-C, EMFILE, a pickling error) leaves nothing
            _procs.close_after_fork(self.sel.fileno(), owned=True)
            self.wake_r, self.wake_w = os.pipe()
            lifeline_r, self.lifeline_w = os.pipe()
            self.lifeline = Connection(lifeline_r, writable=False)
            _procs.close_after_fork(self.wake_r, self.wake_w, self.lifeline_w)
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.sel.register(self.wake_r, selectors.EVENT_READ, _WAKE)
            self.guardian = self._start_guardian()
            failpoint("pool.after-guardian")
            with self.lock:
                for _ in range(processes):
                    self._start_worker()
            failpoint("pool.after-workers")
            _owner.track_pool(self)  # stopped at exit, inert in a forked child
        except BaseException:
            self.state = State.TERMINATING
            self._shut_down()
            raise
        try:
            self.thread.start()
        except BaseException:  # interrupted as the I/O thread started: it stops what runs
            self.terminate()
            raise

    # ------------------------------------------------------------------ processes

    def _start_guardian(self) -> GuardianLink:
        link = GuardianLink(self.folder, self.identity)
        _procs.close_after_fork(*link.fds, owned=True)
        self.sel.register(link.fd, selectors.EVENT_READ, _GUARDIAN)
        for w in self.workers.values():
            link.worker_started(w.ident)
        return link

    def _start_worker(self) -> None:
        # A Ctrl-C between a worker's pipes and this record would strand them (SPEC 6): SIGINT
        # waits, blocked, until the worker is recorded, so a failed Pool() stops it with the
        # rest. Not for forkserver (see processes.start_worker); the resource tracker, which
        # unblocks SIGINT as it starts, is started before.
        masked = set()
        if self.ctx.get_start_method() != "forkserver":
            resource_tracker.ensure_running()
            masked = {signal.SIGINT}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, masked)
        try:
            w = _procs.start_worker(self.ctx, self.lifeline, self.config)
            self.workers[w.ident.pid] = w
            self.sel.register(w.result_fd, selectors.EVENT_READ, _Tag(Ready.RESULT, w))
            self.sel.register(w.proc.sentinel, selectors.EVENT_READ, _Tag(Ready.SENTINEL, w))
            self.guardian.worker_started(w.ident)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"!")

    # ------------------------------------------------------------------ submitting

    def submit(self, calls: Iterable[Call], *, feeding: bool = False) -> None:
        """Queue tasks and send what fits."""
        todo: list[Delivery] = []
        if feeding:  # a generator: read outside the lock, and only as far ahead as there is room
            for call in calls:
                with self.lock:
                    self.room.wait_for(lambda: len(self.pending) < _FEED_AHEAD or self.state in _OVER)
                    over = self.state in _OVER
                    self._queue(call, todo)
                    self._dispatch(todo)
                deliver(todo)
                todo.clear()
                if over:  # terminated: read no more of the input
                    if isinstance(calls, Generator):
                        calls.close()
                    return
            return
        with self.lock:
            for call in calls:
                self._queue(call, todo)
            self._dispatch(todo)
        deliver(todo)

    def _queue(self, call: Call, todo: list[Delivery]) -> None:
        if self.state in _OVER:
            todo.append(Delivery(call.job, call.index, False, PoolClosedError("terminated")))
        else:
            self.pending.append(Task(self.next_tid, call))
            self.next_tid += 1

    def feed(self, calls: Iterator[Call]) -> None:
        """Queue the tasks a generator makes, on a thread of their own (imap of a generator)."""

        def feeder() -> None:
            try:
                self.submit(calls, feeding=True)
            finally:
                with self.lock:
                    self.feeders -= 1
                self.wake()

        with self.lock:
            self.feeders += 1
        threading.Thread(target=feeder, name="leakguard-pool-feeder", daemon=True).start()

    def _encode(self, task: Task, todo: list[Delivery]) -> bool:
        if task.body is not None:
            return True
        pickler = self.pickler  # one, reused: this runs under the lock
        try:
            pickler.dump((task.func, task.mode, task.args))  # a wire.TaskBody, as a plain tuple (see there)
        except Exception as exc:  # noqa: BLE001 - an unpicklable function or argument fails this task only
            todo.append(Delivery(task.job, task.index, False, exc))
            self.pickler = self.pickler.fresh()  # in whatever state the failure left it: replaced
            return False
        task.keep = pickler.keep
        if task.keep:
            failpoint("pool.after-sharing-arguments")
        task.body = _wire.frame(_wire.TASK, task.tid, pickler.file.getvalue())
        pickler.reset()  # holds nothing of this task's between tasks (its blocks are the task's)
        task.func = task.args = None
        return True

    def _capacity(self, w: Worker) -> int:
        if not w.takes_work:
            return 0
        # Long tasks: one queued behind the running one, while there is plenty to do.
        limit = 2 if len(self.pending) >= len(self.workers) else 1
        if w.avg is not None:
            limit = next((depth for under, depth in _PREFETCH if w.avg < under), limit)
        if self.maxtasks is not None:
            limit = min(limit, self.maxtasks - w.sent + len(w.inflight))
        return limit - len(w.inflight)

    def _dispatch(self, todo: list[Delivery]) -> None:
        """Send pending tasks to the workers with room, least loaded first (lock held)."""
        if self.broken is not None:
            while self.pending:
                task = self.pending.popleft()
                todo.append(Delivery(task.job, task.index, False, self.broken))
            return
        # One task at a time to the least loaded worker with room: an idle worker always
        # gets work before a busy one gets a second task queued.
        frames: dict[Worker, list[bytes]] = {}
        while self.pending:
            candidates = [w for w in self.workers.values() if self._capacity(w) > 0]
            if not candidates:
                break
            w = min(candidates, key=lambda w: len(w.inflight))
            task = self.pending.popleft()
            if not self._encode(task, todo):
                continue
            assert task.body is not None
            frames.setdefault(w, []).append(task.body)
            w.inflight.append(task)
            w.sent += 1
            if len(w.inflight) == 1 and w.state is Life.READY:
                w.started = time.monotonic()
        for w, parts in frames.items():
            self._send(w, b"".join(parts))
        if self.feeders and len(self.pending) < _FEED_AHEAD:  # only feeders wait for room (submit)
            self.room.notify_all()

    def _send(self, w: Worker, data: bytes) -> None:
        w.out.append(memoryview(data))
        _procs.flush(w)
        if w.out and not w.writing:
            self.wake()  # the I/O thread watches for room in the pipe

    # ------------------------------------------------------------------ the I/O thread

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # noqa: BLE001 - a bug here must fail the work, never hang it
            self._fail_everything(exc)
        finally:
            self._shut_down()

    def _step(self) -> bool:
        todo: list[Delivery] = []
        dead = []
        for key, _ in self.sel.select(self._next_deadline()):
            what, w = key.data.what, key.data.worker
            if what is Ready.RESULT:
                self._read(w, todo)
            elif what is Ready.SENTINEL:
                dead.append(w)
            elif what is Ready.WRITE:
                with self.lock:
                    _procs.flush(w)
            elif what is Ready.WAKE:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            elif what is Ready.GUARDIAN:
                self._replace_guardian()
        for w in dead:
            self._bury(w, todo)
        self._enforce_deadlines(todo)
        deliver(todo)  # results first: a caller waiting in get() should not wait for bookkeeping
        todo.clear()
        with self.lock:
            if self.state is State.TERMINATING:
                self._escalate()
            self._maintain(todo)
            go_on = bool(self.workers) or (self.state is State.RUNNING)
        deliver(todo)
        return go_on

    def _read(self, w: Worker, todo: list[Delivery]) -> None:
        size = _wire.SMALL_READ  # a result or two, most often (wire.SMALL_READ says why not more)
        channel = self.channels.get(w)
        if channel is None:
            channel = self.channels[w] = _wire.borrow(w.result_fd)
        while True:
            try:
                data, fds = _wire.receive(channel, size)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                _wire.close_all(fds)
                if w.die():  # the channel closed: its sentinel follows
                    self.sel.unregister(w.result_fd)
                return
            for f in w.frames.feed(data, fds):
                if not f.fds:
                    self._on_frame(w, f.kind, f.tid, f.body, todo)
                    continue
                # The descriptors that came with a frame are its result's blocks': whatever
                # the frame turns out to be, the ones its unpickling does not take are closed.
                with received_descriptors(f.fds):
                    self._on_frame(w, f.kind, f.tid, f.body, todo)
            if len(data) < size:
                return  # (more may follow data sent with descriptors: the selector says so)
            size = _wire.LARGE_READ

    def _on_frame(self, w: Worker, kind: int, tid: int, body: bytes, todo: list[Delivery]) -> None:
        now = time.monotonic()
        if kind == _wire.READY:
            w.mark_ready()
            if w.inflight:
                w.started = now
            self.guardian.worker_ready(w.ident.pid)  # its start-up sweep waits for the workers (issue 15)
            return
        if kind == _wire.INIT_FAILED:
            with self.lock:
                self.broken = _unpickle_error(body)
                self._dispatch(todo)  # fails what waits
            return
        ok = kind & ~_wire.FLAGS == _wire.OK
        with self.lock:
            if not w.inflight or w.inflight[0].tid != tid:
                # The answer to a task already settled (it timed out as the answer came):
                # adopt nothing; the worker, being killed, has its blocks settled with it.
                return
            task = w.inflight.popleft()
            if w.started is not None:
                took = now - w.started
                w.avg = took if w.avg is None else 0.8 * w.avg + 0.2 * took
            w.started = now if w.inflight else None
            if kind & _wire.RETIRING:
                w.retire()
                self._requeue(list(w.inflight))
                w.inflight.clear()
                w.started = None  # it runs nothing more: no deadline while it takes its time to exit
        adopted_names()
        try:
            value = pickle.loads(body)
        except BlockGoneError as exc:
            if kind & _wire.HANDED and exc.holder_pid == w.ident.pid:
                self._lost_with_its_worker(w, task)
                return
            ok, value = False, exc
        except Exception as exc:  # noqa: BLE001 - a result that cannot be rebuilt here fails its task
            ok, value = False, exc
        except BaseException as exc:  # noqa: BLE001 - SPEC 6: it fails its task, and never this thread
            # A result whose rebuilding raises SystemExit (a crafted __reduce__) or the like
            # would end the I/O thread, not the program; as a result that cannot be sent.
            ok, value = False, MaybeEncodingError(exc, _Unrebuilt(task.desc))
            value.__cause__ = exc
        with self.lock:
            if kind & _wire.HANDED and not w.dead:
                self._send(w, _wire.frame(_wire.ACK, tid, pickle.dumps(adopted_names())))
            # Its argument blocks serve later tasks, unless the worker still uses one.
            self.spare.settle(task.keep, reusable=not kind & _wire.RETAINED and self.state not in _OVER)
            task.keep = []
        todo.append(Delivery(task.job, task.index, ok, value))

    def _lost_with_its_worker(self, w: Worker, task: Task) -> None:
        """A result's anonymous block went with its worker before we held it: the worker
        holds it until our answer and lets go only by dying, so it is dead or dying. The
        task is its running task again (its argument blocks kept), retried or failed with
        WorkerLostError when the worker is buried, as after any death mid-task."""
        with self.lock:
            w.inflight.appendleft(task)
        with contextlib.suppress(OSError):
            os.kill(w.ident.pid, signal.SIGKILL)  # our unreaped child: the pid is still its

    def _requeue(self, tasks: list[Task]) -> None:
        self.pending.extendleft(reversed(tasks))

    def _bury(self, w: Worker, todo: list[Delivery]) -> None:
        """A worker exited: account for its tasks, settle its journal, forget it."""
        w.die()
        self._read(w, todo)  # whatever it sent before it died still counts
        w.proc.join(5)
        exitcode = w.proc.exitcode
        for fd, registered in ((w.result_fd, True), (w.proc.sentinel, True), (w.task_fd, w.writing)):
            if registered:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)
        with self.lock:
            del self.workers[w.ident.pid]
            tasks = list(w.inflight)
            w.inflight.clear()
            if self.broken is not None:  # its initializer failed: so do its tasks, with that error
                todo.extend(Delivery(t.job, t.index, False, self.broken) for t in tasks)
                tasks = []
            if tasks and w.first_task_ran and self.state is not State.TERMINATING:
                first = tasks.pop(0)
                first.attempts += 1
                if first.attempts <= self.retries:
                    tasks.insert(0, first)
                else:
                    error = WorkerLostError(first.desc, w.ident.pid, exitcode, first.attempts)
                    todo.append(Delivery(first.job, first.index, False, error))
            if self.state is State.TERMINATING:
                todo.extend(Delivery(t.job, t.index, False, PoolClosedError("terminated")) for t in tasks)
            else:
                self._requeue(tasks)
        channel = self.channels.pop(w, None)
        if channel is not None:
            channel.detach()  # the descriptor is closed next, once
        _procs.close_fds(w.task_fd, w.result_fd)
        w.frames.discard()  # descriptors that came with a frame cut short by the death
        with contextlib.suppress(ValueError):  # reaped by someone else (an os.wait() of the user's)
            w.proc.close()
        # Blocks the worker made and did not hand over go now; the ones we adopted stay ours.
        with contextlib.suppress(Exception):
            settle_worker(self.folder, w.ident, _owner.owns)
        self.guardian.worker_gone(w.ident.pid)

    def _next_deadline(self) -> float | None:
        deadlines = [] if self.kill_at is None else [self.kill_at]
        if self.task_timeout is not None:
            deadlines += [
                w.started + self.task_timeout
                for w in self.workers.values()
                if w.started is not None and not w.timed_out
            ]
        if not deadlines:
            return None
        # select() refuses a wait past about 24 days (epoll counts int milliseconds) with
        # OverflowError, which would stop this thread: a far deadline is waited for in steps.
        return min(_LONGEST_WAIT, max(0.0, min(deadlines) - time.monotonic()))

    def _enforce_deadlines(self, todo: list[Delivery]) -> None:
        if self.task_timeout is None:
            return
        now = time.monotonic()
        with self.lock:
            for w in self.workers.values():
                if w.started is None or w.timed_out or now - w.started < self.task_timeout:
                    continue
                task = w.inflight.popleft()
                w.time_out()
                todo.append(
                    Delivery(task.job, task.index, False, TaskTimeoutError(task.desc, self.task_timeout, w.ident.pid))
                )
                with contextlib.suppress(OSError):
                    os.kill(w.ident.pid, signal.SIGKILL)  # our child, not yet reaped: the pid is still its

    def _maintain(self, todo: list[Delivery]) -> None:
        """Replace workers, send work, stop idle workers once closed (lock held)."""
        if self.state in _REPLACING and self.broken is None:
            needed = self.processes if (self.state is State.RUNNING or self.pending) else 0
            active = sum(1 for w in self.workers.values() if w.active)
            for _ in range(needed - active):
                self._start_worker()
        self._dispatch(todo)
        if self.state is State.CLOSING and not self.pending and not self.feeders:
            for w in self.workers.values():
                if not w.inflight and w.state in _IDLE_STOPS:
                    w.stop()
                    self._send(w, _wire.frame(_wire.STOP, 0, b""))
        for w in self.workers.values():
            if w.out and not w.writing and not w.dead:
                self.sel.register(w.task_fd, selectors.EVENT_WRITE, _Tag(Ready.WRITE, w))
                w.writing = True
            elif not w.out and w.writing:
                self.sel.unregister(w.task_fd)
                w.writing = False

    def _replace_guardian(self) -> None:
        self.sel.unregister(self.guardian.fd)
        _procs.forget_fds(*self.guardian.fds)
        self.guardian.reap()
        if self.state is not State.DONE:
            self.guardian = self._start_guardian()

    # ------------------------------------------------------------------ the state

    @property
    def closing(self) -> bool:
        """close() was called and the work submitted before it is still being done."""
        return self.state is State.CLOSING

    @property
    def inherited(self) -> bool:
        """This is a forked copy in a child of the pool's owner: inert (SPEC 2.1)."""
        return self.state is State.INHERITED

    def close(self) -> None:
        """No more work: what was submitted completes, then the workers stop."""
        if self.state is State.INHERITED:  # a forked copy: checked before the lock, which may be the parent's
            return
        with self.lock:
            if self.state is State.RUNNING:
                self.state = State.CLOSING
                self.room.notify_all()
        self.wake()

    def inherit(self) -> None:
        """In a child forked from the owner (the fork handler, _journal/owner.py): touch nothing
        from now on. Its workers, pipes and guardian are the parent's; so may be its lock."""
        self.state = State.INHERITED

    def terminate(self) -> None:
        """Stop now: fail what waits, SIGTERM every worker, SIGKILL the rest after a grace period."""
        todo: list[Delivery] = []
        if self.state is State.INHERITED:  # a forked copy: checked before the lock, which may be the parent's
            return
        with self.lock:
            if self.state in _OVER:
                return
            self.state = State.TERMINATING
            self.kill_at = time.monotonic() + _TERMINATE_GRACE
            todo = [Delivery(t.job, t.index, False, PoolClosedError("terminated")) for t in self.pending]
            self.pending.clear()
            for w in self.workers.values():
                w.stop()
                with contextlib.suppress(OSError):
                    os.kill(w.ident.pid, signal.SIGTERM)
            self.room.notify_all()
        self.wake()
        deliver(todo)

    def _escalate(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.kill_at = None
            for w in self.workers.values():
                with contextlib.suppress(OSError):
                    os.kill(w.ident.pid, signal.SIGKILL)  # our unreaped child: the pid is still its

    def _fail_everything(self, exc: BaseException) -> None:
        # SPEC 6: whatever stopped this thread (a bug, a SystemExit from code we called), every
        # task still held fails with it, so no get() and no exit waits for it; and it is told.
        self.failure = exc
        with contextlib.suppress(BaseException):
            print(f"leakguard: the pool's I/O thread stopped on {exc!r}; its work fails with it.", file=sys.stderr)
            traceback.print_exception(exc)
        with self.lock:
            self.state = State.TERMINATING
            todo = [Delivery(t.job, t.index, False, exc) for t in self.pending]
            self.pending.clear()
            for w in self.workers.values():
                todo.extend(Delivery(t.job, t.index, False, exc) for t in w.inflight)
                w.inflight.clear()
                with contextlib.suppress(OSError):
                    os.kill(w.ident.pid, signal.SIGKILL)
        deliver(todo)

    def _shut_down(self) -> None:
        for w in list(self.workers.values()):
            with contextlib.suppress(OSError):
                os.kill(w.ident.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._bury(w, [])
        self.state = State.DONE
        self.spare.clear()  # unlinked as they are collected
        failpoint("pool.shutdown")
        guardian: GuardianLink | None = getattr(self, "guardian", None)  # None: Pool() failed first
        if guardian is not None:
            with contextlib.suppress(Exception):
                self.sel.unregister(guardian.fd)
            guardian.shut_down()
            _procs.forget_fds(*guardian.fds)
        _procs.close_fds(*(fd for fd in (self.wake_r, self.wake_w, self.lifeline_w) if fd >= 0))
        if hasattr(self, "lifeline"):
            self.lifeline.close()
        _procs.forget_fds(self.sel.fileno())
        self.sel.close()


class _Unrebuilt:
    """Stands for a result that could not be rebuilt, in the error that says so."""

    def __init__(self, desc: str) -> None:
        self.desc = desc

    def __repr__(self) -> str:
        return f"<the result of {self.desc}, which could not be rebuilt in the parent>"


def _unpickle_error(body: bytes) -> BaseException:
    try:
        value = pickle.loads(body)
    except Exception as exc:  # noqa: BLE001 - the error we could not rebuild is replaced by why
        return exc
    return value if isinstance(value, BaseException) else RuntimeError(repr(value))
