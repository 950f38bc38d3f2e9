"""The "leakguard" joblib backend: the same results as joblib's default backend, large
arguments through journaled blocks (no memmapping folder), lost workers, options, nesting.

Task functions live in tests/joblib_tasks.py: spawned workers import them by reference.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config

import leakguard
import leakguard.joblib
from leakguard.joblib import LeakguardBackend
from tests import joblib_tasks as tasks
from tests.helpers import run

# Out of the quick selection (pytest -m "not slow"): each test starts pools through joblib.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
JOBLIB = tuple(int(part) for part in joblib.__version__.split(".")[:2])


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    leakguard.joblib.register()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every parity case run on joblib's default backend, in a child process: loky keeps its
    workers for later calls, and they must end with the child, not linger in this one."""
    out = tmp_path_factory.mktemp("reference") / "outcomes.pickle"
    done = run([sys.executable, "-m", "tests.joblib_tasks", str(out)], env=dict(os.environ), cwd=str(REPO))
    assert done.returncode == 0, done.stderr
    outcomes: dict[str, Any] = pickle.loads(out.read_bytes())
    return outcomes


@pytest.mark.parametrize("case", sorted(tasks.CASES))
def test_results_equal_those_of_the_default_backend(case: str, reference: dict[str, Any]) -> None:
    got = tasks.CASES[case](n_jobs=2, backend="leakguard")
    assert got == reference[case]
    if case.endswith("error"):
        assert got[0] == "raised"  # the case does exercise an error, with its type compared above


def test_the_error_keeps_its_type_attributes_and_the_workers_traceback() -> None:
    with pytest.raises(tasks.CustomError) as info:
        Parallel(n_jobs=2, backend="leakguard")(delayed(tasks.fail_on)(i, 3) for i in range(8))
    assert info.value.code == 3
    assert "item 3 is bad" in str(info.value.__cause__)  # the worker's traceback text


