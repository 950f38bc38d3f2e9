"""The sweep: unlink what dead owners left behind, and nothing else.

For each journal in the folder:

1. open it without following symlinks; refuse anything but our own regular file;
2. try its lock without waiting: held means the owner (or another sweep) is at
   work, so every entry is kept;
3. read it (journal.parse_journal skips and reports what does not validate);
4. decide the owner's fate: dead only when the lock is free *and* the process
   table agrees (pid gone or reused, same boot, same pid namespace);
5. per live entry, ``decide()`` (a pure function of the entry, the owner's fate
   and what lstat shows at the name) says remove, keep, drop, gone or error; a dead
   owner's plain entries, its own regular files, are unlinked in fewer steps, and where
   the kernel refuses to unlink others' files, many names are looked up in one listing
   of the folder instead of an lstat each (``_settle``, docs/design.md);
6. unlink what is to be removed; delete the journal once all its entries are
   settled and nothing in it was damaged.

Two sweeps never act on one journal at once (the lock), and an entry an earlier
sweep already removed is found gone: each object is unlinked once.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import stat
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from leakguard._failpoint import failpoint
from leakguard._journal.folder import check_folder, check_journal_folder, default_folder
from leakguard._journal.format import (
    ANONYMOUS,
    JOURNAL_SUFFIX,
    OPEN_FLAGS,
    TEMP_SUFFIX,
    Entry,
    Header,
    JournalCache,
    is_unpublished_journal,
    open_journal,
    pid_of_file,
    read_journal_fd,
)
from leakguard._journal.identity import Identity, Liveness, identity_liveness
from leakguard._os import ipc as _ipc
from leakguard._os.names import file_in_shm_dir, public_name

__all__ = [
    "FOREIGN_STATES",
    "JOURNALED_STATES",
    "SweepItem",
    "SweepReport",
    "SweepState",
    "Verdict",
    "decide",
    "settle_worker",
    "startup_sweep",
    "sweep",
    "sweep_owners",
    "warn_renamed",
]

_SETTLE_PATIENCE = 2.0  # seconds settle_worker waits for a sweep holding the journal
_LISTINGS = 4  # bounded: a folder where new journals keep appearing must not keep us forever
# Live owners' journals (their lock held) as last read: each sweep reads every one of them
# twice, and a guardian or a Dask worker sweeps again and again (issue 15). A dead owner's
# journal is read once, acted on and deleted: it is never cached.
_LIVE_JOURNALS = JournalCache()


class SweepState(str, enum.Enum):
    """What a sweep found an object (or a journal) to be: `SweepItem.state`.

    A ``str`` enum, as ``Liveness`` is an enum: ``item.state == "live"`` holds, and
    ``--json`` prints the value. `sweep()` gives the first seven (`JOURNALED_STATES`),
    `sweep_foreign()` the last three and ``live``, ``refused``, ``gone``
    (`FOREIGN_STATES`). The list an item is in says what was done about it.
    """

    LIVE = "live"  # its owner (or, --foreign, a process that uses it) is alive
    ORPHANED = "orphaned"  # its owner is dead
    OTHER_BOOT = "other-boot"  # recorded before the last reboot
    GONE = "gone"  # nothing at the name any more
    DAMAGED = "damaged"  # a journal record that does not validate
    REFUSED = "refused"  # something we must not touch (a symlink, another user's file, ...)
    HANDED_OVER = "handed-over"  # a dead worker's block its pool adopted
    FOREIGN = "foreign"  # --foreign: idle, old enough, used by no process
    YOUNG = "young"  # --foreign: changed within the age limit
    UNDECIDABLE = "undecidable"  # --foreign: a process we cannot look into might use it

    def __str__(self) -> str:
        return self.value


JOURNALED_STATES: Final = frozenset(
    {
        SweepState.LIVE,
        SweepState.ORPHANED,
        SweepState.OTHER_BOOT,
        SweepState.GONE,
        SweepState.DAMAGED,
        SweepState.REFUSED,
        SweepState.HANDED_OVER,
    }
)
FOREIGN_STATES: Final = frozenset(
    {
        SweepState.FOREIGN,
        SweepState.LIVE,
        SweepState.YOUNG,
        SweepState.UNDECIDABLE,
        SweepState.REFUSED,
        SweepState.GONE,
    }
)


class Verdict(str, enum.Enum):
    """What a sweep's pure ``decide()`` says to do with one object."""

    REMOVE = "remove"
    KEEP = "keep"
    DROP = "drop"  # another boot: forget the entry, touch nothing
    GONE = "gone"  # nothing at the name any more
    ERROR = "error"  # something we must not touch: reported

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SweepItem:
    """One entry the sweep looked at, or one problem it met.

    ``name`` and ``kind`` (``shm``, ``sem``) say which object: a leakguard object's name
    as ``SharedMemory.name`` shows it (``lg_...``, no leading slash); for a leftover of
    another library (`sweep_foreign`), the full path of the file (``/dev/shm/psm_...``);
    None for a problem with a whole journal. ``size`` is in bytes
    (None for a semaphore or when unknown); ``owner_pid`` is the journal's owner.
    ``state`` (a `SweepState`) is what the sweep found it to be; ``reason`` says why in
    words; ``journal`` is the journal file the entry came from; ``age`` is seconds since
    it was recorded.
    """

    name: str | None
    kind: str | None
    size: int | None
    owner_pid: int | None
    state: SweepState
    reason: str
    journal: str
    age: float | None = None

    def __post_init__(self) -> None:
        # A state read back from JSON (``SweepItem(**item)``) is its string: make it the member
        # (ValueError for a string that names no state).
        if type(self.state) is not SweepState:
            object.__setattr__(self, "state", SweepState(self.state))


