"""leakguard: shared memory and named semaphores that cannot outlive the job.

Every named resource is written to a journal before it exists; ``leakguard
sweep`` (and, with the pool, a guardian process) removes what dead owners left
behind and never touches what a live process owns.

The public names, the errors too, load on first use (PEP 562), so that the
guardian process and ``leakguard sweep`` start without importing numpy or
``concurrent.futures``: a pool's guardian starts beside its workers on every
``Pool()``, and its start-up competes with theirs for the CPU (issue 15).
"""

from __future__ import annotations

import importlib as _importlib

# typing.TYPE_CHECKING (a type checker reads what it guards), without importing typing, which
# the guardian would pay for as it starts beside the workers (issue 15).
_TYPE_CHECKING = False
if _TYPE_CHECKING:
    from typing import Any

    from ._blocks.arrays import SharedArray, free, share, shared_array
    from ._blocks.sem import Lock, Semaphore
    from ._blocks.shm import SharedMemory
    from ._errors import (
        BlockGoneError,
        InheritedPoolError,
        JournalFolderError,
        LeakguardError,
        NestedPoolError,
        NotOwnerError,
        OutOfSharedMemoryError,
        PoolClosedError,
        TaskTimeoutError,
        WorkerLostError,
    )
    from ._pool.pool import Pool
    from ._pool.results import ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, MapResult
    from ._pool.reusable import get_pool
    from ._sweep.foreign import ForeignItem, sweep_foreign
    from ._sweep.journaled import SweepItem, SweepReport, SweepState, sweep
    from .executor import Executor

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "BlockGoneError",
    "Executor",
    "ForeignItem",
    "IMapIterator",
    "IMapUnorderedIterator",
    "InheritedPoolError",
    "JournalFolderError",
    "LeakguardError",
    "Lock",
    "MapResult",
    "NestedPoolError",
    "NotOwnerError",
    "OutOfSharedMemoryError",
    "Pool",
    "PoolClosedError",
    "Semaphore",
    "SharedArray",
    "SharedMemory",
    "SweepItem",
    "SweepReport",
    "SweepState",
    "TaskTimeoutError",
    "WorkerLostError",
    "free",
    "get_pool",
    "share",
    "shared_array",
    "sweep",
    "sweep_foreign",
]

__version__ = "0.1.0"

_LAZY = {
    "ApplyResult": "._pool.results",
    "AsyncResult": "._pool.results",
    "Executor": ".executor",
    "ForeignItem": "._sweep.foreign",
    "IMapIterator": "._pool.results",
    "IMapUnorderedIterator": "._pool.results",
    "BlockGoneError": "._errors",
    "InheritedPoolError": "._errors",
    "JournalFolderError": "._errors",
    "LeakguardError": "._errors",
    "Lock": "._blocks.sem",
    "MapResult": "._pool.results",
    "NestedPoolError": "._errors",
    "NotOwnerError": "._errors",
    "OutOfSharedMemoryError": "._errors",
    "Pool": "._pool.pool",
    "PoolClosedError": "._errors",
    "Semaphore": "._blocks.sem",
    "SharedArray": "._blocks.arrays",
    "SharedMemory": "._blocks.shm",
    "SweepItem": "._sweep.journaled",
    "SweepReport": "._sweep.journaled",
    "SweepState": "._sweep.journaled",
    "TaskTimeoutError": "._errors",
    "WorkerLostError": "._errors",
    "free": "._blocks.arrays",
    "get_pool": "._pool.reusable",
    "share": "._blocks.arrays",
    "shared_array": "._blocks.arrays",
    "sweep": "._sweep.journaled",
    "sweep_foreign": "._sweep.foreign",
}


def _public(value: Any) -> Any:
    """Make a public class or function print, pickle and document as ``leakguard.X``
    (trio's ``fixup_module_metadata``): where it is defined is our business."""
    if getattr(value, "__module__", "").startswith("leakguard."):
        value.__module__ = __name__
    return value


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leakguard' has no attribute {name!r}")
    value = _public(getattr(_importlib.import_module(module, __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
