"""The job and the task functions of tests/test_failure_matrix.py.

Spawn and forkserver workers import task functions by reference, so they live in a
module, not in the test's script. ``job()`` is the whole job process: it makes a pool
that holds real things (a SharedArray it made and passes to the workers, a
leakguard.Semaphore and a leakguard.Lock, a plain numpy argument of 2 MiB, which the
pool shares by itself, and results of 1 MiB, which come back through blocks), then
runs the commands the test writes to its stdin, one JSON object a line, and reports
on stdout, one JSON object a line. Workers report on the same pipe: every line is
one ``write()`` of less than PIPE_BUF bytes, so lines never interleave.

Tasks follow a plan, ``{item: [fate of attempt 1, fate of attempt 2, ...]}``; an
attempt past the end of its list (or an item not in the plan) just computes. A fate
other than "compute" first makes a block of the worker's own and reports it, so the
test can watch what becomes of it:

- ``SIGKILL``, ``segfault``, ``_exit``: die at once that way;
- ``gate-SIGKILL``, ``gate-segfault``, ``gate-_exit``: wait on the gate semaphore
  (the test releases it by name, or kills the worker while it waits), then die;
- ``sleep``: sleep for a minute (task_timeout stops it);
- ``hog``: keep ``HOG_MIB`` of memory for the rest of the worker's life, then compute.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import multiprocessing
import multiprocessing.util
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

import leakguard

SHARED_ITEMS = 64  # float64: the parent's SharedArray; task i writes its index at [1 + i]
SHARED_FILL = 1.5
BIG_ITEMS = 1 << 18  # float64: 2 MiB, a plain argument the pool shares by itself
BIG_FILL = 2.0
RESULT_ITEMS = 1 << 17  # float64: 1 MiB, a result that comes back through a block
HOG_MIB = 400
DIE_EXIT_CODE = 7
WORKER_NAME = "LeakguardPoolWorker"

_hoard: list[npt.NDArray[np.float64]] = []  # a hog's memory, kept for the worker's life


class BoomError(Exception):
    """A task's own exception type, with arguments of its own."""

    def __init__(self, message: str, item: int) -> None:
        super().__init__(message, item)
        self.item = item


def emit(what: str, **fields: Any) -> None:
    """One JSON line on stdout, in one write() (atomic on a pipe), from the job or a worker.

    ``at`` is time.monotonic(): one clock for every process on the machine (CLOCK_MONOTONIC).
    """
    line = json.dumps({"what": what, "at": time.monotonic(), **fields}) + "\n"
    os.write(1, line.encode())


# ---------------------------------------------------------------------------- in the workers


def compute(i: int, shared: npt.NDArray[np.float64], lock: leakguard.Semaphore, big: npt.NDArray[np.float64]) -> Any:
    """Ordinary work: reads the large argument, writes to the parent's array, returns 1 MiB."""
    with lock:
        shared[1 + i] = i
    return np.full(RESULT_ITEMS, i + shared[0] + big[0])


def expected_first(i: int) -> float:
    return i + SHARED_FILL + BIG_FILL


