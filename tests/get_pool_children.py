"""Tasks and child programs of tests/test_get_pool.py (a child is started with ``python_main``)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import leakguard


def pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def square(x: int) -> int:
    return x * x


def total(array: np.ndarray) -> float:
    return float(array.sum())


def hold_a_warm_pool_and_exit() -> None:
    """Use the held pool (arrays through shared blocks included), report its processes and
    exit normally without closing it: the exit sequence must leave nothing."""
    pool = leakguard.get_pool(2)
    big = np.ones(1 << 18)  # 2 MiB: above share_threshold, so it travels through a block
    assert pool.map(total, [big, big]) == [float(1 << 18)] * 2
    assert leakguard.get_pool(2) is pool
    workers = sorted(set(pool.map(pid, [0.05] * 8, chunksize=1)))
    shared = leakguard.share(big, named=True)  # a block of the parent's own in /dev/shm, released at exit too
    assert shared.sum() == float(1 << 18)
    core = pool._core
    assert core is not None
    print(json.dumps({"workers": workers, "guardian": core.guardian.proc.pid}), flush=True)
    sys.stdin.read()  # until the test closes our stdin
