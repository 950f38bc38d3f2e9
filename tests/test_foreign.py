"""``sweep --foreign`` (SPEC 3): other libraries' idle leftovers go, and nothing else does.

Real processes and the real /dev/shm. The evidence is the kernel's: a write lease,
granted only while no other process maps the object or holds it open, in any PID
namespace (issue 14); where leases cannot answer, /proc decides, failing closed.
Scenarios that sweep everything of the known patterns (tests/foreign_scenarios.py)
run in a private mount namespace with its own tmpfs on /dev/shm and report the JSON
they print; the others run here, most limited to the names they made (``only=``).
One runs on the /dev/shm the suite was started with, the machine's, where a process
this one may not read (pid 1) sees everything.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from leakguard._sweep import foreign
from leakguard._sweep.foreign import Candidate, ForeignItem, ProcessFacts, Unreadable, decide, sweep_foreign
from leakguard._sweep.journaled import SweepItem, SweepReport, SweepState, Verdict
from tests import foreign_children, private_shm
from tests.foreign_scenarios import joblib_folder, make_file, psm, start_stdlib_job
from tests.helpers import (
    SHM,
    finish,
    kill_group,
    main_code,
    needs_root,
    process_gone,
    python_main,
    read_line,
    run,
    run_main,
    shm_entries,
    wait_for,
)

_FOREIGN = ("psm_", "sem.mp-", "sem.loky-", "joblib_memmapping_folder_")
NOBODY = 65534
ROOT = Path(__file__).resolve().parent.parent
Scenario = Callable[..., dict[str, Any]]


def names(items: Iterable[SweepItem]) -> set[str]:
    return {i.name for i in items if i.name is not None}


def item(items: Iterable[SweepItem], path: str) -> ForeignItem:
    found = [i for i in items if i.name == path]
    assert len(found) == 1, f"{path} reported {len(found)} times in {list(items)}"
    assert isinstance(found[0], ForeignItem)
    return found[0]


def report_of(data: dict[str, Any]) -> SweepReport:
    """The report a scenario printed (``SweepReport.to_dict()``), rebuilt."""
    lists = ("removed", "kept", "dropped", "gone", "errors", "skipped")
    return SweepReport(**{**data, **{k: [ForeignItem(**i) for i in data[k]] for k in lists}})


class Made:
    """What a test puts in /dev/shm or a temp folder; removed at teardown whatever happened."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def path(self, name: str, where: str | Path = SHM) -> str:
        path = os.path.join(where, name)
        self.paths.append(path)
        return path

    def file(self, name: str, data: bytes = b"x" * 100, where: str | Path = SHM) -> str:
        return make_file(self.path(name, where), data)

    def joblib_folder(self, where: str | Path) -> tuple[str, int]:
        """A folder like joblib's, with a nested file; returns (path, bytes inside)."""
        path, size = joblib_folder(str(where))
        self.paths.append(path)
        return path, size

    def cleanup(self) -> None:
        for path in reversed(self.paths):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)


@pytest.fixture
def made() -> Iterator[Made]:
    """Refuses to run beside someone else's leftovers: a real sweep here could remove them."""
    others = sorted(n for n in shm_entries() if n.startswith(_FOREIGN))
    if others:
        pytest.skip(f"/dev/shm holds other libraries' leftovers {others[:3]}; run these tests in a private /dev/shm")
    m = Made()
    yield m
    m.cleanup()


# ---------------------------------------------------------------------------- in a private /dev/shm


@pytest.fixture
def in_private_shm() -> Scenario:
    """Runs a scenario of tests/foreign_scenarios.py in a private /dev/shm; returns what it printed."""
    why = "removal can only be tested in a private /dev/shm"

    def run(name: str, *args: str) -> dict[str, Any]:
        return private_shm.scenario("tests.foreign_scenarios", name, *args, why=why, timeout=60)

    return run


