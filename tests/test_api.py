"""SPEC 2.2, 2.3, 5 and 6 in one process and its children: interfaces, arguments, names, modes."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import leakguard
from leakguard._os import names as _names
from tests import api_children
from tests.helpers import entry_of, finish, lg_entries, python_main, read_line, run_main


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- SharedMemory


def test_shared_memory_has_the_standard_library_interface() -> None:
    shm = leakguard.SharedMemory(create=True, size=10_000)
    assert not shm.name.startswith("/")
    assert shm.size == 10_000
    shm.buf[:5] = b"hello"
    other = leakguard.SharedMemory(shm.name)
    assert bytes(other.buf[:5]) == b"hello"
    assert other.size == 10_000
    again = pickle.loads(pickle.dumps(shm))
    assert bytes(again.buf[:5]) == b"hello"
    for view in (other, again):
        view.close()
    shm.close()
    shm.unlink()
    assert shm.name not in lg_entries()
    with pytest.raises(FileNotFoundError):
        leakguard.SharedMemory(shm.name)


def test_shared_memory_is_seen_by_another_process() -> None:
    shm = leakguard.SharedMemory(create=True, size=64)
    shm.buf[:3] = b"abc"
    result = run_main(api_children.attach_and_write, shm.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "abc"
    assert result.stderr == ""
    assert bytes(shm.buf[:3]) == b"xbc"
    shm.close()
    shm.unlink()


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"create": True, "size": 0}, ValueError, "size"),
        ({"create": True, "size": -1}, ValueError, "size"),
        ({"create": True, "size": 1.5}, TypeError, "size"),
        ({"create": True, "size": 8, "name": "mine"}, ValueError, "name"),
        ({"create": False}, ValueError, "name"),
        ({"name": "../etc/passwd"}, ValueError, "name"),
        ({"name": "bad\0name"}, ValueError, "name"),
    ],
)
def test_bad_shared_memory_arguments_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    before = lg_entries()
    with pytest.raises(error, match=words):
        leakguard.SharedMemory(**kwargs)  # type: ignore[arg-type]
    assert lg_entries() == before


# ---------------------------------------------------------------------------- SharedArray


def test_views_of_every_shape_travel_by_name_and_see_writes() -> None:
    a = leakguard.shared_array((40, 30), dtype=np.float32)
    a[...] = np.arange(1200, dtype=np.float32).reshape(40, 30)
    views = [a, a[3:17], a[::-1, ::2], a.T, a[5], a[:, 7], a.reshape(30, 40)[2:4]]
    for view in views:
        data = pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(data) < 400
        back = pickle.loads(data)
        assert isinstance(back, leakguard.SharedArray)
        np.testing.assert_array_equal(back, view)
    back = pickle.loads(pickle.dumps(a[::-1, ::2]))
    back[0, 0] = -1
    assert a[39, 0] == -1
    leakguard.free(a)


def test_results_with_memory_of_their_own_are_plain_arrays() -> None:
    a = leakguard.shared_array(100, fill=2.0)
    assert type(a + 1) is np.ndarray
    assert type(np.sqrt(a)) is np.ndarray
    copy = a.copy()
    assert copy.shm_name is None
    data = pickle.dumps(copy)
    assert len(data) > 800  # the data itself, not a name
    np.testing.assert_array_equal(pickle.loads(data), copy)
    leakguard.free(a)


def test_share_copies_any_array_and_dtypes_round_trip() -> None:
    record = np.dtype([("x", "<i4"), ("y", "<f8")])
    source = np.zeros(5, dtype=record)
    source["x"] = np.arange(5)
    shared = leakguard.share(source)
    assert shared.dtype == record
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(shared))["x"], np.arange(5))
    empty = leakguard.shared_array((0, 3))
    assert empty.shape == (0, 3)
    assert pickle.loads(pickle.dumps(empty)).shape == (0, 3)
    with pytest.raises(TypeError, match="objects"):
        leakguard.shared_array(3, dtype=object)
    with pytest.raises(ValueError, match="negative"):
        leakguard.shared_array((2, -1))
    with pytest.raises(leakguard.OutOfSharedMemoryError):
        leakguard.shared_array((2**40, 2**40))  # 8 * 2**80 bytes: refused, not wrapped around
    assert leakguard.shared_array(np.array([2, 3])).shape == np.empty(np.array([2, 3])).shape == (2, 3)
    leakguard.free(shared)
    leakguard.free(empty)


@pytest.mark.parametrize("shape", [(1.5,), ("3",), 1.5, "3", None, True, (2, True), [2, 3.0]])
def test_a_shape_numpy_refuses_is_refused_with_type_error(shape: Any) -> None:
    # int() used to make (1.5,) a shape of (1,) and ("3",) one of (3,), silently.
    with pytest.raises(TypeError):
        np.empty(shape)
    before = lg_entries()
    with pytest.raises(TypeError, match="shape must be an integer or a sequence of integers"):
        leakguard.shared_array(shape)
    assert lg_entries() == before


class _Crafted:
    """Pickles as ``func(*args)``: what a damaged or hostile pickle of ours may say."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.reduction = (func, args)

    def __reduce__(self) -> Any:
        return self.reduction


