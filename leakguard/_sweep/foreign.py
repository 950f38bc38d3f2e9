"""``leakguard sweep --foreign``: what other libraries leave in /dev/shm (SPEC 3).

``psm_*`` and ``sem.mp-*`` (the standard library), ``sem.loky-*`` (loky) and
``joblib_memmapping_folder_*`` (joblib; in /dev/shm or the temp folder) have no
journal, so nothing says who owns them. One goes only when it is this user's
regular file (a folder: a real directory of this user's entries on one
filesystem; symlinks are never followed), nothing in it changed for
``older_than`` seconds, and nothing holds it. That last is the kernel's word: a
write lease (_os/lease.py), granted only while no other open file description or
mapping of the file exists, in any process of any PID namespace, and held across
the unlink (a folder: one on each of its files, all held until they are unlinked).
No other process's /proc is read for it (issue 14: that evidence missed holders in
other PID namespaces and kept everything wherever one process could not be read).

Where leases cannot answer (disabled, a filesystem without them or whose mappings
they do not see, another user's file, macOS), the /proc evidence decides, failing
closed: no process maps it, holds it open or works in it (matched by device and
inode, never by path: glibc maps a new semaphore as ``/dev/shm/sem.XXXXXX
(deleted)``), and no process that could use it is hidden from us. Without /proc
nothing can be decided that way: kept. Each item says which evidence decided it
(``ForeignItem.evidence``).

Gathering (``_look``), what lstat alone decides (``screen``, pure), the lease path
(``_by_lease``) and the /proc path (``_scan_processes``, ``decide``, ``_remove``)
are kept apart, as in journaled.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from leakguard._os import lease
from leakguard._os.ipc import describe_mode

from .journaled import SweepItem, SweepReport, SweepState, Verdict, warn_renamed

__all__ = [
    "Candidate",
    "Decision",
    "ForeignItem",
    "ProcessFacts",
    "Unreadable",
    "decide",
    "screen",
    "sweep_foreign",
]

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

Evidence = Literal["lease", "proc", "stat"]  # what decided an entry (ForeignItem.evidence)


@dataclass(frozen=True)
class ForeignItem(SweepItem):
    """A `SweepItem` of `sweep_foreign`, which also says what decided it.

    ``evidence`` is ``"lease"`` (the kernel granted a write lease, or refused it because
    another process maps the object or holds it open), ``"proc"`` (where leases cannot
    answer: the maps and descriptors every process shows in /proc), ``"stat"`` (what
    lstat alone shows: its type, owner or age), or None for a folder that could not be
    listed.
    """

    evidence: Evidence | None = None


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


def screen(c: Candidate, *, uid: int, older_than: float, now: float) -> Decision | None:
    """What lstat alone decides (a wrong type, another owner, a problem inside, too young);
    None: whether something holds it is still to be asked."""
    expected = "directory" if c.kind == "folder" else "regular file"
    if c.found != expected:
        return Decision(Verdict.KEEP, SweepState.REFUSED, f"a {c.found} stands here, not a {expected}; left alone")
    if c.uid != uid:
        return Decision(Verdict.KEEP, SweepState.REFUSED, f"belongs to uid {c.uid}; left alone")
    if c.problem:
        return Decision(Verdict.KEEP, SweepState.REFUSED, c.problem)
    age = now - c.changed
    if age < older_than:
        return Decision(Verdict.KEEP, SweepState.YOUNG, f"changed {age:.0f} s ago, within the {older_than:g} s limit")
    return None


def decide(c: Candidate, procs: ProcessFacts, *, uid: int, older_than: float, now: float) -> Decision:
    """Remove or keep one candidate from what lstat and /proc show (where leases cannot answer)."""
    first = screen(c, uid=uid, older_than=older_than, now=now)
    if first is not None:
        return first
    using = sorted(procs.users[k] for k in c.keys if k in procs.users)
    if using:
        return Decision(Verdict.KEEP, SweepState.LIVE, f"in use: pid {using[0][0]} {using[0][1]}", using[0][0])
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
    age = now - c.changed
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


# ---------------------------------------------------------------------------- the lease path

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHANGED: Final = Decision(Verdict.KEEP, SweepState.YOUNG, "changed while the sweep looked; kept")


def _filesystems() -> dict[int, str]:
    """device -> filesystem type, of every mount this process sees (empty without /proc)."""
    try:
        return {dev: fstype for dev, fstype, _, _ in _mounts("self")}
    except (OSError, ValueError):
        return {}


def _no_lease_on(fstype: str | None) -> str:
    """Why a lease cannot be trusted on this filesystem, or "" (it can)."""
    if not lease.LEASES:
        return "this system has no file leases"
    if fstype is None:
        return "cannot tell which filesystem it is on"
    if fstype not in lease.FAITHFUL_FILESYSTEMS:
        return f"a lease on {fstype} may not see every mapping"
    return ""


class _Leases:
    """Write leases taken one file at a time and held together (a folder's files), each
    on a descriptor checked to be the file the sweep judged; all released and closed
    when ``stack`` closes."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.held: list[tuple[int, str, int, str]] = []  # (folder's fd, name, leased fd, path shown)

    def take(self, dir_fd: int, name: str, stamp: tuple[int, ...], shown: str) -> Decision | str | None:
        """None: leased. A Decision: what to report instead. A string: why leases cannot answer."""
        try:
            fd = lease.open_for_lease(name, dir_fd)
        except FileNotFoundError:
            return Decision(Verdict.GONE, SweepState.GONE, "already gone")
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return Decision(Verdict.KEEP, SweepState.LIVE, f"in use: another process holds a lease on {shown}")
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink or a socket now stands there
                return _CHANGED
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE):
                return f"cannot open {shown} to lease it ({exc.strerror})"
            return Decision(Verdict.ERROR, SweepState.REFUSED, f"cannot open {shown}: {exc.strerror}")
        self.stack.callback(os.close, fd)
        if _stamp(os.fstat(fd)) != stamp:  # another file at the name, or this one written meanwhile
            return _CHANGED
        answer, why = lease.take_write_lease(fd)
        if answer is lease.LeaseAnswer.REFUSED:
            why = f"in use: {shown} is mapped or held open by another process (the kernel refused a write lease)"
            return Decision(Verdict.KEEP, SweepState.LIVE, why)
        if answer is lease.LeaseAnswer.UNAVAILABLE:
            return why
        # Runs before the close registered above. A failed release is no loss: the close ends the lease.
        self.stack.callback(_release, fd)
        self.held.append((dir_fd, name, fd, shown))
        return None

    def broken(self) -> str:
        """The first leased file another process has started to open since, or ""."""
        return next((shown for _, _, fd, shown in self.held if lease.lease_broken(fd)), "")

    def unlink(self) -> bool:
        """Unlink every leased file, each only while its name still leads to the leased
        inode; False (and nothing more unlinked) at the first that does not."""
        for dir_fd, name, fd, _ in self.held:
            if not _same(dir_fd, name, os.fstat(fd)):
                return False
            os.unlink(name, dir_fd=dir_fd)
        return True


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        lease.release_lease(fd)