def _item(
    name: str | None,
    kind: str | None,
    size: int | None,
    owner_pid: int | None,
    state: SweepState,
    reason: str,
    journal: str,
    age: float | None,
) -> SweepItem:
    """``SweepItem(...)`` for the sweep's own items, at a third of the cost (issue 15: one per
    entry). The generated ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__``; this fills the instance's ``__dict__`` at once. Same object:
    same fields, equality, hash and repr; ``state`` must already be a SweepState."""
    item: SweepItem = object.__new__(SweepItem)
    object.__setattr__(
        item,
        "__dict__",
        {
            "name": name,
            "kind": kind,
            "size": size,
            "owner_pid": owner_pid,
            "state": state,
            "reason": reason,
            "journal": journal,
            "age": age,
        },
    )
    return item


@dataclass
class SweepReport:
    """What one sweep did, in lists of `SweepItem`.

    ``removed``: objects unlinked (or, in a dry run, that would be); ``kept``: entries of
    live owners, or whose owner's liveness could not be decided (fail closed);
    ``dropped``: entries from another boot, forgotten without touching anything;
    ``gone``: entries whose object no longer existed; ``errors``: entries that could not
    be handled or must not be touched (a symlink, another user's file, a damaged record);
    ``skipped``: harmless torn last records. ``journals_removed`` lists the journal files
    deleted once settled; ``bytes_freed`` and ``seconds`` are what they say.
    """

    folder: str
    dry_run: bool
    removed: list[SweepItem] = field(default_factory=list)
    kept: list[SweepItem] = field(default_factory=list)
    dropped: list[SweepItem] = field(default_factory=list)
    gone: list[SweepItem] = field(default_factory=list)
    errors: list[SweepItem] = field(default_factory=list)
    skipped: list[SweepItem] = field(default_factory=list)  # harmless: torn last records
    journals_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing that should go is left (errors mean something could not be handled)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (``--json``): a state is its string."""
        return asdict(self, dict_factory=_plain)


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value.value if isinstance(value, enum.Enum) else value for key, value in pairs}


# ---------------------------------------------------------------------------- decision


# The members the per-entry code below compares with, as module constants: reaching one
# through its enum class costs about 80 ns on Python 3.11, several times per entry (issue 15).
_DEAD, _ALIVE, _UNKNOWN, _OTHER_BOOT = Liveness.DEAD, Liveness.ALIVE, Liveness.UNKNOWN, Liveness.OTHER_BOOT
_REMOVE, _KEEP, _DROP, _GONE = Verdict.REMOVE, Verdict.KEEP, Verdict.DROP, Verdict.GONE
_ORPHANED = SweepState.ORPHANED
_OWNER_DEAD: Final = "owner dead"

ANONYMOUS_LIVE: Final = "anonymous block (not in /dev/shm): the kernel frees it with its last holder; needs no sweep"
ANONYMOUS_GONE: Final = "anonymous block: the kernel freed it when its holders ended; record dropped, nothing unlinked"


def decide(entry: Entry, owner: Liveness, facts: _ipc.ObjectFacts | None, uid: int) -> tuple[Verdict, str]:
    """What to do with one live entry: (verdict, reason)."""
    if owner is _OTHER_BOOT:
        return _DROP, "recorded before the last reboot; the object cannot have survived it"
    if entry.kind == ANONYMOUS:
        # Nothing to unlink, ever: a memfd has no name, and it lives exactly as long as a
        # process holds or maps it (SPEC 2.2). Its record only tells `leakguard ls` it lives.
        return (_GONE, ANONYMOUS_GONE) if owner is _DEAD else (_KEEP, ANONYMOUS_LIVE)
    if owner is _ALIVE:
        return _KEEP, "owner alive"
    if owner is _UNKNOWN:
        return _KEEP, "owner's liveness cannot be decided; kept (fail closed)"
    assert facts is not None
    if not facts.exists:
        return _GONE, "already gone"
    if not facts.regular:
        return Verdict.ERROR, f"a {facts.kind_of_file} stands at this name, not our object; left alone"
    if facts.uid != uid:
        return Verdict.ERROR, f"object at this name belongs to uid {facts.uid}; left alone"
    if entry.ino is not None and facts.ino is not None and (facts.dev, facts.ino) != (entry.dev, entry.ino):
        return Verdict.ERROR, "a different object now holds this name (device/inode differ); left alone"
    return _REMOVE, _OWNER_DEAD


def _plainly_ours(st: os.stat_result, entry: Entry, uid: int) -> bool:
    """What ``decide()`` asks of the object of a dead owner's entry before it says remove, from
    lstat's answer: a regular file of ours, the device and inode the journal recorded."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_ino == entry.ino and st.st_dev == entry.dev


