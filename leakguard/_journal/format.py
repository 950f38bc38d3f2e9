"""The journal: one append-only file per owning process, written ahead of every resource.

File ``<folder>/<pid>-<token>.journal``, written by writer.py. Each record is one ``write()``::

    "\\n" LENGTH " " CRC32 " " PAYLOAD

LENGTH is the payload's size in decimal, CRC32 eight lowercase hex digits of
``zlib.crc32(PAYLOAD)``, PAYLOAD a compact ASCII JSON object with no newline.
The leading newline means a record torn by a crash never swallows the next one.
The first record names the format version and the owner::

    {"op":"journal","v":1,"pid":..,"start":..,"boot":"..","pidns":..,"uid":..,"at":..,"cmd":"..",
     "parent":{"pid":..,"start":..,"boot":"..","pidns":..}}

("parent" only in a pool worker's journal: the pool's process, see _sweep/journaled.py)

then, per resource (their order around the system calls: docs/design.md, "Write-ahead order"):

    {"op":"add","kind":"shm","name":"/lg_...","size":4096,"at":..}
    {"op":"ino","name":"/lg_...","dev":27,"ino":1234}
    {"op":"del","name":"/lg_..."}

An anonymous block (a memfd, kind ``"memfd"``) has an ``add`` and a ``del`` record, written
after it exists and after it is released: nothing is ever unlinked for it (the kernel frees
it with its last holder), so its records only tell ``leakguard ls`` what lives. A reader
older than the kind reports such a record as one it cannot validate and acts on the rest.

The owner holds ``flock(LOCK_EX)`` on its file for its whole life; the kernel
drops it when the owner dies, however it dies. The file is written under a
temporary name, locked, given its header and only then renamed to ``.journal``,
so a ``.journal`` file always has a complete header and an owner lock from its
first instant.

The reader trusts nothing: a record with a bad frame, checksum, JSON, field or
name is skipped and reported. A torn last record (the owner died mid-write) is
expected and harmless; anything else marks the journal as damaged, and the
sweep then acts on the valid records but keeps the file. Damage costs time
linear in its size and bounded memory, whatever its shape (SPEC 6): a run of
bad bytes is one problem, problems are counted and only the first few kept,
and a file is read a window at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leakguard._os.names import NAME_PATTERN, is_ours, public_name

from .identity import Identity

__all__ = [
    "ANONYMOUS",
    "FORMAT_VERSION",
    "MAX_JOURNAL_BYTES",
    "MAX_LISTED_PROBLEMS",
    "MAX_RECORD_BYTES",
    "OPEN_FLAGS",
    "Entry",
    "Header",
    "JournalCache",
    "JournalContents",
    "Problem",
    "encode_record",
    "is_unpublished_journal",
    "open_journal",
    "parse_journal",
    "pid_of_file",
    "read_header_fd",
    "read_journal_fd",
]

FORMAT_VERSION = 1
MAX_RECORD_BYTES = 4096
# A journal is compacted by its owner long before this; a larger file is not read.
MAX_JOURNAL_BYTES = 64 << 20
# A damaged journal's problems are counted by kind; only the first few are kept and shown.
MAX_LISTED_PROBLEMS = 10
JOURNAL_SUFFIX = ".journal"
TEMP_SUFFIX = ".tmp"
KINDS = ("shm", "sem")  # named objects: what the sweep may unlink
ANONYMOUS = "memfd"  # an anonymous block's kind: recorded, never unlinked


# The names writer.py gives journal files: PID-TOKEN.journal, and PID-TOKEN.tmp while one is
# made. The sweep opens nothing else (SPEC 3: it deletes only files it can prove are journals).
_FILE_NAME = re.compile(r"([1-9][0-9]{0,9})-[0-9a-f]{12}\.(?:journal|tmp)")


def pid_of_file(filename: str) -> int | None:
    """The pid in a journal file's name, or None if leakguard never gives a file this name."""
    m = _FILE_NAME.fullmatch(filename)
    return None if m is None else int(m.group(1))


def encode_record(payload: bytes) -> bytes:
    return b"\n%d %08x %s" % (len(payload), zlib.crc32(payload), payload)


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Header:
    version: int
    owner: Identity
    uid: int
    created: float
    command: str
    # A pool worker's journal names the pool's process: while that process lives,
    # the worker's entries are the pool's to settle (it may have adopted some).
    parent: Identity | None = None


