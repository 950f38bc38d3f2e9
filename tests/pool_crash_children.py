"""The job of tests/test_pool_crash_points.py, a function its test starts with
``python_main`` (tests/helpers.py); it reads its settings from the environment.

Not in tests/pool_crash_tasks.py: the workers import that module, and need nothing of this one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np

import leakguard
from leakguard._os import memfd
from stress.observe import live_threads
from tests import pool_crash_tasks as tasks
from tests.helpers import block_name, memfds_held, memfds_mapped

# Globals, so that what the job holds lives until exit.
own: leakguard.SharedArray
pool: leakguard.Pool
results: list[tuple[int, str | None, leakguard.SharedArray, leakguard.SharedArray]]
arrays: list[leakguard.SharedArray]


def _say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)  # the poll interval of a deadline wait


def _exists(name: str | None, workers: list[int] | None = None) -> bool:
    """A named block is in /dev/shm; an anonymous one is held by this process (its owner),
    or, with ``workers``, held or mapped by one of them. (Not any descendant's mapping: under
    fork a worker started later maps what this process mapped as it forked, as it does a
    named block's memory after its unlink.)"""
    assert name is not None
    if os.path.exists("/dev/shm/" + name):
        return True
    if memfd.held("/" + name) is not None:
        return True
    return workers is not None and name in memfds_held(workers) | memfds_mapped(workers)


def _alive(pid: int) -> bool:
    return bool(live_threads(pid))  # a process whose main thread alone exited still runs


def job() -> None:
    """A block of its own, then a pool, large arguments and large results (two per task), the
    results sent back by name, one freed, the rest kept to the end; says what happens (JSON
    lines). The armed failpoint (LEAKGUARD_FAILPOINT) kills the job or its workers."""
    global own, pool, results, arrays
    threshold = int(os.environ["LG_THRESHOLD"])
    tasks_n = int(os.environ["LG_TASKS"])
    own = leakguard.shared_array(1000, fill=7.0)
    _say(own=block_name(own), pid=os.getpid())
    pool = leakguard.Pool(2, start_method=os.environ["LG_START_METHOD"], retries=2 * tasks_n, share_threshold=threshold)
    _say(started=True)
    inputs = [np.full(2 * threshold // 8, float(i)) for i in range(tasks_n)]
    # Results over the threshold arrive as SharedArrays (asserted below, one by one).
    results = cast(
        "list[tuple[int, str | None, leakguard.SharedArray, leakguard.SharedArray]]",
        pool.map(tasks.big_result, inputs, chunksize=1),
    )
    _say(results=[[block_name(a), block_name(b)] for _, _, a, b in results])
    for i, (_pid, _kept, doubled, plus) in enumerate(results):
        assert isinstance(doubled, leakguard.SharedArray)
        assert isinstance(plus, leakguard.SharedArray)
        assert (doubled == 2.0 * i).all()
        assert (plus == i + 1.0).all()
        assert _exists(block_name(doubled)), "a result block was freed under the parent"
        assert _exists(block_name(plus)), "a result block was freed under the parent"
    workers = sorted({pid for pid, _, _, _ in results})
    kept = [k for _, k, _, _ in results]
    _say(workers=workers, kept=kept)
    if os.environ["LG_WORKERS_DIE"] == "1":
        # Each worker that handed a result over died at the step: the pool reclaims what it kept.
        _wait_until(lambda: not any(_alive(pid) for pid in workers), "the workers to die at the step")
        _wait_until(lambda: not any(_exists(k, workers) for k in kept), "the pool to reclaim the dead workers' blocks")
    # The results go back to other workers by name.
    arrays = [a for _, _, d, p in results for a in (d, p)]
    totals: list[Any] = pool.map(tasks.total, arrays, chunksize=1)
    assert totals == [float(a.sum()) for a in arrays]
    # The parent owns them: free() works.
    first = arrays.pop(0)
    leakguard.free(first)
    assert not _exists(block_name(first))
    pool.close()
    pool.join()
    for a in arrays:
        assert _exists(block_name(a)), "shutting the pool down freed a result block"
    _say(done=float(sum(a.sum() for a in arrays)))


def result_outlives_its_worker() -> None:
    """One worker; a task that returns a large array after a pause. Says "submitted" (the test
    then stops this process with SIGSTOP, lets the worker send its result and die at
    handover.worker-after-send, and continues it), then says what the task's result was."""
    global pool
    threshold = int(os.environ["LG_THRESHOLD"])
    pool = leakguard.Pool(1, start_method=os.environ["LG_START_METHOD"], share_threshold=threshold)
    worker = pool.apply(os.getpid)  # the one worker, up
    pending = pool.apply_async(tasks.slow_big, (threshold,))
    _say(submitted=True, worker=worker)
    try:
        value = pending.get(timeout=60)
    except Exception as exc:
        _say(error=type(exc).__name__, message=str(exc)[:300])
    else:
        _say(error=None, shared=isinstance(value, leakguard.SharedArray), total=float(value.sum()))
    pool.terminate()
    pool.join()
