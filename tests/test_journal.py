"""The journal reader against damaged and hostile bytes (SPEC 6).

Journals are written by the real ``JournalWriter`` (so the records have exactly the shapes it
produces); a small model says what each sequence of operations should read back as. Then the
bytes are truncated, extended, altered and fuzzed, and ``parse_journal`` must never raise,
never invent an entry and never trust a record it cannot validate.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakguard._journal import format as journal
from leakguard._journal.format import (
    ANONYMOUS,
    FORMAT_VERSION,
    KINDS,
    MAX_LISTED_PROBLEMS,
    MAX_RECORD_BYTES,
    JournalContents,
    encode_record,
    parse_journal,
)
from leakguard._journal.identity import Identity
from leakguard._journal.writer import JournalWriter
from leakguard._os.names import is_ours

EXAMPLES = settings(max_examples=60, deadline=None)
U63 = st.integers(0, (1 << 63) - 1)


# ---------------------------------------------------------------------------- building journals


@dataclass(frozen=True)
class Op:
    """One call on JournalWriter: ``add``, ``ino`` or ``del``."""

    what: str
    name: str
    kind: str = "shm"
    size: int = 0
    dev: int = 0
    ino: int = 0


def lg_name(value: int) -> str:
    """A name of leakguard's own pattern (``/lg_`` + 16 base32 characters) for an 80-bit value."""
    return "/lg_" + base64.b32encode(value.to_bytes(10, "big")).decode("ascii").lower()


@st.composite
def op_lists(draw: st.DrawFn, min_size: int = 1) -> list[Op]:
    """Sequences the writer really produces: each name is added once, then maybe ino, then maybe del."""
    steps = draw(st.lists(st.sampled_from(("add", "ino", "del")), min_size=min_size, max_size=10))
    ops: list[Op] = []
    without_inode: list[str] = []
    live: list[str] = []
    for step in steps:
        if step == "ino" and without_inode:
            name = without_inode.pop(draw(st.integers(0, len(without_inode) - 1)))
            ops.append(Op("ino", name, dev=draw(U63), ino=draw(U63)))
        elif step == "del" and live:
            name = live.pop(draw(st.integers(0, len(live) - 1)))
            if name in without_inode:
                without_inode.remove(name)
            ops.append(Op("del", name))
        else:
            # The low byte is the op's index: names are unique within a journal.
            name = lg_name(draw(st.integers(0, (1 << 72) - 1)) << 8 | len(ops))
            kind = draw(st.sampled_from((*KINDS, ANONYMOUS)))
            ops.append(Op("add", name, kind=kind, size=draw(st.integers(0, 1 << 48))))
            without_inode.append(name)
            live.append(name)
    return ops


def written(ops: list[Op]) -> bytes:
    """The bytes JournalWriter leaves on disk for ``ops``."""
    with tempfile.TemporaryDirectory() as folder:
        writer = JournalWriter(folder)
        try:
            for op in ops:
                if op.what == "add":
                    writer.add(op.kind, op.name, op.size)
                elif op.what == "ino":
                    writer.inode(op.name, op.dev, op.ino)
                else:
                    writer.remove(op.name)
            return Path(writer.path).read_bytes()
        finally:
            writer.close(remove_file=True)


def split_records(data: bytes) -> list[bytes]:
    """A journal's records, each with its leading newline (payloads hold no newline)."""
    assert data.startswith(b"\n")
    records = [b"\n" + chunk for chunk in data.split(b"\n")[1:]]
    assert b"".join(records) == data
    return records


Facts = dict[str, tuple[str, int, int | None, int | None, bool]]


def model(ops: list[Op]) -> Facts:
    """What a reader must make of ``ops``: name -> (kind, size, dev, ino, removed)."""
    out: Facts = {}
    for op in ops:
        if op.what != "add" and op.name not in out:
            continue  # its add record was lost: the reader reports this record as invalid
        if op.what == "add":
            out[op.name] = (op.kind, op.size, None, None, False)
        elif op.what == "ino":
            kind, size, _, _, removed = out[op.name]
            out[op.name] = (kind, size, op.dev, op.ino, removed)
        else:
            kind, size, dev, ino, _ = out[op.name]
            out[op.name] = (kind, size, dev, ino, True)
    return out


def view(contents: JournalContents) -> Facts:
    return {n: (e.kind, e.size, e.dev, e.ino, e.removed) for n, e in contents.entries.items()}