@dataclass
class Entry:
    kind: str
    name: str
    size: int
    created: float
    dev: int | None = None
    ino: int | None = None
    removed: bool = False


@dataclass(frozen=True)
class Problem:
    offset: int
    kind: str  # "torn" (harmless), "corrupt", "invalid", "refused-name", "version", "too-large"
    detail: str

    @property
    def harmless(self) -> bool:
        return self.kind == "torn"


@dataclass
class JournalContents:
    """What a journal says. ``problems`` lists the first few problems met (at most
    MAX_LISTED_PROBLEMS); ``problem_counts`` counts all of them by kind, so that a
    damaged file of any size costs a few lines of report, not one per bad byte."""

    header: Header | None
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)

    @property
    def damaged(self) -> bool:
        """True when something other than a torn last record was skipped."""
        return self.header is None or any(kind != "torn" for kind in self.problem_counts)

    @property
    def unlisted(self) -> int:
        """How many problems were counted but not kept in ``problems``."""
        return sum(self.problem_counts.values()) - len(self.problems)

    def add_problem(self, offset: int, kind: str, detail: str) -> None:
        self.problem_counts[kind] = self.problem_counts.get(kind, 0) + 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(Problem(offset, kind, detail))

    def live(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.removed]


_HEAD = re.compile(rb"(\d{1,4}) ([0-9a-f]{8}) ")
# Where a record can start: after damage, reading resumes at the next match (searched for
# in C, not byte by byte: a file of a million bad lines must not cost a million steps).
_SYNC = re.compile(rb"\n\d{1,4} [0-9a-f]{8} ")
_SYNC_BYTES = 15  # the longest match of _SYNC
_TORN = re.compile(rb"\d{0,4}|\d{1,4} [0-9a-f]{0,8}|(\d{1,4}) ([0-9a-f]{8}) (.*)", re.DOTALL)
_NL = 0x0A
# The longest frame _HEAD allows: newline, 4 digits, space, 8 hex digits, space, 9999 bytes.
_MAX_FRAME = 1 + 4 + 1 + 8 + 1 + 9999
_WINDOW = 1 << 20  # read_journal_fd reads this much at a time: its memory does not grow with the file

# The fast path (issue 15: parsing was most of a sweep's time). The three records writer.py
# formats by hand, matched whole by a regular expression instead of json.loads and the field
# checks; an ``add`` followed by the ``ino`` of the same name (as the writer writes them) in
# one match. It accepts only what the general path accepts, with the same values: exactly
# the writer's field order and spelling, no spaces or escapes, names of our own pattern,
# integers without leading zeros and of at most 18 digits (under 2**63), a time with a
# decimal point and at most 14 digits before it (far below 1e15). Anything else, and a record
# whose length, checksum or place in the journal is wrong, goes to the general path, which
# reads or reports it as before (tests/test_journal.py holds the two paths to one result).
_FRAME = rb"\n([0-9]{1,4}) ([0-9a-f]{8}) "
_UINT = rb"(0|[1-9][0-9]{0,17})"
_NAME = rb'"name":"(' + NAME_PATTERN.encode("ascii") + rb')"'
_KIND = rb"(" + rb"|".join(kind.encode("ascii") for kind in KINDS) + rb")"
_TIME = rb"((?:0|[1-9][0-9]{0,13})\.[0-9]{1,9})"
_ADD = rb'\{"op":"add","kind":"%b",%b,"size":%b,"at":%b\}' % (_KIND, _NAME, _UINT, _TIME)
_INO = rb'\{"op":"ino",%b,"dev":%b,"ino":%b\}'
_DEL = rb'\{"op":"del",%b\}' % _NAME
# Groups: length, checksum, payload; then the add's kind, name, size, time, or the ino's
# name, dev, inode, or the del's name (those of the other records are None).
_FAST = re.compile(rb"%b(%b|%b|%b)" % (_FRAME, _ADD, _INO % (_NAME, _UINT, _UINT), _DEL))
# Groups: the add's length, checksum, payload, kind, name, size, time; the ino's length,
# checksum, payload, dev, inode (its name is the add's: \5).
_FAST_PAIR = re.compile(rb"%b(%b)%b(%b)" % (_FRAME, _ADD, _FRAME, _INO % (rb'"name":"\5"', _UINT, _UINT)))
assert (_FAST.groups, _FAST_PAIR.groups) == (11, 12), "NAME_PATTERN must hold no group of its own"
_FAST_KIND = {kind.encode("ascii"): kind for kind in KINDS}


