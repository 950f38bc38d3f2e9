"""``leakguard sweep --foreign``: what other libraries leave in /dev/shm (SPEC 3).

``psm_*`` and ``sem.mp-*`` (the standard library), ``sem.loky-*`` (loky) and
``joblib_memmapping_folder_*`` (joblib; in /dev/shm or the temp folder) have no
journal, so nothing says who owns them. One goes only when it is this user's
regular file (a folder: a real directory of this user's entries on one
filesystem; symlinks are never followed), nothing in it changed for
``older_than`` seconds, no process maps it, holds it open or works in it
(matched by device and inode, never by path: glibc maps a new semaphore as
``/dev/shm/sem.XXXXXX (deleted)``), and no process that could use it is hidden
from us (fail closed). Gathering (``_look``, ``_scan_processes``), judging
(``decide``, pure) and acting (``_remove``) are kept apart, as in journaled.py.
Without /proc (macOS) nothing can be decided: everything is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from leakguard._os.ipc import describe_mode

from .journaled import SweepItem, SweepReport, SweepState, Verdict, warn_renamed

__all__ = ["Candidate", "Decision", "ProcessFacts", "Unreadable", "decide", "sweep_foreign"]

_JOBLIB = "joblib_memmapping_folder_"
_IN_SHM = (("psm_", "shm"), ("sem.mp-", "sem"), ("sem.loky-", "sem"), (_JOBLIB, "folder"))
_IN_TEMP = ((_JOBLIB, "folder"),)
# Filesystems whose device number in /proc/PID/maps and mountinfo is the one
# stat() shows. Elsewhere (overlayfs maps show the layer's device, btrfs the
# volume's, not the subvolume's) a mapping is matched by inode alone, which errs
# towards keeping; open fds (Python's mmap keeps one) are matched exactly anyway.
_FAITHFUL_FS = frozenset({"tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs"})

Key = tuple[int, int]  # (st_dev, st_ino)
Use = tuple[int, str]  # (pid, how it uses the object)


@dataclass(frozen=True)
class Candidate:
    """What lstat shows of one leftover (a folder: and of everything inside it)."""

    path: str
    kind: str  # shm, sem or folder
    found: str  # the file type at the path: "regular file", "directory", "symbolic link", ...
    uid: int
    mode: int
    dev: int
    changed: float  # newest mtime/ctime of the object and everything inside it
    size: int
    keys: frozenset[Key]  # the object's (dev, ino) and, for a folder, those of its contents
    stamp: tuple[int, ...]  # re-checked right before removal
    problem: str = ""  # found inside a folder: a reason to leave it alone


@dataclass(frozen=True)
class Unreadable:
    """A process whose maps or open files we may not read."""

    pid: int
    name: str
    uids: frozenset[int] | None  # real, effective, saved, fs; None: unknown
    devices: frozenset[int] | None  # the filesystems its mount namespace holds; None: unknown


@dataclass(frozen=True)
class ProcessFacts:
    """What /proc shows about the candidates, gathered once per sweep."""

    available: bool  # False: no /proc to ask
    users: dict[Key, Use]  # (dev, ino) -> one process that uses it
    unreadable: tuple[Unreadable, ...] = ()
    hidden: str = ""  # why /proc may hide processes from us (hidepid), else ""
    faithful: frozenset[int] = frozenset()  # devices on _FAITHFUL_FS


class Decision(NamedTuple):
    verdict: Verdict  # REMOVE or KEEP
    state: SweepState  # FOREIGN, LIVE, YOUNG, UNDECIDABLE or REFUSED
    reason: str
    pid: int | None = None


def decide(c: Candidate, procs: ProcessFacts, *, uid: int, older_than: float, now: float) -> Decision:
    """Remove or keep one candidate, from gathered facts only."""
    expected = "directory" if c.kind == "folder" else "regular file"
    if c.found != expected:
        return Decision(Verdict.KEEP, SweepState.REFUSED, f"a {c.found} stands here, not a {expected}; left alone")
    if c.uid != uid:
        return Decision(Verdict.KEEP, SweepState.REFUSED, f"belongs to uid {c.uid}; left alone")
    if c.problem:
        return Decision(Verdict.KEEP, SweepState.REFUSED, c.problem)
    using = sorted(procs.users[k] for k in c.keys if k in procs.users)
    if using:
        return Decision(Verdict.KEEP, SweepState.LIVE, f"in use: pid {using[0][0]} {using[0][1]}", using[0][0])
    age = now - c.changed
    if age < older_than:
        return Decision(Verdict.KEEP, SweepState.YOUNG, f"changed {age:.0f} s ago, within the {older_than:g} s limit")
    if not procs.available:
        return Decision(
            Verdict.KEEP, SweepState.UNDECIDABLE, "no /proc to tell whether a process uses it; kept (fail closed)"
        )
    if procs.hidden:
        return Decision(Verdict.KEEP, SweepState.UNDECIDABLE, f"{procs.hidden}; kept (fail closed)")
    # A process we cannot look into could use it if its credentials let it open it
    # (our uid, or group/other bits) and its mount namespace holds the filesystem.
    # Root could open anything, but a non-root sweep can read no root process:
    # counting them would keep everything, and our 0600 files reach another uid
    # only by root's deliberate act.
    shared = stat.S_IMODE(c.mode) & 0o077
    for p in procs.unreadable:
        allowed = p.uids is None or c.uid in p.uids or shared
        reaches = p.devices is None or c.dev in p.devices or c.dev not in procs.faithful
        if allowed and reaches:
            why = f"pid {p.pid} ({p.name}) could use it, but its maps and open files cannot be read; kept (fail closed)"
            return Decision(Verdict.KEEP, SweepState.UNDECIDABLE, why, p.pid)
    return Decision(
        Verdict.REMOVE, SweepState.FOREIGN, f"no process maps it or holds it open; unchanged for {age:.0f} s"
    )


# ---------------------------------------------------------------------------- gathering


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ctime_ns)


def _look(path: str, kind: str, uid: int) -> Candidate | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # removed meanwhile
    c = Candidate(
        path,
        kind,
        describe_mode(st.st_mode),
        st.st_uid,
        st.st_mode,
        st.st_dev,
        max(st.st_mtime, st.st_ctime),
        st.st_size if stat.S_ISREG(st.st_mode) else 0,
        frozenset({(st.st_dev, st.st_ino)}),
        _stamp(st),
    )
    if kind == "folder" and stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
        return _look_inside(c, uid)
    return c


def _look_inside(c: Candidate, uid: int) -> Candidate:
    keys, changed, size, todo = set(c.keys), c.changed, 0, [c.path]
    try:
        while todo:
            with os.scandir(todo.pop()) as listing:
                for entry in listing:
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev != c.dev:
                        return dataclasses.replace(c, problem=f"{entry.path} is on another filesystem; left alone")
                    if st.st_uid != uid:
                        return dataclasses.replace(c, problem=f"{entry.path} belongs to uid {st.st_uid}; left alone")
                    keys.add((st.st_dev, st.st_ino))
                    changed = max(changed, st.st_mtime, st.st_ctime)
                    if stat.S_ISREG(st.st_mode):
                        size += st.st_size
                    elif stat.S_ISDIR(st.st_mode):
                        todo.append(entry.path)
    except OSError as exc:
        return dataclasses.replace(c, problem=f"cannot look inside ({exc.strerror}); left alone")
    return dataclasses.replace(c, keys=frozenset(keys), changed=changed, size=size)


def _mounts(pid: int | str) -> list[tuple[int, str, str, str]]:
    """(device, filesystem type, mount point, options) of each mount the process sees."""
    mounts = []
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:  # proc(5): id parent major:minor root point options [tags] - type source super-options
            left, _, right = line.partition(" - ")
            fields, (fstype, _, options) = left.split(), right.split()[:3]
            major, minor = fields[2].split(":")
            mounts.append((os.makedev(int(major), int(minor)), fstype, fields[4], options))
    return mounts


def _hidden(mounts: list[tuple[int, str, str, str]]) -> str:
    """Why /proc may hide processes from us, or "" (proc(5): hidepid, gid)."""
    for _, fstype, point, options in mounts:
        if fstype == "proc" and point == "/proc" and os.geteuid() != 0:
            opts = {key: value for key, _, value in (o.partition("=") for o in options.split(","))}
            exempt = opts.get("gid", "").isdigit() and int(opts["gid"]) in {os.getegid(), *os.getgroups()}
            if opts.get("hidepid", "0") not in ("0", "off") and not exempt:
                return f"/proc is mounted with hidepid={opts['hidepid']}: a process that uses it may be hidden"
    return ""


def _scan_processes(candidates: list[Candidate]) -> ProcessFacts:
    """Who maps, holds open or works in any candidate: one pass over /proc."""
    try:
        mounts = _mounts("self")
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except (OSError, ValueError):
        return ProcessFacts(available=False, users={})
    faithful = frozenset(dev for dev, fstype, _, _ in mounts if fstype in _FAITHFUL_FS)
    wanted = {k for c in candidates for k in c.keys}
    by_ino: dict[int, list[Key]] = {}
    for key in wanted:
        by_ino.setdefault(key[1], []).append(key)
    users: dict[Key, Use] = {}
    unreadable = []
    for pid in pids:
        try:
            _scan_one(pid, wanted, by_ino, faithful, users)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited: it uses nothing now
        except OSError:
            unreadable.append(_unreadable(pid))
    return ProcessFacts(True, users, tuple(unreadable), _hidden(mounts), faithful)


def _scan_one(
    pid: int,
    wanted: set[Key],
    by_ino: dict[int, list[Key]],
    faithful: frozenset[int],
    users: dict[Key, Use],
) -> None:
    base = f"/proc/{pid}"
    with open(f"{base}/maps", "rb") as f:
        for line in f:  # proc(5): start-end perms offset major:minor(hex) inode [path]
            fields = line.split(None, 5)
            keys = by_ino.get(int(fields[4]), ())
            if keys:
                major, minor = fields[3].split(b":")
                dev = os.makedev(int(major, 16), int(minor, 16))
                for key in keys:
                    if key[0] == dev or key[0] not in faithful:
                        users.setdefault(key, (pid, "maps it"))
    for fd in os.listdir(f"{base}/fd"):
        try:
            st = os.stat(f"{base}/fd/{fd}")  # the open file itself, whatever its path now
        except FileNotFoundError:
            continue  # closed meanwhile
        if (st.st_dev, st.st_ino) in wanted:
            users.setdefault((st.st_dev, st.st_ino), (pid, "holds it open"))
    try:
        st = os.stat(f"{base}/cwd")
    except FileNotFoundError:
        return  # a zombie has no working directory
    if (st.st_dev, st.st_ino) in wanted:
        users.setdefault((st.st_dev, st.st_ino), (pid, "works inside it"))


def _unreadable(pid: int) -> Unreadable:
    name, uids, devices = "?", None, None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            label, _, value = line.partition(":")
            if label == "Name":
                name = value.strip()
            elif label == "Uid":
                uids = frozenset(int(u) for u in value.split())
    with contextlib.suppress(OSError, ValueError):
        devices = frozenset(dev for dev, _, _, _ in _mounts(pid))
    return Unreadable(pid, name, uids, devices)


# ---------------------------------------------------------------------------- the sweep


def sweep_foreign(
    *,
    older_than: float = 600.0,
    dry_run: bool = False,
    shm_folder: str = "/dev/shm",
    temp_folders: Sequence[str] | None = None,
    only: Collection[str] | None = None,
    shm_dir: str | None = None,
    temp_dirs: Sequence[str] | None = None,
) -> SweepReport:
    """Remove other libraries' idle leftovers of this user (``dry_run=True``: only report them).

    Candidates are ``psm_*``, ``sem.mp-*``, ``sem.loky-*`` in ``shm_folder`` and
    ``joblib_memmapping_folder_*``, owned by this user, unchanged for ``older_than``
    seconds, and mapped or held open by no process (matched by device and inode).

    ``temp_folders`` (default: the temp folder) are searched for joblib folders only.
    ``only``, a set of file names (``psm_1a2b``, ``sem.mp-x1y2``), limits the sweep to
    those: a program that watched another library create them cleans up exactly them.
    ``leakguard sweep --foreign`` is a dry run unless ``--yes``; this function, like
    `sweep()`, removes unless ``dry_run=True``. ``shm_dir`` and ``temp_dirs`` are the
    old names of ``shm_folder`` and ``temp_folders`` (deprecated; they go in the next
    release).
    """
    if shm_dir is not None:
        warn_renamed("shm_dir", "shm_folder")
        shm_folder = shm_dir
    if temp_dirs is not None:
        warn_renamed("temp_dirs", "temp_folders")
        temp_folders = temp_dirs if temp_folders is None else temp_folders
    if not older_than >= 0:  # also refuses NaN
        raise ValueError(f"older_than must be a number of seconds >= 0, not {older_than!r}")
    started = time.perf_counter()
    report = SweepReport(folder=shm_folder, dry_run=dry_run)
    uid = os.geteuid()
    temp = [tempfile.gettempdir()] if temp_folders is None else list(temp_folders)
    candidates: list[Candidate] = []
    seen: set[Key] = set()
    for folder, patterns in [(shm_folder, _IN_SHM)] + [(d, _IN_TEMP) for d in temp]:
        try:
            st = os.stat(folder)
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append(
                SweepItem(folder, "folder", None, None, SweepState.REFUSED, f"cannot list: {exc.strerror}", "")
            )
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue  # the temp folder is /dev/shm, or given twice
        seen.add((st.st_dev, st.st_ino))
        for name in names:
            if only is not None and name not in only:
                continue
            kind = next((k for prefix, k in patterns if name.startswith(prefix)), None)
            c = _look(os.path.join(folder, name), kind, uid) if kind else None
            if c is not None:
                candidates.append(c)
    procs = _scan_processes(candidates) if candidates else ProcessFacts(True, {})
    now = time.time()
    for c in candidates:
        d = decide(c, procs, uid=uid, older_than=older_than, now=now)
        item = SweepItem(c.path, c.kind, c.size, d.pid, d.state, d.reason, "", round(now - c.changed, 3))
        if d.verdict is Verdict.KEEP:
            report.kept.append(item)
        elif dry_run:
            report.removed.append(item)
            report.bytes_freed += c.size
        else:
            _remove(c, item, report)
    report.seconds = time.perf_counter() - started
    return report


def _remove(c: Candidate, item: SweepItem, report: SweepReport) -> None:
    try:
        st = os.lstat(c.path)
    except FileNotFoundError:
        report.gone.append(dataclasses.replace(item, state=SweepState.GONE, reason="already gone"))
        return
    if _stamp(st) != c.stamp:  # another object at the name, or a folder whose contents changed
        report.kept.append(
            dataclasses.replace(item, state=SweepState.YOUNG, reason="changed while the sweep looked; kept")
        )
        return
    try:
        if c.kind == "folder":
            shutil.rmtree(c.path)  # fd-based on Linux: never follows a symlink inside
        else:
            os.unlink(c.path)
    except OSError as exc:
        report.errors.append(dataclasses.replace(item, reason=f"removal failed: {exc}"))
        return
    report.removed.append(item)
    report.bytes_freed += c.size