def _attempt(marks: str, i: int) -> int:
    """This is the n-th attempt at item i (1-based), counted across workers by files."""
    n = 1
    while True:
        try:
            fd = os.open(os.path.join(marks, f"{i}.{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return n


def die(how: str) -> None:
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        faulthandler._sigsegv()  # type: ignore[attr-defined]
    elif how == "_exit":
        os._exit(DIE_EXIT_CODE)
    raise AssertionError(f"still alive after {how!r}")


def task(
    i: int,
    *,
    shared: npt.NDArray[np.float64],
    lock: leakguard.Semaphore,
    big: npt.NDArray[np.float64],
    gate: leakguard.Semaphore,
    plan: dict[int, list[str]],
    marks: str,
) -> tuple[int, Any]:
    """Returns (this worker's pid, the result of compute()) unless its plan says otherwise."""
    fates = plan.get(i)
    if fates:
        attempt = _attempt(marks, i)
        fate = fates[attempt - 1] if attempt <= len(fates) else "compute"
        if fate != "compute":
            own = leakguard.shared_array(1024, fill=float(i))
            emit("fate", i=i, attempt=attempt, fate=fate, pid=os.getpid(), block=own.shm_name)
            if fate.startswith("gate-"):
                gate.acquire()
                fate = fate[len("gate-") :]
            if fate == "sleep":
                time.sleep(60)
            elif fate == "hog":
                hog = np.ones(HOG_MIB << 17)  # touched: resident
                _hoard.append(hog)
                emit("hogged", i=i, pid=os.getpid(), rss=_rss())
            else:
                die(fate)
    return os.getpid(), compute(i, shared, lock, big)


def hold(
    i: int,
    *,
    shared: npt.NDArray[np.float64],
    lock: leakguard.Semaphore,
    big: npt.NDArray[np.float64],
    gate: leakguard.Semaphore,
    started: leakguard.Semaphore,
) -> Any:
    """Make a block of the worker's own, report it, wait for the gate, then compute."""
    own = leakguard.shared_array(1024, fill=float(i))
    emit("held", i=i, pid=os.getpid(), block=own.shm_name, big_by_name=isinstance(big, leakguard.SharedArray))
    started.release()
    gate.acquire()
    own[0] += 1  # still mapped and ours while we waited
    return compute(i, shared, lock, big)


def maybe_raise(i: int, bad: int, kind: str = "Boom") -> int:
    if i == bad:
        if kind == "Boom":
            raise BoomError(f"item {i} failed on purpose", i)
        if kind == "ValueError":
            raise ValueError(f"item {i} is not a good value")
        raise KeyError(i)
    return 2 * i


def slow_to_exit(i: int, seconds: float) -> int:
    """Return ``i``; the worker then takes ``seconds`` to exit (a finalizer that sleeps, as a
    worker that flushes or closes something slow does)."""
    multiprocessing.util.Finalize(None, time.sleep, args=(seconds,), exitpriority=0)
    return i


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- the job


def workers() -> list[int]:
    """The pids of the pool's live workers (multiprocessing.Process children of this process)."""
    return sorted(p.pid for p in multiprocessing.active_children() if p.name == WORKER_NAME and p.pid is not None)


def _describe(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        # The name leakguard exports this very class under, if it does.
        "public": type(exc).__name__ if getattr(leakguard, type(exc).__name__, None) is type(exc) else None,
        "args": [repr(a) for a in exc.args],
        "message": str(exc),
        "pid": getattr(exc, "pid", None),
        "exitcode": getattr(exc, "exitcode", None),
        "signal": getattr(exc, "signal", None),
        "attempts": getattr(exc, "attempts", None),
        "task": getattr(exc, "task", None),
        "is_timeout": isinstance(exc, TimeoutError),
        "is_leakguard": isinstance(exc, leakguard.LeakguardError),
        "remote_traceback": "" if cause is None else str(cause),
    }


class Job:
    """The job's pool, the things it holds, and the commands the test can give it (``do_*``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        options = dict(config.get("pool", {}))
        if "memory_headroom" in config:
            # A worker starts about as large as this process (fork: a copy of it; spawn and
            # forkserver: the same imports); a hog task leaves it far above this limit.
            options["max_memory_per_child"] = _rss() + config["memory_headroom"]
        self.pool = leakguard.Pool(config.get("processes", 2), start_method=config["start_method"], **options)
        self.limit = options.get("max_memory_per_child")
        self.shared = leakguard.shared_array(SHARED_ITEMS, fill=SHARED_FILL)
        self.lock = leakguard.Lock()
        self.gate = leakguard.Semaphore(0)
        self.started = leakguard.Semaphore(0)
        self.big = np.full(BIG_ITEMS, BIG_FILL)
        self.kept: list[Any] = []  # results held by the job (blocks it adopted)
        self.common: dict[str, Any] = {"shared": self.shared, "lock": self.lock, "big": self.big}

    def right(self, i: int, value: Any) -> bool:
        return (
            isinstance(value, np.ndarray)
            and value.shape == (RESULT_ITEMS,)
            and bool(np.all(value == expected_first(i)))
            and bool(self.shared[1 + i] == i)
        )

    def names(self) -> dict[str, Any]:
        return {
            "shared": self.shared.shm_name,
            "lock": self.lock.name,
            "gate": self.gate.name,
            "started": self.started.name,
            "kept": [getattr(r, "shm_name", None) for r in self.kept],
            "workers": workers(),
        }

    def do_map(self, n: int = 6) -> None:
        values = self.pool.map(functools.partial(compute, **self.common), range(n))
        emit("mapped", ok=all(self.right(i, v) for i, v in enumerate(values)), workers=workers())

    def do_hold(self) -> None:
        """Keep 1 MiB results, then give each worker a task that holds a block of its own
        and waits on the gate; wait here (in the pool's get()) until they are done."""
        self.kept = self.pool.map(functools.partial(compute, **self.common), range(3))
        pending = []
        for i in range(2):
            # One at a time: the second then goes to the idle worker, not behind the first.
            options = {"gate": self.gate, "started": self.started, **self.common}
            pending.append(self.pool.apply_async(hold, (i,), options))
            if not self.started.acquire(timeout=60):
                raise RuntimeError(f"hold task {i} did not start within 60 s")
        emit("holding", **self.names())
        values = [p.get() for p in pending]
        emit("released", ok=all(self.right(i, v) for i, v in enumerate(values)))

    def do_imap(self, n: int, plan: dict[str, list[str]], read_stdin: bool = False) -> None:
        func = functools.partial(
            task, gate=self.gate, plan={int(k): v for k, v in plan.items()}, marks=self.config["marks"], **self.common
        )
        results = self.pool.imap(func, range(n))
        if read_stdin:
            # A job that reads its own input while the pool works: this thread waits in
            # sys.stdin's read, holding its lock, until the test writes a line.
            emit("reading")
            emit("read", line=sys.stdin.readline().strip())
        for i in range(n):
            try:
                pid, value = next(results)
            except Exception as exc:
                emit("item", i=i, ok=False, error=_describe(exc))
            else:
                emit("item", i=i, ok=True, pid=pid, right=self.right(i, value))
        emit("imap-done", workers=workers())

    def do_churn(self, rounds: int) -> None:
        """Many maps with large results (hand-overs), each checked, as fast as they go."""
        ok = True
        for _ in range(rounds):
            values = self.pool.map(functools.partial(compute, **self.common), range(4))
            ok &= all(self.right(i, v) for i, v in enumerate(values))
            del values
        emit("churned", ok=ok, shared_intact=bool(self.shared[0] == SHARED_FILL))

    def do_exceptions(self) -> None:
        facts: dict[str, Any] = {"workers_before": workers()}

        def caught(call: Callable[[], object]) -> dict[str, Any] | None:
            try:
                call()
            except Exception as exc:
                return _describe(exc)
            return None

        facts["map"] = caught(lambda: self.pool.map(functools.partial(maybe_raise, bad=3), range(8)))
        facts["apply"] = caught(lambda: self.pool.apply(maybe_raise, (5,), {"bad": 5, "kind": "ValueError"}))
        facts["starmap"] = caught(lambda: self.pool.starmap(maybe_raise, [(i, 2, "KeyError") for i in range(4)]))
        errors: list[BaseException] = []
        pending = self.pool.apply_async(maybe_raise, (1, 1), error_callback=errors.append)
        pending.wait(30)
        facts["async"] = {
            "successful": pending.successful(),
            "get": caught(lambda: pending.get(0)),
            "callback": [_describe(e) for e in errors],
        }
        imap: list[Any] = []
        results = self.pool.imap(functools.partial(maybe_raise, bad=4), range(8))
        for _ in range(8):
            try:
                imap.append(next(results))
            except Exception as exc:
                imap.append(_describe(exc)["type"])
        facts["imap"] = imap
        values = self.pool.map(functools.partial(compute, **self.common), range(6))
        facts["map_after"] = all(self.right(i, v) for i, v in enumerate(values))
        facts["workers_after"] = workers()
        emit("exceptions", **facts)

    def run(self, commands: Iterator[str]) -> None:
        emit("ready", pid=os.getpid(), limit=self.limit, **self.names())
        for line in commands:
            command = json.loads(line)
            what = command.pop("do")
            getattr(self, f"do_{what}")(**command)


def _commands() -> Iterator[str]:
    """Lines from stdin, read from the descriptor itself, never through ``sys.stdin``.

    A fork start method forks replacement workers from the pool's own thread; a child
    forked while this thread waits in ``sys.stdin``'s read holds that object's lock
    for ever, and multiprocessing closes ``sys.stdin`` as a child starts. (That hazard
    has a test of its own, test_worker_death_while_the_job_reads_its_stdin; here it
    must not decide the other tests.)
    """
    pending = b""
    while data := os.read(0, 1 << 16):
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from (line.decode() for line in lines)


_job: Job | None = None  # a pool left running at exit must not be collected first (ResourceWarning)


def main() -> None:
    """The job process, as the failure matrix starts it (tests/helpers.py ``python_main``)."""
    # SIGINT back to its default: a shell starting the suite in the background (nohup, &) starts
    # it with SIGINT ignored, and children inherit that; the SIGINT row would then test nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    job()


def job() -> None:
    """The job: JSON commands in on stdin (see ``Job.run``), JSON lines out on stdout."""
    global _job
    config = json.loads(os.environ["LG_MATRIX"])
    _job = Job(config)
    _job.run(_commands())
    ending = config.get("ending", "close-join")
    if ending == "close-join":
        _job.pool.close()
        _job.pool.join()
        emit("joined")
    elif ending == "context-manager":
        with _job.pool:
            _job.do_map()
        emit("joined")
    # "interpreter-exit": the pool still runs; leakguard stops it at exit.
