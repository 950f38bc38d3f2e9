"""A pool's worker processes as the parent sees them: the records of workers and
tasks (a worker's lifecycle is one ``Life`` state), how a worker is started with
its pipes, and the parent's side of those pipes.

A worker never runs the main module (SPEC 2.1, issue 13): under spawn and
forkserver, multiprocessing would run it again in every worker (as ``__mp_main__``),
so a script that starts a pool without ``if __name__ == "__main__":`` would start
pools in its workers. What the tasks need of ``__main__`` travels by value instead
(byvalue.py).

The parent-side ends of every pipe are closed in any child forked from this
process, so that only this process keeps its workers' lifeline and its
guardian's pipe open (fork start method, or a fork of the user's own): a worker
or a guardian sees end of file exactly when this process is gone.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing import process, resource_tracker, spawn
from multiprocessing.connection import Connection
from typing import Any, Final

from leakguard._journal import owner as _owner
from leakguard._journal.identity import Identity, start_time

from . import wire as _wire
from . import worker as _worker

__all__ = [
    "Call",
    "Life",
    "Task",
    "Worker",
    "close_after_fork",
    "close_fds",
    "flush",
    "forget_fds",
    "identity_of",
    "start_worker",
]

_parent_fds: set[int] = set()  # our ends of every pool pipe: closed in forked children
_object_fds: set[int] = set()  # of those, the ones a Python object closes as it is collected


def _forget_parent_after_fork() -> None:
    # A descriptor an object owns (a selector, the guardian's pipe files) is pointed at
    # /dev/null instead of closed: its number stays taken until the object closes it, so
    # that close can never hit a file the child opened later under the same number.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if _object_fds else -1
    for fd in list(_parent_fds):
        with contextlib.suppress(OSError):
            if fd in _object_fds:
                os.dup2(null, fd, inheritable=False)
            else:
                os.close(fd)
    if null >= 0:
        os.close(null)
    _parent_fds.clear()
    _object_fds.clear()
    # multiprocessing lists the parent's workers as this process's children too: at exit it
    # would SIGTERM them (multiprocessing.util._exit_function) and fail to join them.
    for proc in list(process._children):  # type: ignore[attr-defined]
        if getattr(proc, "_leakguard_worker", False):
            process._children.discard(proc)  # type: ignore[attr-defined]


_owner.after_fork_in_child(_forget_parent_after_fork)


def identity_of(pid: int) -> Identity:
    me = Identity.current()
    return Identity(pid=pid, start=start_time(pid) or 0, boot=me.boot, pidns=me.pidns)


@dataclass(slots=True)
class Call:
    """A task as a caller submits it: ``func`` on ``args`` (as ``mode`` says), whose answer
    goes to ``job._deliver(index, ...)``; ``desc`` names it in errors."""

    job: Any  # the result object (results.py)
    index: int  # the task's place in its job: a map's chunk number, an imap's item number
    func: Any
    mode: int  # worker.APPLY, MAP or STARMAP
    args: Any
    desc: str


class Task:
    """A submitted call as the engine tracks it, from the queue until it is settled."""

    __slots__ = ("args", "attempts", "body", "desc", "func", "index", "job", "keep", "mode", "tid")

    def __init__(self, tid: int, call: Call) -> None:
        self.tid = tid
        self.job = call.job
        self.index = call.index
        self.func = call.func
        self.mode = call.mode
        self.args = call.args
        self.desc = call.desc
        self.attempts = 0
        self.body: bytes | None = None
        self.keep: list[Any] = []  # argument blocks, held until the task is settled


class Life(enum.Enum):
    """A worker's lifecycle as the parent sees it. It only moves down this list (STARTING
    to READY only): a later state says more about what the worker's tasks become."""

    STARTING = 1  # started; its initializer has not finished: tasks wait in its pipe
    READY = 2  # said READY: the first task it holds is running
    RETIRING = 3  # its last result said so (maxtasksperchild, max_memory_per_child): it exits
    STOPPING = 4  # told to stop: STOP once the pool is closed and it is idle, or terminate()'s SIGTERM
    TIMED_OUT = 5  # a task passed its deadline: failed, and the worker SIGKILLed
    DEAD = 6  # its result socket closed, or its process ended


