"""``leakguard.Executor``: ProcessPoolExecutor's semantics, without its broken pool.

The parity cases run on ``concurrent.futures.ProcessPoolExecutor`` and on
``leakguard.Executor`` under each start method and compare the outcomes: values,
and for an exception its type (and its arguments where the standard library's
are the user's own). Where the two differ on purpose (a lost worker, retries),
the tests check leakguard and show the standard library's behaviour beside it.
"""

from __future__ import annotations

import concurrent.futures
import gc
import importlib.util
import multiprocessing
import os
import re
import signal
import sys
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

import leakguard
from tests import executor_tasks as tasks
from tests.helpers import descendants, run, run_python, wait_for

IMPLS = ("concurrent.futures", "leakguard")


class MakeExecutor(Protocol):
    def __call__(self, max_workers: int = 2) -> concurrent.futures.Executor: ...


Case = Callable[[MakeExecutor, Path], Any]


@pytest.fixture
def make_executors(start_method: str) -> Iterator[Callable[[str], MakeExecutor]]:
    """``make_executors(impl)`` makes ``impl`` executors under ``start_method``; all are
    shut down (their queued work cancelled) when the test ends, pass or fail."""
    made: list[concurrent.futures.Executor] = []

    def factory_for(impl: str) -> MakeExecutor:
        def make(max_workers: int = 2) -> concurrent.futures.Executor:
            executor: concurrent.futures.Executor
            if impl == "concurrent.futures":
                ctx = multiprocessing.get_context(start_method)
                executor = ProcessPoolExecutor(max_workers, mp_context=ctx)
            else:
                executor = leakguard.Executor(max_workers, start_method=start_method)
            made.append(executor)
            return executor

        return make

    yield factory_for
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


def outcome(call: Callable[[], Any]) -> Any:
    """The value, or ``("raised", type name, args)``."""
    try:
        return call()
    except Exception as exc:
        return ("raised", type(exc).__name__, exc.args)


def kind(call: Callable[[], Any]) -> str:
    """The name of the exception ``call`` raises (the messages differ between the two)."""
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "no exception"


def collect(results: Iterator[Any]) -> tuple[list[Any], Any]:
    """What an iterator yields before it raises, and what it raised."""
    got: list[Any] = []
    try:
        for value in results:
            got.append(value)
    except Exception as exc:
        return got, (type(exc).__name__, exc.args)
    return got, None


def case_submit(make: MakeExecutor, folder: Path) -> Any:
    ex = make()
    out: list[Any] = [
        ex.submit(tasks.square, 7).result(timeout=60),
        ex.submit(tasks.describe, 1, b=2, c=3).result(timeout=60),
        ex.submit(tasks.describe, 1).result(timeout=60),
    ]
    failed = ex.submit(tasks.fail, 5)
    exc = failed.exception(timeout=60)
    assert isinstance(exc, tasks.CustomError)
    out += [(type(exc).__name__, exc.args, exc.code), outcome(failed.result), failed.done(), failed.cancelled()]
    out.append(kind(lambda: ex.submit(tasks.square, "x").result(timeout=60)))  # type: ignore[arg-type]
    callbacks: list[Any] = []
    done = ex.submit(tasks.add, 2, 3)
    done.add_done_callback(lambda f: callbacks.append(f.result()))
    out += [done.result(timeout=60), wait_for(lambda: callbacks, what="the done callback")]
    ex.shutdown()
    return out


def case_map(make: MakeExecutor, folder: Path) -> Any:
    ex = make()
    out: list[Any] = [list(ex.map(tasks.square, range(10)))]
    out += [list(ex.map(tasks.square, range(10), chunksize=size)) for size in (1, 3, 4, 20)]
    out.append(list(ex.map(tasks.add, range(5), range(10, 13))))  # the shortest input ends it
    out.append(list(ex.map(tasks.add, [1, 2, 3], (4, 5, 6), chunksize=2)))
    out.append(list(ex.map(tasks.square, [])))
    out.append(list(ex.map(tasks.square, iter(range(4)))))
    out.append(kind(lambda: ex.map(tasks.square, range(3), chunksize=0)))
    results = ex.map(tasks.square, range(3))
    out.append((iter(results) is results, next(results), list(results)))
    # A task's error is raised when its chunk is reached; items before it come first.
    out += [collect(ex.map(tasks.fail_on, [3] * 8, range(8), chunksize=size)) for size in (1, 2, 3)]
    ex.shutdown()
    return out