def _is_torn(tail: bytes) -> bool:
    """Is ``tail`` (the file's last bytes) what a writer killed mid-``write()`` leaves?

    That is a strict prefix of a well-formed record. A complete payload whose
    length field was raised is not one: its checksum still matches, so it is damage.
    """
    if len(tail) >= _MAX_FRAME:
        return False
    m = _TORN.fullmatch(tail)
    if m is None:
        return False
    if m.group(1) is None:
        return True
    payload = m.group(3)
    return len(payload) < int(m.group(1)) and zlib.crc32(payload) != int(m.group(2), 16)


def _int(value: Any, *, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"expected an integer in [{lo}, {hi}], got {value!r:.40}")
    return value


def _num(value: Any) -> float:
    if type(value) not in (int, float) or not -1e15 < value < 1e15:  # no inf, nan, or 400-digit ints
        raise ValueError(f"expected a number, got {value!r:.40}")
    return float(value)


def _str(value: Any, limit: int = 256) -> str:
    if type(value) is not str or len(value) > limit:
        raise ValueError(f"expected a string of at most {limit} characters")
    return value


def _identity(obj: dict[str, Any]) -> Identity:
    return Identity(
        pid=_int(obj["pid"], lo=1),
        start=_int(obj["start"]),
        boot=_str(obj["boot"], 64),
        pidns=_int(obj["pidns"]),
    )


def _header(obj: dict[str, Any]) -> Header:
    owner = _identity(obj)
    parent = obj.get("parent")
    if parent is not None and type(parent) is not dict:
        raise ValueError("parent must be an object")
    return Header(
        version=_int(obj["v"]),
        owner=owner,
        uid=_int(obj["uid"], hi=(1 << 32) - 1),
        created=_num(obj["at"]),
        command=_str(obj.get("cmd", ""), 512),
        parent=None if parent is None else _identity(parent),
    )


