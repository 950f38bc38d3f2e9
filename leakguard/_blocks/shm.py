"""Shared memory blocks: ``SharedMemory`` (the standard library's interface, a named
block), and the blocks under every ``SharedArray`` (arrays.py: the numpy side).

A block is either

- **named**: a POSIX shared memory object in /dev/shm, journaled before it exists
  (the write-ahead order of docs/design.md, with its ``shm.*`` failpoints), unlinked by
  its owner, or by the guardian or the sweep once the owner is dead; or
- **anonymous** (the default for ``shared_array``, ``share`` and the pool on Linux,
  SPEC 2.2): a memfd (_os/memfd.py). No name, no size limit but memory's, and the
  kernel frees it when the last descriptor and mapping go, however its processes end.
  Its owner holds one descriptor of it; a pickle names that holder (pid and start
  time), the descriptor's number and the block's inode, and a receiver opens
  ``/proc/PID/fd/N`` and checks all three before it maps anything.

The standard library's resource_tracker is never involved: no process but the
owner unlinks, and the journal, not a tracker process, survives the owner.

Nothing here imports numpy: a pool's worker imports this module as it starts, and numpy
(about 60 ms) only once a task brings or makes an array (issue 15).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from leakguard._errors import BlockGoneError, OutOfSharedMemoryError
from leakguard._failpoint import failpoint
from leakguard._journal import owner as _owner
from leakguard._journal.identity import start_time
from leakguard._os import ipc as _ipc
from leakguard._os import memfd as _memfd
from leakguard._os.names import is_ours, make_name, posix_name, public_name

__all__ = [
    "Block",
    "Holder",
    "SharedMemory",
    "adopt_anonymous_block",
    "adopt_block",
    "adopted_names",
    "anonymous_by_default",
    "attach_anonymous_block",
    "attach_block",
    "attached_names",
    "block_of",
    "check_holder",
    "drop_freed",
    "keep_mappings",
    "kept_blocks",
    "mappings_made",
    "name_every_block",
    "new_block",
    "note_attached",
    "received_descriptors",
    "still_mapped",
]

_NAME_ATTEMPTS = 8


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"size must be a positive number of bytes, got {size}")
    return size


def _create(size: int, data: memoryview | None = None) -> tuple[str, mmap.mmap]:
    """Create, journal and map a new block (holding ``data``, if given, of exactly ``size``
    bytes); on any failure nothing is left behind."""
    if size > sys.maxsize:
        raise OutOfSharedMemoryError(size, _ipc.shm_available(), "larger than this machine can address")
    writer = _owner.journal()
    for _ in range(_NAME_ATTEMPTS):
        name = make_name()
        failpoint("shm.before-record")
        writer.add("shm", name, size)  # from here on we own the name, whatever exists at it
        try:
            failpoint("shm.after-record")
            fd = _ipc.shm_open_new(name)
        except FileExistsError:
            writer.settle(name)  # a squatter or a collision: never attach, never unlink; pick another name
            continue
        except BaseException:
            _owner.release(name)  # even a KeyboardInterrupt after shm_open must not leave the object
            _ipc.shm_close_lost(name)  # ...nor its descriptor, if it landed as shm_open returned
            raise
        try:
            failpoint("shm.after-open")
            filled = data is not None and _ipc.shm_fill(fd, data)
            if not filled:
                _ipc.shm_reserve(fd, size)
            failpoint("shm.after-reserve")
            st = os.fstat(fd)
            writer.inode(name, st.st_dev, st.st_ino)
            mapping = _ipc.shm_map(fd, size)
            if data is not None and not filled:
                mapping[:] = data
            return name, mapping
        except BaseException:
            _owner.release(name)
            raise
        finally:
            os.close(fd)
    raise FileExistsError(f"{_NAME_ATTEMPTS} fresh names in a row were taken; is something squatting on lg_* names?")


def _attach(name: str) -> mmap.mmap:
    fd = _ipc.shm_attach(name)
    try:
        return _ipc.shm_map(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- anonymous blocks


class Holder(NamedTuple):
    """What a pickle of an anonymous block names: the process holding a descriptor of it
    (pid and start time, so a reused pid is told apart), the descriptor's number there,
    and the block itself (device and inode, so a reused number is told apart)."""

    pid: int
    start: int
    fd: int
    dev: int
    ino: int


_me: tuple[int, int] = (0, 0)  # (pid, start time) of this process, refreshed after a fork


def _myself() -> tuple[int, int]:
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        start = start_time(pid)
        assert start is not None  # we are running
        _me = (pid, start)
    return _me


def _create_anonymous(size: int, data: memoryview | None = None) -> tuple[str, mmap.mmap, Holder]:
    """Create, map and record a new anonymous block (holding ``data``, if given, of exactly
    ``size`` bytes); this process holds its descriptor. On any failure nothing is left."""
    if size > sys.maxsize:
        raise OutOfSharedMemoryError(size, _memfd.memory_available(), "larger than this machine can address", "memory")
    _owner.journal()  # a journal folder we cannot use fails here, before anything is made
    name = make_name()
    fd = _memfd.create(name, size, data)
    _memfd.hold(name, fd)  # from here on, dropping the name closes the descriptor
    try:
        st = os.fstat(fd)
        mapping = _ipc.shm_map(fd, size)
        _owner.record_anonymous(name, size)
    except BaseException:
        if not _owner.release(name):  # recorded: the release closes it and settles the record
            _memfd.drop(name)
        raise
    pid, start = _myself()
    return name, mapping, Holder(pid, start, fd, st.st_dev, st.st_ino)


_LIMIT = 1 << 63


def check_holder(name: object, holder: object, size: object) -> tuple[str, Holder, int]:
    """Refuse, before anything is opened, a reference no SharedArray pickles."""
    if not is_ours(name):
        raise ValueError(
            f"{name!r:.80} is not the name of a leakguard block; the pickled SharedArray is damaged or crafted"
        )
    if type(holder) is tuple and len(holder) == 5 and type(size) is int and 0 <= size < _LIMIT:
        pid, start, fd, dev, ino = holder
        if (
            type(pid) is int
            and type(start) is int
            and type(fd) is int
            and type(dev) is int
            and type(ino) is int
            and 0 < pid < _LIMIT
            and 0 <= start < _LIMIT
            and 0 <= fd < _LIMIT
            and 0 <= dev < _LIMIT
            and 0 <= ino < _LIMIT
        ):
            return name, Holder(pid, start, fd, dev, ino), size  # type: ignore[return-value]  # is_ours: a str
    raise ValueError(
        f"{holder!r:.80} with size {size!r:.20} does not name the holder of an anonymous block; the pickled "
        "SharedArray is damaged or crafted"
    )


def _start_of(pid: int) -> int | None:
    try:
        return start_time(pid)
    except (OSError, ValueError, IndexError):
        return None


def _exited(holder: Holder) -> bool:
    return _start_of(holder.pid) != holder.start


def _why_gone(holder: Holder) -> str:
    now = _start_of(holder.pid)
    if now is None:
        return "has exited"
    if now != holder.start:
        return f"has exited, and pid {holder.pid} now belongs to another process (the reference is stale)"
    return (
        f"no longer holds it (it freed the block, or dropped its last reference): its descriptor {holder.fd} is "
        "closed or holds another file"
    )


def _open_anonymous(name: str, holder: Holder, size: int) -> tuple[int, mmap.mmap]:
    """Our own descriptor of an anonymous block and a mapping of it, once the descriptor
    opened through the holder is proven to be that block, still held by that process."""
    public = public_name(name)
    try:
        fd = _memfd.open_holder(holder.pid, holder.fd, name)
    except FileNotFoundError:
        raise BlockGoneError(public, holder.pid, _why_gone(holder)) from None
    except PermissionError as exc:
        raise PermissionError(
            errno.EACCES,
            f"not allowed to open descriptor {holder.fd} of process {holder.pid}, which holds anonymous block "
            f"{public} ({exc.strerror}): it runs as another user, or made itself non-dumpable. Use a named "
            "block (named=True) to share with such a process",
            public,
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (holder.dev, holder.ino):
            why = f"no longer holds it: its descriptor {holder.fd} now holds another block (a stale reference)"
            raise BlockGoneError(public, holder.pid, why)
        if st.st_size != size:
            why = f"holds it with {st.st_size:,} bytes, not {size:,} (a damaged reference)"
            raise BlockGoneError(public, holder.pid, why)
        # After the open: a holder that died, its pid reused (by a process holding the same
        # block: a child it forked), is caught here, not before.
        if _exited(holder):
            raise BlockGoneError(public, holder.pid, _why_gone(holder))
        mapping = _ipc.shm_map(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd, mapping


class SharedMemory:
    """``multiprocessing.shared_memory.SharedMemory``, journaled.

    The creating process owns the block: it is unlinked by ``unlink()``, or when
    the owner exits normally, or (if the owner dies) by the guardian or the sweep.
    leakguard chooses the name of a block it creates (SPEC 5), so ``create=True``
    takes no name.
    """

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
        if create:
            if name is not None:
                raise ValueError(
                    "name must be None when create=True: leakguard names the blocks it creates "
                    "(a fixed prefix and 80 random bits, so no name is ever guessed or squatted)"
                )
            self._name, self._mmap = _create(_check_size(size))
        else:
            if name is None:
                raise ValueError("name is required when create=False (the block to attach to)")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"size must be a non-negative int, got {size!r}")
            self._name = posix_name(name)  # lg_x or /lg_x, as the standard library takes it
            self._mmap = _attach(self._name)
        self._buf: memoryview | None = memoryview(self._mmap)

    @property
    def name(self) -> str:
        """The block's name without the leading slash (``lg_...``), as the standard library
        shows it and ``ls /dev/shm`` lists it, whichever form it was attached by."""
        return public_name(self._name)

    @property
    def size(self) -> int:
        """The block's size in bytes (reserved in full when it was created)."""
        return len(self._mmap)

    @property
    def buf(self) -> memoryview:
        """A memoryview of the block; ValueError once ``close()``d."""
        if self._buf is None:
            raise ValueError("this SharedMemory is closed")
        return self._buf

    def close(self) -> None:
        """Unmap this process's view. Raises BufferError while arrays still use the buffer."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        self._mmap.close()

    def unlink(self) -> None:
        """Remove the name (the owner also records the removal). Mappings stay valid."""
        # An explicit unlink() is the standard library's SharedMemory.unlink(): any process
        # may remove the name (the owner's journal then names an object that is gone, which
        # its release and the sweep take as done). Only the owner does it on its own (SPEC 2.2).
        if not _owner.release(self._name) and not _ipc.shm_unlink(self._name):
            raise FileNotFoundError(errno.ENOENT, "no shared memory block by that name (already unlinked)", self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedMemory, (self.name, False, 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- blocks under arrays


class Block:
    """One mapping of one block in this process, shared by every array that uses it.

    ``holder`` is None for a named block; for an anonymous one, the process whose
    descriptor its pickles name (this process, when it holds one: an owner does).
    ``root`` (a numpy view of the whole mapping, the base of every array in it) and
    ``address`` (where the mapping starts) are set by arrays.py when an array first
    uses the block: numpy is imported only then.
    """

    __slots__ = ("__weakref__", "address", "finalizer", "holder", "mapping", "name", "owner", "root", "size")

    def __init__(self, name: str, mapping: mmap.mmap, owner: bool, holder: Holder | None = None) -> None:
        self.name = name
        self.mapping = mapping
        self.size = len(mapping)
        self.owner = owner
        self.holder = holder
        self.root: Any = None
        self.address = 0
        self.finalizer: weakref.finalize[Any, Any] | None = None
        if owner:
            # The owner's last reference gone: unlink now (anonymous: close our descriptor), not at exit.
            self.finalizer = weakref.finalize(self, _owner.release, name)
            self.finalizer.atexit = False

    def disown(self) -> None:
        """Another process adopted this block (or this is a forked child's copy): collecting
        it must no longer unlink it, and an anonymous block's descriptor is not ours to hold."""
        self.owner = False
        if self.finalizer is not None:
            self.finalizer.detach()
            self.finalizer = None
        if self.holder is not None:
            _memfd.drop(self.name)  # our mapping stays; the adopter (or the parent) holds its own


# Every block this process has mapped, so that a thousand pickled slices of one
# array share one mapping.
_blocks: weakref.WeakValueDictionary[str, Block] = weakref.WeakValueDictionary()


def _disown_after_fork() -> None:
    # A forked child maps its parent's blocks but owns none of them (_journal/owner.py forgets
    # the parent's journal): it must neither unlink them nor refuse to send them. Its copies
    # of the parent's memfd descriptors are closed: they would keep the parent's anonymous
    # blocks alive after the parent freed them. Its pickles still name the parent as holder.
    for block in list(_blocks.values()):
        block.disown()
    _memfd.drop_all()


_owner.after_fork_in_child(_disown_after_fork)


# ---------------------------------------------------------------------------- kept mappings
#
# A pool worker keeps the mappings of the last few blocks it attached after their arrays
# are gone (issue 15), so that the next task over the same block maps nothing and takes no
# page faults: its page tables are still filled. Every reuse first checks, as cheaply as
# the kernel allows, that the reference still names that block, alive:
#
# - named: the name still opens (its owner has not unlinked it) the same inode, same size;
# - anonymous: the key is the whole reference (holder's pid and start time, descriptor
#   number, device, inode, size); /proc/PID/fd/N must still stat as that inode (the holder
#   still holds it: no open, no readlink) and the holder's start time must still match (its
#   pid not reused). While we map the block its inode cannot be reused, so the same inode
#   is the same memory. A forged or stale reference is another key, or fails the check,
#   and goes the ordinary way (_open_anonymous), which refuses it as before.
#
# Bounded by count (the least recently used goes first), not by bytes: a kept mapping of a
# live block costs this process its page tables only (the memory is the owner's, held by
# the owner anyway). A freed one would pin the block's memory, so a thread checks the kept
# mappings every _CHECK_SECONDS and lets go of those whose block was freed (unlinked, or
# no longer held), as an idle worker runs no task that would notice.

_KeptKey = tuple[Any, ...]
_kept: OrderedDict[_KeptKey, mmap.mmap] = OrderedDict()
_kept_limit = 0  # 0: keep nothing (every process but a pool's worker)
_kept_lock = threading.Lock()
_checker: threading.Thread | None = None
_CHECK_SECONDS = 1.0
_mapped = 0  # mappings made by attaching (tests count them)


def keep_mappings(limit: int) -> None:
    """From now on keep the mappings of the ``limit`` blocks this process attached last
    (a pool's worker; 0 keeps none), until their block is freed."""
    global _kept_limit
    with _kept_lock:
        _kept_limit = max(0, limit)
        while len(_kept) > _kept_limit:
            _kept.popitem(last=False)


def mappings_made() -> int:
    """How many mappings attaching has made in this process (a kept one reused is not one)."""
    return _mapped


def kept_blocks() -> list[str]:
    """Names (``lg_x``) of the blocks whose mappings this process keeps, least recently used first."""
    with _kept_lock:
        return [public_name(key[1]) for key in _kept]


def _keep(key: _KeptKey, mapping: mmap.mmap) -> None:
    global _mapped, _checker
    with _kept_lock:
        _mapped += 1
        if _kept_limit <= 0:
            return
        _kept[key] = mapping
        _kept.move_to_end(key)
        while len(_kept) > _kept_limit:
            _kept.popitem(last=False)  # unmapped here, unless an array still uses it
        if _checker is None:
            _checker = threading.Thread(target=_check_kept_forever, name="leakguard-kept-mappings", daemon=True)
            _checker.start()


def _kept_mapping(key: _KeptKey) -> mmap.mmap | None:
    """The kept mapping for ``key``, if there is one and its block is still there."""
    with _kept_lock:
        mapping = _kept.get(key)
    if mapping is None:
        return None
    if not _still_there(key):
        with _kept_lock:
            if _kept.get(key) is mapping:
                del _kept[key]
        return None
    with _kept_lock:
        if key in _kept:
            _kept.move_to_end(key)
    return mapping


def _still_there(key: _KeptKey) -> bool:
    if key[0] == "named":
        _, name, dev, ino, size = key
        try:
            fd = _ipc.shm_attach(name)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return (st.st_dev, st.st_ino, st.st_size) == (dev, ino, size)
    holder = Holder(*key[2:7])
    size = key[7]
    try:
        st = os.stat(f"/proc/{holder.pid}/fd/{holder.fd}")
    except OSError:  # closed, or the holder is gone
        return False
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size) != (holder.dev, holder.ino, size):
        return False
    return not _exited(holder)  # after the stat: see _open_anonymous


