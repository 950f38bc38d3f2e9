"""The classic cross-platform trap (SPEC 2.1), shown with real worker processes.

Under ``fork`` a worker is a copy of the parent at the instant it was forked: it
sees the parent's globals as they were then, and modules the parent had imported
are not imported again. Under ``spawn`` and ``forkserver`` a worker is a fresh
interpreter: it imports each module itself, once, and sees module globals as
their import left them, never what the parent set at run time. ``leakguard.Pool``
defaults to ``spawn`` whatever the platform's default, so a job behaves the same
on Linux and macOS. Each test asserts what each start method actually does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import leakguard
from tests import start_method_tasks as tasks
from tests.helpers import finish, python

ROOT = Path(__file__).resolve().parents[1]

SET_BY_PARENT = "set by the parent at run time"
CHANGED_LATER = "changed by the parent after the workers started"


@pytest.mark.timeout(60)
def test_a_global_set_by_the_parent_at_run_time_reaches_forked_workers_only(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "SETTING", SET_BY_PARENT)
    with leakguard.Pool(1, start_method=start_method) as pool:
        first = pool.apply(tasks.how_started)["pid"], pool.apply(tasks.read_setting)
        monkeypatch.setattr(tasks, "SETTING", CHANGED_LATER)
        then = pool.apply(tasks.how_started)["pid"], pool.apply(tasks.read_setting)
    assert first[0] == then[0], "the same worker should have run every task"
    if start_method == "fork":
        # A copy of the parent's memory as it was at the fork: the value set before,
        # and never a change made after.
        assert (first[1], then[1]) == (SET_BY_PARENT, SET_BY_PARENT)
    else:
        # A fresh interpreter that imported the module itself.
        assert (first[1], then[1]) == ("set at import", "set at import")


# The job imports the counting module in the parent, then meets it in every worker
# by each route a job does: the initializer, the task function, an argument's class,
# and an explicit import by name. maxtasksperchild brings replacement workers in.
IMPORT_JOB = """
import json, os
import leakguard
from tests import import_counter

with leakguard.Pool(2, initializer=import_counter.initialise, maxtasksperchild=3,
                    start_method=os.environ["LG_START_METHOD"]) as pool:
    results = pool.map(import_counter.report, [import_counter.Token(i) for i in range(12)], chunksize=1)
print(json.dumps({"parent": os.getpid(), "results": results}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_module_is_initialised_at_most_once_per_process(start_method: str, tmp_path: Path) -> None:
    log = tmp_path / "imports.log"
    job = python(IMPORT_JOB, env={"LG_IMPORT_LOG": str(log), "LG_START_METHOD": start_method}, cwd=str(ROOT))
    code, out, err = finish(job, timeout=60)
    assert code == 0, err
    report = json.loads(out)
    parent = report["parent"]
    results = [tuple(r) for r in report["results"]]
    assert sorted(token for _, _, token in results) == list(range(12))
    workers = {pid for pid, _, _ in results}
    assert len(workers) >= 4, f"maxtasksperchild=3 over 12 tasks should use at least 4 workers, used {workers}"

    initialised = Counter(int(line) for line in log.read_text().split())
    twice = {pid: n for pid, n in initialised.items() if n > 1}
    assert not twice, f"the module's body ran more than once in a process: {twice}"
    assert initialised[parent] == 1
    if start_method == "fork":
        # Forked after the parent imported it: the workers inherit the parent's module.
        assert not workers & set(initialised), "a forked worker ran the module's body again"
        assert {created for _, created, _ in results} == {parent}
    else:
        # A fresh interpreter imports it once, by whichever route comes first.
        assert workers <= set(initialised), f"workers that never imported the module: {workers - set(initialised)}"
        assert set(initialised) == workers | {parent}
        assert all(created == pid for pid, created, _ in results)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("made", ["before-the-pool", "after-the-workers-started"])
def test_a_pipe_passed_as_a_task_argument_works(start_method: str, made: str) -> None:
    # It crosses through multiprocessing's reducers (a descriptor handed over), as with
    # multiprocessing.Pool. A bare descriptor number would work by accident under fork
    # with the pipe made first (the worker inherited it), and nowhere else: in a worker
    # started before the pipe existed it names nothing, or one of the worker's own.
    ends: list[Any] = []
    if made == "before-the-pool":
        ends = list(multiprocessing.Pipe())
    try:
        with leakguard.Pool(1, start_method=start_method) as pool:
            worker = pool.apply(tasks.how_started)["pid"]  # the worker runs before the pipe exists
            if not ends:
                ends = list(multiprocessing.Pipe())
            ours, theirs = ends
            sender = pool.apply_async(tasks.send_through, (theirs, "through the pipe")).get(timeout=30)
            assert ours.poll(30), "nothing came through the pipe"
            assert ours.recv() == ("through the pipe", sender)
            assert sender == worker
    finally:
        for end in ends:
            end.close()


def _started_as(info: dict[str, Any]) -> str:
    """How a worker was started, from its own view of itself (see tasks.how_started)."""
    command = " ".join(info["argv"])
    if "from multiprocessing.forkserver import main" in command and info["ppid"] != os.getpid():
        return "forkserver"  # a child of the forkserver process, forked from it
    if "from multiprocessing.spawn import spawn_main" in command and info["ppid"] == os.getpid():
        return "spawn"  # a fresh interpreter started by this process
    if info["argv"] == sys.orig_argv and info["ppid"] == os.getpid():
        return "fork"  # a copy of this very process
    return f"unknown: {info}"


@pytest.mark.timeout(60)
def test_each_start_method_is_the_one_asked_for(start_method: str) -> None:
    with leakguard.Pool(1, start_method=start_method) as pool:
        info = pool.apply(tasks.how_started)
    assert _started_as(info) == start_method


@pytest.mark.timeout(60)
def test_the_default_start_method_is_spawn_whatever_the_platform_default() -> None:
    # On Linux before Python 3.14 the platform's default is fork, on 3.14 forkserver:
    # a worker that asked nothing must still be a fresh interpreter.
    with leakguard.Pool(1) as pool:
        info = pool.apply(tasks.how_started)
    assert _started_as(info) == "spawn", f"platform default {multiprocessing.get_start_method()!r}"


# forkserver is left out: its workers are forked by the server, whose signal mask leakguard
# does not set (the server is shared with every forkserver user in the process), so a Ctrl-C in
# the moment between the fork and the worker's first line can still end a starting worker; the
# pool then replaces it as after any death (docs/pool.md).
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_worker_that_is_still_starting_ignores_sigint(method: str) -> None:
    with leakguard.Pool(1, start_method=method) as pool:
        [worker] = [p for p in multiprocessing.active_children() if p.name == "LeakguardPoolWorker"]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGINT)  # as a Ctrl-C would, a moment after Pool() returned
        assert pool.apply(os.getpid) == worker.pid  # the same worker ran the task: it is alive