class _Reader:
    """Reads a journal's bytes as they come, a window at a time (see ``feed``).

    Records are framed by their LENGTH, not by the newlines between them, so damage
    to one record's separator costs that record only, never the intact one before it.
    After damage, reading resumes where the next record can start (``_SYNC``), and a
    whole run of damage is one problem however long it is: time linear in the file's
    size, memory bounded by the window (MAX_LISTED_PROBLEMS problems are kept).
    """

    def __init__(self) -> None:
        self.contents = JournalContents(header=None)
        self.stopped = False  # a foreign format version: nothing after the header is read
        self._skipping: tuple[int, str] | None = None  # (offset, why) of the damage being skipped

    def feed(self, data: bytes, base: int, final: bool) -> int:
        """Read the records in ``data`` (which starts at file offset ``base``); returns how
        many of its bytes were used. Unless ``final`` (``data`` runs to the end of the file),
        stops before a record that might continue past ``data``'s end: the caller feeds the
        unused bytes again with what follows."""
        n = len(data)
        pos = 0
        if base == 0 and n and data[0] != _NL:
            self._skipping = (0, "the file does not start with a record")
        while pos < n and not self.stopped:
            if self._skipping is not None:
                found = _SYNC.search(data, pos)
                if found is None:
                    if not final:
                        return max(pos, n - _SYNC_BYTES)  # a start of record may straddle the windows
                    self._end_skip(base + n)
                    return n
                pos = found.start()
                self._end_skip(base + pos)
            if self.contents.header is not None:
                pos = self._fast(data, pos)
                if pos >= n:
                    break
            if not final and n - pos < _MAX_FRAME:
                return pos
            if data[pos] != _NL:
                self._skipping = (base + pos, "bytes after a record where the next record should start")
                continue
            pos = self._record(data, pos, base, final)
        return n if pos >= n else pos

    def _fast(self, data: bytes, pos: int) -> int:
        """Read the writer's own records from ``pos`` on, as long as they match ``_FAST_PAIR``
        or ``_FAST`` and apply without a problem; returns where the first other record starts
        (or ``len(data)``).

        A complete match is a complete record (its payload is as long as its LENGTH says),
        so no window boundary is in the way. Whatever stops this loop, the general path
        reads from that very record: a problem is found and reported there, as before.
        """
        pair = _FAST_PAIR.match
        single = _FAST.match
        crc32 = zlib.crc32
        entries = self.contents.entries
        kinds = _FAST_KIND
        while True:
            m = pair(data, pos)
            if m is not None:
                length, crc, payload, kind, name, size, at, length2, crc2, payload2, dev, ino = m.groups()
                if (
                    len(payload) == int(length)
                    and crc32(payload) == int(crc, 16)
                    and len(payload2) == int(length2)
                    and crc32(payload2) == int(crc2, 16)
                ):
                    key = name.decode("ascii")
                    if key not in entries:
                        entries[key] = Entry(kinds[kind], key, int(size), float(at), int(dev), int(ino))
                        pos = m.end()
                        continue
                # Else the add alone, below: then the ino, or the general path's report of it.
            m = single(data, pos)
            if m is None:
                return pos
            length, crc, payload, kind, name, size, at, ino_name, dev, ino, del_name = m.groups()
            if len(payload) != int(length) or crc32(payload) != int(crc, 16):
                return pos
            if kind is not None:
                key = name.decode("ascii")
                if key in entries:
                    return pos  # added twice: the general path reports it
                entries[key] = Entry(kinds[kind], key, int(size), float(at))
            elif dev is not None:
                entry = entries.get(ino_name.decode("ascii"))
                if entry is None:
                    return pos  # never added: the general path reports it
                entry.dev = int(dev)
                entry.ino = int(ino)
            else:
                entry = entries.get(del_name.decode("ascii"))
                if entry is None:
                    return pos
                entry.removed = True
            pos = m.end()

    def _end_skip(self, end: int) -> None:
        assert self._skipping is not None
        at, why = self._skipping
        self._skipping = None
        self.contents.add_problem(at, "corrupt", f"{why}; {end - at:,} bytes skipped")

    def _record(self, data: bytes, pos: int, base: int, final: bool) -> int:
        """Read the record whose newline is at ``pos``; returns where the next one starts."""
        problem = self.contents.add_problem
        at = pos + 1  # a record's offset is that of its first byte after the newline
        m = _HEAD.match(data, at)
        end = m.end() + int(m.group(1)) if m else len(data) + 1
        if m is None or end > len(data):
            if final and data.find(b"\n", at) < 0 and _is_torn(data[at:]):
                problem(base + at, "torn", "last record is incomplete (its writer was killed mid-write)")
                return len(data)
            self._skipping = (base + at, "bad frame")
            return at
        payload = data[m.end() : end]
        if len(payload) > MAX_RECORD_BYTES:
            self._skipping = (base + at, f"record of {len(payload)} bytes is over the limit")
            return at
        if int(m.group(2), 16) != zlib.crc32(payload):
            self._skipping = (base + at, "checksum mismatch (record altered)")
            return at
        try:
            obj = json.loads(payload)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            _apply(self.contents, obj, base + at)
        except _StopReadingError:
            self.stopped = True
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            problem(base + at, "invalid", f"record does not validate: {type(exc).__name__}: {exc!s:.80}")
        return end

    def finish(self) -> JournalContents:
        contents = self.contents
        if contents.header is None and "version" not in contents.problem_counts:
            contents.add_problem(0, "invalid", "no valid header record")
        return contents


def parse_journal(data: bytes) -> JournalContents:
    """Parse a journal's bytes. Never raises: what cannot be validated is skipped and reported."""
    if len(data) > MAX_JOURNAL_BYTES:
        return _too_large(len(data))
    reader = _Reader()
    reader.feed(data, 0, final=True)
    return reader.finish()


def _too_large(size: int) -> JournalContents:
    contents = JournalContents(header=None)
    contents.add_problem(0, "too-large", f"{size:,} bytes is more than any journal should hold")
    return contents


class _StopReadingError(Exception):
    pass


