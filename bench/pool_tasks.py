"""The tasks the pool benchmarks run, in a module of their own.

Not in the scripts: spawned workers import a script as ``__mp_main__`` to find its
functions, and cloudpickle (loky's and joblib's pickler) sends a function of ``__main__``
by value with every task. From an importable module every pool, the peers included,
sends the function by reference, as a user's own module would.

numpy is imported only by the task that needs it, so that a worker's memory
(bench_scaling.py) is the pool's and not this module's.
"""

from __future__ import annotations

import os
import time
from typing import Any


def task_sum(part: Any) -> float:
    return float(part.sum())


def task_full(arg: tuple[int, int]) -> Any:
    import numpy as np

    i, n = arg
    return np.full(n, i)


def task_inc(x: int) -> int:
    return x + 1


def task_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def task_pid_with_numpy(delay: float) -> int:
    """``task_pid``, once numpy is imported: the warm-up of the workloads that move arrays.
    A multiprocessing worker imports numpy as it starts, with the main module it runs again;
    a leakguard worker only for a task that needs it (issue 15). Warmed up alike, both are
    timed on the workload alone."""
    import numpy  # noqa: F401 - imported for its cost, here rather than in the timed region

    return task_pid(delay)
