"""A pool worker keeps the mappings of the blocks it attached between tasks (issue 15):
a repeated map over one SharedArray maps the block once per worker; the cache is bounded;
a freed block is let go by idle workers; a stale or forged reference is never served from
the cache."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import leakguard
from leakguard._blocks import shm
from leakguard._errors import BlockGoneError
from leakguard._pool.worker import KEPT_MAPPINGS
from tests import kept_tasks as tasks
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["anonymous", "named"])
def named(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "named":
        monkeypatch.setattr("leakguard._os.memfd._usable", False)
        return True
    if not shm.anonymous_by_default():
        pytest.skip("no anonymous blocks on this system")
    return False


@contextmanager
def pool(processes: int = 2, **kw: Any) -> Iterator[leakguard.Pool]:
    with leakguard.Pool(processes, start_method="forkserver", **kw) as p:
        yield p


def mapped(pid: int) -> set[str]:
    """The blocks (lg_x, named or anonymous) process ``pid`` maps, from /proc/PID/maps."""
    found = set()
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as f:
        for line in f:
            for mark in ("/memfd:lg_", "/dev/shm/lg_"):
                at = line.find(mark)
                if at >= 0:
                    found.add(line[at:].split()[0].rsplit("/", 1)[-1].removeprefix("memfd:"))
    return found


def slices(a: np.ndarray, n: int) -> list[np.ndarray]:
    step = len(a) // n
    return [a[i * step : (i + 1) * step] for i in range(n)]


def test_repeated_map_maps_each_block_once_per_worker(named: bool) -> None:
    a = leakguard.share(np.arange(1_000_000, dtype=np.float64), named=named)
    with pool() as p:
        counts: dict[int, list[int]] = {}
        for _ in range(4):
            for pid, made, _kept in p.map(tasks.attach, slices(a, 16), 1):
                counts.setdefault(pid, []).append(made)
    leakguard.free(a)
    assert counts
    assert {pid: max(made) for pid, made in counts.items()} == dict.fromkeys(counts, 1)


def test_kept_mappings_are_bounded_least_recently_used_first(named: bool) -> None:
    arrays = [leakguard.share(np.full(1000, i, dtype=np.float64), named=named) for i in range(KEPT_MAPPINGS + 2)]
    names = [a.block_name for a in arrays]
    with pool(1, initializer=tasks.slow_checks) as p:
        for a in arrays:
            pid, _, kept = p.apply(tasks.attach, (a,))
        assert kept == names[2:]
        assert mapped(pid) & set(names) == set(names[2:])  # the two oldest are unmapped
        # A kept block used again is the most recent: the next new one pushes out another.
        p.apply(tasks.attach, (arrays[2],))
        extra = leakguard.share(np.zeros(1000), named=named)
        _, made, kept = p.apply(tasks.attach, (extra,))
        assert kept == [*names[4:], names[2], extra.block_name]
        assert made == KEPT_MAPPINGS + 3
        assert mapped(pid) & {*names, extra.block_name} == set(kept)
    for a in [*arrays, extra]:
        leakguard.free(a)


@pytest.mark.slow
def test_a_freed_block_is_let_go_by_idle_workers(named: bool) -> None:
    a = leakguard.share(np.arange(100_000, dtype=np.float64), named=named)
    b = leakguard.share(np.arange(100_000, dtype=np.float64), named=named)
    name = a.block_name
    assert name is not None
    with pool() as p:
        kept: dict[int, list[str]] = {}
        for pid, _, names in p.map(tasks.attach, [*slices(a, 8), *slices(b, 8)], 1):
            kept[pid] = names
        holding = [pid for pid, names in kept.items() if name in names]
        assert holding
        assert all(name in mapped(pid) for pid in holding)  # kept after the tasks ended
        leakguard.free(a)
        del a
        # No more tasks: the workers notice by themselves, within about a second.
        wait_for(lambda: not any(name in mapped(pid) for pid in holding), 10, f"the workers to unmap {name}")
        assert all(b.block_name in mapped(pid) for pid, names in kept.items() if b.block_name in names)  # live: kept
    leakguard.free(b)


def test_a_stale_or_forged_reference_is_never_served_from_the_cache() -> None:
    if not shm.anonymous_by_default():
        pytest.skip("no anonymous blocks on this system")
    a = leakguard.share(np.arange(1000, dtype=np.float64))
    b = leakguard.share(np.arange(1000, dtype=np.float64))
    a_name = a.block_name
    with pool(1, initializer=tasks.slow_checks) as p:
        p.apply(tasks.attach, (a,))
        p.apply(tasks.attach, (b,))
        stale = pickle.dumps(a)
        rebuild, (name, holder, *rest) = b.__reduce__()
        pid, start, fd, dev, ino = holder
        other = a.__reduce__()[1][1]
        forged = [
            (name, (pid, start + 1, fd, dev, ino), *rest),  # b's holder, its pid reused by another process
            (name, (pid, start, other[2], dev, ino), *rest),  # b's inode through a's descriptor
            (name, (pid, start, fd, other[3], other[4]), *rest),  # b's descriptor, claimed to hold a
        ]
        leakguard.free(a)
        del a
        c = leakguard.share(np.zeros(1000))  # may take a's descriptor number: a reused fd
        pickles = [stale, *(pickle.dumps(tasks.Reference(rebuild, tuple(args))) for args in forged), pickle.dumps(b)]
        outcomes, kept, before, after = p.apply(tasks.try_references, (pickles,))
    assert kept == [a_name, b.block_name]  # both were kept: each check ran on a cache entry
    assert outcomes[:4] == [BlockGoneError.__name__] * 4
    assert outcomes[4] == "ok"
    assert after == before  # b, the genuine one, from the cache; no forged one was mapped
    for array in (b, c):
        leakguard.free(array)


def test_workers_keep_nothing_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKGUARD_KEPT_MAPPINGS", "0")
    a = leakguard.share(np.arange(100_000, dtype=np.float64))
    with pool(1) as p:
        made = [made for _, made, _ in p.map(tasks.attach, slices(a, 4), 1)]
        pid, _, kept = p.apply(tasks.attach, (a,))
        assert kept == []
        assert a.block_name not in mapped(pid)
    assert made == [1, 2, 3, 4]
    leakguard.free(a)


@pytest.mark.parametrize("value", ["-1", "eight", "1.5"])
def test_a_bad_kept_mappings_setting_is_refused_as_the_pool_starts(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LEAKGUARD_KEPT_MAPPINGS", value)
    with pytest.raises(ValueError, match="LEAKGUARD_KEPT_MAPPINGS must be a whole number"):
        leakguard.Pool(1)
