"""What this process owns: its journal, its live objects, and their release.

One journal per process, created on the first object this process creates (a
process that only attaches writes nothing). The journal writer's live set is the
one record of what we own: a name is in it from its add record on, so whatever
goes wrong later, release() or the exit handler unlinks what may exist. Objects are released (unlinked, then
the removal recorded) by an explicit call, when the owner's last reference is
collected, or at normal interpreter exit. An abnormal death leaves the release
to the guardian or ``leakguard sweep``.

A garbage-collector callback may release an object while the same thread is in
the middle of a journal write: both locks are re-entrant and every write is a
whole record, so the nested record simply lands after the current one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable

from leakguard._failpoint import failpoint
from leakguard._os import ipc as _ipc

from .folder import open_folder
from .identity import Identity
from .writer import JournalWriter, remove_strays

__all__ = ["adopt", "before_exit", "hand_over", "journal", "owns", "release", "release_all", "set_parent"]

_lock = threading.RLock()
_writer: JournalWriter | None = None
_folder: str | None = None  # where this process made (or began to make) its journal
_atexit_registered = False
_parent: Identity | None = None  # set in a pool worker: the pool's process


def set_parent(parent: Identity) -> None:
    """In a pool worker, before it creates anything: name the pool's process in our journal."""
    global _parent
    _parent = parent


def journal() -> JournalWriter:
    """This process's journal, created on first use."""
    global _writer, _folder, _atexit_registered
    writer = _writer
    if writer is not None and not writer.lost():
        return writer
    with _lock:
        if _writer is not None and _writer.lost():
            open_folder(_folder)  # made again, private, and checked, as at first
            _writer.republish()
        if not _atexit_registered:
            atexit.register(_release_all_at_exit)
            _atexit_registered = True
        if _writer is None:
            _folder = open_folder()
            _writer = JournalWriter(_folder, _parent)
        return _writer


def owns(name: str) -> bool:
    writer = _writer
    return writer is not None and writer.owns(name)


def release(name: str) -> bool:
    """Unlink an object this process owns (if it exists) and record the removal. Idempotent.

    Also the clean-up of a creation that failed at any point after its add record:
    whatever may have been made is unlinked. Returns False if we do not own ``name``.
    """
    with _lock:
        writer = _writer
        kind = None if writer is None else writer.kind_of(name)
        if writer is None or kind is None:
            return False
        _ipc.unlink(kind, name)  # if this raises, we still own it and release it at exit
        failpoint(f"{kind}.after-unlink")  # before the removal record: the sweep settles it
        writer.settle(name)
        failpoint(f"{kind}.after-removal-record")
    return True


def hand_over(name: str) -> None:
    """Another process has adopted ``name``: stop owning it without unlinking it."""
    with _lock:
        writer = _writer
        if writer is not None and writer.owns(name):
            writer.settle(name)


def adopt(kind: str, name: str, size: int, dev: int, ino: int) -> None:
    """Own an object another process made and still names in its journal.

    Our add record is written before that process drops its own, so at every
    instant some journal names the object (see pool.py on the hand-over).
    """
    journal().adopt(kind, name, size, dev, ino)


_exit_hooks: list[Callable[[], None]] = []


def before_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at normal exit before our objects are released (pools stop first)."""
    _exit_hooks.append(hook)


def _release_all_at_exit() -> None:
    """Normal interpreter exit: unlink everything we still own, then drop the journal."""
    for hook in _exit_hooks:
        with contextlib.suppress(Exception):
            hook()
    release_all()


def release_all(keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Unlink everything we own but ``keep``, then close the journal (removed if empty).

    A pool worker keeps the blocks it handed over and has no answer for: the pool
    settles those from the journal left behind.
    """
    global _writer, _folder
    with _lock:
        writer = _writer
        if writer is not None:
            for name in set(writer.live_names()) - keep:
                # Exit must go on whatever one release does; the sweep settles the rest.
                with contextlib.suppress(Exception):
                    release(name)
            writer.close(remove_file=not writer.live_names())
        elif _folder is not None:
            # Journal creation was interrupted every time: only strays can be left.
            with contextlib.suppress(Exception):
                remove_strays(_folder, Identity.current())
        _writer = None
        _folder = None


def _after_fork_in_child() -> None:
    # The child owns nothing yet: the parent's objects and journal stay the parent's.
    global _writer, _folder, _lock, _parent
    _lock = threading.RLock()
    _parent = None
    if _writer is not None:
        _writer.abandon()
    _writer = None
    _folder = None


os.register_at_fork(after_in_child=_after_fork_in_child)