def test_killed_stdlib_job_leftovers_are_removed(in_private_shm: Scenario) -> None:
    result = in_private_shm("killed_stdlib_job")  # the job and its resource_tracker SIGKILLed as a group
    paths = set(result["paths"])
    assert paths <= set(result["before"])  # left behind: nobody will unlink them
    report = report_of(result["report"])

    assert names(report.removed) == paths
    assert {i.state for i in report.removed} == {"foreign"}
    assert {i.kind for i in report.removed} == {"shm", "sem"}
    assert {item(report.removed, p).evidence for p in paths} == {"lease"}
    assert report.bytes_freed >= 1 << 16
    assert not report.errors
    assert result["after"] == []


LEASE_REFUSED = "in use: it is mapped or held open by another process (the kernel refused a write lease)"


def test_leftovers_a_live_process_uses_are_kept(made: Made) -> None:
    proc, paths = start_stdlib_job()
    try:
        report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[])
        assert names(report.kept) == paths
        assert not report.removed
        # glibc maps a new semaphore under a temporary name ("sem.XXXXXX (deleted)") and closes
        # its fd: the lease sees the mapping, whatever its path.
        for path in paths:
            kept = item(report.kept, path)
            assert (kept.state, kept.evidence, kept.reason) == ("live", "lease", LEASE_REFUSED)
            assert kept.owner_pid is None  # the kernel says that someone holds it, not who
        assert all(os.path.exists(p) for p in paths)
    finally:
        code, _, err = finish(proc)
    assert code == 0, err
    wait_for(lambda: not any(os.path.lexists(p) for p in paths), what="the owner to unlink its objects")


def test_the_lease_path_reads_no_process_s_proc(made: Made, monkeypatch: pytest.MonkeyPatch) -> None:
    def no(*args: object) -> None:
        raise AssertionError("the lease path read /proc")

    monkeypatch.setattr(foreign, "_scan_processes", no)
    monkeypatch.setattr(foreign, "_unreadable", no)
    idle = made.file(psm())
    proc, paths = start_stdlib_job()
    try:
        only = {os.path.basename(p) for p in {idle, *paths}}
        report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[], only=only)
        assert names(report.kept) == paths
        assert (names(report.removed), item(report.removed, idle).evidence) == ({idle}, "lease")
        assert not os.path.lexists(idle)
    finally:
        code, _, err = finish(proc)
    assert code == 0, err


@pytest.mark.parametrize("leases", ["on", "off"])
@pytest.mark.parametrize(("how", "says"), [("open", "holds it open"), ("mapped", "maps it")])
def test_joblib_folder_is_kept_while_a_file_inside_is_used(
    in_private_shm: Scenario, how: str, says: str, leases: str
) -> None:
    result = in_private_shm("joblib_folder_in_use", how, leases)
    folder, holder = result["folder"], result["holder"]
    assert os.path.join(folder, "inner", "b.pkl") in result["before"]
    in_use = report_of(result["in_use"])
    kept = item(in_use.kept, folder)
    if leases == "on":  # each file of the folder is leased: a.pkl granted, inner/b.pkl refused
        held = os.path.join(folder, "inner", "b.pkl")
        expected = ("live", f"in use: {held} is mapped or held open by another process", None, "lease")
        assert (kept.state, kept.reason.split(" (")[0], kept.owner_pid, kept.evidence) == expected
    else:
        assert kept.reason.startswith(f"in use: pid {holder} {says} (no lease: leases are disabled")
        assert (kept.state, kept.owner_pid, kept.evidence) == ("live", holder, "proc")
    assert not in_use.removed
    assert result["during"] == result["before"]  # a.pkl too: nothing of the folder goes

    idle = report_of(result["idle"])  # the holder has exited

    assert names(idle.removed) == {folder}
    assert item(idle.removed, folder).evidence == ("lease" if leases == "on" else "proc")
    assert idle.bytes_freed == result["size"]
    assert not [p for p in result["after"] if p.startswith(folder)]
    assert result["after"] == [os.path.dirname(folder)]  # the temp folder, now empty