_TAKES_WORK: Final = frozenset({Life.STARTING, Life.READY})
# Counted as one of the pool's workers: a timed-out worker is replaced once it is buried.
_ACTIVE: Final = frozenset({Life.STARTING, Life.READY, Life.TIMED_OUT})
# Died after its tasks were accounted for: what it still held never started.
_TASKS_UNSTARTED: Final = frozenset({Life.RETIRING, Life.TIMED_OUT})


class Worker:
    """A worker process, its pipes, the tasks it holds, and its lifecycle (``state``)."""

    __slots__ = (
        "avg",
        "died_as",
        "frames",
        "ident",
        "inflight",
        "out",
        "proc",
        "result_fd",
        "sent",
        "started",
        "state",
        "task_fd",
        "writing",
    )

    def __init__(self, proc: Any, ident: Identity, task_fd: int, result_fd: int) -> None:
        self.proc = proc
        self.ident = ident
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.frames = _wire.FrameBuffer()
        self.out: deque[memoryview] = deque()
        self.inflight: deque[Task] = deque()
        self.state = Life.STARTING  # read anywhere; changed only by the methods below
        self.died_as: Life | None = None  # dead: the state it was in as it died (or TIMED_OUT, after)
        self.started: float | None = None  # when inflight[0] began running
        self.avg: float | None = None  # recent task duration
        self.sent = 0
        self.writing = False  # its task pipe is in the selector, for room to write (I/O, not lifecycle)

    def _advance(self, state: Life) -> bool:
        if state.value <= self.state.value:
            return False
        self.state = state
        return True

    def mark_ready(self) -> None:
        if self.state is Life.STARTING:
            self.state = Life.READY

    def retire(self) -> None:
        self._advance(Life.RETIRING)

    def stop(self) -> None:
        self._advance(Life.STOPPING)

    def time_out(self) -> None:
        if self.state is Life.DEAD:
            # Dead but not yet buried: what it still holds never started, and no
            # other deadline of its counts (see timed_out and first_task_ran).
            self.died_as = Life.TIMED_OUT
        else:
            self._advance(Life.TIMED_OUT)

    def die(self) -> bool:
        """The worker is gone (its result socket closed, or its sentinel fired): True the first time."""
        if self.state is Life.DEAD:
            return False
        self.died_as = self.state
        self.state = Life.DEAD
        return True

    @property
    def takes_work(self) -> bool:
        return self.state in _TAKES_WORK

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE

    @property
    def dead(self) -> bool:
        return self.state is Life.DEAD

    @property
    def timed_out(self) -> bool:
        """A task of its passed its deadline (it may have died since)."""
        return Life.TIMED_OUT in (self.state, self.died_as)

    @property
    def first_task_ran(self) -> bool:
        """Dead: whether the first task it still held was running (it is charged an attempt)."""
        return self.died_as not in _TASKS_UNSTARTED


_starting: list[bool] = []  # [True] while this thread forks a worker with the fork method
_no_main = threading.local()  # .on: this thread is starting a worker (spawn or forkserver)
_hooked = threading.Lock()


def _preparation_data(name: str, *, _stdlib: Any = spawn.get_preparation_data) -> dict[str, Any]:
    """multiprocessing's data for a new process, without the main module while this thread
    starts a worker: a spawned (or forkserver) child imports the module it names, running its
    top level again, before it runs anything else (multiprocessing/spawn.py, prepare())."""
    data: dict[str, Any] = _stdlib(name)
    if getattr(_no_main, "on", False):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


def _leave_out_main() -> None:
    # Both popen_spawn_posix and popen_forkserver (and the forkserver itself as it starts) call
    # spawn.get_preparation_data as they start a process, in the starting thread: for that call
    # only, and only in a thread of ours starting a worker (_no_main), the main module is left
    # out. Every other use of multiprocessing in the process is unchanged.
    with _hooked:
        if spawn.get_preparation_data is not _preparation_data:
            spawn.get_preparation_data = _preparation_data


