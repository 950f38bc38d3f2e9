"""Every test gets a fresh journal folder, and must leave /dev/shm and the process
table as it found them: checked after each test and once more for the session.

As root, the session runs in a private /dev/shm (tests/private_shm.py): everything
there is the session's, so the checks are exact, and the clean-up after a failed
test may remove whatever the test left. On the machine's own /dev/shm (not root, or
``LEAKGUARD_TEST_REAL_SHM=1``) other programs create and remove objects beside the
suite, so the checks attribute: a new entry fails a test, and is removed after it,
only if the test's journal folder names it or one of the session's processes was
seen holding it. Other new entries are listed at the end of the run and left alone.
Another program's live objects are left out of every listing (tests/helpers.py
``shm_entries``). Temporary files of the session's processes go to a folder removed
at its end.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import leakguard
from stress.observe import held_inodes, marked
from tests import private_shm
from tests.helpers import SHM, descendants, entry_of, leave_out_others_objects, shm_entries, stdlib_helpers, wait_for

_PRIVATE_SHM_PROBLEM = private_shm.enter_for_session()
# multiprocessing's pymp-* folders of killed processes, dask's scratch space: in here.
_SESSION_TMP = tempfile.mkdtemp(prefix="leakguard-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None
# Removed after multiprocessing's own exit finalizers (which remove this process's
# pymp-* folder in here, at priority -100), so theirs never find it gone.
multiprocessing.util.Finalize(
    None, shutil.rmtree, args=(_SESSION_TMP,), kwargs={"ignore_errors": True}, exitpriority=-1000
)

# Every process the session starts carries the marker, wherever it is reparented to.
_MARK = "LEAKGUARD_TEST_RUN"
_TOKEN = secrets.token_hex(8)
os.environ[_MARK] = _TOKEN
if _PRIVATE_SHM_PROBLEM:
    leave_out_others_objects(_MARK, _TOKEN)

# On the machine's /dev/shm: what appeared during a test that nothing ties to it.
_UNATTRIBUTED: list[str] = []


def _marked_processes() -> list[psutil.Process]:
    """Processes started by this session, wherever they were reparented to."""
    return marked(_MARK, _TOKEN, exclude=stdlib_helpers())


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def pytest_report_header() -> str:
    where = f"the machine's ({_PRIVATE_SHM_PROBLEM})" if _PRIVATE_SHM_PROBLEM else "a private tmpfs"
    return f"/dev/shm: {where}; TMPDIR: {_SESSION_TMP}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _UNATTRIBUTED:
        return
    terminalreporter.section("/dev/shm entries not attributed to a test")
    terminalreporter.write_line(
        "These appeared in the machine's /dev/shm during a test, but no journal of the test named\n"
        "them and no process of the session held them: another program's, or a leak no journal\n"
        "recorded. They were neither counted as failures nor removed. Run the suite as root (a\n"
        "private /dev/shm, see tests/private_shm.py) to check them exactly."
    )
    for line in _UNATTRIBUTED[:50]:
        terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session", autouse=True)
def session_leaves_no_trace() -> Iterator[None]:
    before = shm_entries()
    yield
    try:
        wait_for(lambda: shm_entries() == before, timeout=10, what="/dev/shm to be as the session found it")
    except AssertionError:
        added, removed = sorted(shm_entries() - before), sorted(before - shm_entries())
        if not _PRIVATE_SHM_PROBLEM:
            raise AssertionError(f"the test session left /dev/shm changed: added {added}, removed {removed}") from None
        # On the machine's /dev/shm, the per-test checks attributed what could be.
        _UNATTRIBUTED.append(f"at the session's end: added {added[:20]}, removed {removed[:20]}")
    try:
        wait_for(lambda: not _marked_processes(), timeout=10, what="the session's processes to exit")
    except AssertionError:
        left = _marked_processes()
        _kill(left)
        raise AssertionError(f"the test session left processes running: {[p.pid for p in left]}") from None


def _journaled(folder: Path) -> set[str]:
    """The /dev/shm entries that the journals in ``folder`` name, as a dry-run sweep reads them."""
    if not folder.is_dir():
        return set()
    try:
        report = leakguard.sweep(dry_run=True, folder=str(folder))
    except Exception:  # attribution only: the sweep after it reports its own errors
        return set()
    found = set()
    for item in report.removed + report.kept + report.errors + report.dropped + report.gone:
        if item.name and item.kind:
            found.add(entry_of(item.kind, item.name))
    return found


def _held_by(procs: list[psutil.Process]) -> dict[str, int]:
    """The /dev/shm entries ``procs`` map or hold open now -> their inodes."""
    inodes = held_inodes(p.pid for p in procs)
    held = {}
    for name in shm_entries():
        with contextlib.suppress(FileNotFoundError):
            ino = os.lstat(os.path.join(SHM, name)).st_ino
            if ino in inodes:
                held[name] = ino
    return held


@pytest.fixture(autouse=True)
def leakguard_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh LEAKGUARD_DIR per test; afterwards, no new /dev/shm entry and no stray process.

    The clean-up after a failed check removes only what is the test's: what its journal
    folder names (a sweep of that folder) and what its left-over processes held, and in
    the session's private /dev/shm whatever else is new (nothing else can be there).
    """
    folder = tmp_path / "lgdir"
    monkeypatch.setenv("LEAKGUARD_DIR", str(folder))
    before = shm_entries()
    yield folder
    _finish_own_journal()
    problems = []
    held: dict[str, int] = {}
    try:
        wait_for(lambda: not descendants(), timeout=10, what="the test's child processes to exit")
    except AssertionError:
        left = descendants()
        problems.append(f"test left processes running: {[(p.pid, p.cmdline()[:3]) for p in left]}")
        held = _held_by(left)
        _kill(left)

    def new() -> set[str]:
        added = shm_entries() - before
        if added and _PRIVATE_SHM_PROBLEM:  # the machine's /dev/shm: only what is attributed to the test
            added &= _journaled(folder) | set(held)
        return added

    try:
        wait_for(lambda: not new(), timeout=5, what="the test's /dev/shm entries to go")
    except AssertionError:
        added = sorted(new())
        problems.append(f"test left in /dev/shm: {added[:20]}{' ...' if len(added) > 20 else ''}")
        # Clean up all the same, so that one failure does not spill into the next tests:
        # the journal knows what the test's dead processes owned.
        if folder.is_dir():
            with contextlib.suppress(Exception):
                leakguard.sweep(folder=str(folder))
        for entry in new():
            with contextlib.suppress(OSError):
                path = os.path.join(SHM, entry)
                # What a stray process held is removed only if it is still that object.
                if _PRIVATE_SHM_PROBLEM and os.lstat(path).st_ino != held.get(entry):
                    continue
                os.unlink(path)
    if _PRIVATE_SHM_PROBLEM:
        others = sorted(shm_entries() - before)
        if others:
            _UNATTRIBUTED.append(f"{request.node.nodeid}: {others[:20]}")
    if problems:
        pytest.fail("; ".join(problems))


