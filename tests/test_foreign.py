"""``sweep --foreign`` (SPEC 3): other libraries' idle leftovers go, and nothing else does.

Real processes and the real /dev/shm. These tests remove leftovers for real, so
they run only where /dev/shm holds none of someone else's: a private /dev/shm,
e.g. ``unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /dev/shm && ...'``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from leakguard._foreign import Candidate, ProcessFacts, Unreadable, decide, sweep_foreign
from tests.helpers import SHM, finish, kill_group, python, read_line, shm_entries, wait_for

if TYPE_CHECKING:
    from leakguard.sweep import SweepItem

_FOREIGN = ("psm_", "sem.mp-", "sem.loky-", "joblib_memmapping_folder_")
NOBODY = 65534


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def names(items: Iterable[SweepItem]) -> set[str]:
    return {i.name for i in items if i.name is not None}


def item(items: Iterable[SweepItem], path: str) -> SweepItem:
    found = [i for i in items if i.name == path]
    assert len(found) == 1, f"{path} reported {len(found)} times in {list(items)}"
    return found[0]


class Made:
    """What a test puts in /dev/shm or a temp folder; removed at teardown whatever happened."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def path(self, name: str, where: str | Path = SHM) -> str:
        path = os.path.join(where, name)
        self.paths.append(path)
        return path

    def file(self, name: str, data: bytes = b"x" * 100, where: str | Path = SHM) -> str:
        path = self.path(name, where)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def joblib_folder(self, where: str | Path) -> tuple[str, int]:
        """A folder like joblib's, with a nested file; returns (path, bytes inside)."""
        path = self.path(f"joblib_memmapping_folder_{os.getpid()}_{secrets.token_hex(16)}_0", where)
        os.makedirs(os.path.join(path, "inner"), mode=0o700)
        for name, size in (("a.pkl", 4096), ("inner/b.pkl", 1000)):
            with open(os.path.join(path, name), "wb") as f:
                f.write(b"\0" * size)
        return path, 5096

    def cleanup(self) -> None:
        for path in reversed(self.paths):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)


@pytest.fixture
def made() -> Iterator[Made]:
    """Also refuses to run beside someone else's leftovers: these tests remove such things for real."""
    others = sorted(n for n in shm_entries() if n.startswith(_FOREIGN))
    if others:
        pytest.skip(f"/dev/shm holds other libraries' leftovers {others[:3]}; run these tests in a private /dev/shm")
    m = Made()
    yield m
    m.cleanup()


@pytest.fixture
def temp_dir(made: Made) -> str:
    """A temp folder for joblib folders, on the test's own /dev/shm.

    Not tmp_path: where a process the sweep cannot read sees tmp_path's
    filesystem (a sandbox's init does), the sweep rightly keeps what is there.
    """
    path = made.path(f"lgtest-{secrets.token_hex(4)}")
    os.mkdir(path, 0o700)
    return path


@pytest.fixture
def removable(made: Made) -> None:
    """Skip where the sweep may remove nothing at all (fail closed), saying why."""
    probe = made.file(psm())
    report = sweep_foreign(older_than=0, temp_dirs=[])
    assert os.path.exists(probe), "a dry run removed a file"
    os.unlink(probe)
    if names(report.removed) != {probe}:
        reasons = [i.reason for i in report.kept if i.name == probe]
        pytest.skip(f"nothing can be removed here ({reasons}); run these tests in a private /dev/shm")


def psm() -> str:
    return f"psm_{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------- real jobs

_STDLIB_JOB = """
    import multiprocessing, sys
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=1 << 16)
    lock = multiprocessing.get_context("spawn").Lock()  # starts a resource_tracker in our group
    print("READY", flush=True)
    sys.stdin.read()
    block.close()
    block.unlink()  # the lock is unlinked by its finalizer at exit
"""


def _start_stdlib_job() -> tuple[subprocess.Popen[str], set[str]]:
    before = shm_entries()
    proc = python(_STDLIB_JOB)
    assert read_line(proc) == "READY"
    new = shm_entries() - before
    assert len(new) == 2
    assert len([n for n in new if n.startswith("psm_")]) == 1
    assert len([n for n in new if n.startswith("sem.mp-")]) == 1
    return proc, {os.path.join(SHM, n) for n in new}


