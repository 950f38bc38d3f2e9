"""Task functions for test_pool_crash_points.py's jobs (workers import them by reference)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import leakguard
from tests.helpers import block_name

if TYPE_CHECKING:
    import numpy as np

# Blocks a worker keeps for itself: its own, reclaimed by the pool if the worker dies.
KEPT: list[leakguard.SharedArray] = []


def big_result(x: np.ndarray) -> tuple[int, str | None, np.ndarray, np.ndarray]:
    """(pid, a block this worker keeps, two large arrays to hand over to the parent)."""
    kept = leakguard.shared_array(512, fill=1.0)
    KEPT.append(kept)
    return os.getpid(), block_name(kept), x * 2, x + 1


def total(a: np.ndarray) -> float:
    return float(a.sum())


def slow_big(nbytes: int) -> np.ndarray:
    """A large array (handed over to the parent), after a pause that leaves the test time to
    stop the parent."""
    import time

    import numpy as np

    time.sleep(1.0)
    return np.full(nbytes // 8, 2.0)