def test_a_crafted_pickle_is_refused_before_it_reaches_the_os() -> None:
    # A NUL after an existing block's name crashed the unpickling process inside posix_ipc
    # (SIGSEGV); an object dtype read PyObject pointers out of shared memory.
    from leakguard._blocks import arrays, sem

    a = leakguard.shared_array(4, named=True)
    lock = leakguard.Semaphore()
    assert a.shm_name is not None
    name, lock_name = _names.posix_name(a.shm_name), _names.posix_name(lock.name)  # what pickles carry
    cases = {
        "nul": _Crafted(arrays._rebuild, name + "\0x", 0, (4,), (8,), np.dtype(float)),
        "nul-adopt": _Crafted(arrays._adopt, name + "\0x", 0, (4,), (8,), np.dtype(float)),
        "not-ours": _Crafted(arrays._rebuild, "/etc/passwd", 0, (4,), (8,), np.dtype(float)),
        "object": _Crafted(arrays._rebuild, name, 0, (4,), (8,), np.dtype(object)),
        "object-field": _Crafted(arrays._rebuild, name, 0, (2,), (16,), np.dtype([("n", "<i8"), ("o", object)])),
        "object-adopt": _Crafted(arrays._adopt, name, 0, (4,), (8,), "O"),
        "sem-nul": _Crafted(sem.Semaphore._attach, lock_name + "\0x"),
    }
    crafted = {case: pickle.dumps(obj).hex() for case, obj in cases.items()}
    result = run_main(api_children.unpickle_crafted, json.dumps(crafted), name)
    assert result.returncode == 0, (result.returncode, result.stderr)
    said = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert said.keys() == {*cases, "ipc"}
    for case in ("nul", "nul-adopt", "not-ours", "sem-nul"):
        assert said[case].startswith("ValueError"), said[case]
        assert "crafted" in said[case], said[case]
    for case in ("object", "object-field", "object-adopt"):
        assert said[case].startswith("TypeError"), said[case]
        assert "refused" in said[case], said[case]
    assert said["ipc"] == "ValueError"
    # What a real pickle says still attaches.
    assert pickle.loads(pickle.dumps(a)).shm_name == a.shm_name
    assert pickle.loads(pickle.dumps(lock)).name == lock.name
    leakguard.free(a)
    lock.unlink()


def test_free_is_for_owners_and_idempotent() -> None:
    a = leakguard.shared_array(10, named=True)
    name = a.shm_name
    assert name is not None
    with pytest.raises(TypeError):
        leakguard.free(np.zeros(3))
    attached = pickle.loads(pickle.dumps(a))
    # In this process the unpickled view shares the owner's mapping: still the owner's block.
    assert attached.shm_name == name
    leakguard.free(a)
    leakguard.free(a)  # a second free does nothing
    assert name not in lg_entries()
    with pytest.raises(ValueError, match="freed"):
        pickle.dumps(a)
    a[0] = 1.0  # still mapped here until collected


def test_a_non_owner_cannot_free() -> None:
    a = leakguard.shared_array(10, named=True)
    result = run_main(api_children.free_a_view, pickle.dumps(a[2:]).hex())
    assert a.shm_name is not None
    # The error names the block as users see it (lg_x), in its attribute and its message.
    assert result.stdout.split() == ["refused", "True", a.shm_name, repr(a.shm_name)], result.stderr
    assert a.shm_name in lg_entries()
    leakguard.free(a)


def test_collecting_the_owners_last_reference_unlinks() -> None:
    a = leakguard.shared_array(1000, named=True)
    view = a[10:20]
    entry = a.shm_name or ""
    del a
    assert entry in lg_entries()  # the view keeps the block alive
    del view
    assert entry not in lg_entries()


# ---------------------------------------------------------------------------- semaphores


