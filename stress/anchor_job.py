"""The anchors' job: the same work on another library's pool, for ``python -m stress --anchors``.

``python -c 'from stress.anchor_job import main; main()' KIND``, in a session of its own,
KIND one of mp-spawn, mp-forkserver, mp-fork, executor, loky, joblib. As in SPEC
section 1, one array is shared between 2 workers: an 8 MB
``multiprocessing.shared_memory.SharedMemory`` the tasks attach to by name (joblib: a
plain array its memmapping shares), with a ``multiprocessing`` lock beside it. Rounds of
tasks run until stdin reaches end of file. Lines on stdout (JSON): ``ready`` (pid,
workers), ``round``, ``broken`` (the pool raised; the job exits 3), ``done``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import select
import sys
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import psutil

ITEMS = 1 << 20  # float64: 8 MB
PARTS = 8
TASK_SECONDS = 0.02


def emit(what: str, **fields: Any) -> None:
    os.write(1, (json.dumps({"what": what, "at": time.monotonic(), **fields}) + "\n").encode())


def part_sum(name: str, k: int) -> float:
    """Attach to the shared block by name and sum one part of it."""
    time.sleep(TASK_SECONDS)
    shm = shared_memory.SharedMemory(name=name)
    try:
        size = ITEMS // PARTS
        data = np.ndarray((ITEMS,), dtype=np.float64, buffer=shm.buf)
        total = float(data[k * size : (k + 1) * size].sum())
        del data
    finally:
        shm.close()
    return total


def array_sum(part: np.ndarray[Any, Any], k: int) -> float:
    time.sleep(TASK_SECONDS)
    size = ITEMS // PARTS
    return float(part[k * size : (k + 1) * size].sum())


def _stop() -> bool:
    ready, _, _ = select.select([0], [], [], 0)
    return bool(ready) and not os.read(0, 1 << 16)


def _workers() -> list[int]:
    me = psutil.Process()
    found = []
    for p in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            # Not a forkserver (it has children: the workers) nor a resource tracker.
            if not p.children() and "resource_tracker" not in " ".join(p.cmdline()):
                found.append(p.pid)
    return sorted(found)


def main() -> None:
    kind = sys.argv[1]
    expected = [float(ITEMS // PARTS)] * PARTS
    if kind == "joblib":
        import joblib

        data = np.ones(ITEMS)
        with joblib.Parallel(n_jobs=2, max_nbytes="1M") as parallel:
            parallel(joblib.delayed(array_sum)(data, k) for k in range(2))  # the workers exist now
            emit("ready", pid=os.getpid(), workers=_workers())
            n = 0
            while not _stop():
                try:
                    sums = parallel(joblib.delayed(array_sum)(data, k) for k in range(PARTS))
                except Exception as exc:  # noqa: BLE001 - any error: the pool broke; reported
                    emit("broken", error=f"{type(exc).__name__}: {exc}"[:200])
                    os._exit(3)
                emit("round", n=n, ok=sums == expected, workers=_workers())
                n += 1
        emit("done")
        return
    shm = shared_memory.SharedMemory(create=True, size=ITEMS * 8)
    view = np.ndarray((ITEMS,), dtype=np.float64, buffer=shm.buf)
    view[:] = 1.0
    del view
    lock = multiprocessing.get_context("spawn" if not kind.startswith("mp-") else kind[3:]).Lock()
    pool: Any
    if kind.startswith("mp-"):
        pool = multiprocessing.get_context(kind[3:]).Pool(2)
    elif kind == "executor":
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    else:
        import loky

        pool = loky.get_reusable_executor(max_workers=2)
    if kind.startswith("mp-"):
        pool.starmap(part_sum, [(shm.name, k) for k in range(2)])
    else:
        list(pool.map(part_sum, [shm.name] * 2, range(2)))
    emit("ready", pid=os.getpid(), workers=_workers(), shm=shm.name)
    n = 0
    while not _stop():
        try:
            with lock:
                if kind.startswith("mp-"):
                    sums = pool.starmap(part_sum, [(shm.name, k) for k in range(PARTS)])
                else:
                    sums = list(pool.map(part_sum, [shm.name] * PARTS, range(PARTS)))
        except Exception as exc:  # noqa: BLE001 - any error: the pool broke; reported
            emit("broken", error=f"{type(exc).__name__}: {exc}"[:200])
            os._exit(3)
        emit("round", n=n, ok=sums == expected, workers=_workers())
        n += 1
    pool.close() if kind.startswith("mp-") else pool.shutdown()
    shm.close()
    shm.unlink()
    emit("done")


if __name__ == "__main__":
    main()
