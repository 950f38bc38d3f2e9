"""``leakguard.get_pool``: one pool per process kept warm across calls (issue 15), with the
rules of docs/pool.md "A pool kept warm": same arguments, same pool, no process started;
different arguments or a pool no longer running, a new one; nothing left at exit; a fork's
copy inert and forgotten."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import leakguard
from leakguard._pool import reusable
from leakguard._pool.pool import cpu_count
from tests import get_pool_children as tasks
from tests.helpers import (
    descendants,
    finish,
    kill_group,
    lg_entries,
    process_gone,
    python_main,
    read_line,
    wait_for,
)


@pytest.fixture(autouse=True)
def nothing_held() -> Iterator[None]:
    """Each test starts without a held pool and leaves none (each test has its own folder)."""
    assert reusable._held.pool is None
    yield
    _drop_held()


def _drop_held() -> None:
    pool, reusable._held.pool = reusable._held.pool, None
    if pool is not None:
        pool.terminate()


def children() -> set[int]:
    return {p.pid for p in descendants()}


def workers_of(pool: leakguard.Pool, n: int) -> set[int]:
    """The pids of the pool's ``n`` workers, once each has run a task."""

    def seen() -> set[int] | None:
        found = set(pool.map(tasks.pid, [0.05] * 4 * n, chunksize=1))
        return found if len(found) == n else None

    found = wait_for(seen, 60, f"each of the {n} workers to run a task")
    assert found is not None
    return found


@pytest.mark.slow
def test_the_same_arguments_return_the_same_warm_pool_and_start_nothing() -> None:
    pool = leakguard.get_pool(2)
    assert len(workers_of(pool, 2)) == 2
    before = children()
    assert len(before) == 3  # two workers and the guardian
    assert leakguard.get_pool(2) is pool
    assert leakguard.get_pool(2, retries=0, start_method="spawn") is pool  # the defaults, spelt out
    assert leakguard.get_pool(processes=2) is pool
    assert children() == before  # warm: no process started, none replaced
    assert pool.apply(tasks.square, (7,)) == 49


def test_processes_none_is_the_number_of_cpus() -> None:
    pool = leakguard.get_pool()
    assert leakguard.get_pool(cpu_count()) is pool
    assert leakguard.get_pool(None) is pool


@pytest.mark.slow
def test_different_arguments_finish_the_held_pool_and_start_another() -> None:
    first = leakguard.get_pool(1)
    old_workers = [psutil.Process(pid) for pid in workers_of(first, 1)]
    pending = first.apply_async(tasks.pid, (0.3,))  # given to the old pool before the switch
    second = leakguard.get_pool(2)
    assert second is not first
    assert pending.ready()  # closed, not terminated: what it was given completed
    assert pending.successful()
    assert all(process_gone(p) for p in old_workers)
    with pytest.raises(leakguard.PoolClosedError):
        first.apply(tasks.square, (1,))
    assert second.apply(tasks.square, (3,)) == 9
    assert leakguard.get_pool(2) is second


def test_bad_arguments_raise_and_keep_the_held_pool() -> None:
    pool = leakguard.get_pool(1)
    with pytest.raises(TypeError):
        leakguard.get_pool(1, retires=2)  # misspelt
    with pytest.raises(ValueError, match="processes"):
        leakguard.get_pool(0)
    assert leakguard.get_pool(1) is pool
    assert pool.apply(tasks.square, (4,)) == 16


@pytest.mark.parametrize("ending", ["close", "terminate", "with"])
def test_a_pool_the_user_ended_is_replaced(ending: str) -> None:
    pool = leakguard.get_pool(1)
    if ending == "close":
        pool.close()
        pool.join()
    elif ending == "terminate":
        pool.terminate()
    else:
        with pool as same:
            assert same.apply(tasks.square, (2,)) == 4
    again = leakguard.get_pool(1)
    assert again is not pool
    assert again.apply(tasks.square, (5,)) == 25


@pytest.mark.slow
def test_the_held_pool_survives_a_worker_sigkill() -> None:
    pool = leakguard.get_pool(2)
    victims = workers_of(pool, 2)
    victim = min(victims)
    os.kill(victim, signal.SIGKILL)
    core = pool._core
    assert core is not None
    wait_for(lambda: victim not in core.workers, 10, "the pool to bury the killed worker")
    assert leakguard.get_pool(2) is pool
    assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
    assert victim not in workers_of(pool, 2)


def test_threads_asking_at_once_get_one_pool() -> None:
    start = threading.Barrier(8)
    got: list[leakguard.Pool] = []

    def ask() -> None:
        start.wait()
        got.append(leakguard.get_pool(2))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 8
    assert all(p is got[0] for p in got)
    assert len(children()) == 3  # one pool's two workers and its guardian


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_the_held_pool_is_cleaned_up_at_exit(leakguard_dir: Path) -> None:
    before = lg_entries()
    child = python_main(tasks.hold_a_warm_pool_and_exit)
    try:
        ready = json.loads(read_line(child, timeout=60))
        procs = [psutil.Process(pid) for pid in [*ready["workers"], ready["guardian"]]]
        assert len(ready["workers"]) == 2
        assert lg_entries() - before  # its block (and maybe the pool's) exist while it runs
    except BaseException:
        kill_group(child)  # its guardian, in a session of its own, then cleans up
        raise
    code, _, err = finish(child)  # end of input: it exits normally, its pool still held
    assert (code, err) == (0, "")
    wait_for(lambda: all(process_gone(p) for p in procs), 10, "the held pool's processes to exit")
    assert lg_entries() - before == set()
    assert list(leakguard_dir.glob("*.journal")) == []


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_in_a_forked_child_the_held_pool_is_inert_and_a_new_one_is_made() -> None:
    pool = leakguard.get_pool(1)
    assert pool.apply(tasks.square, (2,)) == 4
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, stop what it started, exit without pytest's teardown
        report: dict[str, object] = {}
        try:
            os.close(reader)
            try:
                pool.apply(tasks.square, (3,))
            except leakguard.InheritedPoolError:
                report["inherited"] = "refused"
            mine = leakguard.get_pool(1)
            report["new"] = mine is not pool
            report["works"] = mine.apply(tasks.square, (3,))
            report["kept"] = leakguard.get_pool(1) is mine
            mine.terminate()
        except BaseException as exc:  # reported to the parent
            report["error"] = repr(exc)
        finally:
            os.write(writer, json.dumps(report).encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert report == {"inherited": "refused", "new": True, "works": 9, "kept": True}
    assert leakguard.get_pool(1) is pool  # the parent's pool is untouched and still held
    assert pool.apply(tasks.square, (6,)) == 36
