"""leakguard: shared memory and named semaphores that cannot outlive the job.

Every named resource is written to a journal before it exists; ``leakguard
sweep`` (and, with the pool, a guardian process) removes what dead owners left
behind and never touches what a live process owns.
"""

from __future__ import annotations

from ._errors import (
    JournalFolderError,
    LeakguardError,
    NotOwnerError,
    OutOfSharedMemoryError,
    PoolClosedError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._foreign import sweep_foreign
from .pool import Pool
from .sem import Lock, Semaphore
from .shm import SharedArray, SharedMemory, free, share, shared_array
from .sweep import SweepItem, SweepReport, sweep

__all__ = [
    "JournalFolderError",
    "LeakguardError",
    "Lock",
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
