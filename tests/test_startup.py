"""A pool's start (issue 15): the guardian starts lean, so that its start-up does not
compete with the workers' for the CPU, and its start-up sweep waits for the pool's workers
to be up, or at most ``STARTUP_SWEEP_DELAY``; a sweep with nothing to do imports nothing.
A worker imports the journal's writer and reader only once it creates a block, and numpy
only once a task brings an array or imports numpy itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import leakguard
from leakguard._pool import guardian
from tests import guardian_tasks
from tests.helpers import in_shm, run_python, wait_for

# What the guardian needs only to sweep or to clean up, and what it never needs.
HEAVY = (
    "concurrent.futures",
    "dataclasses",
    "json",
    "leakguard._errors",
    "leakguard._journal.format",
    "leakguard._journal.identity",
    "leakguard._sweep.journaled",
    "numpy",
    "posix_ipc",
    "psutil",
    "subprocess",
    "typing",
)


def test_the_guardian_starts_lean() -> None:
    """What ``python -m leakguard._pool.guardian`` imports before it reads its first line."""
    result = run_python("import sys, leakguard._pool.guardian; print(' '.join(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "leakguard._pool.guardian" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_a_worker_loads_the_journal_only_when_it_makes_a_block() -> None:
    result = run_python(
        """
        import sys
        import leakguard._pool.worker
        before = set(sys.modules)
        import leakguard
        leakguard.free(leakguard.shared_array(4))
        print(' '.join(sorted(before)), '|', ' '.join(sorted(set(sys.modules) - before)))
        """
    )
    assert result.returncode == 0, result.stderr
    at_start, _, later = result.stdout.partition("|")
    assert sorted(m for m in ("leakguard._journal.format", "leakguard._journal.writer") if m in at_start.split()) == []
    assert sorted(m for m in ("secrets", "hmac") if m in at_start.split()) == []
    assert "leakguard._journal.writer" in later.split()


def test_a_worker_starts_without_numpy() -> None:
    """Neither the worker's modules nor ``import leakguard`` import numpy (about 60 ms of a
    worker's start); the array module comes with it, and with the public array API."""
    result = run_python(
        """
        import sys
        import leakguard._pool.worker, leakguard._pool.engine
        print("numpy" in sys.modules, "leakguard._blocks.arrays" in sys.modules)
        import leakguard
        leakguard.SharedArray
        print("numpy" in sys.modules, "leakguard._blocks.arrays" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_imports_numpy_only_for_a_task_that_carries_an_array(method: str) -> None:
    # Not under fork: a forked worker has whatever its parent imported (numpy, here).
    with leakguard.Pool(1, start_method=method) as pool:
        assert pool.apply(guardian_tasks.numpy_loaded, (1, "two", [3.0])) == (False, False)
        small = np.arange(3)  # below the share threshold: pickled as it is (numpy's reduction)
        assert pool.apply(guardian_tasks.numpy_loaded, (small,)) == (True, False)
        # A task that imports numpy itself and returns a large array: handed over in a block.
        big = pool.apply(guardian_tasks.make_array, (1 << 20,))
        assert type(big) is leakguard.SharedArray
        assert big.nbytes == 1 << 20
        assert int(big[1000]) == 1000 % 256
        assert pool.apply(guardian_tasks.numpy_loaded) == (True, True)


def test_a_worker_imports_the_array_module_for_a_shared_array() -> None:
    shared = leakguard.shared_array(4, fill=7)
    with leakguard.Pool(1) as pool:
        assert pool.apply(guardian_tasks.numpy_loaded, (shared,)) == (True, True)
    leakguard.free(shared)


def test_a_worker_freezes_what_it_started_with() -> None:
    # Its modules live until it exits: its collections (and its interpreter's at exit, most of
    # a worker's exit time) skip them.
    with leakguard.Pool(1) as pool:
        assert pool.apply(guardian_tasks.frozen_objects) > 1000


def _orphan() -> str:
    """A block whose owner died without releasing it: the start-up sweep's work."""
    result = run_python(
        """
        import os, leakguard
        array = leakguard.shared_array(10, named=True)
        print(array.shm_name, flush=True)
        os._exit(0)
        """
    )
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert in_shm(name)
    return name


@pytest.mark.slow
def test_the_start_up_sweep_does_not_wait_for_workers_that_never_start(tmp_path: Path) -> None:
    orphan = _orphan()
    gate = tmp_path / "gate"
    pool = leakguard.Pool(1, initializer=guardian_tasks.wait_for_gate, initargs=(str(gate),))
    try:
        # The worker is still in its initializer: the sweep starts after STARTUP_SWEEP_DELAY.
        wait_for(lambda: not in_shm(orphan), 10 + guardian.STARTUP_SWEEP_DELAY, "the start-up sweep")
        assert not gate.exists()
        gate.touch()
        assert pool.apply(guardian_tasks.square, (3,)) == 9
    finally:
        gate.touch()
        pool.terminate()


@pytest.mark.slow
def test_the_start_up_sweep_runs_once_the_workers_are_up() -> None:
    orphan = _orphan()
    with leakguard.Pool(2) as pool:
        assert pool.apply(guardian_tasks.square, (2,)) == 4
        wait_for(lambda: not in_shm(orphan), 10, "the start-up sweep")


def test_a_sweep_is_needed_only_if_a_journal_is_unlocked_or_being_made(leakguard_dir: Path) -> None:
    folder = str(leakguard_dir)
    assert not leakguard_dir.exists()
    assert guardian.anything_to_sweep(folder)  # in doubt (no folder): the sweep says what is wrong
    mine = leakguard.shared_array(4)  # our journal: locked while we live
    assert list(leakguard_dir.glob("*.journal"))
    assert not guardian.anything_to_sweep(folder)
    notes = leakguard_dir / "notes.txt"
    notes.write_text("not a journal")  # never looked at
    assert not guardian.anything_to_sweep(folder)
    notes.unlink()  # sweep(folder=...) refuses a folder holding it
    orphan = _orphan()  # a dead owner's journal, unlocked
    assert guardian.anything_to_sweep(folder)
    leakguard.sweep(folder=folder)
    assert not in_shm(orphan)
    assert not guardian.anything_to_sweep(folder)
    temp = leakguard_dir / f"{os.getpid()}-0123456789ab.tmp"  # a journal being made
    temp.write_bytes(b"")
    assert guardian.anything_to_sweep(folder)
    temp.unlink()
    assert not guardian.anything_to_sweep(folder)
    leakguard.free(mine)
