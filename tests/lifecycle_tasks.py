"""Task functions for test_lifecycle.py (workers import them by reference)."""

from __future__ import annotations

import os

import leakguard


def start_a_pool() -> int:
    """A task that tries to start a pool of its own (it runs in a daemonic worker)."""
    with leakguard.Pool(1) as pool:
        return int(pool.apply(os.getpid))


def children_of_this_worker() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]
