"""A full /dev/shm (SPEC 2.2, 6): ``OutOfSharedMemoryError`` at creation, nothing left behind,
every journal entry settled, and creation works again once there is room.

The "really full" tests run a child in a private mount namespace whose /dev/shm is a 2 MiB
tmpfs (``unshare -m``, root only; skipped where that is not possible).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import leakguard
from leakguard._journal.format import parse_journal
from tests import out_of_memory_children as children
from tests.children import child_main
from tests.helpers import main_code, read_line, run, shm_entries


@pytest.mark.parametrize("api", ["SharedMemory", "shared_array"])
def test_block_larger_than_shm_raises_and_leaves_nothing(api: str, leakguard_dir: Path) -> None:
    st = os.statvfs("/dev/shm")
    if st.f_blocks == 0:
        pytest.skip("this /dev/shm has no size limit")
    # More than the whole filesystem, so more than is free; tmpfs refuses it without
    # first allocating (and then giving back) every page it has.
    size = st.f_blocks * st.f_frsize + (1 << 20)
    before = shm_entries()
    with child_main(children.huge, env={"LG_API": api, "LG_SIZE": str(size)}) as proc:
        result = json.loads(read_line(proc))
        assert result["error"] == "OutOfSharedMemoryError", result
        assert result["memory"] is True
        assert result["size"] == size
        assert result["available"] is not None
        assert result["available"] < size
        assert "leakguard sweep" in result["message"]
        assert shm_entries() == before

        # The journal says the block was added, then removed: its entry is settled.
        [journal] = leakguard_dir.iterdir()
        contents = parse_journal(journal.read_bytes())
        assert contents.problems == []
        assert len(contents.entries) == 1
        assert contents.live() == []

        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -signal.SIGKILL

    report = leakguard.sweep()
    assert (report.removed, report.gone, report.kept, report.errors) == ([], [], [], [])
    assert report.journals_removed == [str(journal)]
    assert shm_entries() == before


# ---------------------------------------------------------------------------- a really full /dev/shm


LOCATIONS = ["journal-elsewhere", "journal-in-shm", "no-journal-yet"]
KINDS = ["shm", "array", "sem"]


@pytest.fixture(scope="module")
def private_shm() -> None:
    """Skip unless this process may mount a tmpfs over /dev/shm in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private /dev/shm (root and unshare -m needed): {probe.stderr.strip()}")


