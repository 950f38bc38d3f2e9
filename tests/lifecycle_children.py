"""Child programs of tests/test_lifecycle.py, each a function its test starts with
``run_main`` (tests/helpers.py); arguments arrive as strings. Each prints its report
as JSON on its last line.

leakguard is imported inside the functions, not here: ``exit_with_work`` registers its
report before leakguard is imported (atexit runs last-registered first). The objects a
program keeps are module globals, as they were the program's own: they live until exit.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from concurrent.futures import Future

    import leakguard

kept: leakguard.SharedArray
kept_anonymous: leakguard.SharedArray
sem: leakguard.Semaphore
pool: leakguard.Pool
ex: leakguard.Executor
running: Any  # the pool's map_async result
future: Future[None]


# ---------------------------------------------------------------------------- fork


def fork_and_drop(method: str, how: str) -> None:
    """Fork while the pool and the executor run tasks; the child ends or drops them as ``how`` says."""
    global kept, kept_anonymous, sem, pool, ex, running, future
    import leakguard

    kept = leakguard.shared_array(10, fill=1.0, named=True)
    kept_anonymous = leakguard.shared_array(10, fill=2.0)
    sem = leakguard.Semaphore(1)
    with leakguard.Pool(2, start_method=method) as pool:
        ex = leakguard.Executor(1, start_method=method)
        running = pool.map_async(time.sleep, [0.5, 0.5])
        future = ex.submit(time.sleep, 0.5)
        time.sleep(0.2)  # both tasks are running in the parent's workers
        pid = os.fork()
        if pid == 0:
            if how == "drop":
                del pool, ex
                gc.collect()
            elif how == "terminate":
                pool.terminate()
                pool.close()
                pool.join()
                ex.shutdown()
                sys.exit(0)
            elif how == "with":
                ex.__exit__(None, None, None)
                raise SystemExit(0)  # leaves the pool's with block
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        out = {"child": os.waitstatus_to_exitcode(status), "map": running.get(30), "future": future.result(30)}
        # The parent's objects are still its own, and still there: the named block in /dev/shm,
        # the anonymous one attachable by another process (the parent still holds it).
        attach = "import pickle, sys; print(float(pickle.loads(sys.stdin.buffer.read()).sum()))"
        other = subprocess.run(
            [sys.executable, "-c", attach], input=pickle.dumps(kept_anonymous), capture_output=True, check=False
        )
        out["kept"] = kept.shm_name in os.listdir("/dev/shm") and other.stdout.strip() == b"20.0"
        out["sem"] = sem.acquire(timeout=1)
        ex.shutdown()
    print(json.dumps(out))


def _attempt(call: Callable[[], object]) -> list[Any] | str:
    import leakguard

    try:
        call()
    except leakguard.InheritedPoolError as exc:
        return [type(exc).__name__, exc.owner_pid, exc.pid, str(exc)]
    return "accepted"


def fork_and_use() -> None:
    """Fork; the child tries every way to use the inherited pool and executor and reports each outcome."""
    global pool, ex
    import leakguard

    pool = leakguard.Pool(1)
    ex = leakguard.Executor(1)
    assert pool.apply(abs, (-1,)) == 1
    assert ex.submit(abs, -2).result() == 2
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        # Files opened in the child take the numbers of the pool's pipe ends, which
        # the fork closed: nothing meant for the parent's workers may land in them.
        with contextlib.ExitStack() as files_open:
            files = [files_open.enter_context(tempfile.TemporaryFile()) for _ in range(12)]
            seen: dict[str, object] = {
                "apply_async": _attempt(lambda: pool.apply_async(abs, (-1,))),
                "map": _attempt(lambda: pool.map(abs, [1, 2])),
                "imap": _attempt(lambda: pool.imap(abs, [1, 2])),
                "with": _attempt(pool.__enter__),
                "submit": _attempt(lambda: ex.submit(abs, -1)),
                "executor.map": _attempt(lambda: ex.map(abs, [1, 2])),
            }
            seen["files"] = sum(os.fstat(f.fileno()).st_size for f in files)
        os.write(write, json.dumps(seen).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(pid, 0)
    seen["parent"] = [os.getpid(), pool.apply(abs, (-3,)), ex.submit(abs, -4).result()]
    ex.shutdown()
    pool.terminate()
    print(json.dumps(seen))


# ---------------------------------------------------------------------------- exit

outcomes: list[str] = []
array: leakguard.SharedArray
closed: leakguard.Pool
running_pool: leakguard.Pool


def _note(done: Future[None]) -> None:
    exception = done.exception()
    outcomes.append("ok" if exception is None else type(exception).__name__)


def _report_outcomes() -> None:
    print(json.dumps({"outcomes": outcomes}), flush=True)


def _step(step: str) -> None:
    """One of the steps the test places: ``import executor``, ``array``, or nothing ("")."""
    global array
    import leakguard

    if step == "import executor":
        import leakguard.executor
    elif step == "array":
        array = leakguard.shared_array(10)
    else:
        assert not step, step


def exit_with_work(first: str, second: str, third: str, fourth: str) -> None:
    """Leave an executor with work, a closed pool with work and a running pool with work, and
    exit; ``first`` to ``fourth`` are ``_step``s, placed as the test's import orders need."""
    global ex, closed, running_pool
    # First registered, so it runs last (atexit is LIFO): after leakguard's.
    import atexit

    atexit.register(_report_outcomes)
    _step(first)
    import leakguard

    _step(second)
    _step(third)
    ex = leakguard.Executor(1)
    for _ in range(6):
        ex.submit(time.sleep, 0.05).add_done_callback(_note)
    _step(fourth)
    closed = leakguard.Pool(1)
    # Its work outlasts the executor's: it must still be running when the executor is done.
    closed.map_async(
        time.sleep,
        [0.3] * 3,
        callback=lambda r: outcomes.append("closed pool ok"),
        error_callback=lambda e: outcomes.append(type(e).__name__),
    )
    closed.close()
    running_pool = leakguard.Pool(1)
    running_pool.apply_async(
        time.sleep, (30,), error_callback=lambda e: outcomes.append("running: " + type(e).__name__)
    )
    # Exit now, without shutdown(), join() or terminate().


