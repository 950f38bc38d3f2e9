"""The exception tree: one root, leaves that also subclass the matching built-in.

Every error keeps its facts as attributes and pickles, because errors cross
process boundaries (a worker's error reaches the parent through a pipe).
"""

from __future__ import annotations

import errno
import signal
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BlockGoneError",
    "InheritedPoolError",
    "JournalFolderError",
    "LeakguardError",
    "NestedPoolError",
    "NotOwnerError",
    "OutOfSharedMemoryError",
    "PoolClosedError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class LeakguardError(Exception):
    """Root of every error leakguard raises on purpose."""


class OutOfSharedMemoryError(LeakguardError, MemoryError):
    """The shared memory filesystem (or, for an anonymous block, memory) cannot hold a new
    block (or its journal record).

    Raised at creation, never later as a SIGBUS: the size is reserved up front.
    Nothing is left behind when it is raised. ``limit`` says which limit was hit:
    ``"/dev/shm"`` (a named block, or the journal's folder) or ``"memory"`` (an anonymous
    block: the machine's memory or the memory cgroup's limit, never /dev/shm's size).
    """

    def __init__(self, size: int, available: int | None, detail: str = "", limit: str = "/dev/shm") -> None:
        self.size = size
        self.available = available
        self.detail = detail
        self.limit = limit
        free = "unknown" if available is None else f"{available:,} bytes"
        if limit == "memory":
            message = (
                f"cannot reserve {size:,} bytes of memory for an anonymous shared block ({free} available). "
                "Anonymous blocks are limited by memory (the machine's, or the container's memory cgroup "
                "limit), not by the size of /dev/shm. Free arrays you no longer need (leakguard.free), "
                "make smaller ones, or raise the memory limit (Docker: --memory)."
            )
        else:
            message = (
                f"cannot reserve {size:,} bytes of shared memory ({free} free). "
                "Free blocks you no longer need (leakguard.free), run `leakguard sweep` to "
                "remove orphans, or enlarge /dev/shm (Docker: --shm-size)."
            )
        if detail:
            message += f" [{detail}]"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.size, self.available, self.detail, self.limit))


class BlockGoneError(LeakguardError, FileNotFoundError):
    """A pickled anonymous ``SharedArray`` names a block that can no longer be attached.

    An anonymous block has no name anywhere: a pickle of it names the process holding
    it (pid and start time), the descriptor number and the block's inode, and another
    process attaches by opening ``/proc/PID/fd/N``. This error says that holder is gone
    (it freed the block, dropped it or exited), or that its pid or descriptor number now
    belongs to something else: the pickle is stale, and nothing was attached.
    """

    def __init__(self, name: str, holder_pid: int | None, why: str) -> None:
        self.name = name
        self.holder_pid = holder_pid
        self.why = why
        holder = "its holder" if holder_pid is None else f"its holder (pid {holder_pid})"
        super().__init__(
            f"cannot attach anonymous block {name}: {holder} {why}. An anonymous block lives while "
            "the process that owns it holds it (until free(), its last reference there, or its exit); "
            "keep the owner's array alive while others attach, or make a named block "
            "(shared_array(..., named=True)) that others may attach by name."
        )
        self.errno = errno.ENOENT

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.holder_pid, self.why))