def case_timeout(make: MakeExecutor, folder: Path) -> Any:
    ex = make(1)
    out: list[Any] = [ex.submit(tasks.square, 2).result(timeout=60)]  # the worker is up
    gate = str(folder / "gate")
    waiting = ex.submit(tasks.wait_for_file, gate, "late")
    out.append(kind(lambda: waiting.result(timeout=0.2)))
    (folder / "gate").touch()
    out.append(waiting.result(timeout=60))
    (folder / "0").touch()
    results = ex.map(tasks.gated_square, [str(folder)] * 3, range(3), timeout=1.0)
    out.append(next(results))
    out.append(kind(lambda: next(results)))  # item 1's gate stays shut past the map's timeout
    out.append(kind(lambda: next(results)))  # the iterator is finished after its error
    for i in (1, 2):
        (folder / str(i)).touch()
    ex.shutdown()
    return out


def case_shutdown(make: MakeExecutor, folder: Path) -> Any:
    ex = make(1)
    gate = str(folder / "gate")
    futures = [ex.submit(tasks.wait_for_file, gate, i) for i in range(3)]
    (folder / "gate").touch()
    ex.shutdown(wait=True)
    out: list[Any] = [[f.done() for f in futures], [f.result() for f in futures]]
    out.append(kind(lambda: ex.submit(tasks.square, 1)))
    out.append(kind(lambda: ex.map(tasks.square, [1])))
    ex.shutdown()  # a second time is harmless
    with make() as ex2:
        in_with = ex2.submit(tasks.square, 4)
    out.append((in_with.done(), in_with.result()))
    return out


def _one_busy_twenty_waiting(make: MakeExecutor, folder: Path) -> tuple[Executor, Future[Any], list[Future[Any]]]:
    """One worker busy until ``folder / "gate"`` exists, and 20 futures submitted behind it."""
    ex = make(1)
    first = ex.submit(tasks.wait_for_file, str(folder / "gate"), "first")
    wait_for(first.running, timeout=60, what="the first task to be handed to a worker")
    return ex, first, [ex.submit(tasks.square, i) for i in range(20)]


def case_cancel(make: MakeExecutor, folder: Path) -> Any:
    ex, first, rest = _one_busy_twenty_waiting(make, folder)
    last = rest[-1]
    out: list[Any] = [first.cancel(), last.cancel(), last.cancelled(), last.done(), last.cancel()]
    out.append(kind(last.result))
    (folder / "gate").touch()
    out.append([f.result(timeout=60) for f in rest[:-1]])
    ex.shutdown()
    return out


def case_cancel_futures(make: MakeExecutor, folder: Path) -> Any:
    ex, first, rest = _one_busy_twenty_waiting(make, folder)
    ex.shutdown(wait=False, cancel_futures=True)
    (folder / "gate").touch()
    out = [first.result(timeout=60)]
    # The standard library cancels on its management thread: wait for every future to end.
    wait_for(lambda: all(f.done() for f in rest), timeout=60, what="every future to finish or be cancelled")
    cancelled = [f.cancelled() for f in rest]
    return [
        *out,
        sum(cancelled) >= 17,  # all but those already handed to the worker
        cancelled[-1],
        all(c or f.result() == i * i for i, (c, f) in enumerate(zip(cancelled, rest, strict=True))),
        kind(lambda: ex.submit(tasks.square, 1)),
    ]