# ---------------------------------------------------------------------------- a failed start


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {p.status()} {' '.join(p.cmdline())[-50:]}"
    except psutil.Error:  # a zombie has no command line
        return f"{p.pid} zombie?"


def _state() -> dict[str, Any]:
    from multiprocessing import resource_tracker

    gc.collect()
    helpers = {resource_tracker._resource_tracker._pid}  # type: ignore[attr-defined]
    children = sorted(_describe(p) for p in psutil.Process().children(recursive=True) if p.pid not in helpers)
    folder = os.environ["LEAKGUARD_DIR"]
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return {
        "children": [c for c in children if "zombie" not in c],
        "zombies": len([c for c in children if "zombie" in c]),
        "fds": len(os.listdir("/proc/self/fd")),
        "journal files": files,
    }


def _open_files() -> dict[str, str]:
    """What each descriptor of this process is, to say which ones a failure left."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


armed = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if armed:  # only inside Pool(): anywhere else it would end this program
        raise KeyboardInterrupt


def _ctrl_c(signum: int, frame: FrameType | None) -> None:
    """The timer's instant becomes a real SIGINT to this thread, as a Ctrl-C is: where the pool
    holds SIGINT blocked (starting a process), it waits until unblocked, as a Ctrl-C would."""
    if armed:
        signal.raise_signal(signal.SIGINT)


def _make(what: str) -> leakguard.Pool | leakguard.Executor:
    """``Pool 2`` is ``leakguard.Pool(2)``; ``unpicklable`` adds an initializer argument that cannot be pickled."""
    import leakguard

    kind, processes, *options = what.split()
    assert kind in ("Pool", "Executor"), what
    assert options in ([], ["unpicklable"]), what
    make = leakguard.Pool if kind == "Pool" else leakguard.Executor
    if options:
        return make(int(processes), initializer=print, initargs=(threading.Lock(),))
    return make(int(processes))


def failed_starts(what: str, attempts: str, fd_limit: str, arm: str) -> None:
    """Try to make ``what`` (see ``_make``) ``attempts`` times, with at most ``fd_limit`` descriptors
    if not "", and a SIGINT at a random instant if ``arm``; report the failures and the process's
    children, descriptors and journal files before and after."""
    global armed
    from multiprocessing import resource_tracker

    import leakguard

    signal.signal(signal.SIGALRM, _ctrl_c)
    signal.signal(signal.SIGINT, _interrupt)
    # What a pool imports, imported first (numpy cannot be imported again after an interrupted
    # import), and the standard library's helper, which lives as long as we do.
    import multiprocessing.popen_spawn_posix  # noqa: F401 (imported for what importing it does)

    import leakguard._pool.pool
    import leakguard.executor

    resource_tracker.ensure_running()
    before = _state()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if fd_limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(fd_limit), hard))
    random.seed(7)
    failures: collections.Counter[str] = collections.Counter()
    for _ in range(int(attempts)):
        made = None
        try:
            armed = bool(arm)
            if armed:
                signal.setitimer(signal.ITIMER_REAL, random.uniform(0, 0.03))
            made = _make(what)
            armed = False
        except BaseException as exc:
            armed = False
            failures[type(exc).__name__] += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        if made is not None:
            made.terminate() if isinstance(made, leakguard.Pool) else made.shutdown()
    if fd_limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + 10  # a pool interrupted as its I/O thread started stops by itself
    while _state() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"before": before, "after": _state(), "failures": failures, "open": _open_files()}))