_STATE_OF_VERDICT: Final = {
    Verdict.REMOVE: SweepState.ORPHANED,
    Verdict.KEEP: SweepState.LIVE,
    Verdict.DROP: SweepState.OTHER_BOOT,
    Verdict.GONE: SweepState.GONE,
    Verdict.ERROR: SweepState.REFUSED,
}


# ---------------------------------------------------------------------------- the sweep


def sweep(
    *,
    dry_run: bool = False,
    folder: str | None = None,
    time_limit: float | None = None,
    directory: str | None = None,
) -> SweepReport:
    """Remove what dead owners left. Safe beside live pools and other sweeps.

    ``folder``: the journal folder to sweep (``leakguard sweep --dir``); by default
    ``$LEAKGUARD_DIR``, else the per-user default (SPEC 2.5). Raises JournalFolderError
    if the folder is unsafe or not a journal folder (it holds files leakguard never
    makes). Without ``folder``, a folder that does not exist yet holds nothing: an empty
    report. With ``time_limit`` (seconds), no journal is started after it has passed; the
    ones not looked at are simply left for the next sweep. ``directory`` is the old name
    of ``folder`` (deprecated; it goes in the next release).
    """
    if directory is not None:
        warn_renamed("directory", "folder")
        folder = directory if folder is None else folder
    path = os.path.abspath(folder) if folder is not None else default_folder()
    if folder is None and not os.path.lexists(path):
        return SweepReport(folder=path, dry_run=dry_run)
    check_journal_folder(path)
    return _sweep(path, dry_run, time_limit)


