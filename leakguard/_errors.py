"""The exception tree: one root, leaves that also subclass the matching built-in.

Every error keeps its facts as attributes and pickles, because errors cross
process boundaries (a worker's error reaches the parent through a pipe).
"""

from __future__ import annotations

__all__ = [
    "JournalFolderError",
    "LeakguardError",
    "NotOwnerError",
    "OutOfSharedMemoryError",
]


class LeakguardError(Exception):
    """Root of every error leakguard raises on purpose."""


class OutOfSharedMemoryError(LeakguardError, MemoryError):
    """The shared memory filesystem cannot hold a new block (or its journal record).

    Raised at creation, never later as a SIGBUS: the size is reserved up front.
    Nothing is left behind when it is raised.
    """

    def __init__(self, size: int, available: int | None, detail: str = "") -> None:
        self.size = size
        self.available = available
        self.detail = detail
        free = "unknown" if available is None else f"{available:,} bytes"
        message = (
            f"cannot reserve {size:,} bytes of shared memory ({free} free). "
            "Free blocks you no longer need (leakguard.free), run `leakguard sweep` to "
            "remove orphans, or enlarge /dev/shm (Docker: --shm-size)."
        )
        if detail:
            message += f" [{detail}]"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.size, self.available, self.detail))


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