def _quiet_stdin_in_forked_worker() -> None:
    # multiprocessing closes sys.stdin as a worker starts; under fork, if another thread
    # of the parent was reading it at the fork, its lock is held forever in the child and
    # the worker hangs there. A worker reads nothing from stdin: give it a fresh one.
    if _starting and _starting[-1]:
        with contextlib.suppress(OSError):
            sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - multiprocessing closes it


_owner.after_fork_in_child(_quiet_stdin_in_forked_worker)


def close_after_fork(*fds: int, owned: bool = False) -> None:
    """Our ends of a pool's pipes: closed in every child forked from here (``owned``: an
    object closes them as it is collected; they are pointed at /dev/null instead)."""
    _parent_fds.update(fds)
    if owned:
        _object_fds.update(fds)


def forget_fds(*fds: int) -> None:
    _parent_fds.difference_update(fds)
    _object_fds.difference_update(fds)


def close_fds(*fds: int) -> None:
    """Close our ends of a pool's pipes (forgotten first: a fork in between closes nothing twice)."""
    forget_fds(*fds)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def start_worker(ctx: Any, lifeline: Connection, config: _worker.WorkerConfig) -> Worker:
    """Start a worker process (any start method) with a task pipe and a result socket of its own."""
    task_r, task_w = os.pipe()
    try:
        # Results come back on a unix socket, not a pipe: a result's anonymous blocks travel
        # with its frame as descriptors (SCM_RIGHTS, wire.py), so none is lost if the worker
        # dies before we hold them.
        result_r, result_w = _wire.result_channel()
    except BaseException:  # EMFILE, say: the first pipe goes too (SPEC 6)
        close_fds(task_r, task_w)
        raise
    close_after_fork(task_w, result_r)
    with contextlib.suppress(OSError, AttributeError):
        # a larger pipe: fewer wake-ups for a stream of small tasks
        fcntl.fcntl(task_w, fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined,unused-ignore]
    child_ends = (Connection(task_r, writable=False), Connection(result_w, readable=False))
    proc = None
    try:
        proc = ctx.Process(
            target=_worker.run,
            args=(*child_ends, lifeline, config),
            name="LeakguardPoolWorker",
            daemon=True,
        )
        proc._leakguard_worker = True  # forgotten by multiprocessing in a forked child (above)
        method = ctx.get_start_method()
        if method != "fork":
            _leave_out_main()
        _starting.append(method == "fork")
        # A Ctrl-C must not kill a worker before run() ignores SIGINT (with spawn, a whole
        # interpreter starts first): it starts with SIGINT blocked, a mask that survives fork
        # and exec, and run() unblocks it once ignored. Not for forkserver: the server, which
        # this call may start, is shared with every other forkserver user of this process.
        masked = {signal.SIGINT} if method != "forkserver" else set()
        if method == "spawn":
            # Starting a spawn process starts the resource tracker if it is not running, and
            # that unblocks SIGINT in this thread as it ends (multiprocessing/resource_tracker.py):
            # start it first.
            resource_tracker.ensure_running()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, masked)
        try:
            _no_main.on = True
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            _starting.pop()
            _no_main.on = False
    except BaseException:
        if proc is not None and proc.pid is not None:  # started, then interrupted: not left running
            with contextlib.suppress(Exception):
                proc.kill()
                proc.join()
        close_fds(task_w, result_r)
        raise
    finally:
        for conn in child_ends:
            conn.close()
    os.set_blocking(task_w, False)
    os.set_blocking(result_r, False)
    return Worker(proc, identity_of(proc.pid), task_w, result_r)


def flush(w: Worker) -> None:
    """Write what is queued for ``w`` until its pipe is full (our ends never block)."""
    while w.out:
        chunk = w.out[0]
        try:
            n = os.write(w.task_fd, chunk)
        except BlockingIOError:
            return
        except OSError:  # the worker is gone; its sentinel tells the I/O thread
            w.out.clear()
            return
        if n < len(chunk):
            w.out[0] = chunk[n:]
            return
        w.out.popleft()
