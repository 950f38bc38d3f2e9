"""Task functions for test_data_path.py (workers import them by reference)."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

import leakguard
from tests.helpers import block_name


def describe(a: np.ndarray) -> dict[str, Any]:
    """How an argument arrived in the worker."""
    return {
        "type": type(a).__name__,
        "shared": isinstance(a, leakguard.SharedArray),
        "block": block_name(a),
        "shape": a.shape,
        "dtype": str(a.dtype),
        "sum": a.sum().item() if a.dtype.kind in "biufc" else None,
        "pid": os.getpid(),
    }


def fill(a: np.ndarray, value: Any) -> str | None:
    """Write into the argument in place; returns the block it lives in."""
    a[...] = value
    return block_name(a)


def fail_after_looking(a: np.ndarray) -> None:
    raise LookupError(block_name(a))


def exit_after_looking(a: np.ndarray, path: str) -> None:
    """Tell the parent which block the argument is in (through a file), then die."""
    with open(path, "w") as f:
        f.write(block_name(a) or "")
    os._exit(3)


def square(a: np.ndarray) -> np.ndarray:
    return np.asarray(np.square(a))


def identity(x: Any) -> Any:
    return x


def arange(n: int, dtype: str = "float64") -> np.ndarray:
    return np.arange(n).astype(dtype)


def with_pid(n: int) -> tuple[int, np.ndarray]:
    return os.getpid(), np.arange(n, dtype=np.float64)


def made_shared(n: int, value: float) -> tuple[int, leakguard.SharedArray]:
    """A SharedArray the worker creates (and owns) and returns."""
    a = leakguard.shared_array(n, np.float64, fill=value)
    return os.getpid(), a


def every_shape(n: int) -> dict[str, Any]:
    """Large arrays in a nested result, of several layouts and dtypes."""
    base = np.arange(n, dtype=np.int64)
    return {
        "c": base.reshape(-1, 8) * 3,
        "fortran": np.asfortranarray(base.reshape(-1, 8).astype(np.float32)),
        "strided": base[::2],
        "reversed": base[::-1],
        "list": [base + 1, (base.astype(np.complex128) * 1j,)],
        "small": np.arange(3),
    }


def view_of(a: np.ndarray, start: int, stop: int, step: int) -> np.ndarray:
    return a[start:stop:step]


def made_shared_views(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker-made block returned whole, as a slice, and as a strided view."""
    a = leakguard.shared_array(n, np.int64)
    a[:] = np.arange(n)
    return a, a[10:20], a[::-3]


def made_shared_slice(n: int) -> np.ndarray:
    """Only part of a worker-made block: the parent adopts the whole block."""
    a = leakguard.shared_array(n, np.int64)
    a[:] = np.arange(n)
    return a[n // 4 : n // 2]


def raise_with(n: int) -> None:
    raise ValueError("an array in an error", np.arange(n, dtype=np.float64))


def unpicklable_after(n: int) -> tuple[np.ndarray, leakguard.SharedArray, Any]:
    """A result whose arrays are shared before pickling fails on what follows them."""
    return np.arange(n, dtype=np.float64), leakguard.shared_array(n, fill=1.0), threading.Lock()


def exit_the_first_time(a: np.ndarray, marker: str) -> dict[str, Any]:
    """Die on the first attempt (the marker file records it), describe the argument on the next."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(block_name(a) or "")
        os._exit(3)
    return describe(a)


def wait_on(a: np.ndarray, sem: leakguard.Semaphore, started: leakguard.Semaphore) -> str | None:
    """Say the task started, then hold the argument until ``sem`` is released (at most 30 s)."""
    started.release()
    sem.acquire(timeout=30)
    return block_name(a)


# Views of arguments a worker keeps past its task (a cache, say).
KEPT: list[np.ndarray] = []


def keep_a_view(a: np.ndarray) -> str | None:
    KEPT.append(a[::2])
    return block_name(a)


def kept_sums() -> list[float]:
    return [float(k.sum()) for k in KEPT]


def hold_own_block(n: int) -> str:
    """Make a block in the worker and keep it there (owned by the worker, live)."""
    own = leakguard.shared_array(n, named=True)  # a named block: the sweep's rules are about names
    KEPT.append(own)
    assert own.shm_name is not None
    return own.shm_name
