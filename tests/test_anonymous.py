"""SPEC 2.2, anonymous blocks: ``shared_array`` and ``share`` make memfds by default on Linux.

Nothing of them is in /dev/shm; the owner holds one descriptor of each, which other
processes open through ``/proc/PID/fd/N``; a pickle names that holder (pid and start
time), the descriptor's number and the block's inode, and a receiver checks all three,
so a stale or forged reference never attaches another block. Ownership is as for a named
block: ``free()``, the last reference or a normal exit end it (the descriptor is closed);
mappings elsewhere stay valid until unmapped.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import leakguard
from leakguard._blocks import arrays, shm
from leakguard._journal import owner
from leakguard._journal.format import parse_journal
from leakguard._journal.identity import start_time
from leakguard._os import memfd
from tests import anonymous_children as children
from tests.children import child_main
from tests.helpers import block_name, lg_entries, memfds_held, memfds_mapped, read_line, run_main, wait_for

pytestmark = pytest.mark.skipif(not shm.anonymous_by_default(), reason="no anonymous blocks on this system")

ME = [os.getpid()]


def held_here() -> set[str]:
    """The anonymous blocks this process holds the descriptor of (the one others open)."""
    return {name for name in memfds_held(ME) if memfd.held("/" + name) is not None}


def mapped_here() -> set[str]:
    return memfds_mapped(ME)


def journal_entries(folder: Path) -> list[tuple[str, str, bool]]:
    """(kind, name, live) of every entry of every journal in ``folder``."""
    found = []
    for path in folder.glob("*.journal"):
        contents = parse_journal(path.read_bytes())
        assert contents.problems == [], contents.problems
        found += [(e.kind, e.name.lstrip("/"), not e.removed) for e in contents.entries.values()]
    return found


def attach_in_child(cases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Unpickle each case (an object pickled here, or a pickle) in a fresh process; what each did there."""
    hexed = {case: (obj if isinstance(obj, bytes) else pickle.dumps(obj)).hex() for case, obj in cases.items()}
    done = run_main(children.attach_each, json.dumps(hexed))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {line["case"]: line for line in lines}


