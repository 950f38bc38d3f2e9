"""A pool's life at its edges: a failed start, a fork of its owner, the owner's exit.

- A forked child of a pool's owner holds an inert copy: whether it exits, drops the
  pool or leaves a ``with`` block, nothing of the parent's is touched; using the copy
  raises InheritedPoolError at once (SPEC 2.1, SPEC 4).
- At exit, executors finish their work and closed pools theirs, running pools are
  terminated, and only then are this process's objects released, whatever order the
  modules were imported and the objects created in (_journal/owner.py, "exit sequence").
- Any exception out of ``Pool()`` or ``Executor()`` leaves no process, descriptor or
  journal entry behind (SPEC 6); a pool cannot be started in a daemonic process.

The jobs run in processes of their own (a fork or an exit of the test's own process
would be the test runner's), and report what they saw as JSON on their last line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import leakguard
from tests import lifecycle_children as children
from tests import lifecycle_tasks
from tests.helpers import lg_entries, run_main

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _report(
    main: Callable[..., None], *args: str, env: dict[str, str] | None = None, timeout: float = 60, quiet: bool = True
) -> dict[str, Any]:
    done = run_main(main, *args, env=env, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    if quiet:  # (a worker killed as it started may say so: a failed start need not be)
        assert done.stderr == "", done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# ---------------------------------------------------------------------------- fork


@pytest.mark.parametrize("how", ["exit", "drop", "terminate", "with"])
@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.slow
def test_a_forked_child_that_ends_or_drops_the_pool_touches_nothing_of_the_parents(how: str, method: str) -> None:
    report = _report(children.fork_and_drop, method, how)
    assert report == {"child": 0, "map": [None, None], "future": None, "kept": True, "sem": True}


@pytest.mark.slow
def test_a_forked_child_that_uses_the_pool_gets_a_clear_error_at_once() -> None:
    report = _report(children.fork_and_use)
    parent, three, four = report.pop("parent")
    assert (three, four) == (3, 4)
    assert report.pop("files") == 0
    for what, seen in report.items():
        assert seen != "accepted", what
        name, owner_pid, pid, message = seen
        assert name == "InheritedPoolError"
        assert owner_pid == parent
        assert pid != parent
        assert f"belongs to process {parent}" in message
        assert "Create a new leakguard.Pool" in message


def test_an_inherited_pool_error_pickles_and_is_a_closed_pool() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(leakguard.InheritedPoolError(10, 11)))
    assert isinstance(error, leakguard.InheritedPoolError)
    assert isinstance(error, leakguard.PoolClosedError)
    assert isinstance(error, ValueError)
    assert (error.owner_pid, error.pid, error.state) == (10, 11, "inherited")
    nested = pickle.loads(pickle.dumps(leakguard.NestedPoolError(12)))
    assert isinstance(nested, leakguard.NestedPoolError)
    assert isinstance(nested, RuntimeError)
    assert nested.pid == 12


# ---------------------------------------------------------------------------- exit

# The steps before importing leakguard, after it, before the executor and after it (see
# lifecycle_children.exit_with_work).
ORDERS = {
    "array after importing the executor": ("import executor", "", "array", ""),
    "array before importing the executor": ("", "array", "import executor", ""),
    "array after the executor": ("", "", "", "array"),
    "no array": ("", "", "", ""),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.slow
def test_exit_finishes_executors_and_closed_pools_then_stops_the_rest_then_releases(
    order: str, leakguard_dir: Path
) -> None:
    report = _report(children.exit_with_work, *ORDERS[order])
    assert sorted(report["outcomes"]) == sorted(["ok"] * 6 + ["closed pool ok", "running: PoolClosedError"])
    assert not list(leakguard_dir.glob("*.journal"))  # everything released, the journal removed
    assert not lg_entries()


# ---------------------------------------------------------------------------- a failed start

STARTS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    # case: (what is made (see lifecycle_children._make), attempts, descriptor limit, environment)
    "unpicklable initializer": ("Pool 2 unpicklable", "5", "", {}),
    "executor, unpicklable initializer": ("Executor 2 unpicklable", "3", "", {}),
    "EMFILE": ("Pool 1000", "2", "64", {}),
    "executor, EMFILE": ("Executor 1000", "1", "64", {}),
    "Ctrl-C after the guardian": ("Pool 2", "3", "", {"LEAKGUARD_FAILPOINT": "pool.after-guardian:interrupt"}),
    "Ctrl-C after the workers": ("Pool 2", "3", "", {"LEAKGUARD_FAILPOINT": "pool.after-workers:interrupt"}),
}
EXPECTED = {
    "unpicklable initializer": {"TypeError": 5},
    "executor, unpicklable initializer": {"TypeError": 3},
    "EMFILE": {"OSError": 2},
    "executor, EMFILE": {"OSError": 1},
    "Ctrl-C after the guardian": {"KeyboardInterrupt": 3},
    "Ctrl-C after the workers": {"KeyboardInterrupt": 3},
}


@pytest.mark.parametrize("case", STARTS)
@pytest.mark.slow
def test_a_failed_start_leaves_no_process_descriptor_or_journal_entry(case: str) -> None:
    what, attempts, fd_limit, env = STARTS[case]
    report = _report(children.failed_starts, what, attempts, fd_limit, "", env=env, quiet=False)
    assert report["failures"] == EXPECTED[case]
    assert report["after"] == report["before"]


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_a_ctrl_c_anywhere_in_pool_leaves_nothing_behind() -> None:
    # A KeyboardInterrupt at a random instant of Pool(), thirty times: some land in the
    # guardian's start, some in a worker's, some after; whichever, nothing is left.
    report = _report(children.failed_starts, "Pool 2", "30", "", "armed", timeout=150, quiet=False)
    assert report["failures"].get("KeyboardInterrupt", 0) >= 5, report["failures"]
    assert set(report["failures"]) == {"KeyboardInterrupt"}
    # Not the zombies: an interrupt inside multiprocessing's spawn, after the process started
    # and before Process.start() returned, leaves a child nobody can name to reap (it exits,
    # its pipe closed); it is reaped when this process exits.
    # Nor a descriptor or two: one a system call returns just as the interrupt lands is lost
    # to Python before it is stored (see leakguard/_fds.py). Before SPEC 6 held: 106 of them.
    before, after = report["before"], report["after"]
    assert after["fds"] - before["fds"] <= 2, (before, after, report["open"])
    for key in ("zombies", "fds"):
        del before[key], after[key]
    assert after == before


def test_a_task_that_starts_a_pool_fails_clearly_before_starting_anything() -> None:
    with leakguard.Pool(1) as pool:
        with pytest.raises(leakguard.NestedPoolError, match="daemonic process") as raised:
            pool.apply(lifecycle_tasks.start_a_pool)
        worker = raised.value.pid
        assert worker != os.getpid()
        assert pool.apply(os.getpid) == worker  # the same worker, alive, and it started nothing
        assert pool.apply(lifecycle_tasks.children_of_this_worker) == []
        assert psutil.Process(worker).children() == []
