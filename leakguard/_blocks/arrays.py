"""``SharedArray`` (a numpy array in a block, pickled as a reference) and the functions
that make, free and hand over such arrays: the numpy side of the blocks of shm.py.

A module of its own so that numpy is imported only where arrays are used: a pool's
worker starts without it (about 60 ms of its start-up, issue 15), and imports it with
this module when a task's pickle names one of the functions below or its dtype (an
array's pickle does both), or when a task's own code imports numpy.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from leakguard._errors import NotOwnerError
from leakguard._journal import owner as _owner
from leakguard._os import memfd as _memfd
from leakguard._os.names import is_ours, public_name

from .shm import (
    Block,
    adopt_anonymous_block,
    adopt_block,
    attach_anonymous_block,
    attach_block,
    block_of,
    check_holder,
    new_block,
    note_attached,
)

__all__ = [
    "SharedArray",
    "block_name",
    "copy_into",
    "free",
    "hand_over_reduction",
    "held_descriptor",
    "share",
    "shared_array",
]

# ---------------------------------------------------------------------------- hand-over
#
# A worker's result array in a block it owns is pickled to be adopted by the parent
# (shm.py, "hand-over"): _adopt and _adopt_anonymous are what the parent's unpickling calls.


def _adopt(
    name: str, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype[Any]
) -> SharedArray:
    dtype = _check_reference(name, dtype)
    block = adopt_block(name)
    return SharedArray._wrap(block, shape, dtype, offset, strides)


def _adopt_anonymous(
    name: str,
    holder: tuple[int, ...],
    size: int,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: np.dtype[Any],
    slot: int | None = None,
) -> SharedArray:
    name, theirs, size = check_holder(name, holder, size)
    dtype = _check_reference(name, dtype)
    block = adopt_anonymous_block(name, theirs, size, slot)
    return SharedArray._wrap(block, shape, dtype, offset, strides)


def hand_over_reduction(array: SharedArray, slot: int | None = None) -> tuple[Any, ...] | None:
    """How a worker pickles an array it owns for the parent to adopt (None: not ours to hand
    over). ``slot``: where the block's descriptor is among those sent with the frame."""
    block = array._backing()
    if block is None or not block.owner or not _owner.owns(block.name):
        return None
    offset = array.__array_interface__["data"][0] - block.address
    if block.holder is not None:
        return (
            _adopt_anonymous,
            (block.name, tuple(block.holder), block.size, offset, array.shape, array.strides, array.dtype, slot),
        )
    return (_adopt, (block.name, offset, array.shape, array.strides, array.dtype))


def held_descriptor(array: SharedArray) -> int | None:
    """The descriptor this process holds of the anonymous block it owns under ``array``, to
    send along with it; None for any other array."""
    block = array._backing()
    if block is None or block.holder is None or not block.owner or not _owner.owns(block.name):
        return None
    return _memfd.held(block.name)


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


# ---------------------------------------------------------------------------- references


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
    block = attach_block(name)
    note_attached(name)
    return SharedArray._wrap(block, shape, dtype, offset, strides)


def _rebuild_anonymous(
    name: str,
    holder: tuple[int, ...],
    size: int,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: np.dtype[Any],
) -> SharedArray:
    name, theirs, size = check_holder(name, holder, size)
    dtype = _check_reference(name, dtype)
    block = attach_anonymous_block(name, theirs, size)
    note_attached(name)
    return SharedArray._wrap(block, shape, dtype, offset, strides)