# The fields each record may have (STYLE habit 6: a reader skips what it cannot validate, and a
# field it does not know is something it cannot validate; new fields come with a new version).
_FIELDS = {
    "journal": frozenset({"op", "v", "pid", "start", "boot", "pidns", "uid", "at", "cmd", "parent"}),
    "add": frozenset({"op", "kind", "name", "size", "at"}),
    "ino": frozenset({"op", "name", "dev", "ino"}),
    "del": frozenset({"op", "name"}),
}
_IDENTITY_FIELDS = frozenset({"pid", "start", "boot", "pidns"})


def _known_fields_only(op: str, obj: dict[str, Any]) -> None:
    unknown = obj.keys() - _FIELDS[op]
    parent = obj.get("parent")
    if op == "journal" and isinstance(parent, dict):
        unknown |= {f"parent.{k}" for k in parent.keys() - _IDENTITY_FIELDS}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(map(str, unknown))!r:.60} in a {op!r} record")


def _apply(contents: JournalContents, obj: dict[str, Any], at: int) -> None:
    op = obj.get("op")
    if op == "journal":
        if contents.header is not None:
            raise ValueError("second header")
        if at != 1:
            raise ValueError("header is not the first record")
        if obj.get("v") != FORMAT_VERSION:
            contents.add_problem(
                at, "version", f"format version {obj.get('v')!r:.20}; this leakguard reads {FORMAT_VERSION}"
            )
            raise _StopReadingError
        _known_fields_only(op, obj)
        contents.header = _header(obj)
        return
    if contents.header is None:
        raise ValueError(f"{op!r:.20} record before the header")
    name = obj.get("name")
    if not is_ours(name):
        contents.add_problem(at, "refused-name", f"name {name!r:.60} is not one leakguard makes")
        return
    assert isinstance(name, str)
    if op in _FIELDS:
        _known_fields_only(op, obj)
    entries = contents.entries
    if op == "add":
        kind = obj.get("kind")
        if kind not in KINDS and kind != ANONYMOUS:
            raise ValueError(f"unknown kind {kind!r:.20}")
        if name in entries:
            raise ValueError(f"{public_name(name)} added twice")
        entries[name] = Entry(kind=kind, name=name, size=_int(obj["size"]), created=_num(obj["at"]))
    elif op == "ino":
        entry = entries.get(name)
        if entry is None:
            raise ValueError(f"inode of {public_name(name)}, which was never added")
        entry.dev = _int(obj["dev"])
        entry.ino = _int(obj["ino"])
    elif op == "del":
        entry = entries.get(name)
        if entry is None:
            raise ValueError(f"removal of {public_name(name)}, which was never added")
        entry.removed = True
    else:
        raise ValueError(f"unknown op {op!r:.20}")


def read_journal_fd(fd: int) -> JournalContents:
    """Read a whole journal from an open descriptor (from offset 0), size-capped.

    A window at a time: the memory used does not grow with the file's size.
    """
    return _read_fd(fd, os.fstat(fd).st_size, None)


def _read_fd(fd: int, size: int, seen: Callable[[bytes], object] | None) -> JournalContents:
    """``read_journal_fd`` of the first ``size`` bytes; ``seen`` (a hash's ``update``, say) is
    given every byte read, in order."""
    if size > MAX_JOURNAL_BYTES:
        return _too_large(size)  # not read at all
    reader = _Reader()
    data = b""
    base = 0  # the file offset of data[0]
    while True:
        offset = base + len(data)
        chunk = os.pread(fd, min(_WINDOW, size - offset), offset) if offset < size else b""
        if seen is not None:
            seen(chunk)
        data += chunk
        final = not chunk or base + len(data) >= size
        used = reader.feed(data, base, final)
        if final or reader.stopped:
            return reader.finish()
        data = data[used:]
        base += used