def test_idle_joblib_folder_is_removed_and_symlinks_inside_are_not_followed(
    in_private_shm: Scenario, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")

    result = in_private_shm("idle_joblib_folder", str(outside))

    folder = result["folder"]
    assert os.path.join(folder, "inner", "link") in result["before"]
    report = report_of(result["report"])
    assert names(report.removed) == {folder}
    assert (item(report.removed, folder).kind, item(report.removed, folder).evidence) == ("folder", "lease")
    assert report.bytes_freed == result["size"]
    assert result["after"] == [os.path.dirname(folder)]
    assert outside.read_bytes() == b"precious"


# ---------------------------------------------------------------------------- the kernel's evidence


@functools.cache
def _no_pid_namespace() -> str:
    """Why no sweep can run in a PID namespace of its own here, or ""."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = run(["unshare", "--pid", "--fork", "--mount-proc", "true"], env=dict(os.environ), timeout=30)
    return f"unshare --pid --mount-proc: {probe.stderr.strip()}" if probe.returncode else ""


def _ask(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_holder_in_another_pid_namespace_keeps_its_objects(made: Made) -> None:
    # The reproducer of issue 14: the sweep runs where /proc cannot see the holder (a
    # container sharing /dev/shm with the host); /proc's evidence removed both objects.
    if _no_pid_namespace():
        pytest.skip(_no_pid_namespace())
    block = psm()
    holder = python_main(foreign_children.holder, "", block, "1")
    try:
        held = json.loads(read_line(holder))
        paths = {os.path.join(SHM, held["block"]), os.path.join(SHM, held["sem"])}
        sweep = [sys.executable, "-W", "error", "-m", "leakguard", "sweep", "--foreign", "--older-than", "0", "--yes"]
        done = run(["unshare", "--pid", "--fork", "--mount-proc", *sweep, "--json"], env=dict(os.environ), timeout=60)
        assert done.returncode == 0, done.stderr
        report = report_of(json.loads(done.stdout))
        assert names(report.kept) == paths
        assert not report.removed
        for path in paths:
            kept = item(report.kept, path)
            assert (kept.state, kept.evidence, kept.reason) == ("live", "lease", LEASE_REFUSED)
        _ask(holder, "attach")
        assert json.loads(read_line(holder)) == {"block": block, "sem": "attached"}
    finally:
        code, _, err = _end(holder)
    assert code == 0, err


def _end(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """``finish``, unless a failed read already killed and reaped it."""
    return finish(proc) if proc.returncode is None else (proc.returncode, "", "")


def _child(enter: list[str], main: Callable[..., object], *args: str, env: dict[str, str] | None = None) -> Any:
    """``python_main`` in the mount namespace ``enter`` leads to (none: this one)."""
    return subprocess.Popen(
        [*enter, sys.executable, "-W", "error", "-c", main_code(main), *args],
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as another user")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["private", "machine"])
def test_a_non_dumpable_holder_keeps_its_block_and_a_dead_groups_leftovers_go(made: Made, where: str) -> None:
    # As ssh-agent does, the holder forbids even its own user to read its /proc/PID/maps:
    # /proc's evidence kept everything. "machine": on the /dev/shm the suite was started
    # with, which pid 1, unreadable, sees too. Only what this test made is swept (``only``).
    enter, shm = private_shm.machine_shm() if where == "machine" else ([], SHM)
    block = psm()
    made_here = [os.path.join(shm, block)]
    holder = _child(enter, foreign_children.holder, str(NOBODY), block, "0")
    job = _child(enter, foreign_children.stdlib_job, str(NOBODY))
    try:
        held = json.loads(read_line(holder))
        dead = json.loads(read_line(job))
        entries = [held["block"], held["sem"], dead["block"], dead["sem"]]
        made_here += [os.path.join(shm, e) for e in entries[1:]]
        assert all(os.path.exists(os.path.join(shm, e)) for e in entries)
        tracker = psutil.Process(job.pid).children()  # it would unlink the job's objects if it lived
        kill_group(job)
        wait_for(lambda: all(process_gone(t) for t in tracker), what="the job's resource_tracker to die")
        env = {"ROLE": "remove", "ONLY": ",".join(entries)}
        sweep = _child(enter, foreign_children.as_nobody, str(NOBODY), env=env)
        code, out, err = finish(sweep)
        assert code == 0, err
        report = report_of(json.loads(out))

        assert names(report.kept) == {os.path.join(SHM, e) for e in entries[:2]}
        assert names(report.removed) == {os.path.join(SHM, e) for e in entries[2:]}
        assert {i.evidence for i in report.kept + report.removed} == {"lease"}  # type: ignore[attr-defined]
        assert [os.path.exists(os.path.join(shm, e)) for e in entries] == [True, True, False, False]
        _ask(holder, "attach")
        assert json.loads(read_line(holder)) == {"block": block, "sem": "attached"}
    finally:
        code, _, err = _end(holder)
        if job.returncode is None:
            kill_group(job)
        for path in made_here:  # only what this test made, whatever happened
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    assert code == 0, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["main", "thread"])
@pytest.mark.parametrize("moment", ["granted", "unlink"])
def test_an_open_during_the_lease_neither_kills_the_sweep_nor_waits(moment: str, where: str) -> None:
    # The kernel signals a lease's owner when another process opens the file (SIGIO
    # unless told otherwise, which ends a process) and makes that open wait for the
    # lease, up to lease-break-time (45 s). "granted": the open comes as the lease is
    # granted, before the sweep has silenced the signal; "unlink": as it unlinks.
    done = run_main(foreign_children.opened_under_the_lease, moment, where, timeout=50)
    assert done.returncode == 0, f"the sweeping process ended with {done.returncode}: {done.stderr}"
    result = json.loads(done.stdout.splitlines()[-1])
    report = report_of(result["report"])
    got, waited, whole = result["opener"].split()
    assert (got, whole) == ("opened", "True")  # the object, intact
    assert float(waited) < 2.0
    if moment == "granted":  # the open broke the lease before the unlink: kept
        kept = item(report.kept, result["path"])
        reason = "in use: it was opened by another process while the sweep held its lease"
        assert (kept.state, kept.evidence, kept.reason) == ("live", "lease", reason)
        assert result["left"]
    else:  # opened as it was unlinked: the opener has it, its name is gone
        assert (names(report.removed), item(report.removed, result["path"]).evidence) == ({result["path"]}, "lease")
        assert not result["left"]


NO_LEASE = "(no lease: leases are disabled (/proc/sys/fs/leases-enable) or this filesystem has none)"


@pytest.mark.slow
def test_where_leases_are_unavailable_proc_decides_and_says_so(in_private_shm: Scenario) -> None:
    result = in_private_shm("leases_disabled")  # F_SETLEASE fails with EINVAL there
    dead, live, holder = set(result["dead"]), set(result["live"]), result["holder"]
    report = report_of(result["report"])

    assert names(report.removed) == dead
    assert names(report.kept) == live
    for path in dead:
        removed = item(report.removed, path)
        assert (removed.evidence, removed.reason.split(";")[0]) == ("proc", "no process maps it or holds it open")
        assert removed.reason.endswith(NO_LEASE)
    for path in live:
        kept = item(report.kept, path)
        assert (kept.state, kept.evidence, kept.owner_pid) == ("live", "proc", holder)
    # glibc maps a new semaphore under a temporary name: /proc's maps match it by device and inode.
    (sem,) = (p for p in live if "/sem.mp-" in p)
    assert item(report.kept, sem).reason == f"in use: pid {holder} maps it {NO_LEASE}"
    assert sorted(result["after"]) == sorted(live)


RACE_ROUNDS = 150


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_opener_racing_the_sweep_gets_the_object_whole_or_finds_it_gone(made: Made) -> None:
    sweeper = python_main(foreign_children.race_sweeper)
    opener = python_main(foreign_children.race_opener)
    reasons: set[str] = set()
    opens = 0
    try:
        assert read_line(sweeper) == "READY"
        assert read_line(opener) == "READY"
        for _ in range(RACE_ROUNDS):
            name = psm()
            path = made.file(name, name.encode() * (foreign_children.PAGE // len(name)))
            _ask(sweeper, name)
            _ask(opener, path)
            swept = json.loads(read_line(sweeper, timeout=20))
            opened = json.loads(read_line(opener, timeout=20))
            assert swept["removed"] == "lease", swept
            assert opened["broken"] == 0, opened  # whatever it opened was whole
            assert opened["longest"] < 2.0, opened  # never the 45 s of a lease break
            assert not os.path.lexists(path)
            reasons.update(swept["kept"])
            opens += opened["whole"]
    finally:
        results = [_end(sweeper), _end(opener)]
    assert [code for code, _, _ in results] == [0, 0], results
    assert all(r.startswith("in use: ") for r in reasons), reasons
    assert opens > 0


# ---------------------------------------------------------------------------- what is left alone


def test_a_dry_run_removes_nothing(in_private_shm: Scenario) -> None:
    result = in_private_shm("dry_run")  # psm_, sem.mp-, sem.loky- and a joblib folder, all idle
    paths = result["paths"]
    assert set(paths.values()) <= set(result["before"])
    report = report_of(result["report"])

    assert report.dry_run
    assert report.folder == SHM
    assert names(report.removed) == set(paths.values())  # what a real run would remove
    assert report.bytes_freed == 1000 + 32 + 32 + result["size"]
    assert result["after"] == result["before"]
    assert result["block_size"] == 1000


def test_sweep_foreign_removes_unless_told_dry_run_as_sweep_does(in_private_shm: Scenario) -> None:
    result = in_private_shm("by_default")  # an idle psm_ block; sweep_foreign() without dry_run

    report = report_of(result["report"])

    assert not report.dry_run
    assert names(report.removed) == {result["block"]}
    assert result["after"] == []


def test_only_the_names_given_are_considered(in_private_shm: Scenario) -> None:
    result = in_private_shm("only_named")  # two idle psm_ blocks; the sweep is given one name

    report = report_of(result["report"])

    assert names(report.removed) == {result["mine"]}
    assert not report.kept
    assert result["after"] == [result["other"]]


def test_young_leftovers_are_kept(in_private_shm: Scenario) -> None:
    result = in_private_shm("young")  # an old mtime; the ctime stays now: still young
    block = result["block"]
    for data in result["kept"]:  # the default limit (10 minutes), then 30 minutes
        kept = item(report_of(data).kept, block)
        assert kept.state == "young"
        assert kept.age is not None
        assert kept.age < 60
    assert block in result["before"]

    report = report_of(result["report"])  # no age limit

    assert names(report.removed) == {block}
    assert result["after"] == []


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

    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[str(tmp_path)])

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


def test_a_socket_is_named_as_such_and_left_alone(tmp_path: Path) -> None:
    # One describer of file types for both sweeps (_os/ipc.describe_mode), not a second table.
    path = tmp_path / "psm_sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        report = sweep_foreign(older_than=0, dry_run=False, shm_folder=str(tmp_path), temp_folders=[])
    (kept,) = report.kept
    assert (kept.name, kept.state) == (str(path), SweepState.REFUSED)
    assert kept.reason == "a socket stands here, not a regular file; left alone"
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_the_old_keyword_names_still_work_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        report = sweep_foreign(older_than=0, dry_run=True, shm_dir=str(tmp_path), temp_dirs=[])
    assert [str(w.message).split(";")[0] for w in caught] == ["shm_dir= is deprecated", "temp_dirs= is deprecated"]
    assert report.folder == str(tmp_path)


@needs_root
def test_another_users_leftovers_are_kept(made: Made, tmp_path: Path) -> None:
    theirs = made.file(psm())
    os.chown(theirs, NOBODY, NOBODY)
    folder, _ = made.joblib_folder(tmp_path)
    os.chown(os.path.join(folder, "inner", "b.pkl"), NOBODY, NOBODY)  # ours, but holding their file

    report = sweep_foreign(older_than=0, dry_run=False, temp_folders=[str(tmp_path)])

    assert not report.removed
    assert item(report.kept, theirs).reason == f"belongs to uid {NOBODY}; left alone"
    assert item(report.kept, folder).reason.endswith(f"b.pkl belongs to uid {NOBODY}; left alone")
    assert os.path.exists(theirs)
    assert os.path.exists(os.path.join(folder, "inner", "b.pkl"))


# ---------------------------------------------------------------------------- fail closed


def _sweep_as_nobody(role: str, leases: str = "on") -> dict[str, list[dict[str, object]]]:
    env = {"ROLE": role, "LEASES": leases}
    code, out, err = finish(python_main(foreign_children.as_nobody, str(NOBODY), env=env))
    assert code == 0, err
    report: dict[str, list[dict[str, object]]] = json.loads(out)
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as another user")
@pytest.mark.slow
def test_a_process_that_cannot_be_read_keeps_what_it_could_use_only_where_there_are_no_leases(made: Made) -> None:
    theirs = [p.pid for p in psutil.process_iter(["uids"]) if NOBODY in (p.info["uids"] or ())]
    if theirs:
        pytest.skip(f"processes of uid {NOBODY} already run here ({theirs[:3]}): the test needs that uid to itself")
    block = made.file(psm())
    os.chown(block, NOBODY, NOBODY)  # 0600: only its owner's processes could have it
    idle = python_main(foreign_children.as_nobody, str(NOBODY), env={"ROLE": "idle"})
    try:
        assert read_line(idle) == "READY"
        # The kernel knows that the process we may not read does not hold the block.
        report = _sweep_as_nobody("look")
        (would,) = (i for i in report["removed"] if i["name"] == block)
        assert (would["state"], would["evidence"]) == ("foreign", "lease")
        # Without leases, the process we may not read could hold it: kept (fail closed).
        report = _sweep_as_nobody("look", leases="off")
        (kept,) = (i for i in report["kept"] if i["name"] == block)
        assert (kept["state"], kept["evidence"]) == ("undecidable", "proc")
        assert kept["owner_pid"] == idle.pid
        assert not [i for i in report["removed"] if i["name"] == block]
    finally:
        code, _, err = finish(idle)
    assert code == 0, err

    report = _sweep_as_nobody("remove", leases="off")  # the unreadable process is gone: nothing stands in the way

    assert [(i["name"], i["evidence"]) for i in report["removed"]] == [(block, "proc")]
    assert not os.path.lexists(block)


def _candidate(*, mode: int = 0o100600) -> Candidate:
    return Candidate("/dev/shm/psm_x", "shm", "regular file", 1000, mode, 1, 0.0, 10, frozenset({(1, 2)}), ())


def _facts(*unreadable: Unreadable, users: dict[tuple[int, int], tuple[int, str]] | None = None) -> ProcessFacts:
    return ProcessFacts(True, users or {}, unreadable, faithful=frozenset({1}))


_HERE = frozenset({1})  # a mount namespace that holds the candidate's filesystem
REMOVE, KEEP = Verdict.REMOVE, Verdict.KEEP


@pytest.mark.parametrize(
    ("candidate", "procs", "verdict"),
    [
        (_candidate(), _facts(), REMOVE),
        (_candidate(), _facts(users={(1, 2): (7, "maps it")}), KEEP),
        (_candidate(), ProcessFacts(False, {}), KEEP),  # no /proc
        (_candidate(), ProcessFacts(True, {}, hidden="hidepid=2"), KEEP),
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), _HERE)), KEEP),  # our uid
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), frozenset({9}))), REMOVE),  # cannot reach it
        # ...unless its device numbers cannot be trusted (not on a filesystem known to keep them faithfully)
        (_candidate(), ProcessFacts(True, {}, (Unreadable(7, "agent", frozenset({1000}), frozenset({9})),)), KEEP),
        (_candidate(), _facts(Unreadable(7, "agent", frozenset({1000}), None)), KEEP),  # namespace unknown
        (_candidate(), _facts(Unreadable(7, "sshd", frozenset({0}), _HERE)), REMOVE),  # no access to a 0600 file
        (_candidate(mode=0o100644), _facts(Unreadable(7, "sshd", frozenset({0}), _HERE)), KEEP),
        (_candidate(), _facts(Unreadable(7, "?", None, _HERE)), KEEP),  # uid unknown
    ],
)
def test_decide_keeps_whatever_it_cannot_rule_out(candidate: Candidate, procs: ProcessFacts, verdict: Verdict) -> None:
    assert decide(candidate, procs, uid=1000, older_than=10, now=100.0).verdict is verdict
    assert decide(candidate, procs, uid=1000, older_than=1000, now=100.0).verdict is KEEP  # young


@pytest.mark.parametrize("older_than", [-1.0, float("nan")])
def test_a_negative_age_limit_is_refused(older_than: float) -> None:
    with pytest.raises(ValueError, match="older_than"):
        sweep_foreign(older_than=older_than, temp_folders=[])