@pytest.mark.usefixtures("removable")
def test_killed_stdlib_job_leftovers_are_removed(made: Made) -> None:
    proc, paths = _start_stdlib_job()
    trackers = psutil.Process(proc.pid).children()
    assert len(trackers) == 1  # the resource_tracker, which would unlink them if it survived
    kill_group(proc)
    wait_for(lambda: gone(trackers[0]), what="the resource_tracker to die")
    assert all(os.path.exists(p) for p in paths)  # left behind: nobody will unlink them

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[])

    assert names(report.removed) == paths
    assert {i.state for i in report.removed} == {"foreign"}
    assert {i.kind for i in report.removed} == {"shm", "sem"}
    assert report.bytes_freed >= 1 << 16
    assert not report.errors
    assert not any(os.path.lexists(p) for p in paths)


def test_leftovers_a_live_process_uses_are_kept(made: Made) -> None:
    proc, paths = _start_stdlib_job()
    try:
        report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[])
        assert names(report.kept) == paths
        assert not report.removed
        for path in paths:
            kept = item(report.kept, path)
            assert kept.state == "live"
            assert kept.owner_pid == proc.pid
        # glibc maps a new semaphore under a temporary name ("sem.XXXXXX (deleted)") and closes
        # its fd: only a match by device and inode in /proc/PID/maps finds it.
        (sem,) = (p for p in paths if "/sem.mp-" in p)
        assert item(report.kept, sem).reason == f"in use: pid {proc.pid} maps it"
        assert all(os.path.exists(p) for p in paths)
    finally:
        code, _, err = finish(proc)
    assert code == 0, err
    wait_for(lambda: not any(os.path.lexists(p) for p in paths), what="the owner to unlink its objects")


