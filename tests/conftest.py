"""Every test gets a fresh journal folder, and must leave /dev/shm and the process
table as it found them: checked after each test and once more for the session.

As root, the session runs in a private /dev/shm (tests/private_shm.py), so that
other programs on the machine neither fail these checks nor are touched by them;
temporary files of the session's processes go to a folder removed at its end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import leakguard
from tests import private_shm
from tests.helpers import descendants, shm_entries, stdlib_helpers, wait_for

_PRIVATE_SHM_PROBLEM = private_shm.enter_for_session()
# multiprocessing's pymp-* folders of killed processes, dask's scratch space: in here.
_SESSION_TMP = tempfile.mkdtemp(prefix="leakguard-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None

_MARK = "LEAKGUARD_TEST_RUN"


def _marked_processes(token: str) -> list[psutil.Process]:
    """Processes started by this test run, wherever they were reparented to."""
    found = []
    me = os.getpid()
    helpers = stdlib_helpers()
    for proc in psutil.process_iter():
        if proc.pid == me or proc.pid in helpers:
            continue
        try:
            if proc.environ().get(_MARK) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def pytest_report_header() -> str:
    where = f"the machine's ({_PRIVATE_SHM_PROBLEM})" if _PRIVATE_SHM_PROBLEM else "a private tmpfs"
    return f"/dev/shm: {where}; TMPDIR: {_SESSION_TMP}"


def pytest_unconfigure() -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def session_leaves_no_trace() -> Iterator[None]:
    token = secrets.token_hex(8)
    os.environ[_MARK] = token
    before = shm_entries()
    yield
    try:
        wait_for(lambda: shm_entries() == before, timeout=10, what="/dev/shm to be as the session found it")
    except AssertionError:
        raise AssertionError(
            f"the test session left /dev/shm changed: added {sorted(shm_entries() - before)}, "
            f"removed {sorted(before - shm_entries())}"
        ) from None
    try:
        wait_for(lambda: not _marked_processes(token), timeout=10, what="the session's processes to exit")
    except AssertionError:
        left = _marked_processes(token)
        _kill(left)
        raise AssertionError(f"the test session left processes running: {[p.pid for p in left]}") from None


@pytest.fixture(autouse=True)
def leakguard_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh LEAKGUARD_DIR per test; afterwards, no new /dev/shm entry and no stray process."""
    folder = tmp_path / "lgdir"
    monkeypatch.setenv("LEAKGUARD_DIR", str(folder))
    before = shm_entries()
    yield folder
    _finish_own_journal()
    problems = []
    try:
        wait_for(lambda: not descendants(), timeout=10, what="the test's child processes to exit")
    except AssertionError:
        left = descendants()
        problems.append(f"test left processes running: {[(p.pid, p.cmdline()[:3]) for p in left]}")
        _kill(left)
    try:
        wait_for(lambda: not (shm_entries() - before), timeout=5, what="the test's /dev/shm entries to go")
    except AssertionError:
        added = sorted(shm_entries() - before)
        problems.append(f"test left in /dev/shm: {added[:20]}{' ...' if len(added) > 20 else ''}")
        # Clean up all the same, so that one failure does not spill into the next tests:
        # the journal knows what the test's dead processes owned; anything else goes by name.
        if folder.is_dir():
            with contextlib.suppress(Exception):
                leakguard.sweep(directory=str(folder))
        for entry in shm_entries() - before:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", entry))
    if problems:
        pytest.fail("; ".join(problems))


def _finish_own_journal() -> None:
    """This process's journal belongs to the test's folder: close it as a normal exit would."""
    import gc

    from leakguard import _owner

    gc.collect()
    _owner.exit_sequence()


@pytest.fixture(params=["spawn", "forkserver", "fork"])
def start_method(request: pytest.FixtureRequest) -> str:
    """Every pool test runs under each start method (SPEC 2.1: they pass the same suite)."""
    method: str = request.param
    return method