class _Crafted:
    """Pickles as ``func(*args)``: what a damaged, stale or forged pickle of ours may say."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.reduction = (func, args)

    def __reduce__(self) -> Any:
        return self.reduction


def reference(array: np.ndarray) -> tuple[Any, ...]:
    """The arguments of the reduction a SharedArray pickles as (an anonymous one's)."""
    reduction = array.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    assert isinstance(reduction, tuple)
    func, args = reduction[:2]
    assert func is arrays._rebuild_anonymous
    return tuple(args)


# ---------------------------------------------------------------------------- in one process


def test_shared_array_and_share_are_anonymous_by_default_and_named_on_request(leakguard_dir: Path) -> None:
    before = lg_entries()
    a = leakguard.shared_array((100, 10), dtype=np.int32, fill=7)
    b = leakguard.share(np.arange(1000.0))
    c = leakguard.share(np.arange(1000.0)[::2])  # not contiguous: made, then copied
    for array in (a, b, c):
        assert isinstance(array, leakguard.SharedArray)
        assert array.shm_name is None  # no name in /dev/shm to attach by
    assert int(a.sum()) == 7000
    assert b.tolist() == list(np.arange(1000.0))
    assert c.tolist() == list(np.arange(1000.0)[::2])
    assert lg_entries() == before  # nothing in /dev/shm
    names = {block_name(a), block_name(b), block_name(c)}
    assert names <= held_here()  # the owner holds each one's descriptor (/memfd:lg_x)
    # Recorded for `leakguard ls` as kind memfd, after it exists.
    assert {(kind, name) for kind, name, live in journal_entries(leakguard_dir) if live} == {
        ("memfd", name) for name in names
    }

    named = leakguard.shared_array(10, named=True)
    assert named.shm_name is not None
    assert named.shm_name in lg_entries()
    # block_name names either kind, as `leakguard ls` lists it; shm_name only a named one.
    assert a.block_name is not None
    assert re.fullmatch(r"lg_[a-z2-7]{16}", a.block_name)
    assert block_name(a[3:]) == a.block_name  # a view: the same block
    assert named.block_name == named.shm_name
    assert a.copy().block_name is None
    also_named = leakguard.share(np.ones(3), named=True)
    assert also_named.shm_name in lg_entries()
    with pytest.raises(TypeError, match="named"):
        leakguard.shared_array(3, named="yes")  # type: ignore[arg-type]

    for array in (a, b, c, named, also_named):
        leakguard.free(array)
    assert not names & held_here()
    assert lg_entries() == before
    assert not [e for e in journal_entries(leakguard_dir) if e[2]]


def test_free_closes_the_owners_descriptor_and_keeps_the_mapping(leakguard_dir: Path) -> None:
    a = leakguard.shared_array(1000, fill=2.0)
    name = block_name(a)
    view = pickle.loads(pickle.dumps(a[10:20]))  # in this process: the owner's own mapping
    assert block_name(view) == name
    leakguard.free(a)
    leakguard.free(a)  # a second free does nothing
    assert name not in held_here()
    assert name in mapped_here()  # still mapped: the array stays valid here
    a[0] = 5.0
    assert view.sum() == 20.0
    with pytest.raises(ValueError, match="freed"):
        pickle.dumps(a)
    assert not [e for e in journal_entries(leakguard_dir) if e[2]]
    del a, view
    gc.collect()
    assert name not in mapped_here()


def test_collecting_the_owners_last_reference_closes_its_descriptor() -> None:
    a = leakguard.shared_array(1000)
    view = a[10:20]
    name = block_name(a)
    del a
    assert name in held_here()  # the view keeps the block alive
    del view
    gc.collect()
    assert name not in held_here()
    assert name not in mapped_here()


def test_a_crafted_anonymous_reference_is_refused_before_anything_is_opened() -> None:
    a = leakguard.shared_array(4)
    name, holder, size, *_ = reference(a)
    dt = np.dtype(float)
    cases = {
        "nul": _Crafted(arrays._rebuild_anonymous, name + "\0x", holder, size, 0, (4,), (8,), dt),
        "not-ours": _Crafted(arrays._rebuild_anonymous, "/etc/passwd", holder, size, 0, (4,), (8,), dt),
        "holder-not-a-tuple": _Crafted(arrays._rebuild_anonymous, name, "x", size, 0, (4,), (8,), dt),
        "holder-short": _Crafted(arrays._rebuild_anonymous, name, holder[:4], size, 0, (4,), (8,), dt),
        "negative-fd": _Crafted(
            arrays._rebuild_anonymous, name, (*holder[:2], -1, *holder[3:]), size, 0, (4,), (8,), dt
        ),
        "float-pid": _Crafted(arrays._rebuild_anonymous, name, (1.5, *holder[1:]), size, 0, (4,), (8,), dt),
        "bool-size": _Crafted(arrays._rebuild_anonymous, name, holder, True, 0, (4,), (8,), dt),
        "object": _Crafted(arrays._rebuild_anonymous, name, holder, size, 0, (4,), (8,), np.dtype(object)),
        "object-adopt": _Crafted(arrays._adopt_anonymous, name, holder, size, 0, (4,), (8,), "O"),
    }
    said = attach_in_child(cases)
    for case in ("nul", "not-ours", "holder-not-a-tuple", "holder-short", "negative-fd", "float-pid", "bool-size"):
        assert said[case]["error"] == "ValueError", said[case]
        assert "crafted" in said[case]["message"], said[case]
    for case in ("object", "object-adopt"):
        assert said[case]["error"] == "TypeError", said[case]
        assert "refused" in said[case]["message"], said[case]
    for case in cases:
        assert (said[case]["held"], said[case]["mapped"]) == ([], []), said[case]
    leakguard.free(a)


# ---------------------------------------------------------------------------- across processes


@pytest.mark.slow
def test_another_process_attaches_by_reference_and_keeps_its_mapping_after_free() -> None:
    a = leakguard.shared_array(100, fill=0.0)
    piece = a[10:20]
    data = pickle.dumps(piece, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 400, len(data)  # a reference, not the data
    with child_main(children.attach_write_then_outlive, data.hex()) as proc:
        first = json.loads(read_line(proc))
        assert first["attached"]
        # The child opened our descriptor through /proc, mapped the block and closed its own
        # descriptor (before Python 3.13 its mmap keeps a duplicate).
        assert first["mapped"] == [block_name(a)]
        assert (a[10:20] == -1).all()  # its writes are ours: zero copies
        assert (a[:10] == 0).all()
        leakguard.free(a)  # ends the block for new attachments; the child's mapping stays
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        second = json.loads(read_line(proc))
        assert second["values"] == [9.0] * 10
        assert (a[10:20] == 9).all()  # still one block, shared by both mappings
        assert proc.wait(timeout=30) == 0
    # Now no one holds it: an attachment by the same reference fails, naming the block.
    said = attach_in_child({"late": data})["late"]
    assert said["error"] == "BlockGoneError", said
    assert said["file_not_found"]
    assert block_name(a) in said["message"]
    assert "no longer holds it" in said["message"]
    assert said["attrs"]["holder_pid"] == os.getpid()


def test_a_stale_reference_whose_pid_and_descriptor_now_hold_another_block_is_refused() -> None:
    old = leakguard.shared_array(64, fill=1.0)
    stale = _Crafted(arrays._rebuild_anonymous, *reference(old))
    old_name, old_holder, *_ = reference(old)
    leakguard.free(old)  # its descriptor number is free now...
    new = leakguard.shared_array(64, fill=2.0)  # ...and the lowest free number is what the next block gets
    new_name, new_holder, new_size, *rest = reference(new)
    assert new_holder[:3] == old_holder[:3], "the new block should hold the same pid and descriptor number"
    assert new_holder[3:] != old_holder[3:]
    gone_pid = _a_dead_pid()
    cases = {
        # What a stale pickle says: the old block, at a pid and number that now hold the new one.
        "stale": stale,
        # Forged: the new block's name at that pid and number, with the old block's inode (a name
        # that passes the link check, as a reused number holding a block of the same name would).
        "reused-number": _Crafted(
            arrays._rebuild_anonymous, new_name, (*new_holder[:3], *old_holder[3:]), new_size, *rest
        ),
        # Forged: all of it right but the start time, as if the pid had been reused by a process
        # holding the same block at the same number (a child forked before the holder died).
        "reused-pid": _Crafted(
            arrays._rebuild_anonymous, new_name, (new_holder[0], new_holder[1] + 1, *new_holder[2:]), new_size, *rest
        ),
        "holder-gone": _Crafted(arrays._rebuild_anonymous, new_name, (gone_pid, 1, *new_holder[2:]), new_size, *rest),
        "real": new,
    }
    said = attach_in_child(cases)
    for case, why in (
        ("stale", "no longer holds it"),
        ("reused-number", "now holds another block"),
        ("reused-pid", "now belongs to another process"),
        ("holder-gone", "has exited"),
    ):
        assert said[case]["error"] == "BlockGoneError", said[case]
        assert why in said[case]["message"], said[case]
        # Refused, never attached: nothing of either block is mapped or held there.
        assert (said[case]["held"], said[case]["mapped"]) == ([], []), said[case]
    assert said["stale"]["attrs"]["name"] == old_name.lstrip("/")
    assert said["real"]["error"] is None
    assert said["real"]["values"] == [2.0] * 64
    leakguard.free(new)


def _a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert start_time(pid) is None
    return pid


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_a_forked_child_neither_holds_nor_owns_the_parents_anonymous_blocks(leakguard_dir: Path) -> None:
    a = leakguard.shared_array(10, fill=1.0)
    name = block_name(a)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: look, send a view on, make a block of its own, exit normally
        try:
            os.close(reader)
            number = reference(a)[1][2]
            try:
                at_number = os.readlink(f"/proc/self/fd/{number}")
            except OSError:
                at_number = None
            report: dict[str, Any] = {
                "held": sorted(held_here()),
                "at_number": at_number,
                "mapped": name in mapped_here(),
                "sum": float(a.sum()),
                "reference": reference(a[2:5])[1][0],  # a view it sends names the parent as holder
            }
            try:
                leakguard.free(a)
            except leakguard.NotOwnerError:
                report["free"] = "refused"
            mine = leakguard.shared_array(10)
            report["mine"] = block_name(mine)
            os.write(writer, json.dumps(report).encode())
            owner.exit_sequence()  # a normal exit's clean-up
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert report["held"] == []  # its copies of our descriptors were closed at the fork
    assert report["at_number"] is None
    assert report["mapped"]
    assert report["sum"] == 10.0
    assert report["reference"] == os.getpid()
    assert report["free"] == "refused"
    # Its exit touched nothing of ours: we still hold the block, and it still attaches.
    assert name in held_here()
    said = attach_in_child({"after": a})["after"]
    assert said["values"] == [1.0] * 10
    leakguard.free(a)


def test_ls_lists_a_live_anonymous_block_as_needing_no_sweep_and_the_sweep_drops_it_once_its_owner_is_dead(
    leakguard_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leakguard.cli import main

    before = lg_entries()
    with child_main(children.hold_anonymous, "1000") as proc:
        made = json.loads(read_line(proc))
        assert main(["ls", "--json"]) == 0
        [item] = json.loads(capsys.readouterr().out)["objects"]
        assert item["name"] == made["name"]
        assert (item["kind"], item["state"], item["size"], item["owner_pid"]) == ("memfd", "live", 8000, made["pid"])
        assert item["anonymous"] is True
        assert "needs no sweep" in item["reason"]
        assert main(["ls"]) == 0
        table = capsys.readouterr().out
        assert f"memfd  {made['name']}" in table
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    wait_for(lambda: made["name"] not in memfds_held([made["pid"]]), timeout=5, what="the owner to be gone")
    # Something of ours standing in /dev/shm at the block's name is not the block: the sweep never
    # even looks there for an anonymous entry.
    decoy = Path("/dev/shm") / made["name"]
    decoy.write_bytes(b"x")
    try:
        report = leakguard.sweep()
        assert decoy.exists()
    finally:
        decoy.unlink()
    assert report.removed == []  # nothing to unlink: the kernel freed it
    assert [(i.name, i.kind) for i in report.gone] == [(made["name"], "memfd")]
    assert "nothing unlinked" in report.gone[0].reason
    assert report.errors == []
    assert list(leakguard_dir.glob("*.journal")) == []  # settled: its journal is removed
    assert lg_entries() == before


def test_the_sweep_keeps_an_anonymous_entry_while_its_owner_lives_and_only_drops_it_after() -> None:
    from leakguard._journal.format import Entry
    from leakguard._journal.identity import Liveness
    from leakguard._sweep.journaled import Verdict, decide

    entry = Entry(kind="memfd", name="/lg_" + "a" * 16, size=10, created=0.0)
    expected = {
        Liveness.ALIVE: Verdict.KEEP,
        Liveness.UNKNOWN: Verdict.KEEP,  # fail closed, as for any entry
        Liveness.DEAD: Verdict.GONE,  # never REMOVE: there is nothing to unlink
        Liveness.OTHER_BOOT: Verdict.DROP,
    }
    for fate, verdict in expected.items():
        got, reason = decide(entry, fate, None, os.geteuid())
        assert got is verdict, (fate, got, reason)
        assert ("needs no sweep" in reason) == (verdict is Verdict.KEEP)


def test_only_the_owner_frees_an_anonymous_block() -> None:
    from tests import api_children

    a = leakguard.shared_array(10)
    result = run_main(api_children.free_a_view, pickle.dumps(a[2:]).hex())
    # The error names the block as users see it (lg_x), in its attribute and its message.
    assert result.stdout.split() == ["refused", "True", a.block_name, repr(a.block_name)], result.stderr
    assert block_name(a) in held_here()  # the child's attempt left the owner's block alone
    leakguard.free(a)
