"""Task functions for test_pool_parity.py.

Workers started with spawn or forkserver import a task function by reference
(module and name), so the functions live here, in an importable module, and not
in the test file or as lambdas. Everything here is deterministic: a task that must
not finish yet waits for a file the test creates (``wait_for_file``), never for a
fixed time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from tests.gates import wait_for_path

# Set in each worker by the pool's initializer (``set_tag``); read by ``read_tag``.
_TAG: str | None = None
_INIT_CALLS = 0


class CustomError(Exception):
    """A user's exception class with arguments and an attribute of its own."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


class NeedsKeywordError(Exception):
    """Pickles (as ``(cls, args)``) but cannot be rebuilt: ``__init__`` wants a keyword."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")


def square(x: int) -> int:
    return x * x


def identity(x: object) -> object:
    return x


def add(a: int, b: int) -> int:
    return a + b


def describe(a: int, b: int = 0, *, c: int | None = None) -> tuple[int, int, int | None]:
    return (a, b, c)


def square_slowly(x: int) -> int:
    """Earlier items take longer, so results arrive out of order."""
    time.sleep(0.01 * ((-x) % 4))
    return x * x


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed", x)
    return x * x


def add_or_fail(a: int, b: int) -> int:
    if a == b:
        raise ValueError("equal", a)
    return a + b


def raise_key_error(key: str) -> None:
    raise KeyError(key)


def raise_custom(code: int) -> None:
    raise CustomError(code, f"custom failure {code}")


def raise_needs_keyword(code: int) -> None:
    raise NeedsKeywordError(code=code)


def get_pid(_: object = None) -> int:
    return os.getpid()


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    """Block until ``path`` exists (the test's gate), or give up after ``timeout``."""
    return "opened" if wait_for_path(path, timeout) else "gave up"


def fail_or_mark(item: tuple[str, str]) -> str:
    """``("fail", _)`` raises at once; ``("mark", folder)`` writes ``folder/mark`` 0.3 s later."""
    kind, folder = item
    if kind == "fail":
        raise ValueError("failed at once")
    time.sleep(0.3)  # a task that takes a while: the failure above is long reported by then
    with open(os.path.join(folder, "mark"), "w") as f:
        f.write("done")
    return "marked"


def set_tag(tag: str) -> None:
    """The pool's initializer: runs once in each worker, before any task."""
    global _TAG, _INIT_CALLS
    _TAG = tag
    _INIT_CALLS += 1


def read_tag(_: object = None) -> tuple[str | None, int]:
    return (_TAG, _INIT_CALLS)


def tag_and_pid(_: object = None) -> tuple[str | None, int, int]:
    return (_TAG, _INIT_CALLS, os.getpid())


def fail_to_initialize(reason: str) -> None:
    raise RuntimeError("initializer failed", reason)


def fail_to_initialize_at(gate: str, reason: str) -> None:
    """An initializer that fails once ``gate`` exists (the test has handed out work by then)."""
    wait_for_file(gate, timeout=20)
    raise RuntimeError("initializer failed", reason)


def return_unpicklable(x: int) -> threading.Lock:
    """A result that cannot be pickled: a lock. (A local function can no longer stand for one:
    leakguard sends it by value, issue 13.)"""
    return threading.Lock()


def unpicklable_if_odd(x: int) -> object:
    return return_unpicklable(x) if x % 2 else x


def double(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a * 2


def make_array(n: int) -> npt.NDArray[np.float64]:
    return np.arange(n, dtype=np.float64)


def array_sum(a: npt.NDArray[np.float64]) -> float:
    return float(a.sum())


def count_up(n: int, fail_after: int | None = None) -> Iterator[int]:
    """A generator (no ``__len__``) for imap; raises after ``fail_after`` items if given."""
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise OSError("input broke", i)
        yield i


def pairs(n: int) -> Iterator[tuple[int, int]]:
    for i in range(n):
        yield (i, 10 * i)


def raise_with_lock() -> None:
    """An exception that cannot be pickled: one of its arguments is a lock."""
    raise ValueError("holding a lock", threading.Lock())


def rendezvous(folder: str, count: int, me: int, timeout: float = 1.0) -> bool:
    """Say this task started, then wait (up to ``timeout``) until ``count`` tasks have;
    whether they all did. With as many idle workers as tasks, they all meet."""
    with open(os.path.join(folder, f"started-{me}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while sum(os.path.exists(os.path.join(folder, f"started-{i}")) for i in range(count)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class ExitsWhenRebuilt:
    """Pickles fine; rebuilding it (in the parent) raises SystemExit(3)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


def exits_when_rebuilt(_: object = None) -> ExitsWhenRebuilt:
    return ExitsWhenRebuilt()