class JournalFolderError(LeakguardError, OSError):
    """The journal folder is missing, unsafe (symlink, foreign owner, writable by others) or unusable."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"journal folder {path!r} {problem}. Use a private folder (mode 0700, owned by "
            "you): set LEAKGUARD_DIR or --dir to one, or unset LEAKGUARD_DIR for the default."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.problem))


class NotOwnerError(LeakguardError, PermissionError):
    """Only the process that created a resource may free it; others only detach."""

    def __init__(self, name: str, owner_pid: int | None) -> None:
        self.name = name
        self.owner_pid = owner_pid
        owner = "another process" if owner_pid is None else f"process {owner_pid}"
        super().__init__(
            f"{name!r} is owned by {owner}; only the owner frees it. Drop your references "
            "instead (this process then only unmaps it)."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.owner_pid))


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "disappeared (exit status unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (signal {-exitcode})"
    return f"exited with code {exitcode}"


_LIKELY = {
    -signal.SIGKILL: "the OOM killer (see `dmesg`), a scheduler's or a person's kill -9",
    -signal.SIGSEGV: "a crash in native code (a C extension, or ctypes)",
    -signal.SIGBUS: "a full /dev/shm touched through memory not reserved up front",
    -signal.SIGTERM: "a scheduler or a person stopping it",
    # Workers never run the main module (issue 13): an unguarded script no longer kills them
    # as they start. What is left: a task's sys.exit(1), or an error before the worker's loop.
    1: "sys.exit(1) in the task, or an error as the worker started (its traceback is on the job's stderr)",
}


class WorkerLostError(LeakguardError, BrokenProcessPool):
    """A worker died while running a task, and the task's retries are used up.

    Only this task fails; the pool replaced the worker and goes on. It is a
    ``concurrent.futures.process.BrokenProcessPool`` (a ``RuntimeError``), so code
    written for ProcessPoolExecutor that catches a lost worker catches this one too.
    """

    def __init__(self, task: str, pid: int | None, exitcode: int | None, attempts: int = 1) -> None:
        self.task = task
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.attempts = attempts
        tries = "once" if attempts == 1 else f"on each of {attempts} attempts"
        likely = _LIKELY.get(exitcode or 0, "a call to os._exit() or a crash in the task's code")
        super().__init__(
            f"the worker (pid {pid}) running {task} {_describe_exit(exitcode)} {tries}. Likely cause: {likely}. "
            "The pool replaced the worker; pass retries=N to Pool() or Executor() to retry such tasks."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.pid, self.exitcode, self.attempts))


class TaskTimeoutError(LeakguardError, TimeoutError):
    """A task ran longer than the pool's ``task_timeout``; it was stopped with its worker."""

    def __init__(self, task: str, timeout: float, pid: int | None) -> None:
        self.task = task
        self.timeout = timeout
        self.pid = pid
        super().__init__(
            f"{task} ran longer than task_timeout={timeout:g} s; its worker (pid {pid}) was killed and "
            "replaced. Raise task_timeout, or split the task."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.timeout, self.pid))


class PoolClosedError(LeakguardError, ValueError):
    """Work was given to a pool after close() or terminate() (a ValueError, as in multiprocessing)."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(f"Pool not running (it was {state}); create a new Pool for more work")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.state,))


class InheritedPoolError(PoolClosedError):
    """A pool (or executor) was used in a process forked from the one that created it.

    The copy a forked child inherits is inert: its workers answer only their owner.
    Dropping it (``terminate()``, ``close()``, leaving a ``with`` block) does nothing.
    """

    def __init__(self, owner_pid: int, pid: int) -> None:
        self.state = "inherited"
        self.owner_pid = owner_pid
        self.pid = pid
        ValueError.__init__(
            self,
            f"this pool belongs to process {owner_pid}; process {pid} is a fork of it and inherited "
            "only an inert copy (its workers serve their owner alone). Create a new leakguard.Pool "
            "or Executor in this process, or submit the work from the owner.",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.owner_pid, self.pid))


class NestedPoolError(LeakguardError, RuntimeError):
    """``Pool()`` or ``Executor()`` was called in a daemonic process, such as a pool's worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(
            f"cannot start a pool in process {pid}: it is a daemonic process (a pool worker running a "
            "task, or a daemon=True multiprocessing.Process), and those may not start processes of "
            "their own. Start the pool in the main process and submit the inner work to it, or run "
            "that work serially inside the task. Nothing was started."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pid,))


# Errors are raised from where they are defined, often before anyone has asked for
# ``leakguard.X`` (leakguard/__init__.py loads them lazily): they print and pickle
# under the public name from the start.
for _name in __all__:
    globals()[_name].__module__ = "leakguard"
