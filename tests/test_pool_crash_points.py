"""A pool's process SIGKILLed at any step of its life, or of a result's hand-over, leaves
nothing behind, and no block is freed while the parent still needs it (SPEC 4).

``LEAKGUARD_FAILPOINT=<step>`` makes a process SIGKILL itself at that step; the
workers inherit it. A job, in its own session, starts a pool and sends it work
with large arguments and large results, so that arguments are shared and results
handed over. At a parent's step the job dies: its guardian must kill the workers
and remove everything. At a worker's step the worker dies just after handing a
result over: the parent must get the result, own it and read it, and the pool
must reclaim the dead worker's own blocks and carry on.

The steps are the ``failpoint("pool.*")`` and ``failpoint("handover.*")`` calls in
the package; the list below is checked against the source, so a new step without
a test fails. (The steps of creating and freeing one object are in
test_crash_points.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

import leakguard
from stress.observe import marked
from tests import pool_crash_children
from tests.children import reap
from tests.helpers import entry_of, finish, process_gone, python_main, read_line, shm_entries, wait_for
from tests.test_crash_points import failpoints_in_source

ROOT = Path(__file__).resolve().parents[1]

PARENT_STEPS = [
    "pool.after-guardian",  # Pool(): the guardian runs, no worker yet
    "pool.after-workers",  # Pool(): workers run, the pool's I/O thread does not
    "pool.after-sharing-arguments",  # an argument copied into a block the parent owns, not yet sent
    "handover.parent-after-map",  # a result block mapped, not yet in the parent's journal
    "handover.parent-after-adopt",  # a result block in both journals
    "pool.shutdown",  # close()/join(): workers gone, the guardian not yet told
]
WORKER_STEPS = [
    "handover.worker-after-send",  # a result handed over, the parent's answer not yet read
    "handover.worker-after-release",  # the parent's answer read, the first block dropped
]
STEPS = PARENT_STEPS + WORKER_STEPS
OURS = ("pool.", "handover.")

THRESHOLD = 1 << 16  # bytes
TASKS = 4
CLEAN_UP_WITHIN = 10.0  # seconds: SPEC 4 says 2; room for a loaded machine

# The last thing the job says before it dies at each of the parent's steps.
DIES_AFTER = {
    "pool.after-guardian": "pid",
    "pool.after-workers": "pid",
    "pool.after-sharing-arguments": "started",
    "handover.parent-after-map": "started",
    "handover.parent-after-adopt": "started",
    "pool.shutdown": "kept",
}

# What the job's kept results add up to: every task's two arrays (x * 2, x + 1 with
# x full of the task's index) but the one it freed, the first, all zeros.
EXPECTED_TOTAL = float(sum((2 * i + i + 1) * (2 * THRESHOLD // 8) for i in range(TASKS)))


def _failpoints_in_source() -> dict[str, str]:
    """Every pool.* and handover.* step named by a ``failpoint(...)`` call -> where it is called."""
    return {step: where for step, where in failpoints_in_source().items() if step.startswith(OURS)}


@pytest.mark.timeout(30)
def test_every_pool_failpoint_in_the_package_is_tested() -> None:
    in_source = _failpoints_in_source()
    assert len(STEPS) == len(set(STEPS))
    untested = sorted(set(in_source) - set(STEPS))
    assert not untested, f"failpoints without a crash test: {[(s, in_source[s]) for s in untested]}"
    unknown = sorted(set(STEPS) - set(in_source))
    assert not unknown, f"steps tested here that no failpoint() call names any more: {unknown}"


def _job_processes(token: str) -> list[psutil.Process]:
    """The job's processes, wherever they went: its workers, guardian, forkserver, tracker.

    One whose main thread has exited while another of its threads has not is still
    running, and may still hold a block or its journal's lock (stress.observe.marked).
    """
    return marked("LG_JOB", token)


def _describe(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            out.append((p.pid, " ".join(p.cmdline())[:100]))
        except psutil.Error:
            out.append((p.pid, "?"))
    return out


def _journals(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def _wait_job_gone(token: str, step: str) -> None:
    try:
        wait_for(lambda: not _job_processes(token), timeout=CLEAN_UP_WITHIN, what="the job's processes to exit")
    except AssertionError:
        left = _job_processes(token)
        raise AssertionError(f"after {step}, processes of the job were left: {_describe(left)}") from None


def _run_job(
    step: str, start_method: str, token: str, blocks: str = "anonymous"
) -> tuple[int, list[str], dict[str, Any], str]:
    """Run the job with ``step`` armed, its blocks anonymous or named; (exit status, what it
    said in order, all it said, stderr)."""
    job = python_main(
        pool_crash_children.job,
        env={
            "LEAKGUARD_NAMED_BLOCKS": "1" if blocks == "named" else "",
            "LEAKGUARD_FAILPOINT": step,
            "LG_JOB": token,
            "LG_START_METHOD": start_method,
            "LG_THRESHOLD": str(THRESHOLD),
            "LG_TASKS": str(TASKS),
            "LG_WORKERS_DIE": "1" if step in WORKER_STEPS else "0",
        },
        cwd=str(ROOT),
    )
    code, out, err = finish(job, timeout=90)
    order: list[str] = []
    said: dict[str, Any] = {}
    for line in out.splitlines():
        message = json.loads(line)
        order += list(message)
        said.update(message)
    return code, order, said, err


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("blocks", ["anonymous", "named"])
@pytest.mark.parametrize("step", STEPS)
def test_a_pool_process_killed_at_a_step_leaves_nothing(
    step: str, blocks: str, start_method: str, leakguard_dir: Path
) -> None:
    token = secrets.token_hex(8)
    before = shm_entries()
    try:
        code, order, said, err = _run_job(step, start_method, token, blocks)
        if step in WORKER_STEPS:
            # The workers died, the job did not: it got every result, read it, sent it
            # back by name, freed one, and kept the rest past the pool's shutdown.
            assert code == 0, f"the job failed at {step}: exit {code}\n{said}\n{err}"
            assert said["done"] == EXPECTED_TOTAL
        else:
            assert code == -signal.SIGKILL, f"the job should have died at {step}: exit {code}\n{said}\n{err}"
            assert order[-1] == DIES_AFTER[step], f"the job died at the wrong place: it said {order}"

        _wait_job_gone(token, step)
        # The guardian, the last of them, is gone: what is left now stays.
        left = shm_entries() - before
        assert before <= shm_entries(), "something the job did not own was removed"
        report = leakguard.sweep()
        assert (report.kept, report.errors) == ([], [])
        if step in WORKER_STEPS:
            assert not left, f"after {step} and a normal exit, left in /dev/shm: {sorted(left)}"
            assert report.removed == []
        else:
            # The guardian should have removed everything (SPEC 4), and one sweep must in
            # any case; test_the_guardian_alone_cleans_up_after_its_pool holds it to the first.
            assert {entry_of(i.kind or "", i.name or "") for i in report.removed} == left
            assert {i.reason for i in report.removed} <= {"owner dead"}
        assert shm_entries() == before, (
            f"after {step} and one sweep, left in /dev/shm: {sorted(shm_entries() - before)}"
        )
        assert not _journals(leakguard_dir), "journals were left behind"
    finally:
        _kill(_job_processes(token))  # on a failure, nothing of the job outlives the test


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_guardian_alone_cleans_up_after_its_pool(leakguard_dir: Path) -> None:
    """SPEC 4, parent SIGKILL: the guardian unlinks everything, no sweep needed.

    The pool process is killed as it shuts down, when it has no worker left, so the
    guardian has nothing else to wait for before it sweeps: its pipe closes as the
    process starts to exit, a moment before the process is gone and its journal
    unlocked. Whether a guardian that does not wait for that moment loses the race is
    up to the scheduler (about one time in two here): try several times.
    """
    for attempt in range(10):
        token = secrets.token_hex(8)
        before = shm_entries()
        try:
            code, order, _, err = _run_job("pool.shutdown", "spawn", token)
            assert code == -signal.SIGKILL, err
            assert order[-1] == DIES_AFTER["pool.shutdown"]
            _wait_job_gone(token, "pool.shutdown")
            left = shm_entries() - before
        finally:
            _kill(_job_processes(token))
        if left:
            report = leakguard.sweep()  # clean up for the tests that follow
            reasons = sorted({i.reason for i in report.removed})
            pytest.fail(
                f"attempt {attempt + 1}: the guardian exited and left {sorted(left)}; the sweep then: {reasons}"
            )
    assert not _journals(leakguard_dir)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("blocks", ["anonymous", "named"])
@pytest.mark.slow
def test_a_result_survives_its_worker_dying_before_the_parent_reads_it(
    blocks: str, start_method: str, leakguard_dir: Path
) -> None:
    """The worker sends a result with its blocks, then dies before the parent has read it (the
    parent is stopped meanwhile). A named block outlives its maker (the parent adopts it from
    the dead worker's journal); an anonymous one, whose last holder would be the dead worker,
    travels with the frame (SCM_RIGHTS) and is held by the kernel until the parent reads it."""
    token = secrets.token_hex(8)
    job = python_main(
        pool_crash_children.result_outlives_its_worker,
        env={
            "LEAKGUARD_NAMED_BLOCKS": "1" if blocks == "named" else "",
            "LEAKGUARD_FAILPOINT": "handover.worker-after-send",
            "LG_JOB": token,
            "LG_START_METHOD": start_method,
            "LG_THRESHOLD": str(THRESHOLD),
        },
        cwd=str(ROOT),
    )
    try:
        submitted = json.loads(read_line(job, timeout=60))
        os.kill(job.pid, signal.SIGSTOP)  # the task sleeps 1 s first: the result is not back yet
        worker = psutil.Process(submitted["worker"])
        wait_for(lambda: process_gone(worker), timeout=30, what="the worker to send its result and die")
        os.kill(job.pid, signal.SIGCONT)
        outcome = json.loads(read_line(job, timeout=60))
        assert outcome == {"error": None, "shared": True, "total": 2.0 * (THRESHOLD // 8)}, outcome
        code, _, err = finish(job, timeout=60)
        assert code == 0, err
        _wait_job_gone(token, "handover.worker-after-send")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGCONT)
        _kill(_job_processes(token))
        reap(job)
