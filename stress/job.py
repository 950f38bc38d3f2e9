"""The target job of a stress run: ``python -m stress.job CONFIG_JSON``, in a session of its own.

The job makes a leakguard pool and runs rounds of work until its stdin reaches end of
file, then closes and joins the pool and exits 0. What a round does is the workload:

- ``shared``: a fresh SharedArray per round, mapped over by slices, then freed;
- ``plain``: plain numpy arguments above the pool's share threshold (shared by the pool);
- ``results``: tasks return large arrays (handed over from worker to parent), then freed;
- ``sems``: a fresh Semaphore per round, released by some tasks and acquired by others,
  so a unit is held across tasks;
- ``shared-named``, ``results-named``: ``shared`` and ``results`` with named blocks
  (``named=True``), for the failpoints of named blocks (``shm.*``);
- ``anon``: all of ``shared``, ``plain`` and ``results`` in each round, anonymous blocks
  only: the job holds no named object at all (the kernel alone cleans up after it).

Every job also holds a SharedArray, a Lock and a Semaphore of its own for its whole life
(an ``anon`` job: a 128 MB anonymous SharedArray, and no semaphore).
It reports on stdout, one JSON object a line (each one ``write()``, under PIPE_BUF):
``start``, ``ready`` (its pid and workers), ``round`` (per-item outcomes), ``joined``.

Failpoints are armed here, not through the inherited environment, so that exactly the
process meant to die does: ``fail_parent`` in this process once its own objects exist,
``fail_worker`` in the first worker only (an O_EXCL mark file decides which one).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

import leakguard
from leakguard import _failpoint

ITEMS = 8  # tasks per round
SLICE = 4096  # float64 items per task in the shared workload
PLAIN_ITEMS = 1 << 18  # float64: 2 MiB, above the default share threshold of 1 MiB
RESULT_ITEMS = 1 << 17  # float64: 1 MiB results, handed over through blocks
ANON_OWN_ITEMS = 1 << 24  # float64: the 128 MiB an anon job holds for its life (it shows in Shmem)
TASK_SECONDS = 0.01  # each task sleeps this long, so that a round has a "middle"
SEM_WAIT = 0.5  # a task waits at most this long for the round's semaphore
WORKER_NAME = "LeakguardPoolWorker"


def emit(what: str, **fields: Any) -> None:
    """One JSON line on stdout in one write(); ``at`` is time.monotonic() (one clock machine-wide)."""
    line = json.dumps({"what": what, "at": time.monotonic(), **fields}) + "\n"
    os.write(1, line.encode())


# ---------------------------------------------------------------------------- in the workers


def arm_worker(spec: str, marks: str) -> None:
    """Pool initializer: arm ``spec`` in the first worker that gets here, and in no other."""
    if not spec:
        return
    try:
        fd = os.open(os.path.join(marks, "armed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    _failpoint._ARMED.update(_failpoint._parse(spec))


def shared_sum(part: npt.NDArray[np.float64]) -> float:
    time.sleep(TASK_SECONDS)
    return float(part.sum())


def plain_sum(part: npt.NDArray[np.float64]) -> float:
    time.sleep(TASK_SECONDS)
    return float(part[0] + part[-1])


def make_result(i: int) -> npt.NDArray[np.float64]:
    time.sleep(TASK_SECONDS)
    return np.full(RESULT_ITEMS, float(i))


def make_named_result(i: int) -> leakguard.SharedArray:
    """A result in a named block the worker makes (handed over to the parent as any is)."""
    time.sleep(TASK_SECONDS)
    return leakguard.share(np.full(RESULT_ITEMS, float(i)), named=True)


def anon_task(args: tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """A slice of a shared array and a plain argument in, a 1 MiB result out."""
    i, part, plain = args
    time.sleep(TASK_SECONDS)
    return np.full(RESULT_ITEMS, float(part[0] + plain[0] + i))


def pass_unit(args: tuple[int, leakguard.Semaphore]) -> int:
    """Even items release one unit of the round's semaphore, odd ones take one."""
    i, sem = args
    time.sleep(TASK_SECONDS)
    if i % 2 == 0:
        sem.release()
        return i
    return i if sem.acquire(timeout=SEM_WAIT) else -1


# ---------------------------------------------------------------------------- the job


def workers() -> list[int]:
    return sorted(p.pid for p in multiprocessing.active_children() if p.name == WORKER_NAME and p.pid is not None)


