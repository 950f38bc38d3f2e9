"""Task functions and parity cases for test_joblib.py.

Workers start with spawn and import a task by reference, so tasks live here. Each
``case_*`` runs one ``joblib.Parallel`` call with the keyword arguments it is given
(``n_jobs``, ``backend``) and returns what the call produced, an exception as
``("raised", type name, args)``: the test runs every case on joblib's default
backend (in a child process, so that loky's reusable workers die with it) and on
the leakguard backend, and compares.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from joblib import Parallel, delayed, parallel_config

from tests.gates import wait_for_path


class CustomError(ValueError):
    """A user's exception with arguments and an attribute of its own."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    return (a + b) * scale


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise CustomError(x, f"item {x} is bad")
    return x


def memmap_folders() -> list[str]:
    """joblib's memmapping folders wherever joblib would put them (/dev/shm or the temp folder)."""
    places = {"/dev/shm", tempfile.gettempdir(), os.environ.get("JOBLIB_TEMP_FOLDER", "/dev/shm")}
    return sorted(
        os.path.join(place, name)
        for place in places
        if os.path.isdir(place)
        for name in os.listdir(place)
        if name.startswith("joblib_memmapping_folder_")
    )


def describe(a: npt.NDArray[Any]) -> dict[str, Any]:
    """What a worker received, seen from the worker while the task runs."""
    import leakguard

    name = getattr(a, "block_name", None)  # named or anonymous: as the journal lists it
    journaled = [  # the block as the journal folder records it: owned by a live process
        (item.owner_pid, item.size) for item in leakguard.sweep(dry_run=True).kept if name and item.name == name
    ]
    return {
        "type": type(a).__name__,
        "name": name,
        "sum": float(a.sum()),
        "pid": os.getpid(),
        "journaled": journaled,
        "memmap_folders": memmap_folders(),
    }


def worker_pid() -> int:
    return os.getpid()


def wait_for_file(path: str, limit: float) -> bool:
    """Block until ``path`` exists (the test's cue), for at most ``limit`` seconds."""
    return wait_for_path(path, limit)


def kill_self_on(x: int, victim: int) -> int:
    if x == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def kill_self_once(x: int, marker: str) -> int:
    """SIGKILL this worker the first time any worker runs it; a retry finds the marker and returns."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return x  # not reached


def nested(x: int) -> tuple[int, list[int], int]:
    """A Parallel inside a task (as library code does): where did its tasks run, and did it fork?"""
    import multiprocessing

    inner = Parallel(n_jobs=2, backend="leakguard")(delayed(os.getpid)() for _ in range(4))
    default = Parallel(n_jobs=2)(delayed(square)(i) for i in range(3))
    return os.getpid(), [*inner, *default], len(multiprocessing.active_children())


# ---------------------------------------------------------------------------- parity cases


def _outcome(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception as exc:  # the error is the outcome to compare
        return ("raised", type(exc).__name__, exc.args)


def case_list(**kw: Any) -> Any:
    return _outcome(lambda: Parallel(**kw)(delayed(square)(i) for i in range(40)))


def case_generator_input(**kw: Any) -> Any:
    def items() -> Iterator[Any]:
        for i in range(25):
            yield delayed(add)(i, b=i, scale=2)

    return _outcome(lambda: Parallel(batch_size=3, pre_dispatch="2*n_jobs", **kw)(items()))


def case_return_generator(**kw: Any) -> Any:
    return _outcome(lambda: list(Parallel(return_as="generator", **kw)(delayed(square)(i) for i in range(30))))


def case_return_generator_unordered(**kw: Any) -> Any:
    return _outcome(
        lambda: sorted(Parallel(return_as="generator_unordered", **kw)(delayed(square)(i) for i in range(30)))
    )


def case_error(**kw: Any) -> Any:
    return _outcome(lambda: Parallel(**kw)(delayed(fail_on)(i, 7) for i in range(20)))


def case_builtin_error(**kw: Any) -> Any:
    return _outcome(lambda: Parallel(**kw)(delayed(int)(s) for s in ["1", "2", "x3"]))


def case_arrays(**kw: Any) -> Any:
    arrays = [np.arange(n, dtype=np.float64) for n in (10, 200_000, 300_000)]  # the last two over 1 MiB
    out = Parallel(**kw)(delayed(np.multiply)(a, 2) for a in arrays)
    return [(float(a.sum()), a.shape, str(a.dtype)) for a in out]


def case_parallel_config(**kw: Any) -> Any:
    with parallel_config(**kw):  # the default backend when none is named
        return _outcome(lambda: Parallel()(delayed(square)(i) for i in range(10)))


CASES: dict[str, Callable[..., Any]] = {
    name[len("case_") :]: value for name, value in list(globals().items()) if name.startswith("case_")
}


def main() -> None:
    """Run every case on joblib's default backend; pickle the outcomes to the file named in argv."""
    import pickle

    outcomes = {name: run(n_jobs=2) for name, run in CASES.items()}
    Path(sys.argv[1]).write_bytes(pickle.dumps(outcomes))


if __name__ == "__main__":
    main()