def drop_freed() -> None:
    """Let go of the kept mappings whose block was freed since."""
    with _kept_lock:
        keys = list(_kept)
    gone = [key for key in keys if not _still_there(key)]
    with _kept_lock:
        for key in gone:
            _kept.pop(key, None)


def _check_kept_forever() -> None:
    while True:
        time.sleep(_CHECK_SECONDS)
        drop_freed()


def _forget_kept_after_fork() -> None:
    # The child's copies of our mappings are its own to let go of; the checker thread did not fork.
    global _kept_lock, _checker
    _kept_lock = threading.Lock()
    _kept.clear()
    _checker = None


_owner.after_fork_in_child(_forget_kept_after_fork)


def _attach_kept(name: str) -> mmap.mmap:
    """A mapping of named block ``name``: the kept one if the name still opens that block."""
    fd = _ipc.shm_attach(name)
    try:
        st = os.fstat(fd)
        key = ("named", name, st.st_dev, st.st_ino, st.st_size)
        with _kept_lock:
            mapping = _kept.get(key)
            if mapping is not None:
                _kept.move_to_end(key)
        if mapping is None:
            mapping = _ipc.shm_map(fd, st.st_size)
            _keep(key, mapping)
        return mapping
    finally:
        os.close(fd)


def attach_block(name: str) -> Block:
    """Named block ``name`` as this process maps it (an array's pickle names it): its one
    mapping here, or a kept one, or a new one."""
    block = _blocks.get(name)
    if block is None:
        block = Block(name, _attach_kept(name), owner=False)
        _blocks[name] = block
    return block