class SharedArray(np.ndarray):  # type: ignore[type-arg,unused-ignore]
    """A numpy array whose data lives in a shared memory block (anonymous or named).

    Pickling it, or any view or slice of it, sends a reference to the block (a named
    block's name; an anonymous block's holder, descriptor number and inode), the offset,
    shape, strides and dtype (a few hundred bytes), never the data. The receiver
    maps the block; writes are visible to every process.
    """

    _lg_block: Block | None

    @classmethod
    def _wrap(
        cls,
        block: Block,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        offset: int = 0,
        strides: tuple[int, ...] | None = None,
    ) -> SharedArray:
        root = block.root
        if root is None:  # the block's first array (two threads may both get here: same address)
            root = np.frombuffer(block.mapping, dtype=np.uint8)
            block.address = root.__array_interface__["data"][0]
            block.root = root
        array: SharedArray = np.ndarray.__new__(cls, shape, dtype=dtype, buffer=root, offset=offset, strides=strides)
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

    def _backing(self) -> Block | None:
        """The block this array's elements lie in, checked by address."""
        block: Block | None = getattr(self, "_lg_block", None)
        if block is None:
            return None
        low, high = _extent(self)
        if block.address <= low and high <= block.address + block.size:
            return block
        return None

    @property
    def block_name(self) -> str | None:
        """Name of the block holding the data (``lg_...``), named or anonymous: what ``leakguard
        ls`` lists it as. None for an array with memory of its own. Only a named block's can be
        attached by name (``shm_name``)."""
        block = self._backing()
        return None if block is None else public_name(block.name)

    @property
    def shm_name(self) -> str | None:
        """Name of the named block holding the data (``lg_...``, the form of ``SharedMemory.name``:
        ``SharedMemory(a.shm_name)`` attaches to it); None for an anonymous block (it has no
        name in /dev/shm) or an array with memory of its own."""
        block = self._backing()
        return None if block is None or block.holder is not None else public_name(block.name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        block = self._backing()
        if block is None:
            return self.view(np.ndarray).__reduce_ex__(protocol)
        if block.owner and not _owner.owns(block.name):
            raise ValueError(
                f"this array's block {public_name(block.name)} was freed; it cannot be sent to another process"
            )
        offset = self.__array_interface__["data"][0] - block.address
        if block.holder is not None:
            return (
                _rebuild_anonymous,
                (block.name, tuple(block.holder), block.size, offset, self.shape, self.strides, self.dtype),
            )
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
    shape: SupportsIndex | Iterable[SupportsIndex],
    dtype: npt.DTypeLike = float,
    *,
    fill: Any = None,
    named: bool = False,
) -> SharedArray:
    """A new array in a new block, owned by this process.

    The block is anonymous (a memfd: no name in /dev/shm, not limited by its size, freed
    by the kernel with its last holder) where the OS has them (Linux); with
    ``named=True``, or without memfd (macOS), it is a named, journaled block in /dev/shm.
    Uninitialised (zeros: a fresh block is zero-filled) unless ``fill`` is given.
    """
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects, which cannot live in shared memory")
    dims = _dims(shape)
    nbytes = dt.itemsize * math.prod(dims)  # exact: numpy's int64 product would wrap for absurd shapes
    block = new_block(max(nbytes, 1), None, _check_named(named))
    array = SharedArray._wrap(block, dims, dt)
    if fill is not None:
        array.fill(fill)
    return array


def share(array: npt.ArrayLike, *, named: bool = False) -> SharedArray:
    """A shared copy of ``array`` (same shape and dtype, C order), in a new block as
    ``shared_array`` makes it (anonymous unless ``named=True``)."""
    source = np.asarray(array)
    if not (source.flags.c_contiguous and source.nbytes and not source.dtype.hasobject):
        result = shared_array(source.shape, source.dtype, named=named)
        np.copyto(result, source, casting="no")
        return result
    # The block is created holding the data (written, not mapped and copied: see _ipc.shm_fill).
    block = new_block(source.nbytes, source.reshape(-1).view(np.uint8).data, _check_named(named))
    return SharedArray._wrap(block, source.shape, source.dtype)


def _check_named(named: object) -> bool:
    if not isinstance(named, (bool, np.bool_)):
        raise TypeError(f"named must be True or False, not {type(named).__name__}")
    return bool(named)


def free(array: np.ndarray) -> None:
    """End the block behind ``array`` now (owner only; idempotent): unlink a named block,
    close this process's descriptor of an anonymous one.

    The array stays valid in this process until it is collected, and in every process
    that has mapped it; no other process can attach to the block any more.
    """
    block = block_of(array)
    if block is None:
        raise TypeError(f"free() takes a SharedArray backed by shared memory, not {type(array).__name__}")
    if not block.owner:
        raise NotOwnerError(public_name(block.name), None)
    _owner.release(block.name)


def copy_into(block: Block, array: npt.NDArray[Any]) -> SharedArray:
    """A SharedArray in ``block`` (one this process owns and no longer uses, as the
    pool's spare blocks are) holding a copy of ``array``."""
    shared = SharedArray._wrap(block, array.shape, array.dtype)
    np.copyto(shared, array, casting="no")
    return shared


def block_name(array: SharedArray) -> str | None:
    """The name (POSIX form, as journals and pickles keep it) of the block ``array``'s
    elements lie in, named or anonymous; None for an array with memory of its own."""
    block = array._backing()
    return None if block is None else block.name