def test_a_10_mb_argument_reaches_the_workers_through_a_journaled_block() -> None:
    data = np.arange(10_000_000 // 8, dtype=np.float64)  # 10 MB, inside joblib's BatchedCalls
    seen = Parallel(n_jobs=2, backend="leakguard")(delayed(tasks.describe)(data) for _ in range(4))
    for s in seen:
        assert s["type"] == "SharedArray"
        assert s["name"].startswith("lg_")
        assert s["sum"] == float(data.sum())
        assert s["pid"] != os.getpid()
        assert s["journaled"] == [(os.getpid(), data.nbytes)]  # owned, and journaled, by this process
        assert s["memmap_folders"] == []  # joblib made none while the tasks ran
    assert tasks.memmap_folders() == []


def test_share_threshold_and_max_nbytes_decide_what_goes_through_blocks() -> None:
    data = np.ones(300_000)  # 2.4 MB
    with parallel_config(backend="leakguard", n_jobs=2, share_threshold=None):
        (seen,) = Parallel()(delayed(tasks.describe)(data) for _ in range(1))
    assert (seen["type"], seen["name"]) == ("ndarray", None)  # through the pipe
    (seen,) = Parallel(n_jobs=2, backend="leakguard", max_nbytes="4M")(delayed(tasks.describe)(data) for _ in range(1))
    assert seen["type"] == "ndarray"  # under joblib's threshold: joblib's own option is honoured
    (seen,) = Parallel(n_jobs=2, backend="leakguard", max_nbytes="1M")(delayed(tasks.describe)(data) for _ in range(1))
    assert seen["type"] == "SharedArray"


def test_make_default_serves_a_parallel_that_names_no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import joblib.parallel

    monkeypatch.setattr(joblib.parallel, "DEFAULT_BACKEND", joblib.parallel.DEFAULT_BACKEND)  # restored after
    leakguard.joblib.register(make_default=True)
    seen = Parallel(n_jobs=2)(delayed(tasks.describe)(np.ones(200_000)) for _ in range(2))
    assert [s["type"] for s in seen] == ["SharedArray"] * 2


def test_a_sigkilled_worker_fails_the_call_and_the_next_call_works() -> None:
    with parallel_config(backend="leakguard", n_jobs=2):
        with pytest.raises(leakguard.WorkerLostError) as info:
            Parallel()(delayed(tasks.kill_self_on)(i, 5) for i in range(12))
        assert info.value.signal == 9
        assert "joblib batch" in str(info.value)
        if sys.version_info >= (3, 11):
            assert any("parallel_config" in note for note in info.value.__notes__)
        assert Parallel()(delayed(tasks.square)(i) for i in range(12)) == [i * i for i in range(12)]


def test_a_managed_parallel_survives_a_lost_worker() -> None:
    with Parallel(n_jobs=2, backend="leakguard") as parallel:
        with pytest.raises(leakguard.WorkerLostError):
            parallel(delayed(tasks.kill_self_on)(i, 1) for i in range(4))
        assert parallel(delayed(tasks.square)(i) for i in range(6)) == [i * i for i in range(6)]
        assert parallel(delayed(tasks.add)(i, 1) for i in range(3)) == [1, 2, 3]


def test_retries_pass_through_parallel_backend(tmp_path: Path) -> None:
    marker = str(tmp_path / "died-once")
    with parallel_backend("leakguard", n_jobs=2, retries=1):
        got = Parallel()(delayed(tasks.kill_self_once)(i, marker) for i in range(6))
    assert got == list(range(6))
    assert os.path.exists(marker)  # a worker did die, and its batch ran again


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_start_method_passes_through_parallel_config(method: str) -> None:
    with parallel_config(backend="leakguard", n_jobs=2, start_method=method):
        seen = Parallel()(delayed(tasks.describe)(np.ones(200_000)) for _ in range(3))
    assert [s["type"] for s in seen] == ["SharedArray"] * 3
    assert os.getpid() not in {s["pid"] for s in seen}


@pytest.mark.skipif(JOBLIB < (1, 5), reason="Parallel(**backend_kwargs) arrived in joblib 1.5")
def test_task_timeout_passes_through_parallel_keywords(tmp_path: Path) -> None:
    never = str(tmp_path / "never-created")
    with pytest.raises(leakguard.TaskTimeoutError):
        Parallel(n_jobs=2, backend="leakguard", task_timeout=0.5)(
            delayed(tasks.wait_for_file)(never, 60) for _ in range(2)
        )


def test_an_unknown_option_is_refused_with_the_list_of_known_ones() -> None:
    with pytest.raises(TypeError, match=r"retires.*retries"):
        parallel_config(backend="leakguard", retires=1)
    with pytest.raises(TypeError, match="tasktimeout"):
        Parallel(n_jobs=2, backend="leakguard", tasktimeout=1)(delayed(tasks.square)(i) for i in range(2))


def test_nested_parallel_in_a_worker_runs_in_that_worker() -> None:
    seen = Parallel(n_jobs=2, backend="leakguard")(delayed(tasks.nested)(i) for i in range(2))
    for worker_pid, inner, children in seen:
        assert worker_pid != os.getpid()
        assert inner == [worker_pid] * 4 + [0, 1, 4]  # threads of the worker, and the default backend's
        assert children == 0


def test_n_jobs_follows_joblibs_conventions() -> None:
    backend = LeakguardBackend()
    cpus = joblib.cpu_count()
    assert backend.effective_n_jobs(-1) == cpus
    assert backend.effective_n_jobs(-2) == max(cpus - 1, 1)
    assert backend.effective_n_jobs(-cpus - 5) == 1
    assert backend.effective_n_jobs(None) == 1
    assert backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError, match="n_jobs == 0"):
        Parallel(n_jobs=0, backend="leakguard")(delayed(tasks.square)(i) for i in range(2))
    # n_jobs=1: joblib's sequential path, in this process, no pool at all
    (seen,) = Parallel(n_jobs=1, backend="leakguard")(delayed(tasks.describe)(np.ones(4)) for _ in range(1))
    assert seen["pid"] == os.getpid()
    pids = Parallel(n_jobs=-1, backend="leakguard")(delayed(tasks.worker_pid)() for _ in range(4 * cpus))
    assert os.getpid() not in pids
    assert 1 <= len(set(pids)) <= cpus


def test_a_generator_dropped_early_stops_the_pool(tmp_path: Path) -> None:
    never = str(tmp_path / "never-created")
    paths = [str(tmp_path)] + [never] * 20  # the first task returns at once, the others block
    results = Parallel(n_jobs=2, backend="leakguard", return_as="generator")(
        delayed(tasks.wait_for_file)(path, 60) for path in paths
    )
    assert next(results) is True
    started = time.monotonic()
    with pytest.warns(UserWarning, match="cancelled"):  # joblib's own note about the dropped work
        results.close()
    assert time.monotonic() - started < 10  # the blocked workers were killed, not waited for


def _arrays() -> Iterator[np.ndarray]:
    for i in range(6):
        yield np.full(200_000, float(i))  # 1.6 MB each: through blocks, both ways


def test_large_results_come_back_as_arrays_the_caller_owns() -> None:
    out = Parallel(n_jobs=2, backend="leakguard")(delayed(np.multiply)(a, 2) for a in _arrays())
    assert [float(a[0]) for a in out] == [2.0 * i for i in range(6)]
    assert all(isinstance(a, leakguard.SharedArray) for a in out)
    del out  # the blocks go with the last reference (the fixture checks /dev/shm afterwards)


def documented_example(page: str) -> str:
    """The code block between the tested-example markers of a page in docs/."""
    text = (REPO / "docs" / page).read_text()
    block = text.split("<!-- tested-example:begin -->")[1].split("<!-- tested-example:end -->")[0]
    return block.strip().removeprefix("```python").removesuffix("```")


def test_the_documented_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(documented_example("joblib.md"))
    done = run([sys.executable, "-W", "error", str(script)], env=dict(os.environ), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["True", "[0, 1, 4, 9, 16]", ""]