def attach_anonymous_block(name: str, holder: Holder, size: int) -> Block:
    """Anonymous block ``name`` held by ``holder`` as this process maps it: its one mapping
    here (refused if it is another block), or a kept one, or one opened through the holder."""
    block = _blocks.get(name)
    if block is not None:
        mine = block.holder
        if mine is None or (mine.dev, mine.ino) != (holder.dev, holder.ino):
            raise ValueError(
                f"the pickled SharedArray names block {public_name(name)} with another identity than the block of that "
                "name mapped here; it is damaged or crafted"
            )
        return block
    key = ("anonymous", name, *holder, size)
    mapping = _kept_mapping(key)
    if mapping is None:
        fd, mapping = _open_anonymous(name, holder, size)
        os.close(fd)  # the mapping is enough to use it; its holder stays the one the pickle named
        _keep(key, mapping)
    block = Block(name, mapping, owner=False, holder=holder)
    _blocks[name] = block
    return block


def anonymous_by_default() -> bool:
    """Do new blocks default to anonymous here? (Linux with memfd, and LEAKGUARD_NAMED_BLOCKS unset.)"""
    return _memfd.available()


def name_every_block() -> None:
    """From now on every block this process makes is named (a pool's worker, when its pool's
    process names its blocks: both sides of the pool make the same kind)."""
    _memfd.disable()


