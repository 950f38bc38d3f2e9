"""Tasks of tests/test_guardian_start.py, importable by the pool's workers."""

from __future__ import annotations

import os
import time


def wait_for_gate(path: str) -> None:
    """An initializer that keeps its worker starting until ``path`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def square(x: int) -> int:
    return x * x
