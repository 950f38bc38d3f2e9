"""The sweep's rules for pool workers' journals (docs/pool.md, "The hand-over").

A worker's journal names its pool's process (``"parent"`` in the header). While that
process lives, a dead worker's entries are kept: the pool may be adopting one of them
at this very instant, and settles the journal itself (``sweep.settle_worker``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import leakguard
from leakguard._journal.format import encode_record
from leakguard._journal.identity import Identity
from leakguard._os.names import posix_name
from leakguard._sweep.journaled import settle_worker
from tests.helpers import entry_of, shm_entries
from tests.test_hostile import Orphans, dead_identity, dead_owner, header_record, litter, payload_of, split_records

__all__ = ["litter"]  # the fixture, imported for the tests below


def _rewrite_header(orphans: Orphans, **changes: Any) -> Identity:
    """Give the dead owner's journal a header with ``changes``; returns the owner it names."""
    records = split_records(orphans.journal.read_bytes())
    header = payload_of(records[0])
    owner = Identity(pid=header["pid"], start=header["start"], boot=header["boot"], pidns=header["pidns"])
    new_header = header_record(owner, **changes)
    orphans.journal.write_bytes(new_header + b"".join(records[1:]))
    return owner


def test_a_dead_workers_entries_are_kept_while_its_pool_lives(leakguard_dir: Path) -> None:
    orphans = dead_owner(leakguard_dir, shm=2, sem=1)
    worker = _rewrite_header(orphans, parent=asdict(Identity.current()))  # this test process: the live "pool"

    report = leakguard.sweep()

    assert report.removed == []
    assert report.errors == []
    assert {i.name for i in report.kept} == orphans.names()
    assert all(f"worker of a live pool (pid {os.getpid()})" in i.reason for i in report.kept)
    assert all(p.exists() for p in orphans.paths())

    # The pool settles it: what it adopted is dropped from the worker's journal, the rest unlinked.
    adopted = sorted(orphans.names())[0]
    settled = settle_worker(str(leakguard_dir), worker, lambda name: name == posix_name(adopted))  # the pool's form

    assert [i.name for i in settled.dropped] == [adopted]
    assert settled.dropped[0].state == "handed-over"
    assert {i.name for i in settled.removed} == orphans.names() - {adopted}
    assert not orphans.journal.exists()
    kind = dict((name, kind) for kind, name in orphans.objects)[adopted]
    entry = entry_of(kind, adopted)
    assert entry in shm_entries()  # handed over: the pool owns it now, untouched
    os.unlink(os.path.join("/dev/shm", entry))


def test_a_dead_workers_entries_go_once_its_pool_is_dead_too(leakguard_dir: Path) -> None:
    orphans = dead_owner(leakguard_dir, shm=2)
    _rewrite_header(orphans, parent=asdict(dead_identity()))

    report = leakguard.sweep()

    assert {i.name for i in report.removed} == orphans.names()
    assert not any(p.exists() for p in orphans.paths())
    assert not orphans.journal.exists()


def test_settle_worker_leaves_a_reused_pids_journal_alone(leakguard_dir: Path) -> None:
    orphans = dead_owner(leakguard_dir, shm=1)
    owner = _rewrite_header(orphans, parent=asdict(Identity.current()))
    impostor = Identity(pid=owner.pid, start=owner.start + 1, boot=owner.boot, pidns=owner.pidns)

    report = settle_worker(str(leakguard_dir), impostor, lambda name: False)

    assert (report.removed, report.dropped, report.errors) == ([], [], [])
    assert orphans.journal.exists()
    assert all(p.exists() for p in orphans.paths())
    leakguard.sweep()  # the test's pool (this process) is alive: still kept
    assert all(p.exists() for p in orphans.paths())
    settle_worker(str(leakguard_dir), owner, lambda name: False)
    assert not any(p.exists() for p in orphans.paths())


@pytest.mark.parametrize(
    "parent",
    [
        "a string",
        ["a", "list"],
        {"pid": 0, "start": 1, "boot": "x", "pidns": 1},
        {"pid": 1, "start": -5, "boot": "x", "pidns": 1},
        {"pid": 1, "start": 1, "boot": "x" * 500, "pidns": 1},
        {"pid": 1},
        {"pid": 10**400, "start": 1, "boot": "x", "pidns": 1},
    ],
    ids=["string", "list", "pid-0", "negative-start", "long-boot", "missing-fields", "huge-pid"],
)
def test_a_malformed_parent_makes_the_header_invalid_and_nothing_is_removed(
    parent: object, leakguard_dir: Path
) -> None:
    orphans = dead_owner(leakguard_dir, shm=1)
    records = split_records(orphans.journal.read_bytes())
    header = payload_of(records[0])
    header["parent"] = parent
    body = json.dumps(header, separators=(",", ":")).encode("ascii")
    orphans.journal.write_bytes(encode_record(body) + b"".join(records[1:]))

    report = leakguard.sweep()

    assert report.removed == []
    assert any("no valid header" in i.reason for i in report.errors), report.errors
    assert all(p.exists() for p in orphans.paths())
    assert orphans.journal.exists()
    for path in orphans.paths():
        path.unlink()
    orphans.journal.unlink()


@pytest.mark.timeout(60)
def test_a_live_workers_entries_say_whose_pool_it_is(leakguard_dir: Path) -> None:
    from tests import data_tasks

    with leakguard.Pool(1) as pool:
        name = pool.apply(data_tasks.hold_own_block, (1000,))
        report = leakguard.sweep(dry_run=True)
        [item] = [i for i in report.kept if i.name == name]
        assert item.owner_pid != os.getpid()
        assert item.reason == f"owner alive (pid {item.owner_pid}, a worker of the pool in pid {os.getpid()})"
        assert report.removed == []