def record(obj: object) -> bytes:
    return encode_record(json.dumps(obj, separators=(",", ":")).encode("ascii"))


def header_obj(**changes: Any) -> dict[str, Any]:
    me = Identity.current()
    obj: dict[str, Any] = {
        "op": "journal",
        "v": FORMAT_VERSION,
        "pid": me.pid,
        "start": me.start,
        "boot": me.boot,
        "pidns": me.pidns,
        "uid": os.geteuid(),
        "at": 1700000000.5,
        "cmd": "test",
    }
    obj.update(changes)
    return obj


NAME_A = lg_name(1)
NAME_B = lg_name(2)
NAME_C = lg_name(3)


def add_obj(name: object, kind: str = "shm") -> dict[str, Any]:
    return {"op": "add", "kind": kind, "name": name, "size": 4096, "at": 1700000001.0}


# ---------------------------------------------------------------------------- the model is right


@EXAMPLES
@given(ops=op_lists())
def test_the_writers_records_read_back_exactly(ops: list[Op]) -> None:
    contents = parse_journal(written(ops))
    assert contents.problems == []
    assert not contents.damaged
    assert contents.header is not None
    assert contents.header.version == FORMAT_VERSION
    assert contents.header.owner == Identity.current()
    assert contents.header.uid == os.geteuid()
    assert view(contents) == model(ops)


# ---------------------------------------------------------------------------- (a) truncation


@pytest.mark.slow
@EXAMPLES
@given(ops=op_lists())
def test_truncation_keeps_exactly_the_complete_records(ops: list[Op]) -> None:
    """Cut the file at every byte after the header (every byte of the last record included):
    exactly the records wholly before the cut are read, plus at most one harmless "torn"."""
    data = written(ops)
    records = split_records(data)
    assert len(records) == len(ops) + 1
    ends = list(itertools.accumulate(len(r) for r in records))
    for cut in range(ends[0], len(data) + 1):
        complete = bisect.bisect_right(ends, cut)  # records that end at or before the cut
        contents = parse_journal(data[:cut])
        assert contents.header is not None, cut
        assert view(contents) == model(ops[: complete - 1]), cut
        if cut == ends[complete - 1]:
            assert contents.problems == [], cut
        else:
            assert [(p.kind, p.offset) for p in contents.problems] == [("torn", ends[complete - 1] + 1)], cut
        assert not contents.damaged, cut


# ---------------------------------------------------------------------------- (b) appended bytes

_HEX = "0123456789abcdef"


def add_payload(name: str) -> bytes:
    return json.dumps(add_obj(name), separators=(",", ":")).encode("ascii")


def _with_bad_checksum(payload: bytes) -> bytes:
    good = encode_record(payload)
    bad = b"00000000" if b" 00000000 " not in good else b"ffffffff"
    return b"\n%d %s %s" % (len(payload), bad, payload)


garbage = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.binary(max_size=80).map(lambda b: b"\n" + b),
    # Frame-shaped: right length, a checksum that is (almost surely) wrong.
    st.tuples(st.text(_HEX, min_size=8, max_size=8), st.binary(max_size=60)).map(
        lambda t: b"\n%d %s %s" % (len(t[1]), t[0].encode(), t[1])
    ),
    # A record-shaped payload for a new name, with a wrong checksum.
    st.integers(0, (1 << 80) - 1).map(lambda v: _with_bad_checksum(add_payload(lg_name(v)))),
)


@EXAMPLES
@given(ops=op_lists(), extra=garbage)
def test_appended_bytes_never_raise_and_never_invent_an_entry(ops: list[Op], extra: bytes) -> None:
    contents = parse_journal(written(ops) + extra)
    assert contents.header is not None
    # Records are framed by their length: garbage after the last record, glued on or on a
    # line of its own, costs no written record and invents none.
    assert view(contents) == model(ops)
    if not extra.startswith(b"\n") or extra.count(b"\n") > 1:
        # Bytes where no record can start, or a bad chunk before the last one: damage,
        # never mistaken for a mere torn tail.
        assert contents.damaged
        assert any(p.kind == "corrupt" for p in contents.problems)


# ---------------------------------------------------------------------------- (c) one altered byte