_HOLD = """
    import ctypes, mmap, os, sys

    path, how = os.environ["HOLD_PATH"], os.environ["HOLD_HOW"]
    if how == "open":
        f = open(path, "rb")
    else:  # a mapping with no fd left open, as native code makes (Python's mmap keeps a dup)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        fd = os.open(path, os.O_RDONLY)
        address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        os.close(fd)
    print("READY", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(("how", "says"), [("open", "holds it open"), ("mapped", "maps it")])
@pytest.mark.usefixtures("removable")
def test_joblib_folder_is_kept_while_a_file_inside_is_used(made: Made, temp_dir: str, how: str, says: str) -> None:
    folder, size = made.joblib_folder(temp_dir)
    proc = python(_HOLD, env={"HOLD_PATH": os.path.join(folder, "a.pkl"), "HOLD_HOW": how})
    try:
        assert read_line(proc) == "READY"
        report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[temp_dir])
        kept = item(report.kept, folder)
        assert (kept.state, kept.reason, kept.owner_pid) == ("live", f"in use: pid {proc.pid} {says}", proc.pid)
        assert not report.removed
        assert os.path.isfile(os.path.join(folder, "a.pkl"))
    finally:
        code, _, err = finish(proc)
    assert code == 0, err

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[temp_dir])  # now idle

    assert names(report.removed) == {folder}
    assert report.bytes_freed == size
    assert not os.path.lexists(folder)


@pytest.mark.usefixtures("removable")
def test_idle_joblib_folder_is_removed_and_symlinks_inside_are_not_followed(
    made: Made, temp_dir: str, tmp_path: Path
) -> None:
    outside = made.file("outside.txt", b"precious", where=tmp_path)
    folder, size = made.joblib_folder(temp_dir)
    os.symlink(outside, os.path.join(folder, "inner", "link"))

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[temp_dir])

    assert names(report.removed) == {folder}
    assert item(report.removed, folder).kind == "folder"
    assert report.bytes_freed == size
    assert not os.path.lexists(folder)
    assert Path(outside).read_bytes() == b"precious"


# ---------------------------------------------------------------------------- what is left alone


@pytest.mark.usefixtures("removable")
def test_dry_run_is_the_default_and_removes_nothing(made: Made, temp_dir: str) -> None:
    block = made.file(psm(), b"x" * 1000)
    sem = made.file(f"sem.mp-{secrets.token_hex(4)}", b"\0" * 32)
    loky = made.file(f"sem.loky-{os.getpid()}-{secrets.token_hex(4)}", b"\0" * 32)
    folder, size = made.joblib_folder(temp_dir)

    report = sweep_foreign(older_than=0, temp_dirs=[temp_dir])

    assert report.dry_run
    assert report.folder == SHM
    assert names(report.removed) == {block, sem, loky, folder}  # what a real run would remove
    assert report.bytes_freed == 1000 + 32 + 32 + size
    assert all(os.path.exists(p) for p in (block, sem, loky, folder))
    assert os.path.getsize(block) == 1000


@pytest.mark.usefixtures("removable")
def test_young_leftovers_are_kept(made: Made) -> None:
    block = made.file(psm())
    an_hour_ago = time.time() - 3600
    os.utime(block, (an_hour_ago, an_hour_ago))  # an old mtime; the ctime stays now: still young

    for report in (
        sweep_foreign(dry_run=False, temp_dirs=[]),  # the default limit: 10 minutes
        sweep_foreign(older_than=1800, dry_run=False, temp_dirs=[]),
    ):
        kept = item(report.kept, block)
        assert kept.state == "young"
        assert kept.age is not None
        assert kept.age < 60
        assert os.path.exists(block)

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[])

    assert names(report.removed) == {block}
    assert not os.path.lexists(block)


def test_symlink_directory_and_fifo_are_left_alone(made: Made, tmp_path: Path) -> None:
    outside = made.file("outside.txt", b"precious", where=tmp_path)
    link = made.path(psm())
    os.symlink(outside, link)
    directory = made.path(psm())
    os.mkdir(directory, 0o700)
    made.file("inside", where=directory)
    fifo = made.path(psm())
    os.mkfifo(fifo, 0o600)  # never opened: opening a FIFO would block the sweep
    (tmp_path / "elsewhere").mkdir()
    real_folder, _ = made.joblib_folder(tmp_path / "elsewhere")
    linked_folder = made.path(f"joblib_memmapping_folder_1_{secrets.token_hex(16)}_0", tmp_path)
    os.symlink(real_folder, linked_folder)

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[str(tmp_path)])

    assert not report.removed
    assert not report.errors
    expected = {
        link: "a symbolic link stands here, not a regular file",
        directory: "a directory stands here, not a regular file",
        fifo: "a FIFO stands here, not a regular file",
        linked_folder: "a symbolic link stands here, not a directory",
    }
    for path, reason in expected.items():
        kept = item(report.kept, path)
        assert kept.state == "refused"
        assert kept.reason.startswith(reason), kept.reason
    assert os.path.islink(link)
    assert Path(outside).read_bytes() == b"precious"
    assert os.path.isfile(os.path.join(directory, "inside"))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.path.isfile(os.path.join(real_folder, "a.pkl"))


def test_another_users_leftovers_are_kept(made: Made, tmp_path: Path) -> None:
    theirs = made.file(psm())
    os.chown(theirs, NOBODY, NOBODY)
    folder, _ = made.joblib_folder(tmp_path)
    os.chown(os.path.join(folder, "inner", "b.pkl"), NOBODY, NOBODY)  # ours, but holding their file

    report = sweep_foreign(older_than=0, dry_run=False, temp_dirs=[str(tmp_path)])

    assert not report.removed
    assert item(report.kept, theirs).reason == f"belongs to uid {NOBODY}; left alone"
    assert item(report.kept, folder).reason.endswith(f"b.pkl belongs to uid {NOBODY}; left alone")
    assert os.path.exists(theirs)
    assert os.path.exists(os.path.join(folder, "inner", "b.pkl"))


# ---------------------------------------------------------------------------- fail closed

_AS_NOBODY = f"""
    import ctypes, json, os, sys

    from leakguard._foreign import sweep_foreign  # imported first: the interpreter lives in /root

    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
    if os.environ["ROLE"] == "idle":
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: even its own user cannot read its maps
        print("READY", flush=True)
        sys.stdin.read()
    else:
        report = sweep_foreign(older_than=0, dry_run=os.environ["ROLE"] == "look", temp_dirs=[])
        print(json.dumps(report.to_dict()))
