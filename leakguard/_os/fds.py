"""Closing descriptors an exception stranded.

Python runs a signal handler the moment a system call returns, before its result
is stored: a KeyboardInterrupt that arrives during open() or shm_open() loses the
descriptor. Where the caller knows the path it was opening, and nothing else in
this process can have that path open (a fresh random name), the lost descriptor
can be found in /proc/self/fd and closed.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["close_lost"]


def close_lost(path: str) -> None:
    """Close every descriptor this process holds on ``path`` (Linux; elsewhere nothing).

    Only for a path no other code of this process can have open, and before anything
    (an mmap, say) keeps a duplicate it would close itself later.
    """
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return
    for entry in entries:
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if target in (path, path + " (deleted)"):
            with contextlib.suppress(OSError):
                os.close(int(entry))