def _same(dir_fd: int, name: str, st: os.stat_result) -> bool:
    """The entry ``name`` in ``dir_fd`` is the file ``st`` describes (not followed if a symlink)."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _by_lease(c: Candidate, *, dry_run: bool, age: float) -> Decision | str:
    """Remove ``c`` while holding a write lease on it (on every file of a folder); what was
    done, or (a string) why leases cannot answer for it: then /proc decides."""
    folder, name = os.path.split(c.path)
    with contextlib.ExitStack() as stack:
        try:
            parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return Decision(Verdict.ERROR, SweepState.REFUSED, f"cannot open {folder}: {exc.strerror}")
        stack.callback(os.close, parent)
        leases = _Leases(stack)
        if c.kind == "folder":
            walked = _lease_folder(leases, parent, name, c)
            if not isinstance(walked, _Walk):
                return walked
            what = f"nothing maps or holds open any of its {len(leases.held)} file(s) (a write lease on each)"
        else:
            taken = leases.take(parent, name, c.stamp, "it")
            if taken is not None:
                return taken
            walked, what = None, "nothing else maps it or holds it open (a write lease granted)"
        done = Decision(Verdict.REMOVE, SweepState.FOREIGN, f"{what}; unchanged for {age:.0f} s")
        if dry_run:
            return done
        opened = leases.broken()
        if opened:
            why = f"in use: {opened} was opened by another process while the sweep held its lease"
            return Decision(Verdict.KEEP, SweepState.LIVE, why)
        try:
            if not leases.unlink():
                return _CHANGED
            if walked is not None and not walked.remove(parent, name):
                return _CHANGED
        except OSError as exc:
            return Decision(Verdict.ERROR, SweepState.FOREIGN, f"removal failed: {exc}")
        return done


class _Walk(NamedTuple):
    """What a folder holds besides its files: symlinks (removed, never followed) and
    folders (removed, deepest first, once empty)."""

    top: int  # the folder's own descriptor
    links: list[tuple[int, str, os.stat_result]]  # (folder's fd, name, what lstat showed)
    folders: list[tuple[int, str, int]]  # (parent's fd, name, its own fd), parents first

    def remove(self, parent: int, name: str) -> bool:
        for dir_fd, link, st in self.links:
            if not _same(dir_fd, link, st):
                return False
            os.unlink(link, dir_fd=dir_fd)
        for dir_fd, sub, fd in reversed(self.folders):
            if not _same(dir_fd, sub, os.fstat(fd)):
                return False
            os.rmdir(sub, dir_fd=dir_fd)  # fails, removing nothing, if something new is inside
        if not _same(parent, name, os.fstat(self.top)):
            return False
        os.rmdir(name, dir_fd=parent)
        return True


def _lease_folder(leases: _Leases, parent: int, name: str, c: Candidate) -> _Walk | Decision | str:
    """Lease every file in the folder ``c``, walking it by descriptor (never through a
    symlink); the walk, or what to report instead, or why leases cannot answer."""
    try:
        top = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return Decision(Verdict.GONE, SweepState.GONE, "already gone")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return _CHANGED
        return Decision(Verdict.ERROR, SweepState.REFUSED, f"cannot open it: {exc.strerror}")
    leases.stack.callback(os.close, top)
    st = os.fstat(top)
    if _stamp(st) != c.stamp:
        return _CHANGED
    walk = _Walk(top, [], [])
    keys, changed, todo = {(st.st_dev, st.st_ino)}, max(st.st_mtime, st.st_ctime), [(top, c.path)]
    try:
        while todo:
            dir_fd, shown = todo.pop()
            with os.scandir(dir_fd) as listing:
                entries = list(listing)
            for entry in entries:
                est = entry.stat(follow_symlinks=False)
                keys.add((est.st_dev, est.st_ino))
                changed = max(changed, est.st_mtime, est.st_ctime)
                path = os.path.join(shown, entry.name)
                if stat.S_ISREG(est.st_mode):
                    taken = leases.take(dir_fd, entry.name, _stamp(est), path)
                    if taken is not None:
                        return _CHANGED if isinstance(taken, Decision) and taken.verdict is Verdict.GONE else taken
                elif stat.S_ISDIR(est.st_mode):
                    fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                    leases.stack.callback(os.close, fd)
                    if os.fstat(fd).st_ino != est.st_ino:  # another folder took its name meanwhile
                        return _CHANGED
                    walk.folders.append((dir_fd, entry.name, fd))
                    todo.append((fd, path))
                elif stat.S_ISLNK(est.st_mode):
                    walk.links.append((dir_fd, entry.name, est))
                else:  # a FIFO, a socket: nothing a lease can answer for
                    return f"{path} is a {describe_mode(est.st_mode)}, which cannot be leased"
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return f"too many files to hold leases on at once ({exc.strerror})"
        return _CHANGED  # something inside went or changed type as the sweep walked it
    if keys != c.keys or changed != c.changed:
        return _CHANGED
    return walk


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
    ``joblib_memmapping_folder_*``, owned by this user and unchanged for ``older_than``
    seconds. One is removed only while this process holds a write lease on it (on each
    file of a folder), which the kernel grants only when no other process maps it or
    holds it open; where leases cannot answer, /proc decides (by device and inode),
    keeping whatever it cannot rule out. Each item is a `ForeignItem`, whose
    ``evidence`` says which decided.

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
                ForeignItem(folder, "folder", None, None, SweepState.REFUSED, f"cannot list: {exc.strerror}", "")
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
    now = time.time()
    filesystems = _filesystems() if candidates else {}
    no_lease: list[tuple[Candidate, str]] = []  # and why: for /proc to decide
    for c in candidates:
        first = screen(c, uid=uid, older_than=older_than, now=now)
        if first is not None:
            _record(report, c, first, now, "stat")
            continue
        why = _no_lease_on(filesystems.get(c.dev)) or _by_lease(c, dry_run=dry_run, age=now - c.changed)
        if isinstance(why, str):
            no_lease.append((c, why))
        else:
            _record(report, c, why, now, "lease")
    if no_lease:
        procs = _scan_processes([c for c, _ in no_lease])
        for c, why in no_lease:
            d = decide(c, procs, uid=uid, older_than=older_than, now=now)
            d = d._replace(reason=f"{d.reason} (no lease: {why})")
            if d.verdict is Verdict.REMOVE and not dry_run:
                _remove(c, _item(c, d, now, "proc"), report)
            else:
                _record(report, c, d, now, "proc")
    report.seconds = time.perf_counter() - started
    return report


def _item(c: Candidate, d: Decision, now: float, evidence: Evidence) -> ForeignItem:
    return ForeignItem(c.path, c.kind, c.size, d.pid, d.state, d.reason, "", round(now - c.changed, 3), evidence)


def _record(report: SweepReport, c: Candidate, d: Decision, now: float, evidence: Evidence) -> None:
    """Put what was decided (and, on the lease path, done) in the report's matching list."""
    item = _item(c, d, now, evidence)
    if d.verdict is Verdict.REMOVE:  # removed, or in a dry run, to be removed
        report.removed.append(item)
        report.bytes_freed += c.size
    elif d.verdict is Verdict.GONE:
        report.gone.append(item)
    elif d.verdict is Verdict.ERROR:
        report.errors.append(item)
    else:
        report.kept.append(item)


def _remove(c: Candidate, item: SweepItem, report: SweepReport) -> None:
    """The /proc path's removal: only if lstat still shows what was judged."""
    try:
        st = os.lstat(c.path)
    except FileNotFoundError:
        report.gone.append(dataclasses.replace(item, state=SweepState.GONE, reason="already gone"))
        return
    if _stamp(st) != c.stamp:  # another object at the name, or a folder whose contents changed
        report.kept.append(dataclasses.replace(item, state=SweepState.YOUNG, reason=_CHANGED.reason))
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
