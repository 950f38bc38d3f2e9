"""What this process owns: its journal, its live objects, its pools, and their end.

One ``Owner`` object per process (``_registry``) holds it all; the module's
functions are its methods. The journal is created on the first object this
process creates (a process that only attaches writes nothing). The journal
writer's live set is the one record of what we own: a name is in it from its add
record on, so whatever goes wrong later, release() or the exit sequence unlinks
what may exist. Objects are released (unlinked, then the removal recorded) by an
explicit call, when the owner's last reference is collected, or at normal
interpreter exit. An abnormal death leaves the release to the guardian or
``leakguard sweep``.

The exit sequence is one ``atexit`` handler, registered when this module is first
imported (so it runs after any handler the user registers later: theirs may still
use a pool). Its phases run in this order, whatever order modules were imported
and objects created in:

1. drain: every executor finishes the work it was given (as ``concurrent.futures``
   does at exit), and every pool told to ``close()`` finishes its own;
2. stop: every pool still running is terminated (as ``multiprocessing.Pool`` is);
3. release: every object this process still owns is unlinked, and the journal closed.

A Ctrl-C during one phase does not skip the later ones.

After ``fork()`` the child owns nothing of its parent's, and every step of that
lives in ``_after_fork_in_child`` (the one ``os.register_at_fork`` of the package):
the registry forgets the parent's journal, pools and executors (an inherited pool
is marked inert: dropping it touches nothing, using it raises), then the hooks of
the modules that hold per-process state run, in the order they were registered
(_blocks/shm.py: the parent's blocks are disowned; _pool/processes.py: the parent's pipe ends are
closed, its workers forgotten by ``multiprocessing``).

A garbage-collector callback may release an object while the same thread is in
the middle of a journal write: both locks are re-entrant and every write is a
whole record, so the nested record simply lands after the current one.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util  # noqa: F401 - see the atexit registration at the end
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from leakguard._failpoint import failpoint
from leakguard._os import ipc as _ipc

from .identity import Identity

if TYPE_CHECKING:
    from .writer import JournalWriter

__all__ = [
    "adopt",
    "after_fork_in_child",
    "exit_sequence",
    "hand_over",
    "journal",
    "owns",
    "record_anonymous",
    "release",
    "release_all",
    "set_parent",
    "track_executor",
    "track_pool",
]


class PoolLike(Protocol):
    """What the exit sequence and the fork handler need of a pool's engine (_pool/engine.py, Core)."""

    thread: threading.Thread

    @property
    def closing(self) -> bool: ...  # closed, and finishing what was submitted

    def terminate(self) -> None: ...

    def inherit(self) -> None: ...  # in a forked child: inert from now on


class ExecutorLike(Protocol):
    def finish_at_exit(self) -> None: ...


_STOP_WAIT = 5.0  # seconds the stop phase waits for each terminated pool's I/O thread


