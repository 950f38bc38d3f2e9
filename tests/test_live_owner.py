"""Ownership across processes: a live owner keeps everything through any number of sweeps;
an owner that exits normally cleans up itself; an owner that dies is cleaned up by one
sweep, exactly once; and the standard library's resource_tracker never gets involved."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import leakguard
from leakguard._journal.format import encode_record
from leakguard._journal.identity import Identity, boot_id, start_time
from leakguard._os.names import posix_name
from tests.children import Spec, check_from_here, owner
from tests.helpers import SHM, run, shm_entries

# Blocks of odd and page-sized sizes, float64 arrays, semaphores at several values.
SPEC = Spec(blocks=[1, 4096, 65537, 1 << 20], arrays=[1000, 12345], sems=[0, 1, 7])


@pytest.mark.parametrize(
    ("command", "expected_code"),
    [("", 0), ("exit", 0), ("raise", 1)],
    ids=["end-of-input", "sys.exit", "uncaught-exception"],
)
def test_live_owner_keeps_everything_through_sweeps_then_cleans_up_at_exit(
    command: str, expected_code: int, leakguard_dir: Path
) -> None:
    with owner(SPEC) as live:
        before = shm_entries()
        assert live.entries <= before
        for dry_run in (False, True, False, False, False):
            report = leakguard.sweep(dry_run=dry_run)
            assert report.dry_run is dry_run
            assert (report.removed, report.gone, report.dropped, report.errors) == ([], [], [], [])
            assert report.bytes_freed == 0
            assert report.journals_removed == []
            assert {i.name for i in report.kept} == live.names
            assert {(i.state, i.owner_pid) for i in report.kept} == {("live", live.pid)}
            assert shm_entries() == before
        assert live.check() == []
        assert check_from_here(live) == []

        if command:
            live.send(command)
        code, _, err = live.finish()
        assert code == expected_code, err
        if command == "raise":
            assert "RuntimeError: the owner's job failed" in err
        else:
            assert err == ""
        # No sweep: the exit handler unlinked everything and removed the journal.
        assert not live.entries & shm_entries()
        assert list(leakguard_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("death", "expected_code"),
    [("SIGKILL", -9), ("segv", -11), ("_exit", 3)],
    ids=["SIGKILL", "segfault", "os._exit"],
)
def test_dead_owner_is_removed_by_one_sweep_and_only_once(death: str, expected_code: int, leakguard_dir: Path) -> None:
    with owner(SPEC) as dead:
        if death == "SIGKILL":
            code = dead.kill()
        else:
            dead.send(death)
            code = dead.proc.wait(timeout=30)
        assert code == expected_code
        # Nothing cleaned up after it: the leak is real.
        assert dead.entries <= shm_entries()
        [journal] = leakguard_dir.iterdir()

        preview = leakguard.sweep(dry_run=True)
        assert {i.name for i in preview.removed} == dead.names
        assert dead.entries <= shm_entries(), "a dry run unlinked something"
        assert journal.exists()

        report = leakguard.sweep()

    assert (report.kept, report.gone, report.errors) == ([], [], [])
    assert {(i.kind, i.name, i.size, i.owner_pid) for i in report.removed} == {
        (o.kind, o.name, o.size, dead.pid) for o in dead.objects
    }
    assert {i.state for i in report.removed} == {"orphaned"}
    assert report.bytes_freed >= sum(o.size for o in dead.objects)
    assert report.bytes_freed == preview.bytes_freed
    assert report.journals_removed == [str(journal)]
    assert not dead.entries & shm_entries()
    assert list(leakguard_dir.iterdir()) == []

    again = leakguard.sweep()
    assert (again.removed, again.kept, again.gone, again.dropped, again.errors) == ([], [], [], [], [])
    assert again.journals_removed == []
    assert again.bytes_freed == 0


@pytest.mark.slow
def test_sharing_and_freeing_print_no_warning_and_skip_the_resource_tracker(
    tmp_path: Path, leakguard_dir: Path
) -> None:
    script = Path(__file__).with_name("live_owner_sharing.py")
    before = shm_entries()
    done = run([sys.executable, "-W", "error", str(script)], cwd=str(tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "shared and freed\n", "")
    assert shm_entries() == before
    assert list(leakguard_dir.iterdir()) == []


def _dead_identity() -> Identity:
    """A process that has been started, killed and reaped: provably dead."""
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as proc:
        try:
            start = start_time(proc.pid)
        finally:
            proc.kill()
    assert start is not None
    return Identity(pid=proc.pid, start=start, boot=boot_id(), pidns=Identity.current().pidns)


def _record(obj: object) -> bytes:
    return encode_record(json.dumps(obj, separators=(",", ":")).encode("ascii"))


def test_a_dead_journal_never_makes_the_sweep_unlink_what_a_live_journal_names(leakguard_dir: Path) -> None:
    with owner(Spec(blocks=[4096], sems=[1])) as live:
        # A journal of a dead pid that names the live owner's objects, down to their inodes:
        # forged, or left by a process that once shared the names. Its lock is free.
        dead = _dead_identity()
        body = _record({**dataclasses.asdict(dead), "op": "journal", "v": 1, "uid": os.geteuid(), "at": time.time()})
        for obj in live.objects:
            st = os.stat(f"{SHM}/{obj.entry}")
            name = posix_name(obj.name)  # the form journals keep
            body += _record({"op": "add", "kind": obj.kind, "name": name, "size": obj.size, "at": time.time()})
            body += _record({"op": "ino", "name": name, "dev": st.st_dev, "ino": st.st_ino})
        forged = leakguard_dir / f"{dead.pid}-0123456789ab.journal"
        forged.write_bytes(body)
        before = shm_entries()

        report = leakguard.sweep()

        assert report.removed == []
        assert shm_entries() == before
        assert live.check() == []
        from_forged = [i for i in report.kept if i.journal == str(forged)]
        assert {i.name for i in from_forged} == live.names
        assert all(f"a live owner's journal (pid {live.pid}) also names it" in i.reason for i in from_forged)
        assert forged.exists()  # unsettled: kept
        live.finish()
    forged.unlink()