CASES: dict[str, Case] = {
    "submit": case_submit,
    "map": case_map,
    "timeout": case_timeout,
    "shutdown": case_shutdown,
    "cancel": case_cancel,
    "cancel_futures": case_cancel_futures,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_same_outcome_as_process_pool_executor(
    case: str, make_executors: Callable[[str], MakeExecutor], tmp_path: Path
) -> None:
    outcomes = {}
    for impl in IMPLS:
        folder = tmp_path / impl.replace(".", "_")
        folder.mkdir()
        outcomes[impl] = CASES[case](make_executors(impl), folder)
    assert outcomes["leakguard"] == outcomes["concurrent.futures"]


def _kill_when_running(folder: Path, name: str) -> int:
    pid = int(wait_for(lambda: _read(folder / f"{name}.pid"), timeout=60, what=f"{name} to start"))
    os.kill(pid, signal.SIGKILL)
    return pid


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_own_future(start_method: str, tmp_path: Path) -> None:
    with leakguard.Executor(2, start_method=start_method) as ex:
        victim = ex.submit(tasks.note_pid_and_wait, str(tmp_path), "victim")
        others = [ex.submit(tasks.gated_square, str(tmp_path), i) for i in range(6)]
        pid = _kill_when_running(tmp_path, "victim")
        error = victim.exception(timeout=60)
        assert isinstance(error, leakguard.WorkerLostError)
        # Code written for ProcessPoolExecutor catches a lost worker as it always did.
        assert isinstance(error, BrokenProcessPool)
        assert (error.pid, error.signal, error.attempts) == (pid, signal.SIGKILL, 1)
        assert "note_pid_and_wait" in str(error)
        for i in range(6):
            (tmp_path / str(i)).touch()
        assert [f.result(timeout=60) for f in others] == [i * i for i in range(6)]
        assert ex.submit(tasks.square, 9).result(timeout=60) == 81
        assert list(ex.map(tasks.square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]


def test_the_same_kill_breaks_a_process_pool_executor(start_method: str, tmp_path: Path) -> None:
    """What leakguard.Executor fixes: the standard library's executor is broken for good."""
    ctx = multiprocessing.get_context(start_method)
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    try:
        victim = ex.submit(tasks.note_pid_and_wait, str(tmp_path), "victim")
        others = [ex.submit(tasks.gated_square, str(tmp_path), i) for i in range(6)]
        _kill_when_running(tmp_path, "victim")
        assert isinstance(victim.exception(timeout=60), BrokenProcessPool)
        assert all(isinstance(f.exception(timeout=60), BrokenProcessPool) for f in others)
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 9)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.slow
def test_a_map_chunk_on_a_killed_worker_fails_at_its_place(tmp_path: Path) -> None:
    with leakguard.Executor(1) as ex:
        marker = str(tmp_path / "marker")
        results = ex.map(tasks.die_first_time, [marker] * 4, [1, 2, 3, 4], chunksize=2)
        got, error = collect(results)
        assert got == []
        assert error is not None
        assert error[0] == "WorkerLostError"
        assert "map(die_first_time)" in error[1][0]
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9


@pytest.mark.slow
def test_retries_run_a_lost_task_again(tmp_path: Path) -> None:
    with leakguard.Executor(1, retries=1) as ex:
        assert ex.submit(tasks.die_first_time, str(tmp_path / "a"), 5).result(timeout=60) == 5
    with leakguard.Executor(1) as ex:
        error = ex.submit(tasks.die_first_time, str(tmp_path / "b"), 5).exception(timeout=60)
        assert isinstance(error, leakguard.WorkerLostError)
        assert error.attempts == 1
        assert ex.submit(tasks.die_first_time, str(tmp_path / "b"), 6).result(timeout=60) == 6


@pytest.mark.slow
def test_task_timeout_fails_the_future_and_the_executor_goes_on(tmp_path: Path) -> None:
    with leakguard.Executor(1, task_timeout=0.5) as ex:
        stuck = ex.submit(tasks.wait_for_file, str(tmp_path / "never"), 1)
        error = stuck.exception(timeout=60)
        assert isinstance(error, leakguard.TaskTimeoutError)
        assert isinstance(error, TimeoutError)
        assert ex.submit(tasks.square, 5).result(timeout=60) == 25


def test_shutdown_without_wait_finishes_the_work_and_leaves_nothing(start_method: str, tmp_path: Path) -> None:
    ex = leakguard.Executor(2, start_method=start_method)
    futures = [ex.submit(tasks.gated_square, str(tmp_path), i) for i in range(4)]
    ex.shutdown(wait=False)
    assert not any(f.done() for f in futures)  # it did not wait
    assert descendants()
    for i in range(4):
        (tmp_path / str(i)).touch()
    assert [f.result(timeout=60) for f in futures] == [0, 1, 4, 9]
    wait_for(lambda: not descendants(), timeout=30, what="the workers and the guardian to exit")


def test_an_executor_dropped_without_shutdown_stops_quietly(tmp_path: Path) -> None:
    ex = leakguard.Executor(1)
    assert ex.submit(tasks.square, 3).result(timeout=60) == 9
    del ex
    gc.collect()
    wait_for(lambda: not descendants(), timeout=30, what="the workers and the guardian to exit")


def test_cancelled_futures_never_run(tmp_path: Path) -> None:
    with leakguard.Executor(1) as ex:
        first = ex.submit(tasks.wait_for_file, str(tmp_path / "gate"), None)
        queued = [ex.submit(tasks.note_pid_and_wait, str(tmp_path), f"q{i}") for i in range(5)]
        # 2 x max_workers futures are handed to the pool (first and queued[0]); the rest wait.
        assert all(f.cancel() for f in queued[1:])
        assert not queued[0].cancel()
        (tmp_path / "gate").touch()
        (tmp_path / "q0.go").touch()
        assert first.result(timeout=60) is None
        assert isinstance(queued[0].result(timeout=60), int)
    assert not any((tmp_path / f"q{i}.pid").exists() for i in range(1, 5))


@pytest.mark.slow
def test_large_arrays_travel_through_shared_memory(start_method: str) -> None:
    a = np.arange(2_000_000, dtype=np.float64)  # 16 MB, over the 1 MiB threshold
    with leakguard.Executor(2, start_method=start_method) as ex:
        assert ex.submit(tasks.array_kind, a).result(timeout=60) == "SharedArray"
        assert ex.submit(tasks.array_kind, a[:10]).result(timeout=60) == "ndarray"
        doubled = ex.submit(tasks.scale, a, 2.0).result(timeout=60)
        assert isinstance(doubled, leakguard.SharedArray)
        np.testing.assert_array_equal(doubled, a * 2.0)
        sums = list(ex.map(tasks.checksum, [a, a + 1.0, a[::2]], chunksize=2))
        assert sums == [float(a.sum()), float((a + 1.0).sum()), float(a[::2].sum())]
        del doubled


@pytest.mark.slow
def test_initializer_and_max_tasks_per_child() -> None:
    with leakguard.Executor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(tasks.pid).result(timeout=60) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]
    with leakguard.Executor(1, initializer=tasks.fail, initargs=(7,)) as ex:
        error = ex.submit(tasks.square, 2).exception(timeout=60)
        assert isinstance(error, tasks.CustomError)
        assert error.args == (7, "task 7 failed")