def _finish_own_journal() -> None:
    """This process's journal belongs to the test's folder: close it as a normal exit would."""
    import gc

    from leakguard._journal import owner as _owner

    gc.collect()
    _owner.exit_sequence()


# The quick selection (``pytest -m "not slow"``, the inner loop; CI runs everything): spawn
# covers each pool test's logic, so its fork and forkserver runs are slow; tests that take
# more than about 0.4 s on their own carry ``@pytest.mark.slow`` (or their module a
# ``pytestmark``). ``--durations=0`` finds the ones to mark.
SLOW_START_METHODS = ("fork", "forkserver")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if params.get("blocks") == "named" and params.get("start_method") in SLOW_START_METHODS:
            # Named blocks are the non-default kind (SPEC 2.2): their tests run under spawn,
            # and fork and forkserver run the default, anonymous one. A named block is made
            # and attached by name whatever started the process, so the start method adds
            # nothing there but minutes to CI.
            dropped.append(item)
            continue
        if params.get("start_method") in SLOW_START_METHODS:
            item.add_marker(pytest.mark.slow)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["spawn", "forkserver", "fork"])
def start_method(request: pytest.FixtureRequest) -> str:
    """Every pool test runs under each start method (SPEC 2.1: they pass the same suite)."""
    method: str = request.param
    return method