@EXAMPLES
@given(ops=op_lists(min_size=2), data=st.data())
def test_one_altered_byte_in_a_middle_record_skips_that_record_only(ops: list[Op], data: st.DataObject) -> None:
    """Any byte of a record after its leading newline (the separator has its own test below)."""
    records = split_records(written(ops))
    k = data.draw(st.integers(1, len(records) - 2), label="record")
    position = 1 + data.draw(st.integers(0, 1 << 16), label="byte") % (len(records[k]) - 1)
    delta = data.draw(st.integers(1, 255), label="delta")
    altered = bytearray(records[k])
    altered[position] = (altered[position] + delta) % 256
    start = sum(len(r) for r in records[:k])

    contents = parse_journal(b"".join([*records[:k], bytes(altered), *records[k + 1 :]]))
    without = parse_journal(b"".join(records[:k] + records[k + 1 :]))

    assert view(contents) == view(without) == model(ops[: k - 1] + ops[k:])
    assert contents.damaged
    corrupt = [p for p in contents.problems if p.kind == "corrupt"]
    assert corrupt
    assert corrupt[0].offset == start + 1
    assert all(start < p.offset < start + len(records[k]) for p in corrupt)


@EXAMPLES
@given(ops=op_lists(), data=st.data())
def test_one_altered_byte_in_the_header_trusts_nothing(ops: list[Op], data: st.DataObject) -> None:
    records = split_records(written(ops))
    # The header's length varies with the clock: draw the position independently of it.
    position = 1 + data.draw(st.integers(0, 1 << 16), label="byte") % (len(records[0]) - 1)
    delta = data.draw(st.integers(1, 255), label="delta")
    altered = bytearray(records[0])
    altered[position] = (altered[position] + delta) % 256
    contents = parse_journal(bytes(altered) + b"".join(records[1:]))
    assert contents.header is None
    assert contents.entries == {}
    assert contents.damaged


def test_an_altered_record_separator_loses_only_that_record() -> None:
    data = record(header_obj()) + record(add_obj(NAME_A)) + record(add_obj(NAME_B)) + record(add_obj(NAME_C))
    records = split_records(data)
    records[2] = b"x" + records[2][1:]
    contents = parse_journal(b"".join(records))
    assert contents.damaged
    assert NAME_B not in contents.entries
    assert set(contents.entries) == {NAME_A, NAME_C}


def test_an_altered_length_in_the_last_record_is_damage_not_a_torn_write() -> None:
    last = record(add_obj(NAME_B))
    length = last[1 : last.index(b" ")]
    altered = b"\n%d" % (int(length) + 1) + last[1 + len(length) :]
    contents = parse_journal(record(header_obj()) + record(add_obj(NAME_A)) + altered)
    assert set(contents.entries) == {NAME_A}
    assert contents.damaged


# ---------------------------------------------------------------------------- (d) arbitrary bytes


def _check_invariants(contents: JournalContents) -> None:
    assert all(is_ours(name) and entry.name == name for name, entry in contents.entries.items())
    if contents.header is None:
        assert contents.entries == {}
        assert contents.damaged


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=2000), st.binary(max_size=200).map(lambda b: record(header_obj()) + b)))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_invariants(parse_journal(data))


# Integers stay within 64 bits and nesting stays shallow here: deeper nesting and larger
# integers have their own tests below.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 64) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
names = st.one_of(st.integers(0, (1 << 80) - 1).map(lg_name), st.text(max_size=40), json_values)
record_objects = st.fixed_dictionaries(
    {"op": st.sampled_from(["journal", "add", "ino", "del", "other"])},
    optional={
        "kind": st.sampled_from(["shm", "sem", "x"]) | json_values,
        "name": names,
        "size": json_values,
        "dev": json_values,
        "ino": json_values,
        "at": json_values,
        "v": st.sampled_from([1, 2, 99]) | json_values,
        "pid": json_values,
        "start": json_values,
        "boot": json_values,
        "pidns": json_values,
        "uid": json_values,
    },
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    with_header=st.booleans(),
    objects=st.lists(st.one_of(record_objects, json_values), max_size=8),
)
def test_validly_framed_hostile_records_never_raise_nor_invent(with_header: bool, objects: list[Any]) -> None:
    data = (record(header_obj()) if with_header else b"") + b"".join(record(o) for o in objects)
    contents = parse_journal(data)
    _check_invariants(contents)
    for name, entry in contents.entries.items():
        # Every entry comes from a record that added exactly this name, kind and size.
        assert any(
            isinstance(o, dict)
            and o.get("op") == "add"
            and o.get("name") == name
            and o.get("kind") == entry.kind
            and o.get("size") == entry.size
            for o in objects
        )


