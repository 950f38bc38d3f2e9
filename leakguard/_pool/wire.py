"""What travels on a pool's pipes: length-framed messages, and the picklers that send
large numpy arrays through shared memory instead of through the pipe.

A frame is ``LENGTH (8 bytes, little endian) KIND (1 byte) TID (8 bytes) BODY``:
the task id and kind can be read without unpickling the body, so a body that
fails to unpickle still fails the right task.

Arguments (parent to worker): a plain ``numpy.ndarray`` of ``threshold`` bytes or
more is copied into a block the parent owns, and the task holds that block until
it is settled; the worker opens an anonymous one through ``/proc/<parent>/fd/N``.
Results (worker to parent): such an array is copied into a block the worker owns
and handed over (_blocks/shm.py, "hand-over"); so is a ``SharedArray`` the task
created. A ``SharedArray`` anyone else owns travels by reference, as always. When
there is no room for a block (a full /dev/shm, or memory), an array travels through
the pipe instead.

Results come back on a unix socket (``result_channel``), and the descriptors of a
result's anonymous blocks travel with its frame, in the same ``sendmsg`` (SCM_RIGHTS,
unix(7)): the kernel holds them in flight, so a worker that dies right after sending
loses nothing, and the parent opens nothing through /proc. ``FrameBuffer`` hands each
frame the descriptors that arrived with its first byte: a stream unix socket never
joins data sent with descriptors to data read before it, and returns the descriptors
with the first byte they were sent with.
"""

from __future__ import annotations

import array
import collections
import contextlib
import io
import os
import pickle
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from leakguard._blocks.shm import block_of
from leakguard._errors import OutOfSharedMemoryError

from .byvalue import DISPATCH, ByValuePickler, ToWorkerPickler, by_value

if TYPE_CHECKING:
    import numpy as np

    from leakguard._blocks.arrays import SharedArray

__all__ = [
    "ACK",
    "FAILED",
    "FLAGS",
    "HANDED",
    "INIT_FAILED",
    "OK",
    "READY",
    "RETAINED",
    "RETIRING",
    "STOP",
    "TASK",
    "ArgPickler",
    "BlockingReader",
    "Frame",
    "FrameBuffer",
    "ResultPickler",
    "SpareBlocks",
    "TaskBody",
    "borrow",
    "close_all",
    "frame",
    "load_task",
    "receive",
    "result_channel",
    "send_frame",
    "write_all",
]

_HEAD = struct.Struct("<QBQ")
HEAD_SIZE = _HEAD.size

# parent -> worker
TASK = 1
ACK = 2  # body: the names the parent adopted from that task's result
STOP = 3
# worker -> parent
OK = 10
FAILED = 11
READY = 12
INIT_FAILED = 13
RETIRING = 0x80  # or'ed into OK/FAILED: the worker exits after this result
HANDED = 0x40  # or'ed into OK/FAILED: the result hands blocks over; answer with ACK
RETAINED = 0x20  # or'ed into OK/FAILED: the worker still uses an argument block (never reuse it)
FLAGS = RETIRING | HANDED | RETAINED


class Frame(NamedTuple):
    """A message read from a pipe."""

    kind: int  # TASK, ACK, STOP; or OK, FAILED (with FLAGS), READY, INIT_FAILED
    tid: int  # the task it is about (0: none)
    body: bytes
    fds: tuple[int, ...] = ()  # descriptors sent with it (a result's anonymous blocks): the reader's to close


class TaskBody(NamedTuple):
    """A TASK frame's body, unpickled: what the worker runs.

    It travels as a plain tuple of these fields (the parent pickles ``(func, mode, args)``;
    ``load_task`` names them): a NamedTuple would pickle its class's path in every frame and
    cost a lookup of it in the worker, about 3 microseconds a task here.
    """

    func: Any
    mode: int  # worker.APPLY: func(*args[0], **args[1]); MAP: func(x) for x in args; STARMAP: func(*x)
    args: Any


def load_task(body: bytes) -> TaskBody:
    return TaskBody._make(pickle.loads(body))


def frame(kind: int, tid: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + HEAD_SIZE - 8, kind, tid) + body