def _stdin_closed() -> bool:
    ready, _, _ = select.select([0], [], [], 0)
    if not ready:
        return False
    return not os.read(0, 1 << 16)  # any line is ignored; end of file says stop


class Job:
    """The job's pool, the objects it holds, and its rounds of work."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.workload: str = config["workload"]
        emit("start", pid=os.getpid())
        if config.get("fail_parent"):
            _failpoint._ARMED.update(_failpoint._parse(config["fail_parent"]))
        self.pool = leakguard.Pool(
            config.get("processes", 2),
            initializer=arm_worker,
            initargs=(config.get("fail_worker", ""), config["marks"]),
            start_method=config["start_method"],
            retries=config.get("retries", 1),
        )
        # Objects held for the job's whole life, made once its guardian runs: all must go after any kill.
        self.named = self.workload.endswith("-named")
        if self.workload == "anon":
            self.own = leakguard.shared_array(ANON_OWN_ITEMS, fill=3.0)
        else:
            self.own = leakguard.shared_array(1024, fill=3.0, named=self.named)
            self.lock = leakguard.Lock()
            self.sem = leakguard.Semaphore(1)
        emit("ready", pid=os.getpid(), workers=workers())

    def round(self, n: int) -> None:
        started = time.monotonic()
        outcomes: list[str] = []
        errors: list[str] = []
        expected: list[float]
        results: leakguard.IMapIterator[Any]  # of floats, or arrays (results)
        if self.workload in ("shared", "shared-named"):
            data = leakguard.shared_array(SLICE * ITEMS, fill=float(n), named=self.named)
            results = self.pool.imap(shared_sum, [data[k * SLICE : (k + 1) * SLICE] for k in range(ITEMS)])
            expected = [float(n) * SLICE] * ITEMS
        elif self.workload == "anon":
            data = leakguard.shared_array(SLICE * ITEMS, fill=float(n))
            work = [(k, data[k * SLICE : (k + 1) * SLICE], np.full(PLAIN_ITEMS, float(k))) for k in range(ITEMS)]
            results = self.pool.imap(anon_task, work)
            expected = [float(n + 2 * k) for k in range(ITEMS)]
        elif self.workload == "plain":
            args = [np.full(PLAIN_ITEMS, float(k)) for k in range(ITEMS)]
            results = self.pool.imap(plain_sum, args)
            expected = [2.0 * k for k in range(ITEMS)]
        elif self.workload in ("results", "results-named"):
            results = self.pool.imap(make_named_result if self.named else make_result, range(ITEMS))
            expected = [float(k) for k in range(ITEMS)]
        else:
            sem = leakguard.Semaphore(0)
            results = self.pool.imap(pass_unit, [(k, sem) for k in range(ITEMS)])
            expected = [float(k) for k in range(ITEMS)]
        for k in range(ITEMS):
            try:
                value = next(results)
            except leakguard.WorkerLostError:
                outcomes.append("lost")
                continue
            except Exception as exc:  # noqa: BLE001 - any other error is a wrong outcome, reported
                outcomes.append("error")
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            outcomes.append("ok" if self._right(value, expected[k]) else "wrong")
        if self.workload in ("shared", "shared-named", "anon"):
            leakguard.free(data)
        emit("round", n=n, started=started, outcomes=outcomes, errors=errors[:3], workers=workers())

    def _right(self, value: Any, expected: float) -> bool:
        if self.workload in ("results", "results-named", "anon"):
            right = bool(isinstance(value, np.ndarray) and value.shape == (RESULT_ITEMS,) and np.all(value == expected))
            if isinstance(value, leakguard.SharedArray):
                leakguard.free(value)  # the free steps happen here, in the parent
            return right
        if self.workload == "sems":
            return bool(value == expected or (value == -1 and int(expected) % 2 == 1))
        return bool(value == expected)

    def run(self) -> None:
        n = 0
        while not _stdin_closed():
            self.round(n)
            n += 1
        self.pool.close()
        self.pool.join()
        emit("joined", rounds=n)


def main(argv: list[str]) -> None:
    # Started from a background shell, a program inherits SIGINT ignored, and Python then
    # keeps it so; a job in a terminal gets KeyboardInterrupt, and that is what is tested.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = json.loads(argv[0])
    job = Job(config)
    job.run()


if __name__ == "__main__":
    main(sys.argv[1:])
