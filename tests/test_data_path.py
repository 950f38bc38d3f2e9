"""SPEC 2.1 and 2.2 on the data path: what crosses a pool's pipes, and what crosses by reference.

A ``SharedArray``, or any view of one, travels by reference: the worker maps the same
block, and its writes are the parent's. A plain numpy array of ``share_threshold``
bytes or more travels through a block the parent owns while the task holds it. A
large result comes back in a block the worker made and handed over: the parent adopts
it (its journal names it, the worker's no longer does), owns it, frees it, and can
send it to another task by reference.

Every test runs with the pool's blocks anonymous (the default on Linux: memfds) and
named (as where there is no memfd, or with LEAKGUARD_NAMED_BLOCKS=1): a block is
"live" while its owner's journal names it (and, named, while it is in /dev/shm), and
"gone" once nothing names, holds or maps it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import leakguard
from leakguard._journal.format import read_journal_fd
from leakguard._os.names import public_name
from tests import data_tasks as tasks
from tests.helpers import SHM, block_gone, block_name, in_shm, memfds_held, wait_for

THRESHOLD = 4096  # bytes: small arrays, and both sides of the threshold
SPARE_PER_WORKER = 2  # argument blocks a pool keeps for reuse, per worker (_pool/engine.py)
AT = THRESHOLD // 8  # float64 elements of an array of exactly THRESHOLD bytes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, params=["anonymous", pytest.param("named", marks=pytest.mark.slow)])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which kind of block the pool shares arrays through (its workers make the same kind)."""
    kind: str = request.param
    if kind == "named":
        monkeypatch.setattr("leakguard._os.memfd._usable", False)
    elif not leakguard_anonymous():
        pytest.skip("no anonymous blocks on this system")
    return kind


def leakguard_anonymous() -> bool:
    from leakguard._blocks.shm import anonymous_by_default

    return anonymous_by_default()


@contextmanager
def pool(start_method: str, processes: int = 2, **kw: Any) -> Iterator[leakguard.Pool]:
    with leakguard.Pool(processes, start_method=start_method, **kw) as p:
        yield p


