"""Anonymous blocks: the only code that calls memfd_create(2), reserves a memfd's pages,
and opens another process's descriptor through ``/proc/PID/fd/N``.

An anonymous block is a memfd: a file on the kernel's internal shmem mount, with no name
in any folder. Its pages are not counted against /dev/shm's size, and the kernel frees
them when the last descriptor and the last mapping of it go, however its processes end:
nothing can leak. Another process of the same user attaches by opening
``/proc/<holder pid>/fd/<n>`` (proc(5): the link opens the file itself, as the holder
sees it), so the process that holds the descriptor must still hold it then.

This process keeps one descriptor per anonymous block it holds (``held``): the
descriptor others open. Releasing a block closes it; mappings (ours and others') stay
valid until they are unmapped, as a named block's do after ``shm_unlink``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading

from leakguard._errors import OutOfSharedMemoryError

__all__ = [
    "Unavailable",
    "available",
    "create",
    "disable",
    "drop",
    "drop_all",
    "held",
    "hold",
    "memory_available",
    "open_holder",
]

_LINUX = sys.platform.startswith("linux")
# Errors that mean "this kernel or sandbox gives no memfd": blocks are named instead.
_NO_MEMFD = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL)
_OUT_OF_MEMORY = (errno.ENOSPC, errno.ENOMEM, errno.EFBIG, errno.EDQUOT)

_usable = _LINUX and hasattr(os, "memfd_create") and hasattr(os, "posix_fallocate") and os.path.isdir("/proc/self/fd")
_lock = threading.Lock()
_held: dict[str, int] = {}  # block name -> the descriptor of it this process holds


class Unavailable(Exception):  # noqa: N818 - a condition, not an error of the caller's
    """memfd_create was refused: this kernel or sandbox has none (see ``disable``)."""


def available() -> bool:
    """Are new blocks anonymous here? Linux with memfd_create (not macOS), unless
    LEAKGUARD_NAMED_BLOCKS=1 asks for named blocks (docs/operations.md): read as each block
    is made, so that a process may change it; a pool's workers follow what their pool's
    process said as the pool started."""
    return _usable and os.environ.get("LEAKGUARD_NAMED_BLOCKS", "") in ("", "0")


def disable() -> None:
    """memfd_create was refused (an old kernel, a seccomp filter): name every block from now on."""
    global _usable
    _usable = False


def memory_available() -> int | None:
    """Bytes a new anonymous block may still take: the smaller of the machine's available
    memory and what the memory cgroup's limit leaves, where they can be read."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        with contextlib.suppress(OSError, ValueError):
            with open(limit, encoding="ascii") as f:
                cap = f.read().strip()
            with open(usage, encoding="ascii") as f:
                used = int(f.read().strip())
            if cap != "max" and int(cap) < (1 << 60):
                found.append(max(0, int(cap) - used))
            break
    return min(found) if found else None


def _out_of_memory(size: int, exc: OSError) -> OutOfSharedMemoryError:
    detail = os.strerror(exc.errno or 0)
    if exc.errno == errno.EFBIG:
        detail += " (the file size limit, ulimit -f, is below the block's size)"
    return OutOfSharedMemoryError(size, memory_available(), detail, limit="memory")


def create(name: str, size: int, data: memoryview | None = None) -> int:
    """A new memfd of ``size`` bytes, every page reserved (or written with ``data``, of
    exactly ``size`` bytes); returns its descriptor (close-on-exec). On any failure
    nothing is left: the descriptor is closed, and the kernel frees what it held.

    Raises OutOfSharedMemoryError when memory cannot hold it (posix_fallocate's ENOSPC,
    ENOMEM, EFBIG: reserved here, at creation, instead of a SIGBUS at the first write to
    a page the kernel cannot supply). ``name`` (``/lg_x``) shows in /proc/PID/fd and
    /proc/PID/maps as ``/memfd:lg_x``; it names nothing anyone can open.
    """
    try:
        fd = os.memfd_create(name.lstrip("/"), os.MFD_CLOEXEC)
    except OSError as exc:
        if exc.errno in _NO_MEMFD:  # an old kernel, or a seccomp filter that refuses it
            disable()
            raise Unavailable(os.strerror(exc.errno or 0)) from None
        raise
    try:
        if data is not None:
            # Writing allocates each page as reserving does, without zeroing it first
            # (see ipc.shm_fill): about half the cost of reserve, map and copy.
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
        else:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _OUT_OF_MEMORY:
            raise _out_of_memory(size, exc) from None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def hold(name: str, fd: int) -> None:
    """This process holds ``fd`` for block ``name`` (others open it through /proc)."""
    with _lock:
        old = _held.get(name)
        _held[name] = fd
    if old is not None and old != fd:
        with contextlib.suppress(OSError):
            os.close(old)


def held(name: str) -> int | None:
    """The descriptor this process holds for ``name``, if it holds one."""
    return _held.get(name)


def drop(name: str) -> bool:
    """Close this process's descriptor of ``name``; False if it held none. Mappings stay."""
    with _lock:
        fd = _held.pop(name, None)
    if fd is None:
        return False
    with contextlib.suppress(OSError):
        os.close(fd)
    return True


def drop_all() -> None:
    """In a forked child: close the copies of the parent's descriptors (they are the parent's)."""
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def open_holder(pid: int, fd: int, name: str) -> int:
    """Open block ``name`` through descriptor ``fd`` of process ``pid`` (``/proc/PID/fd/N``),
    for reading and writing; returns our own descriptor of it (close-on-exec).

    The link must read as a memfd of that name first, so that a stale or crafted
    reference never opens a device or a file that happens to sit at that number. Raises
    FileNotFoundError when that process or descriptor does not exist or holds something
    else, and PermissionError when the kernel refuses (another user's process, or one
    that made itself non-dumpable). The caller still checks the inode: the number may
    have been closed and reused for another block of the same name only by a forger.
    """
    if not (type(pid) is int and type(fd) is int and 0 < pid < (1 << 31) and 0 <= fd < (1 << 31)):
        raise ValueError(f"pid {pid!r:.20} and descriptor {fd!r:.20} cannot name a holder")
    path = f"/proc/{pid}/fd/{fd}"
    target = os.readlink(path)
    if target != f"/memfd:{name.lstrip('/')} (deleted)":
        raise FileNotFoundError(errno.ENOENT, "that descriptor now holds another file", path)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