@pytest.mark.slow
def test_bad_arguments_are_refused() -> None:
    for number in (0, -1):  # in the standard library's words, which its own tests match
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            leakguard.Executor(number)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        leakguard.Executor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="start_method"):
        leakguard.Executor(1, start_method="thread")
    with leakguard.Executor(1) as ex:
        assert ex._max_workers == 1
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(tasks.square, [1], chunksize=0)


def _needs_dask() -> None:
    # Found, not imported: importing dask here would change exception pickling for the other tests.
    if importlib.util.find_spec("dask") is None:
        pytest.skip("dask is not installed")


@pytest.mark.slow
def test_as_a_dask_local_scheduler(start_method: str) -> None:
    _needs_dask()
    done = run_python(f"from tests import executor_tasks; executor_tasks.dask_scenario({start_method!r})", timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


@pytest.mark.slow
def test_a_lost_worker_fails_one_dask_task_and_the_next_compute_works(tmp_path: Path) -> None:
    _needs_dask()
    code = f"from tests import executor_tasks; executor_tasks.dask_lost_worker_scenario({str(tmp_path)!r})"
    done = run_python(code, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_cancelled_futures_count_as_done_for_wait(tmp_path: Path) -> None:
    """``concurrent.futures.wait`` and ``as_completed`` see a future only once its
    cancellation is "notified": shutdown(cancel_futures=True) must do that."""
    ex = leakguard.Executor(1)
    first = ex.submit(tasks.wait_for_file, str(tmp_path / "gate"), None)
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    ex.shutdown(wait=False, cancel_futures=True)
    done, _ = concurrent.futures.wait(queued[1:], timeout=30)
    assert done == set(queued[1:])
    assert all(f.cancelled() for f in queued[1:])
    (tmp_path / "gate").touch()
    ex.shutdown(wait=True)
    assert first.result() is None
    assert queued[0].result() == 0


def test_the_cancel_exception_is_the_standard_one(tmp_path: Path) -> None:
    with leakguard.Executor(1) as ex:
        first = ex.submit(tasks.wait_for_file, str(tmp_path / "gate"), None)
        blocked = [ex.submit(tasks.square, i) for i in range(4)]
        assert blocked[-1].cancel()
        with pytest.raises(CancelledError):
            blocked[-1].result()
        (tmp_path / "gate").touch()
        assert first.result(timeout=60) is None


DOCS = Path(__file__).resolve().parent.parent / "docs" / "executor.md"


def _doc_examples() -> list[str]:
    """The runnable examples of docs/executor.md: its Python blocks with a ``__main__`` guard."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return [b for b in blocks if 'if __name__ == "__main__":' in b]


EXPECTED_OUTPUT = ["1024\n[1, 1, 4, 27, 256]\n", "WorkerLostError\n27\n32\n", "ok\n"]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(EXPECTED_OUTPUT)))
def test_the_documented_examples_run(index: int, tmp_path: Path) -> None:
    examples = _doc_examples()
    assert len(examples) == len(EXPECTED_OUTPUT), "docs/executor.md changed: update EXPECTED_OUTPUT"
    script = tmp_path / "example.py"
    script.write_text(examples[index])
    done = run([sys.executable, "-W", "error", str(script)], env=dict(os.environ), cwd=str(tmp_path), timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED_OUTPUT[index]


def test_a_task_error_carries_the_workers_traceback_as_process_pool_executor_does() -> None:
    with leakguard.Executor(1) as ex:
        error = ex.submit(tasks.fail, 7).exception(timeout=60)
    assert type(error) is tasks.CustomError
    cause = error.__cause__
    # concurrent.futures' tests check the exact type of the cause, and its text.
    assert type(cause) is concurrent.futures.process._RemoteTraceback
    assert "raise CustomError" in cause.tb


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.slow
def test_map_keeps_no_reference_to_a_result_it_handed_out(chunksize: int) -> None:
    # bpo-14406: the iterator held each result until the next next(), so a caller that
    # dropped one (a large array, say) still had it in memory.
    with leakguard.Executor(2) as ex:
        seen = 0
        for obj in ex.map(tasks.make_dummy, range(7), chunksize=chunksize):
            assert obj.value == seen
            seen += 1
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None
        assert seen == 7


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_system_exit_in_a_result_or_a_done_callback_fails_one_future_and_never_hangs_exit() -> None:
    # Before: SystemExit while rebuilding a result (or in a done-callback, which Future
    # runs catching only Exception) stopped the pool's I/O thread; the future never
    # settled, later submits said the executor was closed, and the interpreter hung at
    # exit waiting for it. ProcessPoolExecutor fails such a future at once.
    code = """
        import sys
        from multiprocessing.pool import MaybeEncodingError
        import leakguard
        from tests import executor_tasks as tasks

        ex = leakguard.Executor(1)
        error = ex.submit(tasks.exits_when_rebuilt).exception(timeout=30)
        print("rebuilt:", type(error).__name__, type(error.__cause__).__name__)
        f = ex.submit(tasks.square, 3)
        f.add_done_callback(lambda _: sys.exit(4))
        print("callback:", f.result(timeout=30))
        print("after:", ex.submit(tasks.square, 4).result(timeout=30))
        ex.submit(tasks.exits_when_rebuilt)  # still running at exit: the exit waits for it, and ends
        """
    done = run_python(code, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["rebuilt: MaybeEncodingError SystemExit", "callback: 9", "after: 16"]
    assert "Exception in a leakguard.Pool callback (SystemExit)" in done.stderr


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_waiting_on_a_future_from_a_done_callback_raises_runtime_error() -> None:
    # A done-callback runs on the thread that settles the futures: waiting there deadlocked
    # (so this runs in a process of its own, which a deadlock cannot keep from ending).
    code = """
        import leakguard
        from tests import executor_tasks as tasks

        seen = []
        def callback(_):
            calls = (
                lambda: ex.submit(tasks.square, 5).result(),
                lambda: list(ex.map(tasks.square, range(2))),
                lambda: ex.shutdown(wait=True),
            )
            for call in calls:
                try:
                    seen.append(call())
                except RuntimeError as exc:
                    seen.append(exc)
            print(*("callback of the same pool" in str(e) for e in seen), flush=True)

        with leakguard.Executor(1) as ex:
            ex.submit(tasks.square, 2).add_done_callback(callback)
            print(ex.submit(tasks.square, 6).result(timeout=30))
        """
    done = run_python(code, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True True", "36"]