def test_semaphore_counts_times_out_and_pickles_to_children() -> None:
    sem = leakguard.Semaphore(2)
    assert sem.acquire()
    assert sem.acquire(timeout=0.01)
    assert not sem.acquire(block=False)
    assert not sem.acquire(timeout=0.01)
    assert not sem.acquire(timeout=-1)
    child = python_main(api_children.release_twice, pickle.dumps(sem).hex())
    assert read_line(child) == "released"
    assert sem.get_value() == 2
    code, _, err = finish(child)
    assert code == 0, err
    with sem as got:
        assert got is True
        assert sem.get_value() == 1
    assert sem.get_value() == 2
    sem.unlink()
    assert entry_of("sem", sem.name) not in lg_entries()


def test_lock_is_a_binary_semaphore() -> None:
    lock = leakguard.Lock()
    assert isinstance(lock, leakguard.Semaphore)
    assert lock.get_value() == 1
    name = lock.name
    del lock
    assert entry_of("sem", name) not in lg_entries()


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (2**31, ValueError), (1.0, TypeError), (True, TypeError)]
)
def test_bad_semaphore_values_are_refused(value: object, error: type[Exception]) -> None:
    before = lg_entries()
    with pytest.raises(error, match="value"):
        leakguard.Semaphore(value)  # type: ignore[arg-type]
    assert lg_entries() == before


# ---------------------------------------------------------------------------- names and modes


def test_a_name_has_one_form_wherever_a_user_sees_it(leakguard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The standard library's form, SharedMemory.name's: no leading slash, as `ls /dev/shm`
    # lists a block (a semaphore is listed as sem.<name>). The journal keeps /lg_x.
    from leakguard.cli import main

    shm = leakguard.SharedMemory(create=True, size=4096)
    array = leakguard.shared_array(10, named=True)
    sem = leakguard.Semaphore()
    assert array.shm_name is not None
    shown = {shm.name, array.shm_name, sem.name}
    assert len(shown) == 3
    assert all(re.fullmatch(r"lg_[a-z2-7]{16}", name) for name in shown), shown
    assert {shm.name, array.shm_name, f"sem.{sem.name}"} <= lg_entries()
    assert {i.name for i in leakguard.sweep(dry_run=True).kept} == shown

    assert main(["ls", "--json"]) == 0
    assert {o["name"] for o in json.loads(capsys.readouterr().out)["objects"]} == shown
    assert main(["ls"]) == 0
    table = capsys.readouterr().out
    assert all(f"  {name}  " in table for name in shown), table
    assert "/lg_" not in table, table

    # Either form attaches (the standard library's SharedMemory takes both on Linux); the
    # name reads back in the one form.
    for given in (shm.name, "/" + shm.name):
        with leakguard.SharedMemory(given) as other:
            assert other.name == shm.name
            assert repr(other) == f"SharedMemory({shm.name!r}, size=4096)"

    shm.close()
    shm.unlink()
    sem.unlink()
    freed = array.shm_name
    leakguard.free(array)
    with pytest.raises(FileNotFoundError) as unlinked:
        shm.unlink()
    with pytest.raises(FileNotFoundError) as attached:
        leakguard.SharedMemory(shm.name)
    with pytest.raises(FileNotFoundError) as sem_unlinked:
        sem.unlink()
    with pytest.raises(ValueError, match="was freed") as sent:
        pickle.dumps(array)
    for error, name in [(unlinked, shm.name), (attached, shm.name), (sem_unlinked, sem.name), (sent, freed)]:
        assert name in str(error.value), error.value
        assert "/" + name not in str(error.value), error.value
    assert (unlinked.value.filename, attached.value.filename, sem_unlinked.value.filename) == (
        shm.name,
        shm.name,
        sem.name,
    )


def test_names_are_short_prefixed_and_random() -> None:
    names = {_names.make_name() for _ in range(10_000)}
    assert len(names) == 10_000
    assert all(len(n) <= 30 and re.fullmatch(r"/lg_[a-z2-7]{16}", n) for n in names)
    assert all(_names.is_ours(n) for n in names)
    for bad in ("../x", "/etc/passwd", "/lg_" + "a" * 200, "/lg_aaaaaaaaaaaaaaa\n", "/lg_aaaaaaaaaaaaaaa\0", 7, None):
        assert not _names.is_ours(bad)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_objects_are_mode_0600_whatever_the_umask(mask: int) -> None:
    with umask(mask):
        a = leakguard.shared_array(10, named=True)
        sem = leakguard.Semaphore(1)
    assert a.shm_name is not None
    for entry in (a.shm_name, entry_of("sem", sem.name)):
        assert stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode) == 0o600
    leakguard.free(a)
    sem.unlink()


