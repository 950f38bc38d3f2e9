"""Functions that test_dask.py runs in Dask worker processes (by reference, so importable)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import leakguard

# Arrays a worker keeps alive between calls (a live owner's blocks, which sweeps must keep).
_KEPT: list[Any] = []


def make_arrays(count: int, size: int) -> dict[str, Any]:
    """Create ``count`` shared arrays of ``size`` float64s, kept alive in this worker; their names."""
    made = [leakguard.shared_array(size, fill=float(i + 1), named=True) for i in range(count)]
    _KEPT.extend(made)
    return {"pid": os.getpid(), "names": [a.shm_name for a in made]}


def sums() -> list[float]:
    """The sums of the arrays this worker keeps: readable means intact."""
    return [float(a.sum()) for a in _KEPT]


def worker_pid() -> int:
    return os.getpid()


def sweep_reports(dask_worker: Any) -> list[dict[str, Any]]:
    """The summaries the plugin kept in this worker."""
    plugin = dask_worker.plugins.get("leakguard-sweep")
    return [] if plugin is None else list(plugin.reports)


def outgrow_memory(size: int, note: str, limit: float) -> None:
    """Create and touch a shared array of ``size`` bytes (past the worker's memory limit), note its
    name in ``note``, then wait for the nanny's kill (for at most ``limit`` seconds)."""
    array = leakguard.shared_array(size // 8, named=True)  # reserved in /dev/shm, not yet in this process's memory
    Path(note).write_text(f"{os.getpid()} {array.shm_name}")
    array[:] = 1.0  # touching every page: the worker's resident memory grows past its limit
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:  # the nanny checks memory every 100 ms or so
        time.sleep(0.05)
    raise AssertionError(f"the nanny did not kill this worker within {limit} s")