def _run_in_tiny_shm(location: str, kind: str, leakguard_dir: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(LG_LOCATION=location, LG_KIND=kind)
    # The journal folder inside the tiny /dev/shm (hidden, as leakguard's default is), or
    # on another filesystem.
    env["LEAKGUARD_DIR"] = str(leakguard_dir) if location == "journal-elsewhere" else "/dev/shm/.leakguard"
    return _python_in_tiny_shm(["-c", main_code(children.full)], env, timeout=30)


def _python_in_tiny_shm(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``python -W error ARGS`` with a 2 MiB tmpfs as its /dev/shm; its JSON output."""
    done = run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs -o size=2m,mode=1777 tmpfs /dev/shm && exec "$0" -W error "$@"',
            sys.executable,
            *args,
        ],
        env=env,
        timeout=timeout,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _no_half_made(state: dict[str, Any], *, settled: bool) -> None:
    assert state["unheld"] == [], "an object exists that no one holds"
    assert state["missing"] == []
    assert state["unjournaled"] == [], "an object exists that the journal does not name"
    assert state["problems"] == [], "the journal holds a record that does not validate"
    if settled:
        assert state["stale"] == [], "the journal names an object that is gone"


@pytest.mark.parametrize(
    ("location", "kind"),
    [(loc, k) for loc in LOCATIONS for k in KINDS],
)
@pytest.mark.usefixtures("private_shm")
def test_full_shm_refuses_creation_leaves_nothing_and_recovers(location: str, kind: str, leakguard_dir: Path) -> None:
    result = _run_in_tiny_shm(location, kind, leakguard_dir)

    for r in result.get("fill", []):
        assert r["error"] == "OutOfSharedMemoryError", f"filling /dev/shm with blocks: {r}"
    for r in result.get("fill", []) + result.get("exhaust", []):
        if r["error"]:
            assert r["oom"] is True, r
            assert (r["added"], r["removed"]) == ([], []), r
    if location == "journal-in-shm":
        assert result["exhaust"][-1]["detail"] == "journal folder is full"
    assert result["free_bytes"] == 0, "the tmpfs was not filled"

    for r in result["refusals"]:
        assert r["error"] == "OutOfSharedMemoryError", r
        assert r["memory"] is True
        assert (r["added"], r["removed"]) == ([], []), f"a failed creation changed /dev/shm: {r}"
        if location == "journal-elsewhere":
            assert r["detail"] != "journal folder is full"
        else:
            assert r["detail"] == "journal folder is full", r
    # A journal that shares the full filesystem may keep an entry whose removal record could
    # not be written (docs/design.md: "the sweep settles that without harm").
    _no_half_made(result["full"], settled=location != "journal-in-shm")
    if location == "no-journal-yet":
        assert result["full"]["files"] == [], "a half-made journal was left in the folder"

    assert result["again"] == {"error": None}, "creation still fails after room was made"
    _no_half_made(result["after"], settled=location != "journal-in-shm")
    if location != "journal-in-shm":
        assert result["free_errors"] == []
    if location == "journal-elsewhere":
        assert list(leakguard_dir.iterdir()) == [], "the child's exit left its journal"


@pytest.mark.usefixtures("private_shm")
def test_freeing_while_the_journal_is_full_raises_nothing(leakguard_dir: Path) -> None:
    result = _run_in_tiny_shm("journal-in-shm", "shm", leakguard_dir)
    assert result["again"] == {"error": None}
    assert result["free_errors"] == []


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_a_pool_with_named_blocks_in_a_full_shm_sends_large_arrays_through_its_pipes(
    private_shm: None, leakguard_dir: Path
) -> None:
    env = {**os.environ, "LEAKGUARD_DIR": str(leakguard_dir), "LEAKGUARD_NAMED_BLOCKS": "1"}
    result = _python_in_tiny_shm(["-c", main_code(children.pool_full)], env, timeout=50)
    # Too large for /dev/shm: through the pipe, as plain arrays, with the right data.
    assert result["big_argument"] == ["ndarray", False, float(4 << 20)]
    assert result["big_result"] == ["ndarray", 3 * (4 << 20)]
    # Small enough: through a block, as usual.
    assert result["small_argument"] == ["SharedArray", True, float(256 << 10)]
    assert result["files_after"] == []
    assert list(leakguard_dir.iterdir()) == []


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_a_pool_with_anonymous_blocks_is_not_limited_by_a_full_shm(private_shm: None, leakguard_dir: Path) -> None:
    env = {**os.environ, "LEAKGUARD_DIR": str(leakguard_dir)}
    env.pop("LEAKGUARD_NAMED_BLOCKS", None)
    result = _python_in_tiny_shm(["-c", main_code(children.pool_full)], env, timeout=50)
    # Twice the size of /dev/shm, both ways, through blocks: /dev/shm is not where they live.
    assert result["big_argument"] == ["SharedArray", True, float(4 << 20)]
    assert result["big_result"] == ["SharedArray", 3 * (4 << 20)]
    assert result["small_argument"] == ["SharedArray", True, float(256 << 10)]
    assert result["files_while_running"] == []
    assert result["files_after"] == []
    assert list(leakguard_dir.iterdir()) == []


def test_an_anonymous_block_memory_refuses_raises_at_creation_and_leaves_nothing(leakguard_dir: Path) -> None:
    from leakguard._blocks.shm import anonymous_by_default

    if not anonymous_by_default():
        pytest.skip("no anonymous blocks on this system")
    done = run([sys.executable, "-W", "error", "-c", main_code(children.anonymous_refused)], timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    result = json.loads(done.stdout)
    for r in result["refusals"]:
        assert r["error"] == "OutOfSharedMemoryError", r
        assert r["memory"] is True
        assert r["size"] == 4 << 20
        # The limit named is memory's (here the file size limit stands in for a cgroup's), not /dev/shm's.
        assert r["limit"] == "memory"
        assert "not by the size of /dev/shm" in r["message"], r["message"]
        assert "File too large" in r["message"], r["message"]
        # Nothing left: no descriptor, no memfd, nothing in /dev/shm.
        assert r["fds_same"], r
        assert r["memfds_same"], r
        assert r["shm_same"], r
    assert result["small"] == (1 << 20) // 16
    # Only the block that was made is recorded: the refused ones left no entry.
    assert [kind for kind, _ in result["live"]] == ["memfd"]