"""


def _sweep_as_nobody(role: str) -> dict[str, list[dict[str, object]]]:
    code, out, err = finish(python(_AS_NOBODY, env={"ROLE": role}))
    assert code == 0, err
    report: dict[str, list[dict[str, object]]] = json.loads(out)
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as another user")
def test_a_process_that_cannot_be_read_keeps_what_it_could_use(made: Made) -> None:
    theirs = [p.pid for p in psutil.process_iter(["uids"]) if NOBODY in (p.info["uids"] or ())]
    if theirs:
        pytest.skip(f"processes of uid {NOBODY} already run here ({theirs[:3]}): the test needs that uid to itself")
    block = made.file(psm())
    os.chown(block, NOBODY, NOBODY)  # 0600: only its owner's processes could have it
    idle = python(_AS_NOBODY, env={"ROLE": "idle"})
    try:
        assert read_line(idle) == "READY"
        report = _sweep_as_nobody("look")
        (kept,) = (i for i in report["kept"] if i["name"] == block)
        assert kept["state"] == "undecidable"
        assert kept["owner_pid"] == idle.pid
        assert not [i for i in report["removed"] if i["name"] == block]
    finally:
        code, _, err = finish(idle)
    assert code == 0, err

    report = _sweep_as_nobody("remove")  # the unreadable process is gone: nothing stands in the way

    assert [i["name"] for i in report["removed"]] == [block]
    assert not os.path.lexists(block)


def _candidate(*, mode: int = 0o100600) -> Candidate:
    return Candidate("/dev/shm/psm_x", "shm", "regular file", 1000, mode, 1, 0.0, 10, frozenset({(1, 2)}), ())


def _facts(*unreadable: Unreadable, users: dict[tuple[int, int], tuple[int, str]] | None = None) -> ProcessFacts:
    return ProcessFacts(True, users or {}, unreadable, faithful=frozenset({1}))


_HERE = frozenset({1})  # a mount namespace that holds the candidate's filesystem


@pytest.mark.parametrize(
    ("candidate", "procs", "verdict"),
    [
        (_candidate(), _facts(), "remove"),
        (_candidate(), _facts(users={(1, 2): (7, "maps it")}), "keep"),
        (_candidate(), ProcessFacts(False, {}), "keep"),  # no /proc
        (_candidate(), ProcessFacts(True, {}, hidden="hidepid=2"), "keep"),
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), _HERE)), "keep"),  # our uid
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), frozenset({9}))), "remove"),  # cannot reach it
        # ...unless its device numbers cannot be trusted (not on a filesystem known to keep them faithfully)
        (_candidate(), ProcessFacts(True, {}, (Unreadable(7, "agent", frozenset({1000}), frozenset({9})),)), "keep"),
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), None)), "keep"),  # namespace unknown
        (_candidate(), _facts(Unreadable(7, "sshd", frozenset({0}), _HERE)), "remove"),  # no access to a 0600 file
        (_candidate(mode=0o100644), _facts(Unreadable(7, "sshd", frozenset({0}), _HERE)), "keep"),
        (_candidate(), _facts(Unreadable(7, "?", None, _HERE)), "keep"),  # uid unknown
    ],
)
def test_decide_keeps_whatever_it_cannot_rule_out(candidate: Candidate, procs: ProcessFacts, verdict: str) -> None:
    assert decide(candidate, procs, uid=1000, older_than=10, now=100.0).verdict == verdict
    assert decide(candidate, procs, uid=1000, older_than=1000, now=100.0).verdict == "keep"  # young


@pytest.mark.parametrize("older_than", [-1.0, float("nan")])
def test_a_negative_age_limit_is_refused(older_than: float) -> None:
    with pytest.raises(ValueError, match="older_than"):
        sweep_foreign(older_than=older_than, temp_dirs=[])