def journal_names(folder: Path, pid: int) -> set[str]:
    """What the journal(s) of process ``pid`` in ``folder`` name as live, in the form users
    see (``lg_x``; the journal keeps ``/lg_x``)."""
    names: set[str] = set()
    for path in folder.glob(f"{pid}-*.journal"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # closed or compacted meanwhile
        try:
            names.update(public_name(e.name) for e in read_journal_fd(fd).live())
        finally:
            os.close(fd)
    return names


def mine(folder: Path) -> set[str]:
    return journal_names(folder, os.getpid())


def journaled() -> set[str]:
    """What every journal of the test's folder names as live (lg_x)."""
    folder = Path(os.environ["LEAKGUARD_DIR"])
    pids = {int(p.name.split("-")[0]) for p in folder.glob("*.journal")}
    return set().union(*(journal_names(folder, pid) for pid in pids))


def live(name: str) -> bool:
    """The block can still be attached: its owner's journal names it, and it is in /dev/shm
    (named) or its owner holds a descriptor of it (anonymous: exactly as long as its journal
    names it)."""
    return name in journaled() and (in_shm(name) or name in memfds_held())


def gone(*names: str) -> bool:
    """No journal names these blocks, and nothing is left of them (see helpers.block_gone)."""
    return block_gone(*names) and not any(live(n) for n in names)


def live_blocks() -> set[str]:
    """Every block live now: in /dev/shm, or anonymous and held (see live())."""
    return {n for n in os.listdir(SHM) if n.startswith("lg_")} | {n for n in memfds_held() if live(n)}


# ---------------------------------------------------------------------------- arguments


def test_a_shared_array_and_any_view_of_it_travel_by_name(start_method: str) -> None:
    a = leakguard.shared_array((64, 32), np.float64, fill=1.0)
    a[:] = np.arange(a.size).reshape(a.shape)
    views = {
        "whole": a,
        "rows": a[8:16],
        "one row": a[5],
        "column": a[:, 3],
        "strided": a[::3, ::5],
        "reversed": a[::-1, ::-2],
        "transposed": a.T,
        "one element": a[5:6, 7:8],
        "flattened": a.reshape(-1),
        "another dtype": a.view(np.int64)[2:4],
    }
    # Sharing of plain arrays is off: a SharedArray travels by name regardless.
    with pool(start_method, share_threshold=None) as p:
        for label, view in views.items():
            info = p.apply(tasks.describe, (view,))
            assert info["type"] == "SharedArray", label
            assert info["block"] == block_name(a), label
            assert tuple(info["shape"]) == view.shape, label
            assert info["sum"] == view.sum().item(), label

        expected = np.array(a)
        assert p.apply(tasks.fill, (a[8:16], -5.0)) == block_name(a)
        expected[8:16] = -5.0
        assert p.apply(tasks.fill, (a[::-1, ::-2], 7.0)) == block_name(a)
        expected[::-1, ::-2] = 7.0
        np.testing.assert_array_equal(a, expected)  # the worker's writes are ours: zero copies

        # A computed array has memory of its own: it is sent by value, and stays a copy.
        copy = a + 1
        assert p.apply(tasks.describe, (copy,))["type"] == "ndarray"
        assert p.apply(tasks.fill, (copy, 0.0)) is None
        np.testing.assert_array_equal(copy, expected + 1)


def test_a_large_plain_array_arrives_in_a_block_and_a_small_one_by_value(start_method: str) -> None:
    at = np.arange(AT, dtype=np.float64)  # exactly the threshold
    below = np.arange(AT - 1, dtype=np.float64)
    cases: dict[str, tuple[np.ndarray, bool]] = {
        "at the threshold": (at, True),
        "one element below": (below, False),
        "bytes": (np.ones(THRESHOLD, np.int8), True),
        "2-d": (np.arange(4 * AT, dtype=np.float32).reshape(2 * AT, 2), True),
        "not contiguous": (np.arange(4 * AT, dtype=np.float64)[::2], True),
        "fortran order": (np.asfortranarray(np.arange(2 * AT, dtype=np.float64).reshape(AT, 2)), True),
        "python objects": (np.array([object()] * AT), False),
    }
    with pool(start_method, share_threshold=THRESHOLD) as p:
        for label, (array, shared) in cases.items():
            info = p.apply(tasks.describe, (array,))
            assert info["type"] == ("SharedArray" if shared else "ndarray"), label
            assert (info["block"] is not None) == shared, label
            assert tuple(info["shape"]) == array.shape, label
            assert info["dtype"] == str(array.dtype), label
            if array.dtype.kind != "O":
                assert info["sum"] == array.sum().item(), label
        # Inside lists, tuples and dicts too, and by keyword.
        nested = p.apply(tasks.identity, ({"k": [(at,)]},))
        assert block_name(nested["k"][0][0]) is not None
        np.testing.assert_array_equal(nested["k"][0][0], at)
        assert p.apply(tasks.describe, (), {"a": at})["shared"]
        # The block holds a copy: the worker's writes do not reach the caller's array.
        assert p.apply(tasks.fill, (at, -1.0)) is not None
        np.testing.assert_array_equal(at, np.arange(AT, dtype=np.float64))


@pytest.mark.parametrize("threshold", ["default", None])
def test_the_default_threshold_is_one_mebibyte_and_none_turns_sharing_off(
    start_method: str, threshold: str | None
) -> None:
    mib = np.zeros(1 << 17, np.float64)  # 1 MiB
    under = np.zeros((1 << 17) - 1, np.float64)
    kw: dict[str, Any] = {} if threshold == "default" else {"share_threshold": None}
    with pool(start_method, **kw) as p:
        assert p.apply(tasks.describe, (mib,))["shared"] == (threshold == "default")
        assert not p.apply(tasks.describe, (under,))["shared"]
        result = p.apply(tasks.arange, (1 << 17,))
        assert isinstance(result, leakguard.SharedArray) == (threshold == "default")
        np.testing.assert_array_equal(result, np.arange(1 << 17))


def test_argument_blocks_go_once_their_task_is_settled_but_a_few_spares(
    start_method: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    big = np.arange(2 * AT, dtype=np.float64)
    seen: set[str] = set()
    with pool(start_method, share_threshold=THRESHOLD) as p:
        # done, several at once
        infos = p.map(tasks.describe, [big + i for i in range(12)], chunksize=1)
        assert [info["sum"] for info in infos] == [(big + i).sum() for i in range(12)]
        seen.update(info["block"] for info in infos)
        # failed
        with pytest.raises(LookupError) as raised:
            p.apply(tasks.fail_after_looking, (big,))
        seen.add(raised.value.args[0])
        del raised
        # its worker died
        told = tmp_path / "block-name"
        with pytest.raises(leakguard.WorkerLostError):
            p.apply(tasks.exit_after_looking, (big, str(told)))
        seen.add(told.read_text())
        assert all(seen), seen
        # While the pool lives it keeps a few answered tasks' blocks for later ones: its
        # own (our journal names them), and a bounded number, whatever the number of tasks.
        lingering = {n for n in seen if live(n)}
        assert len(lingering) <= SPARE_PER_WORKER * 2, f"{len(lingering)} argument blocks kept"
        assert lingering <= mine(leakguard_dir)
        # the pool still works
        assert p.apply(tasks.describe, (big,))["sum"] == big.sum()
    wait_for(lambda: gone(*seen), timeout=10, what="every argument block to go with the pool")
    assert not mine(leakguard_dir) & seen


def test_a_reused_argument_block_never_holds_data_still_in_use(start_method: str) -> None:
    first = np.arange(2 * AT, dtype=np.float64)
    with pool(start_method, 1, share_threshold=THRESHOLD) as p:
        # A result that is a view of its argument, and a view of an argument the worker
        # keeps: later arguments of the same size must land in other blocks.
        echoed = p.apply(tasks.identity, (first,))
        kept_in = p.apply(tasks.keep_a_view, (first + 1,))
        later = [first * (i + 2) for i in range(8)]
        for array, back in zip(later, p.map(tasks.identity, later, chunksize=1), strict=True):
            np.testing.assert_array_equal(back, array)
            assert block_name(back) not in (block_name(echoed), kept_in)
        np.testing.assert_array_equal(echoed, first)
        assert p.apply(tasks.kept_sums) == [float((first + 1)[::2].sum())]


def test_argument_blocks_of_tasks_cut_short_by_terminate_are_gone(start_method: str) -> None:
    gate = leakguard.Semaphore(0)
    started = leakguard.Semaphore(0)
    p = leakguard.Pool(2, start_method=start_method, share_threshold=THRESHOLD)
    try:
        before = live_blocks()
        results = [p.apply_async(tasks.wait_on, (np.full(2 * AT, float(i)), gate, started)) for i in range(6)]
        for _ in range(2):  # both workers hold a task (and its block); the rest wait in the pool
            assert started.acquire(timeout=30)
        # A task's argument is shared when it is sent, so a waiting task holds no block yet.
        held = live_blocks() - before
        assert len(held) >= 2, f"each running task's argument should have a block, found {sorted(held)}"
    finally:
        p.terminate()
    for r in results:
        with pytest.raises(leakguard.PoolClosedError):
            r.get(timeout=30)
    del results
    wait_for(lambda: gone(*held), timeout=10, what="the argument blocks of terminated tasks to go")


# ---------------------------------------------------------------------------- results


@pytest.mark.slow
def test_a_large_result_is_a_shared_array_the_parent_owns(start_method: str, leakguard_dir: Path) -> None:
    n = 4 * AT
    with pool(start_method, share_threshold=THRESHOLD) as p:
        worker, result = p.apply(tasks.with_pid, (n,))
        assert type(result) is leakguard.SharedArray
        name = block_name(result)
        assert name is not None
        assert live(name)
        np.testing.assert_array_equal(result, np.arange(n, dtype=np.float64))
        # Adopted: our journal names it, the worker's no longer does.
        assert name in mine(leakguard_dir)
        wait_for(
            lambda: name not in journal_names(leakguard_dir, worker),
            timeout=10,
            what="the worker's journal to drop the block the parent adopted",
        )
        # The owner frees it; the array stays readable here.
        leakguard.free(result)
        assert not live(name)
        assert name not in mine(leakguard_dir)
        np.testing.assert_array_equal(result, np.arange(n, dtype=np.float64))
        del result

        # Dropping the last reference unlinks it too.
        result = p.apply(tasks.arange, (n,))
        assert isinstance(result, leakguard.SharedArray)
        name = block_name(result)
        assert name is not None
        assert live(name)
        del result
        gc.collect()
        wait_for(lambda: gone(name), timeout=10, what="a dropped result's block to go")
        assert name not in mine(leakguard_dir)


@pytest.mark.slow
@pytest.mark.parametrize("made", ["small SharedArray", "large SharedArray", "large plain array"])
def test_a_result_made_in_a_worker_outlives_the_worker(start_method: str, made: str, leakguard_dir: Path) -> None:
    n = 100 if made.startswith("small") else 4 * AT  # a SharedArray is handed over whatever its size
    with pool(start_method, 1, maxtasksperchild=1, share_threshold=THRESHOLD) as p:
        if made.endswith("plain array"):
            worker, result = p.apply(tasks.with_pid, (n,))
            result[:] = 2.5
        else:
            worker, result = p.apply(tasks.made_shared, (n, 2.5))
        wait_for(lambda: not psutil.pid_exists(worker), timeout=10, what="the worker to retire after its one task")
        assert isinstance(result, leakguard.SharedArray)
        name = block_name(result)
        assert name is not None
        assert live(name), "the block went with the worker that made it"
        assert name in mine(leakguard_dir)
        assert name not in journal_names(leakguard_dir, worker)
        np.testing.assert_array_equal(result, np.full(n, 2.5))

        # Back to another worker, by name: it maps the same block.
        info = p.apply(tasks.describe, (result,))
        assert info["block"] == name
        assert info["pid"] != worker
        assert info["sum"] == 2.5 * n
        p.apply(tasks.fill, (result[10:20], -1.0))
        assert (result[10:20] == -1.0).all()
        assert result.sum() == 2.5 * (n - 10) - 10

        leakguard.free(result)
        assert not live(name)


@pytest.mark.slow
def test_views_of_a_block_made_in_a_worker_come_back_as_views_of_one_adopted_block(
    start_method: str, leakguard_dir: Path
) -> None:
    n = 1000
    with pool(start_method, share_threshold=THRESHOLD) as p:
        whole, part, strided = p.apply(tasks.made_shared_views, (n,))
        assert isinstance(whole, leakguard.SharedArray)
        assert isinstance(part, leakguard.SharedArray)
        assert isinstance(strided, leakguard.SharedArray)
        assert block_name(whole) == block_name(part) == block_name(strided)
        assert np.shares_memory(whole, part)
        assert np.shares_memory(whole, strided)
        np.testing.assert_array_equal(part, np.arange(10, 20))
        np.testing.assert_array_equal(strided, np.arange(n)[::-3])
        part[0] = -1
        assert whole[10] == -1
        name = block_name(whole)
        assert name is not None
        assert name in mine(leakguard_dir)
        del whole, part, strided

        # Only a slice came back: the parent owns the whole block, and frees it with the slice.
        piece = p.apply(tasks.made_shared_slice, (n,))
        np.testing.assert_array_equal(piece, np.arange(n)[n // 4 : n // 2])
        assert isinstance(piece, leakguard.SharedArray)
        piece_name = block_name(piece)
        assert piece_name is not None
        assert piece_name in mine(leakguard_dir)
        del piece
        gc.collect()
        wait_for(lambda: gone(name, piece_name), timeout=10, what="the dropped results' blocks to go")
        assert not mine(leakguard_dir) & {name, piece_name}


@pytest.mark.slow
def test_an_array_in_a_task_error_comes_back_and_its_block_goes_with_the_error(start_method: str) -> None:
    with pool(start_method, share_threshold=THRESHOLD) as p:
        with pytest.raises(ValueError, match="an array in an error") as raised:
            p.apply(tasks.raise_with, (2 * AT,))
        array = raised.value.args[1]
        np.testing.assert_array_equal(array, np.arange(2 * AT, dtype=np.float64))
        name = block_name(array) if isinstance(array, leakguard.SharedArray) else None
        del raised, array
        gc.collect()
        if name is not None:
            wait_for(lambda: gone(name), timeout=10, what="the error's array block to go")


def test_a_result_that_cannot_be_pickled_leaves_no_block(start_method: str) -> None:
    from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

    with pool(start_method, 1, share_threshold=THRESHOLD) as p:
        p.apply(tasks.identity, (0,))  # the worker is up, its journal too
        before = live_blocks()
        with pytest.raises(MaybeEncodingError):
            p.apply(tasks.unpicklable_after, (2 * AT,))
        p.apply(tasks.identity, (0,))  # the one worker is done with the failed task's result
        wait_for(
            lambda: live_blocks() <= before,
            timeout=2,
            what="the blocks of a result that failed to pickle to go",
        )
        assert p.apply(tasks.describe, (np.arange(2 * AT, dtype=np.float64),))["shared"]


@pytest.mark.slow
def test_a_retried_task_gets_its_argument_block_again(start_method: str, tmp_path: Path) -> None:
    big = np.arange(2 * AT, dtype=np.float64)
    marker = tmp_path / "attempted"
    with pool(start_method, 1, retries=1, share_threshold=THRESHOLD) as p:
        info = p.apply(tasks.exit_the_first_time, (big, str(marker)))
        first = marker.read_text()
        assert first
        assert info["block"] == first, "the retry should map the block of the first attempt"
        assert info["sum"] == big.sum()
    wait_for(lambda: gone(first), timeout=10, what="the retried task's argument block to go")


@pytest.mark.slow
def test_a_result_travels_back_to_another_task_by_name(start_method: str) -> None:
    with pool(start_method, share_threshold=THRESHOLD) as p:
        result = p.apply(tasks.arange, (2 * AT,))
        assert isinstance(result, leakguard.SharedArray)
        info = p.apply(tasks.describe, (result,))
        assert info["block"] == block_name(result)
        p.apply(tasks.fill, (result[::2], -1.0))
        expected = np.arange(2 * AT, dtype=np.float64)
        expected[::2] = -1.0
        np.testing.assert_array_equal(result, expected)

        # An argument handed back unchanged lives on in the caller's hands.
        big = np.arange(2 * AT, dtype=np.float64)
        echoed = p.apply(tasks.identity, (big,))
        assert block_name(echoed) is not None
        np.testing.assert_array_equal(echoed, big)
        name = block_name(echoed)
        assert name is not None
        assert live(name)
        assert p.apply(tasks.describe, (echoed,))["sum"] == big.sum()
        del echoed
        gc.collect()
        wait_for(lambda: gone(name), timeout=10, what="the echoed argument's block to go")


@pytest.mark.parametrize("made", ["before-the-pool", "after-the-pool"])
def test_a_view_of_the_callers_array_comes_back_as_a_view_of_it(start_method: str, made: str) -> None:
    # Made before the pool, the array's block is in a forked worker's memory too, as the
    # parent's: the worker must still treat it as someone else's and send it by name.
    a = leakguard.shared_array(3 * AT, np.float64, fill=0.0) if made == "before-the-pool" else None
    with pool(start_method, share_threshold=THRESHOLD) as p:
        if a is None:
            p.apply(tasks.identity, (0,))  # the workers are up before the array exists
            a = leakguard.shared_array(3 * AT, np.float64, fill=0.0)
        same = p.apply(tasks.identity, (a,))
        assert isinstance(same, leakguard.SharedArray)
        assert block_name(same) == block_name(a)
        del same
        view = p.apply(tasks.view_of, (a, 2, 50, 3))
        assert isinstance(view, leakguard.SharedArray)
        assert block_name(view) == block_name(a)
        assert np.shares_memory(view, a)
        view[:] = 9.0
        assert a[2:50:3].tolist() == [9.0] * len(view)


def _assert_same(got: Any, want: Any, where: str = "result") -> None:
    """Equal values and types; large arrays shared, small ones not."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        shared = want.nbytes >= THRESHOLD
        assert (type(got) is leakguard.SharedArray and block_name(got) is not None) == shared, where
        assert got.dtype == want.dtype, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.slow
def test_results_are_what_numpy_computes(start_method: str) -> None:
    rng = np.random.default_rng(7)
    inputs: list[np.ndarray] = [
        rng.standard_normal(4 * AT),
        rng.integers(-1000, 1000, size=(AT, 3), dtype=np.int32),
        rng.standard_normal(AT).astype(np.float32),
        rng.standard_normal(AT) + 1j * rng.standard_normal(AT),
        rng.integers(0, 100, size=7),
        np.arange(AT - 1, dtype=np.float64),
    ]
    with pool(start_method, share_threshold=THRESHOLD) as p:
        for got, x in zip(p.map(tasks.square, inputs, chunksize=1), inputs, strict=True):
            _assert_same(got, np.square(x))
        for got, x in zip(p.imap(tasks.square, inputs), inputs, strict=True):
            _assert_same(got, np.square(x))
        for got, x in zip(p.imap(tasks.square, (x for x in inputs)), inputs, strict=True):
            _assert_same(got, np.square(x))
        unordered = list(p.imap_unordered(tasks.square, inputs))
        assert sorted(float(np.abs(g).sum()) for g in unordered) == sorted(
            float(np.abs(np.square(x)).sum()) for x in inputs
        )
        starred = p.starmap(tasks.arange, [(3 * AT, "int16"), (AT, "float64"), (5, "uint8")])
        for got, (n, dtype) in zip(starred, [(3 * AT, "int16"), (AT, "float64"), (5, "uint8")], strict=True):
            _assert_same(got, np.arange(n).astype(dtype))
        _assert_same(p.apply(tasks.every_shape, (8 * AT,)), tasks.every_shape(8 * AT))


EDGE_CASES = {
    "0-d": np.array(5.0),
    "empty": np.zeros(0),
    "empty 2-d": np.zeros((3, 0)),
    "bool": np.array([True, False, True]),
    "structured": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
    "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
    "unicode": np.array(["ab", "cde"]),
}


def test_every_kind_of_array_survives_the_round_trip_with_sharing_always_on(start_method: str) -> None:
    # share_threshold=0: every plain array goes through a block, both ways.
    with pool(start_method, 1, share_threshold=0) as p:
        for label, value in EDGE_CASES.items():
            arrived = p.apply(tasks.describe, (value,))
            assert arrived["shared"], label
            assert tuple(arrived["shape"]) == value.shape, label
            assert arrived["dtype"] == str(value.dtype), label
            back = p.apply(tasks.identity, (value,))
            assert back.shape == value.shape, label
            assert back.dtype == value.dtype, label
            np.testing.assert_array_equal(back, value, err_msg=label)
            copied = p.apply(np.copy, (value,))
            assert type(copied) is leakguard.SharedArray, label
            np.testing.assert_array_equal(copied, value, err_msg=label)
