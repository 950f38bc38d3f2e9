"""leakguard: shared memory and named semaphores that cannot outlive the job.

Every named resource is written to a journal before it exists; ``leakguard
sweep`` (and, with the pool, a guardian process) removes what dead owners left
behind and never touches what a live process owns.

The public names load on first use (PEP 562), so that the guardian process and
``leakguard sweep`` start without importing numpy: a pool's guardian starts
beside its workers on every ``Pool()``, and its start-up competes with theirs.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from ._errors import (
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

# Not lazy: the function shares its name with its module, and importing the module
# later would put the module where the function was.
from .sweep import SweepItem, SweepReport, sweep

if _typing.TYPE_CHECKING:
    from ._foreign import sweep_foreign
    from .executor import Executor
    from .pool import Pool
    from .sem import Lock, Semaphore
    from .shm import SharedArray, SharedMemory, free, share, shared_array

__all__ = [
    "Executor",
    "InheritedPoolError",
    "JournalFolderError",
    "LeakguardError",
    "Lock",
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
    "TaskTimeoutError",
    "WorkerLostError",
    "free",
    "share",
    "shared_array",
    "sweep",
    "sweep_foreign",
]

__version__ = "0.1.0"

_LAZY = {
    "Executor": ".executor",
    "sweep_foreign": "._foreign",
    "Pool": ".pool",
    "Lock": ".sem",
    "Semaphore": ".sem",
    "SharedArray": ".shm",
    "SharedMemory": ".shm",
    "free": ".shm",
    "share": ".shm",
    "shared_array": ".shm",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leakguard' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