class FrameBuffer:
    """Cuts a byte stream (fed as it arrives, with any descriptors that came with it) into frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self._fds: collections.deque[tuple[int, tuple[int, ...]]] = collections.deque()  # (stream offset, fds)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[Frame]:
        if not self._buf and not self._fds and len(data) >= HEAD_SIZE:
            # Most often a read brings exactly one whole frame: cut it out of the data itself,
            # without copying it through the buffer (a round trip feeds two frames).
            length, kind, tid = _HEAD.unpack_from(data)
            if len(data) == 8 + length:
                self._start += len(data)
                return [Frame(kind, tid, bytes(data[HEAD_SIZE:]), tuple(fds))]
        buf = self._buf
        if fds:
            self._fds.append((self._start + len(buf), tuple(fds)))
        buf += data
        out = []
        at = 0
        end = len(buf)
        while end - at >= HEAD_SIZE:
            length, kind, tid = _HEAD.unpack_from(buf, at)
            stop = at + 8 + length
            if stop > end:
                break
            out.append(Frame(kind, tid, bytes(buf[at + HEAD_SIZE : stop]), self._fds_at(self._start + at)))
            at = stop
        if at:
            del buf[:at]
            self._start += at
        return out

    def _fds_at(self, offset: int) -> tuple[int, ...]:
        """The descriptors that arrived with the byte at ``offset`` (a frame's first)."""
        mine: tuple[int, ...] = ()
        while self._fds and self._fds[0][0] <= offset:
            at, fds = self._fds.popleft()
            if at == offset:
                mine = fds
            else:  # in the middle of a frame: no sender of ours puts them there
                close_all(fds)
        return mine

    def discard(self) -> None:
        """The stream is over: close descriptors no frame took."""
        while self._fds:
            close_all(self._fds.popleft()[1])


# How much one read asks for. A buffer of 1 MiB is got with mmap and given back with mremap
# and munmap (glibc serves 128 KiB and more with mmap), three system calls for a frame of a
# hundred bytes, and an munmap in a process of several threads flushes the TLB of the CPUs
# they ran on. So a read asks for SMALL_READ, and for LARGE_READ after one that came back full.
SMALL_READ = 1 << 16
LARGE_READ = 1 << 20


class BlockingReader:
    """The worker's side: read frames from a blocking descriptor, many per read()."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()
        self._ready: list[Frame] = []
        self._size = SMALL_READ

    def next(self) -> Frame | None:
        """The next frame, or None at end of file (the parent closed its end, or died)."""
        while not self._ready:
            data = os.read(self._fd, self._size)
            self._size = LARGE_READ if len(data) == self._size else SMALL_READ
            if not data:
                return None
            self._ready = self._frames.feed(data)
            self._ready.reverse()
        return self._ready.pop()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# At most this many descriptors go with one frame (the kernel's SCM_MAX_FD is 253); the blocks
# of a result with more are opened by the parent through /proc/<worker>/fd/N instead.
MAX_FDS = 250
_FDS_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def result_channel() -> tuple[int, int]:
    """A worker's result channel: (the parent's end, the worker's end), a stream unix socket
    (close-on-exec, as every socket Python makes)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours.detach(), theirs.detach()


def send_frame(fd: int, data: bytes, fds: Sequence[int]) -> None:
    """Write a frame on a result channel with ``fds`` attached to its first byte."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    finally:
        sock.detach()  # the descriptor stays the caller's
    write_all(fd, data[sent:])  # a signal may cut a sendmsg short; the descriptors went with its start


def borrow(fd: int) -> socket.socket:
    """A socket object over ``fd``, which stays the caller's: ``detach()`` it before ``fd`` is
    closed. (Making one costs a getsockname(2) and a few microseconds: a reader of many
    frames keeps one.)"""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)


def receive(channel: int | socket.socket, size: int = SMALL_READ) -> tuple[bytes, list[int]]:
    """Read what is there on a (non-blocking) result channel, a descriptor or a ``borrow``ed
    socket over one, up to ``size`` bytes: (data, descriptors sent with it).

    Raises BlockingIOError when there is nothing; b"" is end of file. The descriptors are
    ours (close-on-exec) until a frame takes them.
    """
    if isinstance(channel, socket.socket):
        data, ancillary, _flags, _ = channel.recvmsg(size, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
    else:
        sock = borrow(channel)
        try:
            data, ancillary, _flags, _ = sock.recvmsg(size, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
        finally:
            sock.detach()
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds += got
    return data, fds


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# numpy.ndarray and SharedArray, once this process has imported numpy; None until then,
# when no value can be an array: a worker imports numpy only when a task brings an array
# (its pickle imports numpy) or its code imports numpy itself (issue 15).
_ndarray: Any = None
_SharedArray: Any = None


def _find_arrays() -> bool:
    """Has this process imported numpy? If so, from now on _ndarray and _SharedArray are set."""
    global _ndarray, _SharedArray
    if _ndarray is not None:
        return True
    if "numpy" not in sys.modules:
        return False
    from leakguard._blocks.arrays import SharedArray  # noqa: PLC0415 - with numpy, not before (issue 15)

    _SharedArray = SharedArray
    _ndarray = SharedArray.__base__
    return True


def _large(obj: Any, threshold: int | None) -> bool:
    """A plain array (not a subclass) worth a block: big enough, and no Python objects inside."""
    return type(obj) is _ndarray and threshold is not None and obj.nbytes >= threshold and not obj.dtype.hasobject


# multiprocessing's own reducers (a Connection, a socket, a multiprocessing.Lock cross
# processes through them), looked up live, and cloudpickle's (byvalue.py).
_DISPATCH = DISPATCH


class ArgPickler(ToWorkerPickler):
    """Pickles a task's function and arguments; large plain arrays go into blocks from ``share``;
    functions and classes that cannot go by reference go by value (byvalue.py)."""

    def __init__(self, file: io.BytesIO, threshold: int | None, share: Callable[[np.ndarray], SharedArray]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.file = file
        self.dispatch_table = _DISPATCH
        self.threshold = threshold
        self.share = share
        self.keep: list[SharedArray] = []  # blocks the task holds until it is settled

    def reset(self) -> None:
        """Ready for the next task (a pickler is reused: making one costs about a microsecond)."""
        self.file.seek(0)
        self.file.truncate()
        self.clear_memo()
        self.globals_ref.clear()  # cloudpickle's namespaces by id(): ids are reused (byvalue.py)
        self.keep = []

    def fresh(self) -> ArgPickler:
        return ArgPickler(io.BytesIO(), self.threshold, self.share)

    def reducer_override(self, obj: Any) -> Any:
        if (_ndarray is not None or _find_arrays()) and _large(obj, self.threshold):
            try:
                shared = self.share(obj)
            except OutOfSharedMemoryError:
                return NotImplemented  # /dev/shm is full: through the pipe, slower but it works
            self.keep.append(shared)
            return shared.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return by_value(self, obj)


class ResultPickler(ByValuePickler):
    """Pickles a task's result in the worker; large arrays are handed over to the parent;
    functions and classes that cannot go by reference go by value (byvalue.py)."""

    def __init__(self, file: io.BytesIO, threshold: int | None, share: Callable[[np.ndarray], SharedArray]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.file = file
        self.dispatch_table = _DISPATCH
        self.threshold = threshold
        self.share = share
        self.handed: dict[str, Any] = {}  # name -> the worker's block, alive until the parent answers
        self.by_name: set[str] = set()  # blocks of others the result refers to
        self.made: list[SharedArray] = []  # blocks made here, released if pickling fails
        self.fds: list[int] = []  # descriptors of handed anonymous blocks, sent with the frame
        self._slots: dict[str, int] = {}  # block name -> its index in fds

    def reset(self) -> None:
        """Ready for the next result (a worker reuses one: making one costs several microseconds,
        as much as pickling a small result). What the last dump collected stays with its caller."""
        self.file.seek(0)
        self.file.truncate()
        self.clear_memo()
        self.globals_ref.clear()  # cloudpickle's namespaces by id(): ids are reused (byvalue.py)
        self.handed, self.by_name, self.made, self.fds, self._slots = {}, set(), [], [], {}

    def fresh(self) -> ResultPickler:
        return ResultPickler(io.BytesIO(), self.threshold, self.share)

    def reducer_override(self, obj: Any) -> Any:
        if _ndarray is not None or _find_arrays():
            if isinstance(obj, _SharedArray):
                return self._hand_over(obj)
            if _large(obj, self.threshold):
                try:
                    shared = self.share(obj)
                except OutOfSharedMemoryError:
                    return NotImplemented
                self.made.append(shared)
                return self._hand_over(shared)
        return by_value(self, obj)

    def _hand_over(self, array: SharedArray) -> Any:
        from leakguard._blocks.arrays import block_name, hand_over_reduction, held_descriptor  # noqa: PLC0415 - see _find_arrays

        block = block_of(array)
        slot = None
        if block is not None:
            slot = self._slots.get(block.name)
            fd = held_descriptor(array)
            if slot is None and fd is not None and len(self.fds) < MAX_FDS:
                slot = self._slots[block.name] = len(self.fds)
                self.fds.append(fd)
        reduction = hand_over_reduction(array, slot)
        if reduction is None:
            name = block_name(array)
            if name is not None:
                self.by_name.add(name)  # compared with attached_names(), POSIX form
            return NotImplemented  # not ours: it travels by reference
        assert block is not None
        self.handed[block.name] = block
        return reduction


class SpareBlocks:
    """Argument blocks of answered tasks, kept (owned, journaled, mapped) for later tasks.

    A fresh block costs its pages: reserving or writing them, and unlinking them after
    the task (about 20 ms for 25 MB here); copying into a block whose pages exist costs
    about 1 ms. Used under the pool's lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._blocks: list[Any] = []

    def share(self, array: np.ndarray) -> SharedArray:
        """A block for a large argument: a spare one of about its size, else a new one."""
        from leakguard._blocks.arrays import copy_into, share  # noqa: PLC0415 - see _find_arrays

        for i, block in enumerate(self._blocks):
            if array.nbytes <= block.size <= 2 * array.nbytes:
                del self._blocks[i]
                return copy_into(block, array)
        return share(array)

    def settle(self, arrays: list[SharedArray], *, reusable: bool) -> None:
        """A task is answered: keep its blocks if they may be reused, else let them go."""
        for shared in arrays if reusable else ():
            block = block_of(shared)
            if block is not None and block.owner and len(self._blocks) < self.limit:
                self._blocks.append(block)

    def clear(self) -> None:
        self._blocks.clear()  # unlinked as they are collected