def _digest_fd(fd: int, size: int) -> bytes | None:
    """The SHA-256 of the first ``size`` bytes of the file, a window at a time; None if the
    file no longer has that many."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_WINDOW, size - offset), offset)
        if not chunk:
            return None
        digest.update(chunk)
        offset += len(chunk)
    return digest.digest()


@dataclass(frozen=True)
class _Read:
    stamp: tuple[int, int, int]  # size, mtime and ctime (ns) when it was read
    digest: bytes  # SHA-256 of exactly the bytes read
    contents: JournalContents


class JournalCache:
    """Journals read before, so that one read again unchanged is not parsed again (issue 15).

    Who reads the same journal again and again: every sweep reads each live owner's journal
    twice (for the names it holds, then to report its entries kept), and a process that
    sweeps repeatedly (a guardian's passes, a Dask worker's plugin) reads them at every pass.

    A journal read before is known by its file (device, inode). Its contents are reused
    only when the file's size, mtime and ctime are those it was read with *and* its bytes
    still hash the same (SHA-256): timestamps tick coarsely (a tmpfs stamps with the kernel's
    tick), so a journal changed and restored to its old size within one tick must not pass
    for unchanged. Checking reads the file but parses nothing (about 1 ms for 10,000
    entries, against 35 ms to parse them). A changed journal is read afresh.

    Bounded: at most ``max_entries`` journal entries in all (about 300 bytes each), the
    least recently read journal forgotten first; ``forget_unused()`` drops what was not
    read since its last call. Thread-safe. The contents it returns are shared by every
    caller that reads that journal: read them, never change them.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._reads: OrderedDict[tuple[int, int], _Read] = OrderedDict()
        self._used: set[tuple[int, int]] = set()
        self._entries = 0  # in all the cached contents

    def read(self, fd: int) -> JournalContents:
        """``read_journal_fd(fd)``, parsed again only if the file changed since it was last read."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            known = self._reads.get(key)
        if known is not None and known.stamp == stamp and _digest_fd(fd, st.st_size) == known.digest:
            with self._lock:
                if self._reads.get(key) is known:
                    self._reads.move_to_end(key)
                    self._used.add(key)
            return known.contents
        digest = hashlib.sha256()
        contents = _read_fd(fd, st.st_size, digest.update)
        if st.st_size <= MAX_JOURNAL_BYTES and _whole(contents):
            self._keep(key, _Read(stamp, digest.digest(), contents))
        return contents

    def _keep(self, key: tuple[int, int], read: _Read) -> None:
        size = len(read.contents.entries)
        with self._lock:
            old = self._reads.pop(key, None)
            if old is not None:
                self._entries -= len(old.contents.entries)
            if size > self.max_entries:
                return
            self._reads[key] = read
            self._used.add(key)
            self._entries += size
            while self._entries > self.max_entries:
                _, dropped = self._reads.popitem(last=False)
                self._entries -= len(dropped.contents.entries)

    def forget_unused(self) -> None:
        """Forget the journals not read since the last call (those gone, say)."""
        with self._lock:
            for key in [k for k in self._reads if k not in self._used]:
                self._entries -= len(self._reads.pop(key).contents.entries)
            self._used.clear()

    def clear(self) -> None:
        """Forget every journal read."""
        with self._lock:
            self._reads.clear()
            self._used.clear()
            self._entries = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._reads)


def _whole(contents: JournalContents) -> bool:
    """Was every byte read (and so hashed)? Not when a foreign version stopped the reading."""
    return "version" not in contents.problem_counts


def read_header_fd(fd: int) -> Header | None:
    """Only the header of a journal: its first record, read from at most one frame's bytes.

    For those who need to know whose a journal is and nothing more (the guardian
    looking for its pool's workers): a large or damaged file costs them nothing.
    """
    reader = _Reader()
    reader.feed(os.pread(fd, _MAX_FRAME, 0), 0, final=True)
    return reader.contents.header


def is_unpublished_journal(fd: int) -> bool:
    """Is this ``.tmp`` file provably a journal its writer never published?

    writer.py writes a header (and, when compacting, the live records after it) in one
    ``write()`` and then renames the file: so the file is empty, or a torn start of a
    record, or a journal that reads without damage. Anything else is not ours to delete.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return True
    if size < _MAX_FRAME:
        head = os.pread(fd, size, 0)
        if head[0] == _NL and head.find(b"\n", 1) < 0 and _is_torn(head[1:]):
            return True
    contents = read_journal_fd(fd)
    return contents.header is not None and not contents.damaged


# Never through a symbolic link, never inherited by a child, never blocked by a FIFO put
# where a journal should be (SPEC 6).
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_journal(path: str, *, write: bool = False) -> int | None:
    """A descriptor on the journal file at ``path``, or None if it cannot be opened
    (gone, a symbolic link, not ours to open): the caller skips it."""
    try:
        return os.open(path, (os.O_RDWR if write else os.O_RDONLY) | OPEN_FLAGS)
    except OSError:
        return None