def new_block(size: int, data: memoryview | None, named: bool) -> Block:
    """A new block this process owns: anonymous unless ``named`` (or the OS has no memfd:
    macOS, or memfd_create refused, after which every block is named)."""
    if not named and _memfd.available():
        try:
            name, mapping, holder = _create_anonymous(size, data)
        except _memfd.Unavailable:
            pass  # an old kernel or a sandbox without memfd_create: named, from now on
        else:
            block = Block(name, mapping, owner=True, holder=holder)
            _blocks[name] = block
            return block
    name, mapping = _create(size, data)
    block = Block(name, mapping, owner=True)
    _blocks[name] = block
    return block


# ---------------------------------------------------------------------------- hand-over
#
# A pool worker returns a large array in a block it made and owns. The parent
# unpickles it with arrays.py's _adopt() (adopt_block here): it maps the block, then writes its own add record;
# only after that does the worker (told by the pool) drop its record. So some
# journal names the block at every instant, and the parent owns it once mapped.
# An anonymous block (_adopt_anonymous, adopt_anonymous_block) goes the same way, with a descriptor for a name:
# the worker's descriptor travels with the result's frame (_pool/wire.py) and becomes the
# parent's own; the worker keeps its own until the parent's answer. (Without one that
# came with the frame, the parent opens the worker's through /proc, which the worker
# holds until that answer.) So the block cannot vanish before the parent holds it too.

