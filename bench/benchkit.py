"""What the benchmarks share: medians and percentiles of rounds, ratios of measurements
taken side by side, a check that fails even under ``python -O``, the signal handling
that lets a run clean up when it is interrupted, and the runner of a pool with
``multiprocessing.Pool``'s methods."""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

__all__ = [
    "PoolRunner",
    "Summary",
    "check",
    "paired_ratios",
    "percentile",
    "raise_exit",
    "signals_ignored",
    "summarise",
]

Summary = dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(values: Sequence[float]) -> Summary:
    return {
        "median": percentile(values, 50),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
        "n": float(len(values)),
    }


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Ratios of measurements taken side by side (same round), summarised."""
    return summarise([a / b for a, b in zip(numerators, denominators, strict=True)])


def check(condition: bool, message: str) -> None:
    """A benchmark that measured the wrong thing must fail, also under ``python -O``."""
    if not condition:
        raise RuntimeError(message)


def raise_exit(signum: int, frame: FrameType | None) -> None:
    """A signal handler: leave through the normal exit path, so clean-up code runs."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let the cleanup finish even if a second signal arrives."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = [signal.signal(s, signal.SIG_IGN) for s in sigs]
    try:
        yield
    finally:
        for s, handler in zip(sigs, old, strict=True):
            signal.signal(s, handler)


class PoolRunner:
    """A pool with ``multiprocessing.Pool``'s methods (``leakguard.Pool``, ``multiprocessing.Pool``,
    billiard's): the calls every workload makes, and how a round ends."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        out: list[Any] = self.pool.map(func, items, chunksize)
        return out

    def imap(self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return iter(self.pool.imap(func, items, chunksize))

    def apply(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self.pool.apply_async(func, (arg,)).get()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        self.pool.terminate()
        self.pool.join()