class Owner:
    """Everything this process owns, and the rules for its end (exit) and its copies (fork)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.writer: JournalWriter | None = None
        self.folder: str | None = None  # where this process made (or began to make) its journal
        self.parent: Identity | None = None  # set in a pool worker: the pool's process
        self.pools: weakref.WeakSet[PoolLike] = weakref.WeakSet()
        self.executors: weakref.WeakSet[ExecutorLike] = weakref.WeakSet()
        self.fork_hooks: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ the journal

    def journal(self) -> JournalWriter:
        writer = self.writer
        if writer is not None and not writer.lost():
            return writer
        # The journal's writer and folder checks load with the first journal: a pool worker
        # that never creates a block never pays for them (its start-up, issue 15).
        from .folder import open_folder  # noqa: PLC0415 - see above
        from .writer import JournalWriter  # noqa: PLC0415 - see above

        with self.lock:
            if self.writer is not None and self.writer.lost():
                open_folder(self.folder)  # made again, private, and checked, as at first
                self.writer.republish()
            if self.writer is None:
                self.folder = open_folder()
                self.writer = JournalWriter(self.folder, self.parent)
            return self.writer

    def release(self, name: str) -> bool:
        with self.lock:
            writer = self.writer
            kind = None if writer is None else writer.kind_of(name)
            if writer is None or kind is None:
                return False
            _ipc.unlink(kind, name)  # if this raises, we still own it and release it at exit
            failpoint(f"{kind}.after-unlink")  # before the removal record: the sweep settles it
            writer.settle(name)
            failpoint(f"{kind}.after-removal-record")
        return True

    def release_all(self, keep: set[str] | frozenset[str] = frozenset()) -> None:
        with self.lock:
            writer = self.writer
            if writer is not None:
                for name in set(writer.live_names()) - keep:
                    # Exit must go on whatever one release does; the sweep settles the rest.
                    with contextlib.suppress(Exception):
                        self.release(name)
                writer.close(remove_file=not writer.live_names())
            elif self.folder is not None:
                # Journal creation was interrupted every time: only strays can be left.
                from .writer import remove_strays  # noqa: PLC0415 - see journal()

                with contextlib.suppress(Exception):
                    remove_strays(self.folder, Identity.current())
            self.writer = None
            self.folder = None

    # ------------------------------------------------------------------ exit

    def exit_sequence(self) -> None:
        """Drain, stop, release (the module's docstring says why in this order)."""
        try:
            for executor in list(self.executors):
                with contextlib.suppress(Exception):
                    executor.finish_at_exit()
            for pool in list(self.pools):
                if pool.closing:
                    pool.thread.join()
        finally:
            try:
                for pool in list(self.pools):
                    with contextlib.suppress(Exception):
                        pool.terminate()
                        if pool.thread.is_alive():
                            pool.thread.join(_STOP_WAIT)
            finally:
                self.release_all()

    # ------------------------------------------------------------------ fork

    def after_fork_in_child(self) -> None:
        # The child owns nothing yet: the parent's objects, journal and pools stay the parent's.
        self.lock = threading.RLock()  # another thread of the parent may have held it
        self.parent = None
        if self.writer is not None:
            self.writer.abandon()
        self.writer = None
        self.folder = None
        for pool in list(self.pools):
            pool.inherit()  # inert: its workers, pipes and guardian are the parent's
        self.pools = weakref.WeakSet()
        self.executors = weakref.WeakSet()  # their pools are inert now: nothing to drain
        for hook in self.fork_hooks:
            hook()


_registry = Owner()


def set_parent(parent: Identity) -> None:
    """In a pool worker, before it creates anything: name the pool's process in our journal."""
    _registry.parent = parent


def journal() -> JournalWriter:
    """This process's journal, created on first use."""
    return _registry.journal()


def owns(name: str) -> bool:
    writer = _registry.writer
    return writer is not None and writer.owns(name)


def release(name: str) -> bool:
    """Unlink an object this process owns (if it exists) and record the removal. Idempotent.

    Also the clean-up of a creation that failed at any point after its add record:
    whatever may have been made is unlinked. Returns False if we do not own ``name``.
    """
    return _registry.release(name)


def hand_over(name: str) -> None:
    """Another process has adopted ``name``: stop owning it without unlinking it."""
    with _registry.lock:
        writer = _registry.writer
        if writer is not None and writer.owns(name):
            writer.settle(name)


def adopt(kind: str, name: str, size: int, dev: int, ino: int) -> None:
    """Own an object another process made and still names in its journal.

    Our add record is written before that process drops its own, so at every
    instant some journal names the object (see _pool/pool.py on the hand-over).
    """
    journal().adopt(kind, name, size, dev, ino)


def record_anonymous(name: str, size: int) -> None:
    """Own an anonymous block (made here, or adopted from a pool worker): one add record.

    Written once the block exists and this process holds a descriptor of it: the record
    has nothing to protect (the kernel frees the block with its last holder, however the
    holders end), it only tells ``leakguard ls`` what lives. ``release()`` closes the
    descriptor and writes the del record.
    """
    from .format import ANONYMOUS  # noqa: PLC0415 - with the journal's writer (see Owner.journal)

    journal().add(ANONYMOUS, name, size)


def release_all(keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Unlink everything we own but ``keep``, then close the journal (removed if empty).

    A pool worker keeps the blocks it handed over and has no answer for: the pool
    settles those from the journal left behind.
    """
    _registry.release_all(keep)


def track_pool(pool: PoolLike) -> None:
    """A pool this process started: stopped at exit, made inert in a forked child."""
    _registry.pools.add(pool)


def track_executor(executor: ExecutorLike) -> None:
    """An executor of this process: its work is finished at exit, before any pool stops."""
    _registry.executors.add(executor)


def after_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, after the registry has forgotten the parent's state."""
    _registry.fork_hooks.append(hook)


def exit_sequence() -> None:
    """This process's normal end: drain, stop, release (see the module's docstring)."""
    _registry.exit_sequence()


# multiprocessing's own exit handler SIGTERMs every daemonic child (a pool's workers):
# importing it first registers it first, so that it runs after ours (atexit is LIFO).
atexit.register(exit_sequence)
os.register_at_fork(after_in_child=_registry.after_fork_in_child)