_adoptions = threading.local()


def adopted_names() -> list[str]:
    """Names this thread adopted since the last call (the pool tells the worker)."""
    names: list[str] = getattr(_adoptions, "names", [])
    _adoptions.names = []
    return names


def _note_adopted(name: str) -> None:
    names: list[str] = getattr(_adoptions, "names", [])
    names.append(name)
    _adoptions.names = names


def adopt_block(name: str) -> Block:
    """The named block ``name`` a worker handed over, mapped and owned here (once it is
    journaled as ours); the one we already own, if we adopted it through another view."""
    block = _blocks.get(name)
    if block is None or not block.owner:
        fd = _ipc.shm_attach(name)
        try:
            st = os.fstat(fd)
            mapping = _ipc.shm_map(fd, st.st_size)
        finally:
            os.close(fd)
        failpoint("handover.parent-after-map")
        _owner.adopt("shm", name, st.st_size, st.st_dev, st.st_ino)
        failpoint("handover.parent-after-adopt")
        block = Block(name, mapping, owner=True)
        _blocks[name] = block
        _note_adopted(name)
    return block


def adopt_anonymous_block(name: str, theirs: Holder, size: int, slot: int | None) -> Block:
    """The anonymous block a worker (``theirs``) handed over, mapped and held here: through
    the descriptor in ``slot`` of those that came with the frame, else through the holder."""
    received = _take_received(slot)
    block = _blocks.get(name)
    if block is None or not block.owner:
        if received is not None:  # it came with the frame (wire.py): ours already
            fd, mapping = _map_received(name, theirs, size, received)
        else:  # through the holder, which keeps it until we answer
            fd, mapping = _open_anonymous(name, theirs, size)
        _memfd.hold(name, fd)  # ours now: others attach through it once the worker lets go
        failpoint("handover.parent-after-map")
        try:
            _owner.record_anonymous(name, size)
        except BaseException:
            _memfd.drop(name)
            raise
        failpoint("handover.parent-after-adopt")
        pid, start = _myself()
        block = Block(name, mapping, owner=True, holder=Holder(pid, start, fd, theirs.dev, theirs.ino))
        _blocks[name] = block
        _note_adopted(name)
    elif received is not None:
        os.close(received)  # adopted already, through another view of it
    return block


