"""``leakguard.get_pool``: one pool per process kept warm across calls, as loky's
``get_reusable_executor`` keeps an executor, so that code which needs a pool now and
then pays for starting workers once, not on every call.

The rules (docs/pool.md, "A pool kept warm"):

- ``get_pool(...)`` with the same arguments as the pool it holds returns that very pool,
  started no process again. Arguments are compared after ``Pool``'s defaults are filled
  in, and ``processes=None`` stands for the number of CPUs this process may use.
- Different arguments: a new pool is started and held instead, then the one held before
  is closed (what it was given completes) and joined. Arguments ``Pool`` refuses raise
  its error and leave the held pool as it was.
- A held pool that is no longer running (the user closed or terminated it, used it in a
  ``with`` block, or its I/O thread failed) is replaced by the next call, as loky replaces
  an executor that was shut down.
- At interpreter exit the held pool is terminated like any other pool (the exit sequence,
  _journal/owner.py), after the user's atexit handlers; nothing of it is left.
- In a process forked from its owner the held pool is inert (SPEC 2.1) and forgotten:
  ``get_pool`` there starts a pool of the child's own.
- Calls from several threads at once return one pool: the choice is made under a lock.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from leakguard._journal import owner as _owner

from .pool import Pool, cpu_count, running

__all__ = ["get_pool"]


class _Held:
    """The pool this process keeps warm, and the arguments it was made with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: Pool | None = None
        self.arguments: dict[str, Any] = {}

    def forget_after_fork(self) -> None:
        # The parent's pool is inert here (the fork handler made it so), and this lock may
        # have been held by another of the parent's threads at the fork.
        self.lock = threading.Lock()
        self.pool = None
        self.arguments = {}


_held = _Held()
_owner.after_fork_in_child(_held.forget_after_fork)
_SIGNATURE = inspect.signature(Pool)


def _arguments(processes: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pool()'s arguments with its defaults filled in: a misspelt one is a TypeError here."""
    bound = _SIGNATURE.bind(processes, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if arguments["processes"] is None:
        arguments["processes"] = cpu_count()
    arguments["initargs"] = tuple(arguments["initargs"])
    return arguments


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if value is other:
            continue
        try:
            if not bool(value == other):
                return False
        except Exception:  # noqa: BLE001 - an argument that cannot be compared (an array) is not the same
            return False
    return True


def get_pool(processes: int | None = None, **kwargs: Any) -> Pool:
    """A ``leakguard.Pool`` kept warm across calls: the same one while the arguments are the same.

    ``kwargs`` are ``Pool``'s other arguments (``initializer``, ``retries``, ``start_method``,
    ...). Different arguments close the held pool and start a new one; a held pool that was
    closed or terminated is replaced. The pool is terminated at interpreter exit. Do not use
    it in a ``with`` block if it is to stay warm: leaving the block terminates it, as for any
    pool, and the next call starts another.
    """
    arguments = _arguments(processes, kwargs)
    held = _held
    with held.lock:
        pool = held.pool
        if pool is not None and running(pool) and _same(arguments, held.arguments):
            return pool
        new = Pool(**arguments)  # first: arguments it refuses leave the held pool as it was
        held.pool, held.arguments = new, arguments
        if pool is not None:
            pool.close()  # what it was given completes, as loky's executor finishes its work
            pool.join()
        return new