def test_journal_folder_is_created_private_whatever_the_umask(leakguard_dir: Path) -> None:
    with umask(0):
        a = leakguard.shared_array(10)
    assert stat.S_IMODE(os.stat(leakguard_dir).st_mode) == 0o700
    (journal,) = leakguard_dir.glob("*.journal")
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    leakguard.free(a)


# ---------------------------------------------------------------------------- errors and fork


@pytest.mark.parametrize(
    "error",
    [
        leakguard.OutOfSharedMemoryError(10, 5, "ENOSPC"),
        leakguard.OutOfSharedMemoryError(10, None, "ENOMEM", "memory"),
        leakguard.BlockGoneError("lg_x", 42, "has exited"),
        leakguard.JournalFolderError("/x", "is a symbolic link"),
        leakguard.NotOwnerError("lg_x", 42),
        leakguard.WorkerLostError("task 3", 42, -9, attempts=2),
    ],
)
def test_errors_pickle_with_their_facts(error: leakguard.LeakguardError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_error_tree_matches_the_builtins() -> None:
    assert issubclass(leakguard.OutOfSharedMemoryError, MemoryError)
    assert issubclass(leakguard.JournalFolderError, OSError)
    assert issubclass(leakguard.NotOwnerError, PermissionError)
    assert issubclass(leakguard.BlockGoneError, FileNotFoundError)
    for cls in (
        leakguard.OutOfSharedMemoryError,
        leakguard.JournalFolderError,
        leakguard.NotOwnerError,
        leakguard.BlockGoneError,
    ):
        assert issubclass(cls, leakguard.LeakguardError)
    # A lost worker is what ProcessPoolExecutor calls a broken pool: code written for it catches ours.
    assert issubclass(leakguard.WorkerLostError, BrokenProcessPool)
    assert issubclass(leakguard.WorkerLostError, RuntimeError)
    assert issubclass(leakguard.WorkerLostError, leakguard.LeakguardError)
    assert issubclass(BrokenProcessPool, RuntimeError)  # the standard library's tree, unchanged
    assert not issubclass(leakguard.PoolClosedError, BrokenProcessPool)  # closed is not broken


@pytest.mark.parametrize(
    ("exitcode", "says"),
    [(-9, "OOM killer"), (-11, "native code"), (1, "sys.exit(1)"), (3, "os._exit()")],
)
def test_a_lost_worker_names_its_likely_cause(exitcode: int, says: str) -> None:
    error = leakguard.WorkerLostError("task 3", 42, exitcode)
    assert says in str(error)
    assert "retries=N" in str(error)
    # Workers never run the main module (issue 13): the main guard is not a cause any more.
    assert "__main__" not in str(error)


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_a_forked_child_owns_only_what_it_creates(leakguard_dir: Path) -> None:
    parent_block = leakguard.shared_array(10, fill=1.0, named=True)
    assert parent_block.shm_name is not None
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: create one block, report it, exit normally
        try:
            os.close(reader)
            mine = leakguard.shared_array(10, named=True)
            journals = sorted(p.name for p in leakguard_dir.glob("*.journal"))
            os.write(writer, json.dumps({"mine": mine.shm_name, "journals": journals}).encode())
        finally:
            os._exit(0)  # skip pytest's teardown in the child; leakguard's exit handler is not run either
    os.close(writer)
    with os.fdopen(reader) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert len(report["journals"]) == 2  # the child started its own journal
    # The child died without cleanup (os._exit): its block is an orphan, the parent's is live.
    swept = leakguard.sweep()
    assert [i.name for i in swept.removed] == [report["mine"]]
    assert parent_block.shm_name in lg_entries()
    leakguard.free(parent_block)


def test_an_explicit_unlink_from_another_process_removes_the_name_as_the_standard_library() -> None:
    """SharedMemory.unlink() keeps the standard library's meaning in any process. The owner's
    own unlink() then only records that the name is gone; a second one raises
    FileNotFoundError, as the standard library's second unlink does."""
    shm = leakguard.SharedMemory(create=True, size=64)
    sem = leakguard.Semaphore()
    try:
        result = run_main(api_children.unlink_both, shm.name, pickle.dumps(sem).hex())
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["unlinked"] * 2
        assert not {shm.name, entry_of("sem", sem.name)} & lg_entries()
        with pytest.raises(FileNotFoundError):
            leakguard.SharedMemory(shm.name)
    finally:
        shm.close()
        shm.unlink()
        sem.unlink()
    with pytest.raises(FileNotFoundError):
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        sem.unlink()
