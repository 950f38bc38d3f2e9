"""The journal: one append-only file per owning process, written ahead of every resource.

File ``<folder>/<pid>-<token>.journal``, written by _writer.py. Each record is one ``write()``::

    "\\n" LENGTH " " CRC32 " " PAYLOAD

LENGTH is the payload's size in decimal, CRC32 eight lowercase hex digits of
``zlib.crc32(PAYLOAD)``, PAYLOAD a compact ASCII JSON object with no newline.
The leading newline means a record torn by a crash never swallows the next one.
The first record names the format version and the owner::

    {"op":"journal","v":1,"pid":..,"start":..,"boot":"..","pidns":..,"uid":..,"at":..,"cmd":"..",
     "parent":{"pid":..,"start":..,"boot":"..","pidns":..}}

("parent" only in a pool worker's journal: the pool's process, see sweep.py)

then, per resource, in this order around the system calls (shm.py, sem.py):

    {"op":"add","kind":"shm","name":"/lg_...","size":4096,"at":..}   before it exists
    {"op":"ino","name":"/lg_...","dev":27,"ino":1234}                 after it exists
    {"op":"del","name":"/lg_..."}                                     after the unlink

So no crash point leaves an object the journal does not name; at worst the
journal names an object that is already gone, which the sweep settles.

The owner holds ``flock(LOCK_EX)`` on its file for its whole life; the kernel
drops it when the owner dies, however it dies. The file is written under a
temporary name, locked, given its header and only then renamed to ``.journal``,
so a ``.journal`` file always has a complete header and an owner lock from its
first instant.

The reader trusts nothing: a record with a bad frame, checksum, JSON, field or
name is skipped and reported. A torn last record (the owner died mid-write) is
expected and harmless; anything else marks the journal as damaged, and the
sweep then acts on the valid records but keeps the file.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from leakguard._os.names import is_ours

from .identity import Identity

__all__ = [
    "FORMAT_VERSION",
    "MAX_JOURNAL_BYTES",
    "MAX_RECORD_BYTES",
    "Entry",
    "Header",
    "JournalContents",
    "Problem",
    "encode_record",
    "parse_journal",
]

FORMAT_VERSION = 1
MAX_RECORD_BYTES = 4096
# A journal is compacted by its owner long before this; a larger file is not read.
MAX_JOURNAL_BYTES = 64 << 20
JOURNAL_SUFFIX = ".journal"
TEMP_SUFFIX = ".tmp"
KINDS = ("shm", "sem")


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
    header: Header | None
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """True when something other than a torn last record was skipped."""
        return self.header is None or any(not p.harmless for p in self.problems)

    def live(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.removed]


_HEAD = re.compile(rb"(\d{1,4}) ([0-9a-f]{8}) ")
_TORN = re.compile(rb"\d{0,4}|\d{1,4} [0-9a-f]{0,8}|(\d{1,4}) ([0-9a-f]{8}) (.*)", re.DOTALL)
_NL = 0x0A


def _is_torn(tail: bytes) -> bool:
    """Is ``tail`` (the file's last bytes) what a writer killed mid-``write()`` leaves?

    That is a strict prefix of a well-formed record. A complete payload whose
    length field was raised is not one: its checksum still matches, so it is damage.
    """
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


def parse_journal(data: bytes) -> JournalContents:
    """Parse a journal's bytes. Never raises: what cannot be validated is skipped and reported.

    Records are framed by their LENGTH, not by the newlines between them, so damage
    to one record's separator costs that record only, never the intact one before it.
    After damage, reading resumes at the next newline.
    """
    size = len(data)
    if size > MAX_JOURNAL_BYTES:
        return _too_large(size)
    contents = JournalContents(header=None)
    problems = contents.problems
    pos = 0
    if size and data[0] != _NL:
        problems.append(Problem(0, "corrupt", "the file does not start with a record"))
        pos = _next_record(data, 0)
    while pos < size:
        at = pos + 1  # a record's offset is that of its first byte after the newline
        m = _HEAD.match(data, at)
        end = m.end() + int(m.group(1)) if m else size + 1
        if m is None or end > size:
            if data.find(b"\n", at) < 0 and _is_torn(data[at:]):
                problems.append(Problem(at, "torn", "last record is incomplete (its writer was killed mid-write)"))
                break
            problems.append(Problem(at, "corrupt", "bad frame"))
            pos = _next_record(data, at)
            continue
        assert m is not None
        payload = data[m.end() : end]
        if len(payload) > MAX_RECORD_BYTES:
            problems.append(Problem(at, "corrupt", f"record of {len(payload)} bytes is over the limit"))
            pos = _next_record(data, at)
            continue
        if int(m.group(2), 16) != zlib.crc32(payload):
            problems.append(Problem(at, "corrupt", "checksum mismatch (record altered)"))
            pos = _next_record(data, at)
            continue
        try:
            obj = json.loads(payload)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            _apply(contents, obj, at)
        except _StopReadingError:
            return contents
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            problems.append(Problem(at, "invalid", f"record does not validate: {type(exc).__name__}: {exc!s:.80}"))
        pos = end
        if pos < size and data[pos] != _NL:
            problems.append(Problem(pos, "corrupt", "bytes after a record where the next record should start"))
            pos = _next_record(data, pos)
    if contents.header is None and not any(p.kind == "version" for p in problems):
        problems.append(Problem(0, "invalid", "no valid header record"))
    return contents


def _too_large(size: int) -> JournalContents:
    return JournalContents(
        header=None, problems=[Problem(0, "too-large", f"{size:,} bytes is more than any journal should hold")]
    )


def _next_record(data: bytes, after: int) -> int:
    found = data.find(b"\n", after)
    return len(data) if found < 0 else found


class _StopReadingError(Exception):
    pass


def _apply(contents: JournalContents, obj: dict[str, Any], at: int) -> None:
    op = obj.get("op")
    if op == "journal":
        if contents.header is not None:
            raise ValueError("second header")
        if at != 1:
            raise ValueError("header is not the first record")
        if obj.get("v") != FORMAT_VERSION:
            contents.problems.append(
                Problem(at, "version", f"format version {obj.get('v')!r:.20}; this leakguard reads {FORMAT_VERSION}")
            )
            raise _StopReadingError
        contents.header = _header(obj)
        return
    if contents.header is None:
        raise ValueError(f"{op!r:.20} record before the header")
    name = obj.get("name")
    if not is_ours(name):
        contents.problems.append(Problem(at, "refused-name", f"name {name!r:.60} is not one leakguard makes"))
        return
    assert isinstance(name, str)
    entries = contents.entries
    if op == "add":
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r:.20}")
        if name in entries:
            raise ValueError(f"{name} added twice")
        entries[name] = Entry(kind=kind, name=name, size=_int(obj["size"]), created=_num(obj["at"]))
    elif op == "ino":
        entry = entries.get(name)
        if entry is None:
            raise ValueError(f"inode of {name}, which was never added")
        entry.dev = _int(obj["dev"])
        entry.ino = _int(obj["ino"])
    elif op == "del":
        entry = entries.get(name)
        if entry is None:
            raise ValueError(f"removal of {name}, which was never added")
        entry.removed = True
    else:
        raise ValueError(f"unknown op {op!r:.20}")


def read_journal_fd(fd: int) -> JournalContents:
    """Read a whole journal from an open descriptor (from offset 0), size-capped."""
    size = os.fstat(fd).st_size
    if size > MAX_JOURNAL_BYTES:
        return _too_large(size)  # not read at all
    return parse_journal(os.pread(fd, size, 0))
