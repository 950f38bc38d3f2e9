"""Write leases (fcntl(2) ``F_SETLEASE``): the kernel's word that nobody else has a file open.

The kernel grants a write lease on a descriptor only when no other open file description
of the inode exists: no other descriptor in any process of any PID namespace (one in
flight in a Unix socket counts too), and no mapping, since a mapping keeps its file
description alive after its descriptor is closed (glibc's named semaphores are such
mappings). Granted again as soon as the last holder is gone. ``sweep --foreign`` takes
one before it unlinks another library's leftover and holds it across the unlink (issue 14).

What a lease costs others: while it is held, another process's ``open()`` of the file
waits until it is released (at most ``/proc/sys/fs/lease-break-time``, 45 s by default),
and the kernel signals the lease's owner, by default with SIGIO, whose default action
ends the process. That must not happen to the sweep or to the program that called it,
from whatever thread. So ``take_write_lease`` asks for SIGURG instead (``F_SETSIG``;
ignored unless handled: discarded by the kernel, in every thread) and, once the lease
is granted, sets the descriptor's owner to nobody (``F_SETOWN`` 0: no signal at all).
The kernel makes the caller the owner as it grants the lease, which is why the second
step comes after it; a break in the microseconds between the two sends one SIGURG. The
sweep holds a lease only across one unlink (a joblib folder: its files' unlinks), so an
opener waits for microseconds, not for the break time.

Limits (fcntl(2)): regular files only; the caller must own the file or have CAP_LEASE
(EACCES); ``/proc/sys/fs/leases-enable`` must be 1, and some filesystems have no leases
(EINVAL); no leases on macOS. On overlayfs a mapping holds the underlying file, which a
lease on the overlay's file does not see (measured: granted while another process maps
it with its descriptor closed), so leases are trusted only on the filesystems in
``FAITHFUL_FILESYSTEMS``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import signal
import sys
from typing import Final

__all__ = [
    "FAITHFUL_FILESYSTEMS",
    "LEASES",
    "LeaseAnswer",
    "lease_broken",
    "open_for_lease",
    "release_lease",
    "take_write_lease",
]

_LINUX = sys.platform.startswith("linux")
# fcntl.h on Linux; the fcntl module names them where its build knew them.
_F_SETLEASE: Final = getattr(fcntl, "F_SETLEASE", 1024) if _LINUX else None
_F_GETLEASE: Final = getattr(fcntl, "F_GETLEASE", 1025) if _LINUX else None
_F_SETSIG: Final = getattr(fcntl, "F_SETSIG", 10) if _LINUX else None
_F_SETOWN: Final = fcntl.F_SETOWN
# The lease-break signal: ignored by default, so a stray one ends no process whatever
# thread it lands on (SIGIO's and the realtime signals' default action is to terminate).
_BREAK_SIGNAL: Final = signal.SIGURG

LEASES: Final = _F_SETLEASE is not None
"""True where the OS has file leases (Linux); whether one is granted is another matter."""

FAITHFUL_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs", "btrfs"})
"""Filesystems whose mappings keep the leased file itself open, so a lease sees them."""

# O_NONBLOCK: a file another process holds a lease on fails with EWOULDBLOCK instead of
# waiting out its break (and a FIFO swapped in at the name never blocks).
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LeaseAnswer(enum.Enum):
    """What ``take_write_lease`` got from the kernel."""

    GRANTED = "granted"  # nobody else has the file open or mapped; the lease is held
    REFUSED = "refused"  # another open file description or mapping exists
    UNAVAILABLE = "unavailable"  # leases cannot answer here (see the reason)


def open_for_lease(name: str, dir_fd: int) -> int:
    """A read-only descriptor of ``name`` in the folder ``dir_fd``, never through a symlink.

    Raises OSError as open(2) does: ELOOP for a symlink, EWOULDBLOCK when another
    process holds a lease on the file. The caller checks (fstat) that it is the
    regular file it expects.
    """
    return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)


def take_write_lease(fd: int) -> tuple[LeaseAnswer, str]:
    """Try for a write lease on ``fd`` (opened by ``open_for_lease``), without waiting.

    Returns the answer and, unless granted, why in words. A granted lease is held until
    ``release_lease`` or until ``fd`` is closed; while held, no signal reaches this
    process (see the module's note).
    """
    if _F_SETLEASE is None or _F_SETSIG is None:
        return LeaseAnswer.UNAVAILABLE, "this system has no file leases"
    try:
        fcntl.fcntl(fd, _F_SETSIG, _BREAK_SIGNAL)
    except OSError as exc:
        return LeaseAnswer.UNAVAILABLE, f"cannot choose the lease-break signal ({exc.strerror})"
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return LeaseAnswer.REFUSED, "another open file description or mapping of it exists"
        if exc.errno == errno.EINVAL:
            why = "leases are disabled (/proc/sys/fs/leases-enable) or this filesystem has none"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why = "a lease needs the file's owner or CAP_LEASE"
        else:
            why = f"F_SETLEASE failed: {exc.strerror}"
        return LeaseAnswer.UNAVAILABLE, why
    # The kernel made this process the owner as it granted the lease: no owner, no signal.
    # Should this fail, a break still sends only SIGURG.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETOWN, 0)
    return LeaseAnswer.GRANTED, ""


def lease_broken(fd: int) -> bool:
    """True once another process's open() has started breaking the write lease on ``fd``."""
    assert _F_GETLEASE is not None
    return bool(fcntl.fcntl(fd, _F_GETLEASE) != fcntl.F_WRLCK)


def release_lease(fd: int) -> None:
    """Give up the lease on ``fd`` now (closing ``fd`` would too); an opener waiting for
    it goes on."""
    assert _F_SETLEASE is not None
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
