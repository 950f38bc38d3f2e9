"""SPEC 3: the command line, its output and its exit codes, run as a user would run it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leakguard.cli import parse_duration
from tests.helpers import entry_of, finish, kill_group, lg_entries, python, read_line

ORPHAN_MAKER = """
import json, sys, leakguard
a = leakguard.shared_array(4096)
s = leakguard.Lock()
print(json.dumps([a.shm_name, s.name]), flush=True)
sys.stdin.read()
"""


def leakguard_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "leakguard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_orphans() -> list[str]:
    """A child creates a block and a semaphore and is SIGKILLed: /dev/shm entries it left."""
    child = python(ORPHAN_MAKER)
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
    live = python(ORPHAN_MAKER)
    live_names = json.loads(read_line(live))
    listing = leakguard_cli("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    report = json.loads(listing.stdout)
    assert sorted(i["name"] for i in report["kept"]) == sorted(live_names)
    assert {i["state"] for i in report["kept"]} == {"live"}
    assert all(i["owner_pid"] == live.pid for i in report["kept"])
    assert sorted(entry_of(i["kind"], i["name"]) for i in report["removed"]) == sorted(orphans)
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


def test_missing_default_folder_is_an_empty_sweep() -> None:
    result = leakguard_cli("sweep", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == []


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