def _map_received(name: str, holder: Holder, size: int, fd: int) -> tuple[int, mmap.mmap]:
    """Map a descriptor that came with a result's frame, once it is proven to be the block."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size) != (holder.dev, holder.ino, size):
            raise ValueError(
                f"the descriptor sent with anonymous block {public_name(name)} is another file; the result's "
                "frame is damaged or crafted"
            )
        return fd, _ipc.shm_map(fd, size)
    except BaseException:
        os.close(fd)
        raise


# Descriptors that came with the frame being unpickled on this thread (a pool's results:
# _pool/wire.py), by slot; a slot is taken (set to -1) by the block that claims it.
_inbox = threading.local()


@contextlib.contextmanager
def received_descriptors(fds: Sequence[int]) -> Iterator[None]:
    """While unpickling a result that came with ``fds``: its blocks take theirs by slot.
    Whatever no block took is closed at the end, however the unpickling ended."""
    _inbox.fds = list(fds)
    try:
        yield
    finally:
        left, _inbox.fds = _inbox.fds, []
        for fd in left:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _take_received(slot: object) -> int | None:
    fds: list[int] = getattr(_inbox, "fds", [])
    if type(slot) is not int or not 0 <= slot < len(fds) or fds[slot] < 0:
        return None
    fd, fds[slot] = fds[slot], -1
    return fd


_attachments = threading.local()


def attached_names() -> list[str]:
    """Blocks this thread attached by unpickling since the last call (a worker's arguments)."""
    names: list[str] = getattr(_attachments, "names", [])
    _attachments.names = []
    return names


def still_mapped(names: list[str]) -> bool:
    """Does anything in this process still use one of these blocks?"""
    return any(name in _blocks for name in names)


def note_attached(name: str) -> None:
    """Count ``name`` among the blocks attached_names() reports (an array's pickle named it)."""
    names: list[str] | None = getattr(_attachments, "names", None)
    if names is not None:
        names.append(name)


def block_of(array: object) -> Block | None:
    """The block a SharedArray (or a view of one) lives in; None for any other object."""
    block: Block | None = getattr(array, "_lg_block", None)
    return block
