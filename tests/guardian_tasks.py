"""Tasks of tests/test_startup.py, importable by the pool's workers (numpy is not imported here)."""

from __future__ import annotations

import gc
import os
import sys
import time


def wait_for_gate(path: str) -> None:
    """An initializer that keeps its worker starting until ``path`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def square(x: int) -> int:
    return x * x


def numpy_loaded(*args: object) -> tuple[bool, bool]:
    """(has this worker imported numpy? its array module?) whatever ``args`` carry."""
    return "numpy" in sys.modules, "leakguard._blocks.arrays" in sys.modules


def make_array(n: int) -> object:
    """A result array of ``n`` bytes, from a task whose module does not import numpy."""
    import numpy as np  # the point: numpy comes with the task, not with the worker

    return np.arange(n, dtype=np.uint8)


def frozen_objects() -> int:
    """How many objects this worker's collector ignores (gc.freeze)."""
    return gc.get_freeze_count()