def warn_renamed(old: str, new: str) -> None:
    """A keyword argument was renamed: the old name works, with a DeprecationWarning, for one release."""
    warnings.warn(
        f"{old}= is deprecated; call it {new}= (the old name goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )


def startup_sweep(folder: str, time_limit: float) -> SweepReport:
    """``Pool()``'s start-up sweep, run by its guardian in the pool's own journal folder.

    The folder is the one the pool writes its journal in (checked by open_folder), so it
    is not refused for holding other files: those are simply not looked at.
    """
    check_folder(folder)
    try:
        return _sweep(folder, False, time_limit)
    finally:
        # A guardian sweeps next when its pool dies, by when the journals it read now have
        # changed: it keeps none of them (their contents) for the pool's whole life.
        _LIVE_JOURNALS.clear()


def _sweep(folder: str, dry_run: bool, time_limit: float | None) -> SweepReport:
    started = time.perf_counter()
    report = SweepReport(folder=folder, dry_run=dry_run)
    uid = os.geteuid()
    now = time.time()
    held = _held_by_live_owners(folder)
    seen: set[str] = set()
    # A live owner that compacts its journal while we look publishes a new file and
    # deletes the one we listed: look again for files that appeared meanwhile, so
    # that its entries are still reported (kept), not silently missed.
    for _ in range(_LISTINGS):
        with os.scandir(folder) as listing:
            names = sorted(e.name for e in listing if e.name not in seen)
        if not names:
            break
        seen.update(names)
        for filename in names:
            if time_limit is not None and time.perf_counter() - started > time_limit:
                break
            if pid_of_file(filename) is None:
                continue  # not a name leakguard gives: never opened, never deleted
            path = os.path.join(folder, filename)
            if filename.endswith(JOURNAL_SUFFIX):
                _JournalSweep(path, report, uid, now, held=held).run()
            elif filename.endswith(TEMP_SUFFIX) and not dry_run:
                _remove_abandoned_temp(path, report)
    _LIVE_JOURNALS.forget_unused()  # those of owners gone since the last sweep
    report.seconds = time.perf_counter() - started
    return report


def settle_worker(folder: str, worker: Identity, adopted: Callable[[str], bool]) -> SweepReport:
    """A pool settles the journal of one of its workers that has died.

    The pool is the worker's parent, so the rule that keeps a live pool's workers'
    entries does not apply here; the names ``adopted`` says the pool took over are
    dropped from the worker's journal without being unlinked.
    """
    started = time.perf_counter()
    report = SweepReport(folder=folder, dry_run=False)
    uid = os.geteuid()
    now = time.time()
    for path in _files_of(folder, worker.pid, JOURNAL_SUFFIX):
        _JournalSweep(path, report, uid, now, as_parent=worker, adopted=adopted).run()
    for path in _files_of(folder, worker.pid, TEMP_SUFFIX):
        _remove_abandoned_temp(path, report)  # a journal it was making as it died
    report.seconds = time.perf_counter() - started
    return report


def sweep_owners(folder: str, pids: Collection[int]) -> SweepReport:
    """Sweep only the journals of these pids (by file name), as the guardian does for its pool.

    Other owners' journals are not even opened: however many or damaged they are,
    they cannot delay the clean-up of one pool (SPEC 6).
    """
    started = time.perf_counter()
    report = SweepReport(folder=folder, dry_run=False)
    uid = os.geteuid()
    now = time.time()
    held = _held_by_live_owners(folder)
    for pid in sorted(set(pids)):
        for path in _files_of(folder, pid, JOURNAL_SUFFIX):
            _JournalSweep(path, report, uid, now, held=held).run()
        for path in _files_of(folder, pid, TEMP_SUFFIX):
            _remove_abandoned_temp(path, report)
    _LIVE_JOURNALS.forget_unused()
    report.seconds = time.perf_counter() - started
    return report


def _held_by_live_owners(folder: str) -> dict[str, int | None]:
    """The names that journals locked by their owners name, with the owner's pid.

    A journal whose lock is held belongs to a live process (or to a sweep at work): what it
    names must not be unlinked because some other, dead journal names it too.
    """
    held: dict[str, int | None] = {}
    uid = os.geteuid()
    try:
        with os.scandir(folder) as listing:
            paths = [e.path for e in listing if e.name.endswith(JOURNAL_SUFFIX) and pid_of_file(e.name) is not None]
    except OSError:
        return held
    for path in paths:
        fd = open_journal(path)
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it exclusively: not a live owner's
            except BlockingIOError:
                pass
            contents = _LIVE_JOURNALS.read(fd)
            pid = contents.header.owner.pid if contents.header is not None else None
            for entry in contents.live():
                held.setdefault(entry.name, pid)
        finally:
            os.close(fd)
    return held


def _files_of(folder: str, pid: int, suffix: str) -> list[str]:
    with contextlib.suppress(OSError), os.scandir(folder) as listing:
        return sorted(e.path for e in listing if pid_of_file(e.name) == pid and e.name.endswith(suffix))
    return []


def _remove_abandoned_temp(path: str, report: SweepReport) -> None:
    # A journal whose writer died before publishing it: deleted only once its content
    # proves it one (SPEC 3), whatever its name says.
    fd = open_journal(path, write=True)
    if fd is None:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its writer is still at work
        if os.fstat(fd).st_nlink and is_unpublished_journal(fd) and _same_file(path, st):
            os.unlink(path)
            report.journals_removed.append(path)
    finally:
        os.close(fd)


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


class _JournalSweep:
    """Sweeping one journal file."""

    def __init__(
        self,
        path: str,
        report: SweepReport,
        uid: int,
        now: float,
        *,
        as_parent: Identity | None = None,
        adopted: Callable[[str], bool] | None = None,
        held: dict[str, int | None] | None = None,
    ) -> None:
        self.path = path
        self.report = report
        self.uid = uid
        self.now = now
        self.as_parent = as_parent  # settling only this worker's journal, as its pool
        self.adopted = adopted
        self.held = held or {}  # names that live owners' journals name: never unlinked here

    def problem(self, reason: str, *, state: SweepState = SweepState.DAMAGED) -> None:
        self.report.errors.append(self.item(None, None, state, reason))

    def item(self, entry: Entry | None, pid: int | None, state: SweepState, reason: str) -> SweepItem:
        if entry is None:
            return SweepItem(None, None, None, pid, state, reason, self.path)
        # The journal keeps the POSIX form (/lg_x); a report shows the public one (lg_x).
        name = public_name(entry.name)
        return _item(name, entry.kind, entry.size, pid, state, reason, self.path, round(self.now - entry.created, 3))

    def run(self) -> None:
        try:
            seen = os.lstat(self.path)
        except FileNotFoundError:
            return  # removed by its owner or another sweep meanwhile
        if not stat.S_ISREG(seen.st_mode):
            # Never even open it: opening a FIFO or a device can block or have side effects.
            self.problem(
                f"journal is a {_ipc.describe_mode(seen.st_mode)}, not a file; left alone", state=SweepState.REFUSED
            )
            return
        try:
            fd = os.open(self.path, os.O_RDWR | OPEN_FLAGS)  # its errno is reported below
        except OSError as exc:
            what = {
                errno.ELOOP: "is a symbolic link",
                errno.EISDIR: "is a directory",
                errno.ENOENT: None,  # removed by its owner or another sweep meanwhile
            }.get(exc.errno or 0, f"cannot be opened ({exc.strerror})")
            if what is not None:
                self.problem(f"journal {what}; left alone", state=SweepState.REFUSED)
            return
        try:
            self._run(fd)
        finally:
            os.close(fd)

    def _run(self, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self.problem("journal is not a regular file; left alone", state=SweepState.REFUSED)
            return
        if st.st_uid != self.uid:
            self.problem(f"journal belongs to uid {st.st_uid}; left alone", state=SweepState.REFUSED)
            return
        mode = fcntl.LOCK_SH if self.report.dry_run else fcntl.LOCK_EX
        # A pool settling its dead worker's journal waits a little for a sweep that holds it
        # (a sweep holds a journal for milliseconds); anyone else takes no turns.
        patience = time.monotonic() + (_SETTLE_PATIENCE if self.as_parent is not None else 0.0)
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                locked_by_other = False
            except BlockingIOError:
                locked_by_other = True
            if not locked_by_other or time.monotonic() >= patience:
                break
            time.sleep(0.002)
        if not locked_by_other and os.fstat(fd).st_nlink == 0:
            return  # another sweep settled and deleted it while we waited
        # Held by another process: a live owner's (or a sweep's), read again at the next sweep.
        contents = _LIVE_JOURNALS.read(fd) if locked_by_other else read_journal_fd(fd)
        header = contents.header
        for p in contents.problems:
            target = self.report.skipped if p.harmless else self.report.errors
            target.append(
                SweepItem(
                    None, None, None, None, SweepState.DAMAGED, f"byte {p.offset}: {p.detail} ({p.kind})", self.path
                )
            )
        if contents.unlisted:
            # One line for the rest, however many: a damaged file must not cost a line per bad byte.
            counts = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(contents.problem_counts.items()))
            self.problem(f"{contents.unlisted:,} more problem(s) not listed (in all, {counts})")
        if header is None:
            self.problem("journal has no valid header; its owner is unknown, so it is kept")
            return
        pid = header.owner.pid
        if self.as_parent is not None and header.owner != self.as_parent:
            return  # a journal of another process that got the same pid
        owner, why = self._owner_fate(header, locked_by_other)
        with _ipc.ObjectFolder() as objects:
            settled = self._settle(contents.live(), pid, owner, why, objects)
        if (
            settled
            and not contents.damaged
            and not self.report.dry_run
            and owner in (Liveness.DEAD, Liveness.OTHER_BOOT)
            and _same_file(self.path, st)
        ):
            os.unlink(self.path)
            self.report.journals_removed.append(self.path)

    def _settle(self, entries: list[Entry], pid: int, owner: Liveness, why: str, objects: _ipc.ObjectFolder) -> bool:
        """Decide on each entry and act on it; True if every one is settled."""
        # The work per entry is kept to what the checks need (issue 15): lookups hoisted out
        # of the loop, the OS asked only about a dead owner's entries, items made at once.
        report, held, uid, adopted, path, now = self.report, self.held, self.uid, self.adopted, self.path, self.now
        dead = owner is _DEAD
        object_facts = objects.object_facts
        # A dead owner's entries, the bulk of a sweep's work (issue 15), in few steps: the common
        # case, a regular file of ours with the device and inode the journal recorded, is what
        # decide() says to remove, and is unlinked at once; any other entry (and one whose
        # unlink is refused) goes through object_facts() and decide() below, as always.
        # With many names, one listing of the folder instead of an lstat per name, where the
        # kernel refuses to unlink what is not ours (ObjectFolder.regular_files; docs/design.md,
        # "The sweep"). A dry run unlinks nothing, so it lets the kernel check nothing: lstat.
        quick = dead and objects.holds_folder
        listed = objects.regular_files(len(entries)) if quick and not report.dry_run else None
        listed_dev, listed_inodes = listed if listed is not None else (-1, {})
        lstat_file, unlink_file = objects.lstat_file, objects.unlink_file
        dry_run = report.dry_run
        removed = report.removed
        freed = 0
        settled = True
        for entry in entries:
            name = entry.name
            kind = entry.kind
            if dead and adopted is not None and adopted(name):
                report.dropped.append(self.item(entry, pid, SweepState.HANDED_OVER, "adopted by the pool"))
                continue
            if quick and kind != ANONYMOUS and entry.ino is not None and name not in held:
                file = file_in_shm_dir(kind, name)
                if listed is not None:
                    size = entry.size if listed_inodes.get(file) == entry.ino and entry.dev == listed_dev else -1
                else:
                    st = lstat_file(file)
                    size = st.st_size if st is not None and _plainly_ours(st, entry, uid) else -1
                if size >= 0:
                    age = round(now - entry.created, 3)
                    item = _item(public_name(name), kind, entry.size, pid, _ORPHANED, _OWNER_DEAD, path, age)
                    if dry_run:
                        unlinked: bool | None = True
                    else:
                        try:
                            unlinked = unlink_file(file)
                        except PermissionError:
                            unlinked = None  # not ours after all (another user's file): lstat tells why, below
                        except Exception as exc:  # noqa: BLE001 - reported, never raised: one entry must not stop the sweep
                            report.errors.append(replace(item, reason=f"unlink failed: {exc}"))
                            settled = False
                            continue
                    if unlinked:
                        if not dry_run:
                            failpoint("sweep.after-unlink")  # a sweep killed mid-way: the next one finishes its work
                        removed.append(item)
                        freed += size
                        continue
                    if unlinked is not None:
                        report.gone.append(replace(item, state=SweepState.GONE, reason="already gone"))
                        continue
            anonymous = kind == ANONYMOUS  # no name to look at (SPEC 2.2)
            facts = object_facts(kind, name) if dead and not anonymous else None
            verdict, reason = decide(entry, owner, facts, uid)
            if verdict is _REMOVE and name in held:
                # A dead owner's journal (forged, or stale) naming what a live owner's locked
                # journal also names: the live journal wins (fail closed).
                verdict, reason = _KEEP, f"a live owner's journal (pid {held[name]}) also names it; kept"
            if verdict is _KEEP and why and not anonymous:
                reason = why
            # As self.item(): the journal keeps the POSIX form (/lg_x), a report shows the public one (lg_x).
            state = _STATE_OF_VERDICT[verdict]
            item = _item(public_name(name), kind, entry.size, pid, state, reason, path, round(now - entry.created, 3))
            if verdict is _REMOVE:
                settled &= self._remove(entry, item, facts, objects)
            elif verdict is _KEEP:
                report.kept.append(item)
                settled = False
            elif verdict is _DROP:
                report.dropped.append(item)
            elif verdict is _GONE:
                report.gone.append(item)
            else:
                report.errors.append(item)
                settled = False
        report.bytes_freed += freed
        return settled

    def _owner_fate(self, header: Header, locked: bool) -> tuple[Liveness, str]:
        if header.uid != self.uid:
            return Liveness.UNKNOWN, f"journal names uid {header.uid} as its owner; kept"
        by_table = identity_liveness(header.owner)
        if by_table is Liveness.DEAD and header.parent is not None and self.as_parent is None:
            # A dead pool worker: while its pool lives, the pool settles its journal (the
            # pool may be adopting a result block from it at this very instant).
            pool = identity_liveness(header.parent)
            if pool in (Liveness.ALIVE, Liveness.UNKNOWN):
                return Liveness.ALIVE, f"worker of a live pool (pid {header.parent.pid}), which settles it; kept"
        if locked:
            if by_table is Liveness.ALIVE:
                of_pool = "" if header.parent is None else f", a worker of the pool in pid {header.parent.pid}"
                return Liveness.ALIVE, f"owner alive (pid {header.owner.pid}{of_pool})"
            return Liveness.ALIVE, "journal locked by another process (a sweep at work?); kept"
        if by_table is Liveness.ALIVE:
            return Liveness.UNKNOWN, f"owner pid {header.owner.pid} runs but does not hold its journal lock; kept"
        if by_table is Liveness.UNKNOWN:
            return (
                Liveness.UNKNOWN,
                "owner's liveness cannot be decided (another pid namespace, or access denied); kept",
            )
        return by_table, ""

    def _remove(
        self, entry: Entry, item: SweepItem, facts: _ipc.ObjectFacts | None, objects: _ipc.ObjectFolder
    ) -> bool:
        if not self.report.dry_run:
            try:
                unlinked = objects.unlink(entry.kind, entry.name)
            except Exception as exc:  # noqa: BLE001 - reported, never raised: one entry must not stop the sweep
                self.report.errors.append(replace(item, reason=f"unlink failed: {exc}"))
                return False
            if not unlinked:
                self.report.gone.append(replace(item, state=SweepState.GONE, reason="already gone"))
                return True
            failpoint("sweep.after-unlink")  # a sweep killed mid-way: the next one finishes its work
        self.report.removed.append(item)
        self.report.bytes_freed += facts.size if facts else 0
        return True
