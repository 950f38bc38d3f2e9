"""Task functions for test_kept_mappings.py (workers import them by reference)."""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any

from leakguard._blocks import arrays, shm

if TYPE_CHECKING:
    import numpy as np


def attach(a: np.ndarray) -> tuple[int, int, list[str]]:
    """(this worker's pid, the mappings attaching has made here, the blocks it keeps)."""
    assert isinstance(a, arrays.SharedArray)
    a.sum()
    return os.getpid(), shm.mappings_made(), shm.kept_blocks()


def slow_checks() -> None:
    """Initializer: no kept mapping is let go by the checker thread while a test runs."""
    shm._CHECK_SECONDS = 3600.0


class Reference:
    """Unpickles as ``rebuild(*args)``: a reference built by hand, as a forger would."""

    def __init__(self, rebuild: Any, args: tuple[Any, ...]) -> None:
        self.rebuild = rebuild
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.rebuild, self.args)


def try_references(pickles: list[bytes]) -> tuple[list[str], list[str], int, int]:
    """Unpickle each; (what each gave: "ok" or its error's type, the blocks kept before,
    the mappings made before and after)."""
    kept = shm.kept_blocks()
    before = shm.mappings_made()
    outcomes = []
    for data in pickles:
        try:
            a = pickle.loads(data)
            a.sum()
            outcomes.append("ok")
        except Exception as exc:  # the type is the answer
            outcomes.append(type(exc).__name__)
        a = None
    return outcomes, kept, before, shm.mappings_made()
