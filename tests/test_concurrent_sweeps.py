"""Sweeps at the same time as other sweeps, and beside an owner at work (SPEC 4: "sweep while
pools are running: nothing live touched")."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import leakguard
from leakguard._journal import format as journal
from leakguard._sweep import journaled
from leakguard._sweep.journaled import startup_sweep
from tests import concurrent_sweeps_children as children
from tests.children import Spec, child_main, owner, owners
from tests.helpers import entry_of, finish, kill_group, lg_entries, read_line, shm_entries

if TYPE_CHECKING:
    from leakguard._sweep.journaled import SweepReport

BLOCKS, SEMS = 300, 50


def _sweep_at_once(n: int) -> list[dict[str, Any]]:
    """Run ``n`` sweeps in ``n`` processes released at the same instant; their reports."""
    read_end, write_end = os.pipe()
    gate = {"read": read_end, "write": write_end}

    def close(end: str) -> None:
        if gate[end] >= 0:
            os.close(gate[end])
            gate[end] = -1

    with contextlib.ExitStack() as stack:
        stack.callback(close, "read")
        stack.callback(close, "write")
        env = {"LG_GO_FD": str(read_end)}
        sweepers = [stack.enter_context(child_main(children.sweeper, env=env, pass_fds=(read_end,))) for _ in range(n)]
        close("read")
        for sweeper in sweepers:
            assert read_line(sweeper) == "ready"
        close("write")  # the starting gun: every sweeper reads end-of-file now
        reports = []
        for sweeper in sweepers:
            code, out, err = finish(sweeper)
            assert (code, err) == (0, ""), err
            reports.append(json.loads(out))
    return reports


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@pytest.mark.parametrize("n_owners", [1, 3])
@pytest.mark.slow
def test_two_sweeps_released_together_unlink_each_object_once(n_owners: int, leakguard_dir: Path) -> None:
    specs = [
        Spec(blocks=[4096] * blocks, sems=[1] * sems, seed=i)
        for i, (blocks, sems) in enumerate(zip(_split(BLOCKS, n_owners), _split(SEMS, n_owners), strict=True))
    ]
    with owners(*specs) as dead:
        for one in dead:
            assert one.kill() == -9
    expected = {o.name: (o.kind, o.size, one.pid) for one in dead for o in one.objects}
    assert len(expected) == BLOCKS + SEMS
    assert {e for one in dead for e in one.entries} <= lg_entries()

    reports = _sweep_at_once(2)

    for report in reports:
        assert report["errors"] == []
        assert report["gone"] == [], "a sweep found an object already unlinked by the other"
    removed = [item for report in reports for item in report["removed"]]
    names = [item["name"] for item in removed]
    assert len(names) == len(set(names)), "an object was unlinked by both sweeps"
    assert set(names) == set(expected)
    assert all((i["kind"], i["size"], i["owner_pid"]) == expected[i["name"]] for i in removed)
    assert lg_entries() == set()
    assert list(leakguard_dir.iterdir()) == []


def _has_output(proc: subprocess.Popen[str]) -> bool:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return bool(sel.select(0))


@pytest.mark.slow
def test_sweeps_beside_an_owner_creating_and_freeing_in_a_loop(leakguard_dir: Path) -> None:
    with owner(Spec(blocks=[4096] * 5, arrays=[100], sems=[1, 2])) as dead:
        assert dead.kill() == -9

    reports: list[SweepReport] = []
    with child_main(children.looper) as looper:
        keep = set(json.loads(read_line(looper)))
        assert looper.stdin is not None
        looper.stdin.write("go\n")
        looper.stdin.flush()
        deadline = time.monotonic() + 30
        while not _has_output(looper):
            assert time.monotonic() < deadline, "the owner's loop did not finish within 30 s"
            reports.append(leakguard.sweep())
        result = json.loads(read_line(looper))
        code, _, err = finish(looper)
        assert (code, err) == (0, "")

    assert result["failures"] == []
    assert len(reports) >= 3, f"only {len(reports)} sweeps ran during the owner's loop"
    assert result["journals"] >= 2, "the owner's journal was never replaced (compacted) during the loop"
    for report in reports:
        assert report.errors == [], report.errors
        assert report.gone == []
        assert {i.owner_pid for i in report.kept} <= {looper.pid}
        assert {i.owner_pid for i in report.removed} <= {dead.pid}
        assert keep <= {i.name for i in report.kept}
    removed = [i.name or "" for report in reports for i in report.removed]
    assert sorted(removed) == sorted(dead.names)
    assert not dead.entries & shm_entries()
    assert list(leakguard_dir.iterdir()) == []


@pytest.mark.slow
def test_ten_sweeps_at_once_beside_live_owners_touch_nothing(leakguard_dir: Path) -> None:
    with owners(*(Spec(blocks=[4096] * 20, arrays=[500], sems=[3] * 5, seed=i) for i in range(3))) as live:
        before = shm_entries()
        for report in _sweep_at_once(10):
            assert (report["removed"], report["errors"], report["gone"]) == ([], [], [])
            assert {i["name"] for i in report["kept"]} == {n for one in live for n in one.names}
        assert shm_entries() == before
        for one in live:
            assert one.check() == []
            assert one.finish()[0] == 0
    assert list(leakguard_dir.iterdir()) == []


def test_repeated_sweeps_parse_a_live_owners_journal_again_only_once_it_changed(
    leakguard_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: each sweep reads a live owner's journal twice, and a process may sweep again and
    again (a guardian, a Dask worker): unchanged, it is parsed once; changed, always again."""
    parses: list[str] = []
    real = journal._read_fd

    def counted(*args: Any) -> Any:
        parses.append("parse")
        return real(*args)

    monkeypatch.setattr(journal, "_read_fd", counted)
    with child_main(children.grower) as grower:
        names = set(json.loads(read_line(grower)))
        for _ in range(3):
            report = leakguard.sweep()
            assert {i.name for i in report.kept} == names
            assert (report.removed, report.errors) == ([], [])
        assert len(parses) == 1

        assert grower.stdin is not None
        grower.stdin.write("more\n")
        grower.stdin.flush()
        names.add(json.loads(read_line(grower)))
        report = leakguard.sweep()
        assert {i.name for i in report.kept} == names  # the new block is seen: the journal was read again
        assert len(parses) == 2

        assert kill_group(grower) == -9
    # A dead owner's journal is read afresh (never from what was read while its owner lived),
    # and everything it names goes, the last block too.
    report = leakguard.sweep()
    assert {i.name for i in report.removed} == names
    assert len(parses) == 3
    assert not {entry_of("shm", n) for n in names} & shm_entries()
    assert list(leakguard_dir.iterdir()) == []


def test_a_pools_start_up_sweep_keeps_no_journal_read(leakguard_dir: Path) -> None:
    """A guardian sweeps at start-up, then not again until its pool dies: the live owners'
    journals it read are not held in its memory all that time."""
    with child_main(children.grower) as grower:
        names = set(json.loads(read_line(grower)))
        assert {i.name for i in leakguard.sweep().kept} == names
        assert len(journaled._LIVE_JOURNALS) == 1  # a later sweep in this process would reuse it
        report = startup_sweep(str(leakguard_dir), time_limit=10)
        assert {i.name for i in report.kept} == names
        assert len(journaled._LIVE_JOURNALS) == 0
        code, _, err = finish(grower)  # end of input: it exits normally, freeing its blocks
        assert (code, err) == (0, "")
    assert not lg_entries()
