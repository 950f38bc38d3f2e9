"""Task functions for test_executor.py and test_progress.py.

Spawned workers import a task function by reference, so the functions live in
this importable module. A task that must not finish yet waits for a file the test
creates (``wait_for_file``), never for a fixed time.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.gates import wait_for_path

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_GATE_DEADLINE = 60.0  # seconds a gated task waits before giving up (a test that forgot its gate)


class CustomError(Exception):
    """A user's exception with arguments and an attribute of its own."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def describe(a: int, b: int = 0, *, c: int | None = None) -> tuple[int, int, int | None]:
    return (a, b, c)


def fail(code: int) -> int:
    raise CustomError(code, f"task {code} failed")


def fail_on(bad: int, x: int) -> int:
    """``x * 10``, except for ``x == bad``, which raises."""
    if x == bad:
        raise CustomError(x, "bad item")
    return x * 10


def wait_for_file(path: str, value: object = None) -> object:
    """Return ``value`` once ``path`` exists (the test's gate)."""
    if not wait_for_path(path, _GATE_DEADLINE):
        raise TimeoutError(f"gate {path} never opened")
    return value


def gated_square(folder: str, x: int) -> int:
    """``x * x`` once the file ``folder/x`` exists."""
    wait_for_file(os.path.join(folder, str(x)))
    return x * x


def note_pid_and_wait(folder: str, name: str) -> int:
    """Write this worker's pid to ``folder/name.pid``, then wait for ``folder/name.go``."""
    Path(folder, f"{name}.pid.tmp").write_text(str(os.getpid()))
    os.replace(os.path.join(folder, f"{name}.pid.tmp"), os.path.join(folder, f"{name}.pid"))
    wait_for_file(os.path.join(folder, f"{name}.go"))
    return os.getpid()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_first_time(marker: str, value: int) -> int:
    """SIGKILL this worker on the first attempt (``marker`` does not exist yet), then return ``value``."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def scale(a: npt.NDArray[np.float64], factor: float) -> npt.NDArray[np.float64]:
    """A new array (as large as the argument): travels back through shared memory."""
    return a * factor


def checksum(a: npt.NDArray[np.float64]) -> float:
    return float(a.sum())


def pid() -> int:
    return os.getpid()


def inc(x: int) -> int:
    return x + 1


def total(*xs: int) -> int:
    return sum(xs)


def where_am_i(x: int) -> tuple[int, int]:
    return x, os.getpid()


def array_kind(a: npt.NDArray[np.float64]) -> str:
    """How an array argument arrived in the worker: ``SharedArray`` (shared memory) or ``ndarray`` (pickled)."""
    return type(a).__name__


# The Dask scenarios run in a child process of their own (test_executor.py starts it):
# dask.compute imports distributed, which changes how every exception pickles in the
# process that imports it (tblib), and that must not leak into the other tests.


def dask_scenario(start_method: str) -> None:
    """dask.delayed and dask.array on a leakguard.Executor: the synchronous scheduler's results."""
    import numpy as np
    import pytest

    import leakguard

    dask: Any = importlib.import_module("dask")  # untyped in places: used as Any
    da: Any = importlib.import_module("dask.array")

    parts = [dask.delayed(inc)(i) for i in range(20)]
    summed = dask.delayed(total)(*parts)
    places = [dask.delayed(where_am_i)(i) for i in range(4)]
    x = da.from_array(np.arange(40_000, dtype=np.float64).reshape(200, 200), chunks=50)
    y = (x + x.T).sum(axis=0) * 2 - x.mean()
    with leakguard.Executor(2, start_method=start_method) as ex:
        got_sum, got_places = dask.compute(summed, places, scheduler=ex)
        got_array = y.compute(scheduler=ex)
        with pytest.raises(CustomError) as failed:
            dask.compute(dask.delayed(fail)(4), scheduler=ex)
        assert failed.value.args == (4, "task 4 failed")
    assert got_sum == dask.compute(summed, scheduler="sync")[0] == sum(range(1, 21))
    assert [i for i, _ in got_places] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid in got_places}
    np.testing.assert_array_equal(got_array, y.compute(scheduler="sync"))
    print("ok")


def dask_lost_worker_scenario(folder: str) -> None:
    """A lost worker: retried; or, without retries, one failed compute and the next one works."""
    import pytest

    import leakguard

    dask: Any = importlib.import_module("dask")

    with leakguard.Executor(2, retries=1) as ex:
        parts = [dask.delayed(die_first_time)(os.path.join(folder, "marker"), i) for i in range(6)]
        assert dask.compute(dask.delayed(total)(*parts), scheduler=ex)[0] == sum(range(6))
    with leakguard.Executor(2) as ex:
        with pytest.raises(leakguard.WorkerLostError, match="batch_execute_tasks"):
            dask.compute(dask.delayed(kill_self)(), scheduler=ex)
        assert dask.compute(dask.delayed(inc)(1), scheduler=ex)[0] == 2
    print("ok")


class Dummy:
    """A result a weak reference can watch (ints and lists cannot be weakly referenced)."""

    def __init__(self, value: int) -> None:
        self.value = value


def make_dummy(value: int) -> Dummy:
    return Dummy(value)


class ExitsWhenRebuilt:
    """Pickles fine; rebuilding it (in the parent) raises SystemExit(3)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


def exits_when_rebuilt(_: object = None) -> ExitsWhenRebuilt:
    return ExitsWhenRebuilt()
