"""Journaled shared memory: ``SharedMemory`` (the standard library's interface) and
``SharedArray`` (a numpy array in a block, pickled by name).

Creating and freeing a block follow the write-ahead order (docs/design.md, with its
``shm.*`` failpoints).

The standard library's resource_tracker is never involved: no process but the
owner unlinks, and the journal, not a tracker process, survives the owner.
"""

from __future__ import annotations

import errno
import math
import mmap
import operator
import os
import sys
import threading
import weakref
from collections.abc import Iterable
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from leakguard._errors import NotOwnerError, OutOfSharedMemoryError
from leakguard._failpoint import failpoint
from leakguard._journal import owner as _owner
from leakguard._os import ipc as _ipc
from leakguard._os.names import is_ours, make_name, posix_name, public_name

__all__ = [
    "SharedArray",
    "SharedMemory",
    "adopted_names",
    "attached_names",
    "block_of",
    "copy_into",
    "free",
    "hand_over_reduction",
    "share",
    "shared_array",
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


# ---------------------------------------------------------------------------- arrays


class _Block:
    """One mapping of one block in this process, shared by every array that uses it."""

    __slots__ = ("__weakref__", "address", "finalizer", "mapping", "name", "owner", "root", "size")

    def __init__(self, name: str, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.mapping = mapping
        self.size = len(mapping)
        self.owner = owner
        self.root = np.frombuffer(mapping, dtype=np.uint8)
        self.address: int = self.root.__array_interface__["data"][0]
        self.finalizer: weakref.finalize[Any, Any] | None = None
        if owner:
            # The owner's last reference gone: unlink now, not at exit.
            self.finalizer = weakref.finalize(self, _owner.release, name)
            self.finalizer.atexit = False

    def disown(self) -> None:
        """Another process adopted this block: collecting it must no longer unlink it."""
        self.owner = False
        if self.finalizer is not None:
            self.finalizer.detach()
            self.finalizer = None


# Every block this process has mapped, so that a thousand pickled slices of one
# array share one mapping.
_blocks: weakref.WeakValueDictionary[str, _Block] = weakref.WeakValueDictionary()


def _disown_after_fork() -> None:
    # A forked child maps its parent's blocks but owns none of them (_journal/owner.py forgets
    # the parent's journal): it must neither unlink them nor refuse to send them.
    for block in list(_blocks.values()):
        block.disown()


_owner.after_fork_in_child(_disown_after_fork)


def _block_for(name: str) -> _Block:
    block = _blocks.get(name)
    if block is None:
        block = _Block(name, _attach(name), owner=False)
        _blocks[name] = block
    return block


# ---------------------------------------------------------------------------- hand-over
#
# A pool worker returns a large array in a block it made and owns. The parent
# unpickles it with _adopt(): it maps the block, then writes its own add record;
# only after that does the worker (told by the pool) drop its record. So some
# journal names the block at every instant, and the parent owns it once mapped.

_adoptions = threading.local()


def adopted_names() -> list[str]:
    """Names this thread adopted since the last call (the pool tells the worker)."""
    names: list[str] = getattr(_adoptions, "names", [])
    _adoptions.names = []
    return names


def _adopt(
    name: str, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype[Any]
) -> SharedArray:
    dtype = _check_reference(name, dtype)
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
        block = _Block(name, mapping, owner=True)
        _blocks[name] = block
        names: list[str] = getattr(_adoptions, "names", [])
        names.append(name)
        _adoptions.names = names
    return SharedArray._wrap(block, shape, dtype, offset, strides)


def hand_over_reduction(array: SharedArray) -> tuple[Any, ...] | None:
    """How a worker pickles an array it owns for the parent to adopt (None: not ours to hand over)."""
    block = array._backing()
    if block is None or not block.owner or not _owner.owns(block.name):
        return None
    offset = array.__array_interface__["data"][0] - block.address
    return (_adopt, (block.name, offset, array.shape, array.strides, array.dtype))


def _extent(a: np.ndarray) -> tuple[int, int]:
    """[low, high) addresses the array's elements span."""
    low = high = a.__array_interface__["data"][0]
    if a.size == 0:
        return low, low
    for n, stride in zip(a.shape, a.strides, strict=True):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + a.itemsize


_attachments = threading.local()


def attached_names() -> list[str]:
    """Blocks this thread attached by unpickling since the last call (a worker's arguments)."""
    names: list[str] = getattr(_attachments, "names", [])
    _attachments.names = []
    return names


def still_mapped(names: list[str]) -> bool:
    """Does anything in this process still use one of these blocks?"""
    return any(name in _blocks for name in names)


def _check_reference(name: object, dtype: object) -> np.dtype[Any]:
    """Refuse, before anything is attached, what no SharedArray pickles: a name that is not
    one of ours, or a dtype with Python objects inside (it would read pointers from shared
    memory, made by another process or by whoever crafted the pickle)."""
    if not is_ours(name):
        raise ValueError(
            f"{name!r:.80} is not the name of a leakguard block; the pickled SharedArray is damaged or crafted"
        )
    dt: np.dtype[Any] = np.dtype(dtype)  # type: ignore[call-overload]
    if dt.hasobject:
        raise TypeError(f"a SharedArray of dtype {dt} (Python objects) cannot come from shared memory; refused")
    return dt


def _rebuild(
    name: str, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype[Any]
) -> SharedArray:
    dtype = _check_reference(name, dtype)
    block = _block_for(name)
    names: list[str] | None = getattr(_attachments, "names", None)
    if names is not None:
        names.append(name)
    return SharedArray._wrap(block, shape, dtype, offset, strides)


class SharedArray(np.ndarray):  # type: ignore[type-arg,unused-ignore]
    """A numpy array whose data lives in a journaled shared memory block.

    Pickling it, or any view or slice of it, sends the block's name, the offset,
    shape, strides and dtype (a few hundred bytes), never the data. The receiver
    maps the block; writes are visible to every process.
    """

    _lg_block: _Block | None

    @classmethod
    def _wrap(
        cls,
        block: _Block,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        offset: int = 0,
        strides: tuple[int, ...] | None = None,
    ) -> SharedArray:
        array: SharedArray = np.ndarray.__new__(
            cls, shape, dtype=dtype, buffer=block.root, offset=offset, strides=strides
        )
        array._lg_block = block
        return array

    def __array_finalize__(self, obj: object) -> None:
        # A view (it has a base) shares its parent's block; a fresh result
        # (a + 1, a.copy()) has memory of its own and is a plain array inside.
        self._lg_block = getattr(obj, "_lg_block", None) if self.base is not None else None

    def __array_wrap__(self, obj: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # A ufunc's result (a + 1, np.sqrt(a)) has memory of its own: hand it back
        # as the plain array it is, rather than as a SharedArray without a block.
        if type(obj) is np.ndarray:
            return obj[()] if return_scalar else obj
        return super().__array_wrap__(obj, context, return_scalar)

    def _backing(self) -> _Block | None:
        """The block this array's elements lie in, checked by address."""
        block: _Block | None = getattr(self, "_lg_block", None)
        if block is None:
            return None
        low, high = _extent(self)
        if block.address <= low and high <= block.address + block.size:
            return block
        return None

    @property
    def shm_name(self) -> str | None:
        """Name of the block holding the data (``lg_...``, the form of ``SharedMemory.name``:
        ``SharedMemory(a.shm_name)`` attaches to it), or None for an array with memory of its own."""
        block = self._backing()
        return None if block is None else public_name(block.name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        block = self._backing()
        if block is None:
            return self.view(np.ndarray).__reduce_ex__(protocol)
        if block.owner and not _owner.owns(block.name):
            raise ValueError(
                f"this array's block {public_name(block.name)} was freed; it cannot be sent to another process"
            )
        offset = self.__array_interface__["data"][0] - block.address
        return (_rebuild, (block.name, offset, self.shape, self.strides, self.dtype))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)


def _index(n: object) -> int | None:
    """``n`` as a dimension, or None: an integer (numpy's too), never a bool, float or str."""
    if isinstance(n, (bool, np.bool_, str, bytes)):
        return None
    try:
        return operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        return None


def _dims(shape: object) -> tuple[int, ...]:
    """``shape`` as numpy reads it: an integer or a sequence of integers. 1.5 or "3" is a
    TypeError, as in ``numpy.empty`` (``int()`` would silently have made them 1 and 3)."""
    single = _index(shape)
    if single is not None:
        dims: tuple[int | None, ...] = (single,)
    elif isinstance(shape, Iterable) and not isinstance(shape, (str, bytes)):
        dims = tuple(_index(n) for n in shape)
    else:
        dims = (None,)
    if None in dims:
        raise TypeError(f"shape must be an integer or a sequence of integers, got {shape!r:.60}")
    checked = tuple(n for n in dims if n is not None)
    if any(n < 0 for n in checked):
        raise ValueError(f"shape must not have negative dimensions, got {checked}")
    return checked


def shared_array(
    shape: SupportsIndex | Iterable[SupportsIndex], dtype: npt.DTypeLike = float, *, fill: Any = None
) -> SharedArray:
    """A new array in a new journaled block, owned by this process.

    Uninitialised (zeros: a fresh block is zero-filled) unless ``fill`` is given.
    """
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects, which cannot live in shared memory")
    dims = _dims(shape)
    nbytes = dt.itemsize * math.prod(dims)  # exact: numpy's int64 product would wrap for absurd shapes
    name, mapping = _create(max(nbytes, 1))
    block = _Block(name, mapping, owner=True)
    _blocks[name] = block
    array = SharedArray._wrap(block, dims, dt)
    if fill is not None:
        array.fill(fill)
    return array


def share(array: npt.ArrayLike) -> SharedArray:
    """A shared copy of ``array`` (same shape and dtype, C order)."""
    source = np.asarray(array)
    if not (source.flags.c_contiguous and source.nbytes and not source.dtype.hasobject):
        result = shared_array(source.shape, source.dtype)
        np.copyto(result, source, casting="no")
        return result
    # The block is created holding the data (written, not mapped and copied: see _ipc.shm_fill).
    name, mapping = _create(source.nbytes, source.reshape(-1).view(np.uint8).data)
    block = _Block(name, mapping, owner=True)
    _blocks[name] = block
    return SharedArray._wrap(block, source.shape, source.dtype)


def free(array: np.ndarray) -> None:
    """Unlink the block behind ``array`` now (owner only; idempotent).

    The array stays valid in this process until it is collected; no other process
    can attach to the block any more.
    """
    block = block_of(array)
    if block is None:
        raise TypeError(f"free() takes a SharedArray backed by shared memory, not {type(array).__name__}")
    if not block.owner:
        raise NotOwnerError(public_name(block.name), None)
    _owner.release(block.name)


def copy_into(block: _Block, array: npt.NDArray[Any]) -> SharedArray:
    """A SharedArray in ``block`` (one this process owns and no longer uses, as the
    pool's spare blocks are) holding a copy of ``array``."""
    shared = SharedArray._wrap(block, array.shape, array.dtype)
    np.copyto(shared, array, casting="no")
    return shared


def block_of(array: object) -> _Block | None:
    """The block a SharedArray (or a view of one) lives in; None for any other object."""
    block: _Block | None = getattr(array, "_lg_block", None)
    return block
