"""SPEC 3: the command line, its output and its exit codes, run as a user would run it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import leakguard
from leakguard.cli import parse_duration
from tests import cli_children
from tests.helpers import entry_of, finish, kill_group, lg_entries, python_main, read_line
from tests.test_hostile import dead_owner


def leakguard_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "leakguard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def make_orphans() -> list[str]:
    """A child creates a block and a semaphore and is SIGKILLed: /dev/shm entries it left."""
    child = python_main(cli_children.orphan_maker)
    block, sem = json.loads(read_line(child))
    kill_group(child)
    entries = [entry_of("shm", block), entry_of("sem", sem)]
    assert set(entries) <= lg_entries()
    return entries


@pytest.mark.slow
def test_sweep_dry_run_then_sweep() -> None:
    orphans = make_orphans()
    dry = leakguard_cli("sweep", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert sorted(entry_of(i["kind"], i["name"]) for i in report["removed"]) == sorted(orphans)
    assert set(orphans) <= lg_entries()  # a dry run removes nothing

    real = leakguard_cli("sweep")
    assert real.returncode == 0, real.stderr
    assert "removed" in real.stdout
    assert "removed 2 object(s)" in real.stdout
    assert not set(orphans) & lg_entries()

    again = leakguard_cli("sweep", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["removed"] == []


@pytest.mark.slow
def test_ls_shows_live_and_orphaned_owners() -> None:
    orphans = make_orphans()
    live = python_main(cli_children.orphan_maker)
    live_names = json.loads(read_line(live))
    listing = leakguard_cli("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    objects = json.loads(listing.stdout)["objects"]
    live_ones = [o for o in objects if o["state"] == "live"]
    assert sorted(o["name"] for o in live_ones) == sorted(live_names)
    assert all(o["owner_pid"] == live.pid for o in live_ones)
    orphaned = [o for o in objects if o["state"] == "orphaned"]
    assert sorted(entry_of(o["kind"], o["name"]) for o in orphaned) == sorted(orphans)
    table = leakguard_cli("ls")
    assert "orphaned" in table.stdout
    assert "live" in table.stdout
    assert set(orphans) <= lg_entries()  # ls removes nothing
    code, _, err = finish(live)
    assert code == 0, err
    assert leakguard_cli("sweep").returncode == 0
    assert not set(orphans) & lg_entries()


@pytest.mark.slow
def test_sweep_exits_1_when_something_cannot_be_removed(leakguard_dir: Path) -> None:
    orphans = make_orphans()
    block = orphans[0]
    os.unlink(f"/dev/shm/{block}")
    os.mkdir(f"/dev/shm/{block}")  # a directory where the block was: never touched
    try:
        result = leakguard_cli("sweep")
        assert result.returncode == 1
        assert "directory" in result.stdout
        assert os.path.isdir(f"/dev/shm/{block}")
        assert orphans[1] not in lg_entries()  # the rest was still removed
    finally:
        os.rmdir(f"/dev/shm/{block}")
    # The journal is kept while an entry could not be settled; once the obstacle is gone it goes.
    assert list(leakguard_dir.glob("*.journal"))
    assert leakguard_cli("sweep").returncode == 0
    assert not list(leakguard_dir.glob("*.journal"))


@pytest.mark.slow
def test_usage_and_folder_errors_exit_2(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir(mode=0o777)
    os.chmod(unsafe, 0o777)
    result = leakguard_cli("sweep", "--dir", str(unsafe))
    assert result.returncode == 2
    assert "writable by others" in result.stderr
    assert leakguard_cli("sweep", "--dir", str(tmp_path / "missing")).returncode == 2
    assert leakguard_cli("sweep", "--yes").returncode == 2
    assert leakguard_cli("sweep", "--foreign", "--older-than", "soon").returncode == 2
    assert leakguard_cli("frobnicate").returncode == 2


def test_missing_default_folder_is_an_empty_sweep(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "LEAKGUARD_DIR"}
    env["XDG_RUNTIME_DIR"] = str(runtime)  # the default folder: $XDG_RUNTIME_DIR/leakguard, not made yet
    result = leakguard_cli("sweep", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["folder"] == str(runtime / "leakguard")
    assert json.loads(result.stdout)["removed"] == []


@pytest.mark.slow
def test_a_missing_folder_named_by_leakguard_dir_exits_2_as_with_dir(leakguard_dir: Path) -> None:
    assert not leakguard_dir.exists()
    for command in (["sweep"], ["ls"]):
        result = leakguard_cli(*command)
        assert result.returncode == 2, (command, result.stdout)
        assert str(leakguard_dir) in result.stderr
        assert "does not exist" in result.stderr


@pytest.mark.slow
def test_ls_json_lists_objects_and_owners_not_a_sweep_report() -> None:
    live = python_main(cli_children.orphan_maker)
    try:
        names = set(json.loads(read_line(live)))
        result = leakguard_cli("ls", "--json")
    finally:
        kill_group(live)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert "dry_run" not in document
    assert "removed" not in document
    assert document["live_owners"] == [live.pid]
    objects = document["objects"]
    assert {o["name"] for o in objects} == names
    for o in objects:
        assert {"name", "kind", "size", "owner_pid", "age", "state"} <= set(o)
        assert (o["owner_pid"], o["state"]) == (live.pid, "live")
    assert leakguard_cli("sweep").returncode == 0  # the owner was killed: clean up after it


def test_sweep_foreign_says_what_it_is_and_whose_pid_it_shows() -> None:
    result = leakguard_cli("sweep", "--foreign")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("leakguard sweep --foreign --dry-run: ")
    if "nothing here" not in result.stdout:
        assert "USED BY" in result.stdout.splitlines()[1]


@pytest.mark.slow
def test_sweep_foreign_says_which_evidence_decided() -> None:
    path = f"/dev/shm/psm_{os.urandom(4).hex()}"
    with open(path, "xb") as f:
        f.write(b"x" * 100)
    try:
        table = leakguard_cli("sweep", "--foreign", "--older-than", "0")  # a dry run: removes nothing
        data = leakguard_cli("sweep", "--foreign", "--older-than", "0", "--json")
        assert os.path.exists(path)
    finally:
        os.unlink(path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["STATE", "KIND", "NAME", "SIZE", "USED", "BY", "AGE", "EVIDENCE", "WHY"]
    (row,) = (line for line in lines if path in line)
    assert row.startswith("would remove")
    assert row.split(path)[1].split()[:4] == ["100", "B", "-", "0s"]
    assert row.split(path)[1].split()[4] == "lease"
    (entry,) = (i for i in json.loads(data.stdout)["removed"] if i["name"] == path)
    assert (entry["state"], entry["evidence"]) == ("foreign", "lease")


def test_version_and_module_entry_point() -> None:
    result = leakguard_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("leakguard ")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "-5m", "ten minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_states_are_members_that_read_and_dump_as_their_strings(leakguard_dir: Path) -> None:
    orphans = dead_owner(leakguard_dir, shm=1)
    report = leakguard.sweep(dry_run=True)
    (item,) = report.removed
    assert item.state == "orphaned"  # a str enum: scripts comparing strings keep working
    assert item.state is leakguard.SweepState.ORPHANED
    assert f"{item.state}" == "orphaned"
    plain = report.to_dict()["removed"][0]
    assert type(plain["state"]) is str
    assert json.loads(json.dumps(report.to_dict()))["removed"][0]["state"] == "orphaned"
    assert leakguard.SweepItem(**plain) == item  # read back from JSON: the member again
    with pytest.raises(ValueError, match="lost"):
        leakguard.SweepItem(**{**plain, "state": "lost"})
    assert {i.name for i in leakguard.sweep().removed} == orphans.names()


def test_directory_is_the_old_name_of_folder(leakguard_dir: Path) -> None:
    leakguard_dir.mkdir(mode=0o700)
    with pytest.warns(DeprecationWarning, match="call it folder="):
        report = leakguard.sweep(dry_run=True, directory=str(leakguard_dir))
    assert report.folder == str(leakguard_dir)


# ---------------------------------------------------------------------------- sweep --dir: only journals


def test_sweep_refuses_a_folder_that_is_not_a_journal_folder(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir(mode=0o700)
    thesis = folder / "thesis.tmp"  # a user's file, unlocked, with the suffix of a journal being made
    thesis.write_text("x\n")
    result = leakguard_cli("sweep", "--dir", str(folder))
    assert result.returncode == 2, result.stdout
    assert "is not a journal folder" in result.stderr
    assert "thesis.tmp" in result.stderr
    assert thesis.read_text() == "x\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, these folders are owned by the user and not writable by others")
@pytest.mark.parametrize("folder", ["/", "/etc", "/root", "/proc"])
def test_sweep_refuses_system_folders(folder: str) -> None:
    result = leakguard_cli("sweep", "--dry-run", "--dir", folder)  # a dry run, in case it did not refuse
    assert result.returncode == 2, result.stdout
    assert "is not a journal folder" in result.stderr


@pytest.mark.slow
def test_sweep_deletes_only_temporary_files_that_prove_to_be_journals(leakguard_dir: Path) -> None:
    make_orphans()  # a journal folder with a real journal in it
    named_like_ours = leakguard_dir / "12345-0123456789ab.tmp"  # the name of ours, not the content
    named_like_ours.write_text("not a journal\n")
    empty = leakguard_dir / "12345-ba9876543210.tmp"  # a writer killed between open() and write()
    empty.write_bytes(b"")
    result = leakguard_cli("sweep", "--json")
    assert result.returncode == 0, result.stderr
    assert named_like_ours.read_text() == "not a journal\n"
    assert not empty.exists()
    assert json.loads(result.stdout)["journals_removed"].count(str(empty)) == 1