def test_a_deeply_nested_payload_is_reported_not_raised() -> None:
    contents = parse_journal(record(header_obj()) + encode_record(b"[" * 4000) + record(add_obj(NAME_A)))
    assert set(contents.entries) == {NAME_A}
    assert any(p.kind == "invalid" for p in contents.problems)


@pytest.mark.parametrize("where", ["header", "add"])
def test_a_huge_integer_timestamp_is_reported_not_raised(where: str) -> None:
    huge = 10**400
    if where == "header":
        data = record(header_obj(at=huge)) + record(add_obj(NAME_A))
    else:
        data = record(header_obj()) + record({**add_obj(NAME_A), "at": huge}) + record(add_obj(NAME_B))
    contents = parse_journal(data)
    assert NAME_A not in contents.entries
    assert contents.damaged


# ---------------------------------------------------------------------------- validation, one by one

HOSTILE_NAMES: list[object] = [
    "../x",
    "/../shm/lg_aaaaaaaaaaaaaaaa",
    "/etc/passwd",
    "/lg_aaaaaaaaaaaaaaa\0",
    "/lg_aaaaaaaaaaaaaaaa\0",
    "/lg_aaaaaaaaaaaaaaaa\n",
    "/lg_aaaaaaaaaaaaaaa\n",
    "/lg_" + "a" * 196,
    "/lg_aaaaaaaaaaaaaaaaa",  # 17 characters
    "/lg_aaaaaaaaaaaaaaa",  # 15
    "/lg_aaaaaaaaaaaaaaa1",  # 1 is not base32
    "/LG_AAAAAAAAAAAAAAAA",
    "lg_aaaaaaaaaaaaaaaa",  # no leading slash
    "/psm_aaaaaaaaaaaaaaaa",  # no /lg_ prefix
    "/sem.lg_aaaaaaaaaaaaaaaa",
    "",
    None,
    42,
    ["/lg_aaaaaaaaaaaaaaaa"],
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
@pytest.mark.parametrize("op", ["add", "ino", "del"])
def test_a_hostile_name_is_refused_and_reported(name: object, op: str) -> None:
    objs: list[dict[str, Any]] = [header_obj(), add_obj(NAME_A)]
    if op == "add":
        objs.append(add_obj(name))
    else:
        objs.append({"op": op, "name": name, "dev": 1, "ino": 2})
    contents = parse_journal(b"".join(record(o) for o in objs))
    assert [p.kind for p in contents.problems] == ["refused-name"]
    assert contents.damaged
    assert set(contents.entries) == {NAME_A}
    assert contents.entries[NAME_A].ino is None
    assert not contents.entries[NAME_A].removed


@pytest.mark.parametrize("version", [0, 2, 99, "1", 1.5, None])
def test_a_foreign_version_stops_the_reading(version: object) -> None:
    contents = parse_journal(record(header_obj(v=version)) + record(add_obj(NAME_A)))
    assert contents.header is None
    assert contents.entries == {}
    assert contents.damaged
    assert [p.kind for p in contents.problems] == ["version"]


@pytest.mark.parametrize(
    ("objs", "kind"),
    [
        ([add_obj(NAME_A)], "invalid"),  # no header
        ([header_obj(), header_obj(), add_obj(NAME_A)], "invalid"),  # second header
        ([header_obj(), {"op": "ino", "name": NAME_A, "dev": 1, "ino": 2}], "invalid"),  # never added
        ([header_obj(), add_obj(NAME_A), add_obj(NAME_A)], "invalid"),  # added twice
        ([header_obj(), add_obj(NAME_A, kind="pipe")], "invalid"),
        ([header_obj(), {**add_obj(NAME_A), "size": -1}], "invalid"),
        ([header_obj(), {**add_obj(NAME_A), "size": True}], "invalid"),
        ([header_obj(), {**add_obj(NAME_A), "size": "4096"}], "invalid"),
        ([header_obj(), {"op": "rm", "name": NAME_A}], "invalid"),
        ([header_obj(pid=0), add_obj(NAME_A)], "invalid"),
        ([header_obj(uid=-1), add_obj(NAME_A)], "invalid"),
        ([header_obj(boot="b" * 65), add_obj(NAME_A)], "invalid"),
        ([header_obj(), [add_obj(NAME_A)]], "invalid"),  # not an object
    ],
)
def test_a_record_that_does_not_validate_is_skipped(objs: list[Any], kind: str) -> None:
    contents = parse_journal(b"".join(record(o) for o in objs))
    assert kind in [p.kind for p in contents.problems]
    assert contents.damaged
    for entry in contents.entries.values():
        assert entry.kind in KINDS
        assert entry.size == 4096


def test_an_oversized_record_is_skipped_even_with_a_valid_checksum() -> None:
    big = json.dumps({**add_obj(NAME_B), "pad": "x" * MAX_RECORD_BYTES}, separators=(",", ":")).encode()
    assert MAX_RECORD_BYTES < len(big) < 10_000
    contents = parse_journal(record(header_obj()) + encode_record(big) + record(add_obj(NAME_A)))
    assert set(contents.entries) == {NAME_A}
    assert [p.kind for p in contents.problems] == ["corrupt"]
    assert "over the limit" in contents.problems[0].detail


def test_bytes_before_the_first_record_are_reported() -> None:
    contents = parse_journal(b"#!" + record(header_obj()) + record(add_obj(NAME_A)))
    assert contents.damaged
    assert contents.problems[0].kind == "corrupt"
    assert contents.problems[0].offset == 0


# ---------------------------------------------------------------------------- (f) size: a window at a time


def _read_file_in_windows(data: bytes, window: int, monkeypatch: pytest.MonkeyPatch) -> JournalContents:
    monkeypatch.setattr(journal, "_WINDOW", window)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return journal.read_journal_fd(f.fileno())


@settings(max_examples=40, deadline=None)
@given(ops=op_lists(), extra=garbage, middle=garbage, at=st.integers(0, 1 << 16), window_extra=st.integers(0, 12_000))
def test_a_file_read_a_window_at_a_time_reads_as_the_whole_bytes(
    ops: list[Op], extra: bytes, middle: bytes, at: int, window_extra: int
) -> None:
    """read_journal_fd reads in windows (its memory must not grow with the file): records and
    damage that straddle two windows read exactly as they do from the whole file."""
    data = written(ops)
    cut = at % (len(data) + 1)
    unit = data[:cut] + middle + data[cut:] + extra
    data = unit * (1 + 50_000 // len(unit))  # several windows' worth, damage in each
    whole = parse_journal(data)
    with pytest.MonkeyPatch.context() as monkeypatch:
        windowed = _read_file_in_windows(data, journal._MAX_FRAME // 2 + window_extra, monkeypatch)
    assert windowed.header == whole.header
    assert view(windowed) == view(whole)
    assert windowed.problems == whole.problems
    assert windowed.problem_counts == whole.problem_counts


def test_damage_is_counted_and_only_the_first_problems_are_kept() -> None:
    bad = b"\n12 00000000 not a record"  # a frame head, a wrong checksum: one problem each
    contents = parse_journal(record(header_obj()) + bad * 1000 + record(add_obj(NAME_A)))
    assert set(contents.entries) == {NAME_A}  # the record after the damage still reads
    assert contents.damaged
    assert len(contents.problems) == MAX_LISTED_PROBLEMS
    assert contents.problem_counts == {"corrupt": 1000}
    assert contents.unlisted == 1000 - MAX_LISTED_PROBLEMS


def test_a_run_of_damage_is_one_problem_however_long() -> None:
    contents = parse_journal(record(header_obj()) + b"\n" * 100_000 + record(add_obj(NAME_A)))
    assert set(contents.entries) == {NAME_A}
    assert [(p.kind, p.offset) for p in contents.problems] == [("corrupt", len(record(header_obj())) + 1)]
    assert "99,999 bytes skipped" in contents.problems[0].detail


def test_a_record_straddling_two_windows_after_damage_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    head = record(header_obj()) + b"\n" * 30_000  # damage: the reader is looking for a record's start
    data = head + record(add_obj(NAME_A))
    start = len(head)  # where the record's newline is
    for window in range(start - 20, start + 20):  # the first window ends on every byte around that start
        contents = _read_file_in_windows(data, window, monkeypatch)
        assert set(contents.entries) == {NAME_A}, window
        assert contents.problem_counts == {"corrupt": 1}, window


# ---------------------------------------------------------------------------- (g) unknown fields


@pytest.mark.parametrize(
    "altered",
    [
        {**header_obj(), "extra": 1},
        {**header_obj(), "parent": {"pid": 2, "start": 3, "boot": "b", "pidns": 4, "extra": 1}},
        {**add_obj(NAME_B), "extra": 1},
        {"op": "ino", "name": NAME_A, "dev": 1, "ino": 2, "extra": 1},
        {"op": "del", "name": NAME_A, "dev": 1},
    ],
    ids=["header", "header-parent", "add", "ino", "del"],
)
def test_a_record_with_an_unknown_field_is_skipped_and_marks_damage(altered: dict[str, Any]) -> None:
    """STYLE habit 6: a field the reader does not know is something it cannot validate."""
    objs = [altered, add_obj(NAME_A)] if altered["op"] == "journal" else [header_obj(), add_obj(NAME_A), altered]
    contents = parse_journal(b"".join(record(o) for o in objs))
    assert contents.damaged
    assert [p.kind for p in contents.problems if p.kind != "invalid" or "unknown field" in p.detail]
    assert any("unknown field" in p.detail for p in contents.problems), contents.problems
    if altered["op"] == "journal":
        assert contents.header is None
        assert contents.entries == {}
    else:
        assert NAME_B not in contents.entries
        assert contents.entries[NAME_A].ino is None
        assert not contents.entries[NAME_A].removed


# ---------------------------------------------------------------------------- (h) the fast path

# The reader matches the records the writer formats by hand with regular expressions
# (format._FAST, format._FAST_PAIR) and leaves everything else to the general path (json.loads
# and the field checks). Both must read every journal alike: same entries, values, problems.

_NEVER = re.compile(rb"(?!)")


def _both_ways(data: bytes) -> tuple[JournalContents, JournalContents]:
    fast = parse_journal(data)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(journal, "_FAST", _NEVER)
        monkeypatch.setattr(journal, "_FAST_PAIR", _NEVER)
        general = parse_journal(data)
    return fast, general


def _assert_alike(data: bytes) -> JournalContents:
    fast, general = _both_ways(data)
    assert fast.header == general.header
    assert view(fast) == view(general)
    assert [(e.name, e.created) for e in fast.entries.values()] == [
        (e.name, e.created) for e in general.entries.values()
    ]
    assert fast.problems == general.problems
    assert fast.problem_counts == general.problem_counts
    return fast


def _near_misses(name: str) -> list[bytes]:
    """Payloads one step either side of what the fast path accepts."""
    n = name.encode("ascii")
    add = b'{"op":"add","kind":"shm","name":"%s","size":%s,"at":%s}'
    return [
        add % (n, b"4096", b"1700000000.125"),  # the writer's own: fast
        add % (n, b"0", b"0.0"),
        add % (n, b"999999999999999999", b"99999999999999.999999999"),  # the largest it takes
        add % (n, b"1000000000000000000", b"1.5"),  # 19 digits: general (and valid)
        add % (n, b"9223372036854775808", b"1.5"),  # over 2**63 - 1: invalid
        add % (n, b"04096", b"1.5"),  # a leading zero: not JSON
        add % (n, b"4096", b"999999999999999.99"),  # rounds to 1e15: invalid
        add % (n, b"4096", b"100000000000000.5"),  # 15 digits: general (and valid)
        add % (n, b"4096", b"1700000000"),  # an integer time: general (and valid)
        add % (n, b"4096", b"1.7e9"),
        add % (n, b"4096", b"-1.5"),
        add % (n, b"-1", b"1.5"),
        add % (n, b"4096", b"1.5") + b" ",
        add.replace(b"shm", b"xyz") % (n, b"4096", b"1.5"),
        add.replace(b",", b", ") % (n, b"4096", b"1.5"),
        add.replace(b"/lg_", b"\\/lg_") % (n, b"4096", b"1.5"),  # an escape: the same name in JSON
        add % (n.upper(), b"4096", b"1.5"),
        add % (n[:-1], b"4096", b"1.5"),
        b'{"op":"add","name":"%s","kind":"shm","size":1,"at":1.5}' % n,  # another field order: general
        b'{"op":"ino","name":"%s","dev":27,"ino":12345}' % n,
        b'{"op":"ino","name":"%s","dev":27,"ino":1,"ino":2}' % n,
        b'{"op":"ino","name":"%s","dev":27,"ino":012}' % n,
        b'{"op":"ino","name":"%s","dev":999999999999999999,"ino":0}' % n,
        b'{"op":"del","name":"%s"}' % n,
        b'{"op":"del","name":"%s","dev":1}' % n,
    ]


@pytest.mark.parametrize("index", range(len(_near_misses(NAME_A))))
@pytest.mark.parametrize("framing", ["good", "bad-checksum", "long-length", "short-length"])
def test_a_near_miss_reads_the_same_on_the_fast_and_the_general_path(index: int, framing: str) -> None:
    payload = _near_misses(NAME_B)[index]
    framed = {
        "good": encode_record(payload),
        "bad-checksum": _with_bad_checksum(payload),
        "long-length": b"\n%d %08x %s" % (len(payload) + 1, zlib.crc32(payload), payload),
        "short-length": b"\n%d %08x %s" % (len(payload) - 1, zlib.crc32(payload), payload),
    }[framing]
    # After the header, twice (a second add is "added twice"), around valid records, and right
    # after an add of its name (the fast path reads an add and its ino as a pair).
    data = record(header_obj()) + record(add_obj(NAME_A)) + framed + framed + record(add_obj(NAME_C))
    data += record(add_obj(NAME_B)) + framed + record(add_obj(NAME_B)) + framed
    contents = _assert_alike(data)
    assert contents.header is not None
    _assert_alike(data[: len(data) - 5])  # with a torn last record
    _assert_alike(framed + data)  # before the header: nothing is trusted


@EXAMPLES
@given(ops=op_lists(), cut=st.integers(0, 1 << 16), extra=garbage, middle=garbage, data=st.data())
def test_the_fast_path_reads_every_journal_as_the_general_path(
    ops: list[Op], cut: int, extra: bytes, middle: bytes, data: st.DataObject
) -> None:
    written_bytes = written(ops)
    at = cut % (len(written_bytes) + 1)
    _assert_alike(written_bytes)
    _assert_alike(written_bytes[:at])
    _assert_alike(written_bytes[:at] + middle + written_bytes[at:] + extra)
    altered = bytearray(written_bytes)
    position = data.draw(st.integers(0, 1 << 16), label="byte") % len(altered)  # the length varies
    altered[position] ^= data.draw(st.integers(1, 255), label="delta")
    _assert_alike(bytes(altered))
    # Records out of their order: an ino or a del before its add, an add twice.
    records = split_records(written_bytes)
    shuffled = [records[0], *data.draw(st.permutations(records[1:]), label="order")]
    _assert_alike(b"".join(shuffled) + b"".join(records[1:]))


def test_the_writers_records_take_the_fast_path() -> None:
    """The point of it: a journal as the writer writes it is read without json.loads."""
    ops = [Op("add", lg_name(i), size=4096) for i in range(50)]
    ops += [Op("ino", lg_name(i), dev=27, ino=i) for i in range(50)]
    for i in range(50, 100):  # as a block is made: add, then ino (read as a pair)
        ops += [Op("add", lg_name(i), kind="sem"), Op("ino", lg_name(i), dev=27, ino=i)]
    ops += [Op("del", lg_name(i)) for i in range(0, 100, 3)]
    data = written(ops)
    calls: list[bytes] = []
    real = json.loads

    def counting(payload: bytes) -> Any:
        calls.append(payload)
        return real(payload)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(json, "loads", counting)
        contents = parse_journal(data)
    assert len(calls) == 1  # the header only
    assert view(contents) == model(ops)
    assert contents.problems == []


# ---------------------------------------------------------------------------- (i) the cache

# JournalCache (issue 15): a live owner's journal read again unchanged is not parsed again; a
# changed one always is, whatever its timestamps say.


@pytest.fixture
def live_journal(tmp_path: Path) -> Iterator[JournalWriter]:
    writer = JournalWriter(str(tmp_path))
    try:
        for i in range(20):
            writer.add("shm", lg_name(i), 4096)
            writer.inode(lg_name(i), 27, i)
        yield writer
    finally:
        writer.close(remove_file=True)


def _cached_read(cache: journal.JournalCache, path: str) -> JournalContents:
    fd = os.open(path, os.O_RDONLY)
    try:
        return cache.read(fd)
    finally:
        os.close(fd)


def _assert_current(contents: JournalContents, path: str) -> None:
    """``contents`` is what the file at ``path`` says now."""
    fresh = parse_journal(Path(path).read_bytes())
    assert contents.header == fresh.header
    assert view(contents) == view(fresh)
    assert contents.problems == fresh.problems


def test_a_journal_read_again_unchanged_is_not_parsed_again(
    live_journal: JournalWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = journal.JournalCache()
    first = _cached_read(cache, live_journal.path)
    _assert_current(first, live_journal.path)
    parses: list[int] = []
    real = journal._read_fd

    def counted(*args: Any) -> JournalContents:
        parses.append(1)
        return real(*args)

    monkeypatch.setattr(journal, "_read_fd", counted)
    for _ in range(3):
        assert _cached_read(cache, live_journal.path) is first
    assert parses == []


def _append(writer: JournalWriter, path: str) -> None:
    writer.add("sem", lg_name(1000), 0)


def _free(writer: JournalWriter, path: str) -> None:
    writer.remove(lg_name(3))


def _compact(writer: JournalWriter, path: str) -> None:
    writer._rewrite(unlink_old=True)  # a new file at a new path: the journal a sweep lists next


def _same_size_in_place(writer: JournalWriter, path: str) -> None:
    """One record's inode changed (checksum fixed), size kept: only the bytes tell."""
    data = Path(path).read_bytes()
    old = encode_record(b'{"op":"ino","name":"%s","dev":27,"ino":5}' % lg_name(5).encode())
    new = encode_record(b'{"op":"ino","name":"%s","dev":27,"ino":6}' % lg_name(5).encode())
    assert len(old) == len(new)
    assert data.count(old) == 1
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, new, data.index(old))
    finally:
        os.close(fd)


def _cut_and_rewritten(writer: JournalWriter, path: str) -> None:
    """As the writer's short-write path does: the last record cut off, then another record of
    the same length appended in its place."""
    last = encode_record(b'{"op":"ino","name":"%s","dev":27,"ino":19}' % lg_name(19).encode())
    other = encode_record(b'{"op":"ino","name":"%s","dev":27,"ino":91}' % lg_name(19).encode())
    size = os.stat(path).st_size
    assert Path(path).read_bytes().endswith(last)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.ftruncate(fd, size - len(last))
        os.write(fd, other)
    finally:
        os.close(fd)
    assert os.stat(path).st_size == size


@pytest.mark.parametrize(
    "change", [_append, _free, _compact, _same_size_in_place, _cut_and_rewritten], ids=lambda f: f.__name__[1:]
)
@pytest.mark.parametrize("same_stamp", [False, True], ids=["", "within-one-clock-tick"])
def test_a_changed_journal_is_read_again(
    live_journal: JournalWriter, change: Callable[[JournalWriter, str], None], same_stamp: bool
) -> None:
    cache = journal.JournalCache()
    before = _cached_read(cache, live_journal.path)
    change(live_journal, live_journal.path)
    path = live_journal.path
    if same_stamp:
        # A coarse clock (a tmpfs stamps files with the kernel's tick) can leave size, mtime and
        # ctime as they were: make it so, by giving the cached read the file's stamp as it is now.
        st = os.stat(path)
        for key, read in list(cache._reads.items()):
            cache._reads[key] = replace(read, stamp=(st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    after = _cached_read(cache, path)
    assert after is not before
    _assert_current(after, path)
    assert _cached_read(cache, path) is after  # and that is what it keeps now


def test_the_cache_holds_at_most_its_entries_and_forgets_what_is_unused(tmp_path: Path) -> None:
    writers = [JournalWriter(str(tmp_path)) for _ in range(3)]
    try:
        for k, writer in enumerate(writers):
            for i in range(10):
                writer.add("shm", lg_name(100 * k + i), 1)
        cache = journal.JournalCache(max_entries=25)
        reads = [_cached_read(cache, w.path) for w in writers]
        assert len(cache) == 2  # 30 entries do not fit: the first journal read went first
        assert _cached_read(cache, writers[2].path) is reads[2]
        assert _cached_read(cache, writers[0].path) is not reads[0]
        cache.forget_unused()  # each was read since the cache began: all kept
        assert len(cache) == 2
        _cached_read(cache, writers[0].path)
        cache.forget_unused()  # only that one was read since the last call
        assert len(cache) == 1
        small = journal.JournalCache(max_entries=5)
        _assert_current(_cached_read(small, writers[0].path), writers[0].path)
        assert len(small) == 0  # a journal larger than the whole cache is read, not kept
    finally:
        for writer in writers:
            writer.close(remove_file=True)
