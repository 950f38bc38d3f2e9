"""Journaled POSIX named semaphores (posix_ipc), picklable to other processes by name.

Created and released in the write-ahead order (docs/design.md), with the ``sem.*``
failpoints.
The creating process owns the semaphore: it is unlinked by ``unlink()``, when
the owner's last reference is collected, or at the owner's normal exit.
"""

from __future__ import annotations

import errno
import os
import sys
import weakref
from typing import Any

import posix_ipc

from leakguard._failpoint import failpoint
from leakguard._journal import owner as _owner
from leakguard._os import ipc as _ipc
from leakguard._os.names import is_ours, make_name, public_name, sem_path

__all__ = ["Lock", "Semaphore"]

_NAME_ATTEMPTS = 8


def _create(value: int) -> tuple[str, posix_ipc.Semaphore]:
    writer = _owner.journal()
    for _ in range(_NAME_ATTEMPTS):
        name = make_name()
        failpoint("sem.before-record")
        writer.add("sem", name, 0)  # from here on we own the name, whatever exists at it
        try:
            failpoint("sem.after-record")
            handle = _ipc.sem_create(name, value)
        except FileExistsError:
            writer.settle(name)  # a squatter or a collision: never attach, never unlink
            continue
        except BaseException:
            _owner.release(name)
            raise
        try:
            failpoint("sem.after-open")
            if sys.platform.startswith("linux"):
                st = os.stat(sem_path(name))
                writer.inode(name, st.st_dev, st.st_ino)
        except BaseException:
            handle.close()
            _owner.release(name)
            raise
        return name, handle
    raise FileExistsError(
        f"{_NAME_ATTEMPTS} fresh semaphore names in a row were taken; is something squatting on sem.lg_* names?"
    )


class Semaphore:
    """A named POSIX semaphore with the ``multiprocessing.Semaphore`` interface."""

    def __init__(self, value: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if not 0 <= value <= posix_ipc.SEMAPHORE_VALUE_MAX:
            raise ValueError(f"value must be between 0 and {posix_ipc.SEMAPHORE_VALUE_MAX}, got {value}")
        self._name, self._handle = _create(value)
        self._owner = True
        weakref.finalize(self, _release, self._name, self._handle).atexit = False

    @classmethod
    def _attach(cls, name: str) -> Semaphore:
        if not is_ours(name):  # checked before posix_ipc sees it (a crafted pickle: see _ipc._checked)
            raise ValueError(f"{name!r:.80} is not the name of a leakguard semaphore; the pickle is damaged or crafted")
        self = cls.__new__(cls)
        self._name = name
        self._handle = _ipc.sem_attach(name)
        self._owner = False
        weakref.finalize(self, self._handle.close).atexit = False
        return self

    @property
    def name(self) -> str:
        """The semaphore's name without the leading slash (``lg_...``), the form of
        ``SharedMemory.name``. Linux lists it in /dev/shm as ``sem.lg_...``."""
        return public_name(self._name)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; False if ``block`` is false or ``timeout`` passes first."""
        if not block:
            wait: float | None = 0
        elif timeout is None:
            wait = None
        else:
            wait = max(0.0, float(timeout))
        try:
            self._handle.acquire(wait)
        except posix_ipc.BusyError:
            return False
        return True

    def release(self) -> None:
        """Give one unit back (any process may, as with a POSIX semaphore)."""
        self._handle.release()

    def get_value(self) -> int:
        """The current count (a snapshot: other processes may change it at once)."""
        value: int = self._handle.value
        return value

    def unlink(self) -> None:
        """Remove the name; handles already open in other processes keep working."""
        # An explicit unlink() is the standard library's SharedMemory.unlink(): any process
        # may remove the name (the owner's journal then names an object that is gone, which
        # its release and the sweep take as done). Only the owner does it on its own (SPEC 2.2).
        if not _owner.release(self._name) and not _ipc.sem_unlink(self._name):
            raise FileNotFoundError(errno.ENOENT, "no semaphore by that name (already unlinked)", self.name)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._owner and not _owner.owns(self._name):
            raise ValueError(f"semaphore {self.name} was unlinked; it cannot be sent to another process")
        return (Semaphore._attach, (self._name,))

    def __repr__(self) -> str:
        return f"<leakguard.Semaphore {self.name} value={self.get_value()}>"


def _release(name: str, handle: posix_ipc.Semaphore) -> None:
    _owner.release(name)
    handle.close()


def Lock() -> Semaphore:  # noqa: N802 - mirrors multiprocessing.Lock
    """A ``Semaphore(1)``."""
    return Semaphore(1)
