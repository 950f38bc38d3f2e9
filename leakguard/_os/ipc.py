"""The only code that calls posix_ipc, mmap and fallocate on named objects; their errors
become ours (anonymous blocks, memfds: memfd.py).

posix_ipc reports "does not exist" and "already exists" with one exception type
and no errno, so each call site here says which one it means. The names these
functions take are the POSIX form (``/lg_x``); the errors they raise name the object
in the public form (``lg_x``, see names.py).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import sys
from typing import NamedTuple

import posix_ipc

from leakguard._errors import OutOfSharedMemoryError

from . import memfd as _memfd
from .fds import close_lost
from .names import SHM_DIR, file_in_shm_dir, public_name, sem_path, shm_path

__all__ = [
    "ObjectFacts",
    "ObjectFolder",
    "object_facts",
    "sem_attach",
    "sem_create",
    "sem_unlink",
    "shm_attach",
    "shm_available",
    "shm_close_lost",
    "shm_fill",
    "shm_map",
    "shm_open_new",
    "shm_reserve",
    "shm_unlink",
]

_LINUX = sys.platform.startswith("linux")
_MODE = 0o600
_MMAP_TRACKFD = sys.version_info >= (3, 13)
# ObjectFolder.regular_files: below this many names, lstat each (a listing costs a folder's worth
# of entries); nor when the folder holds more than _LISTING_SHARE entries per name wanted (an
# entry read costs about a quarter of an lstat).
_LISTING_MIN = 64
_LISTING_SHARE = 4
_TMPFS_DIRENT = 20


def _checked(name: object) -> str:
    """``name`` if it is a POSIX IPC name (one leading slash, no other, no NUL), else ValueError.

    posix_ipc hands a name with a NUL in it to C as a truncated string, and crashes
    the process (SIGSEGV) when the part before the NUL names an existing block: no
    name reaches posix_ipc unchecked, whoever made it (a crafted pickle, say).
    """
    if not (
        isinstance(name, str) and 1 < len(name) <= 255 and name[0] == "/" and "/" not in name[1:] and "\0" not in name
    ):
        raise ValueError(
            f"{name!r:.80} is not a POSIX shared memory or semaphore name (one leading '/', no other '/', "
            "no NUL, at most 255 characters); was it read from a damaged or crafted pickle?"
        )
    return name


def shm_available() -> int | None:
    """Free bytes in the shared memory filesystem, where the OS shows it."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def shm_open_new(name: str) -> int:
    """Create ``name`` exclusively (never attach to a squatted name); returns its fd, mode 0600."""
    try:
        handle = posix_ipc.SharedMemory(_checked(name), posix_ipc.O_CREX, mode=_MODE)
    except posix_ipc.ExistentialError:
        raise FileExistsError(errno.EEXIST, "shared memory name already exists", public_name(name)) from None
    except posix_ipc.PermissionsError as exc:
        raise PermissionError(errno.EACCES, str(exc), public_name(name)) from None
    fd: int = handle.fd
    try:
        os.fchmod(fd, _MODE)  # shm_open's mode is masked by the umask; SPEC 5 wants 0600 exactly
    except BaseException:
        os.close(fd)
        raise
    return fd


def shm_close_lost(name: str) -> None:
    """Close a descriptor of ``name`` an exception stranded as shm_open returned (see _fds.py)."""
    if _LINUX:
        close_lost(shm_path(name))


def shm_reserve(fd: int, size: int) -> None:
    """Give the object its size with every page reserved, or raise OutOfSharedMemoryError.

    posix_fallocate makes a full /dev/shm fail here, at creation, instead of a
    SIGBUS at the first write to a page tmpfs cannot supply.
    """
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # macOS: no fallocate for shm objects; the size alone is set.
            os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM, errno.EDQUOT):
            raise OutOfSharedMemoryError(size, shm_available(), os.strerror(exc.errno)) from None
        raise


def shm_fill(fd: int, data: memoryview) -> bool:
    """Give a new object its size and contents at once by writing them; False where the OS
    cannot write to a shared memory object (the caller reserves and copies instead).

    Writing allocates every page as reserving does (a full /dev/shm fails here, not as
    a SIGBUS later), without first zeroing pages that are about to be overwritten, and
    without a page fault per page: about half the cost of reserve, map and copy.
    """
    if not _LINUX:
        return False
    done = 0
    try:
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM, errno.EDQUOT):
            raise OutOfSharedMemoryError(len(data), shm_available(), os.strerror(exc.errno)) from None
        raise
    return True


def shm_attach(name: str) -> int:
    try:
        handle = posix_ipc.SharedMemory(_checked(name), 0)
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(
            errno.ENOENT,
            "no shared memory block by that name (its owner freed it, exited or died)",
            public_name(name),
        ) from None
    except posix_ipc.PermissionsError as exc:
        raise PermissionError(errno.EACCES, str(exc), public_name(name)) from None
    fd: int = handle.fd
    return fd


def shm_map(fd: int, size: int) -> mmap.mmap:
    """Map a block; the caller closes ``fd``.

    Before Python 3.13, mmap keeps a dup() of the descriptor for its whole life, so
    each mapped block holds one descriptor (the standard library's SharedMemory
    holds two). 3.13's trackfd=False holds none.
    """
    if _MMAP_TRACKFD:
        return mmap.mmap(fd, size, trackfd=False)  # type: ignore[call-arg,unused-ignore]
    return mmap.mmap(fd, size)


def shm_unlink(name: str) -> bool:
    """Unlink; False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(_checked(name))
    except posix_ipc.ExistentialError:
        return False
    return True


def sem_create(name: str, value: int) -> posix_ipc.Semaphore:
    try:
        sem = posix_ipc.Semaphore(_checked(name), posix_ipc.O_CREX, mode=_MODE, initial_value=value)
    except posix_ipc.ExistentialError:
        raise FileExistsError(errno.EEXIST, "semaphore name already exists", public_name(name)) from None
    except posix_ipc.PermissionsError as exc:
        raise PermissionError(errno.EACCES, str(exc), public_name(name)) from None
    except OSError as exc:
        # posix_ipc passes sem_open's ENOSPC on as a plain OSError.
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
            raise OutOfSharedMemoryError(32, shm_available(), os.strerror(exc.errno)) from None
        raise
    if _LINUX:
        with contextlib.suppress(OSError):
            os.chmod(sem_path(name), _MODE)  # sem_open's mode is masked by the umask too
    return sem


def sem_attach(name: str) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(_checked(name), 0)
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(
            errno.ENOENT, "no semaphore by that name (its owner unlinked it, exited or died)", public_name(name)
        ) from None


def sem_unlink(name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(_checked(name))
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink(kind: str, name: str) -> bool:
    """Remove a named object; for an anonymous block ("memfd"), close the descriptor this
    process holds (the kernel frees the block when the last descriptor and mapping go)."""
    if kind == "memfd":
        return _memfd.drop(name)
    return shm_unlink(name) if kind == "shm" else sem_unlink(name)


class ObjectFacts(NamedTuple):
    """What the OS shows at a name. ``exists`` False means nothing is there.

    A named tuple: a sweep makes one per entry, and a dataclass costs twice as much to make
    (issue 15). ``mode``, ``uid``, ``dev``, ``ino`` and ``size`` are lstat's.
    """

    exists: bool
    mode: int = 0
    uid: int | None = None
    dev: int | None = None
    ino: int | None = None
    size: int = 0

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def kind_of_file(self) -> str:
        return describe_mode(self.mode)


def describe_mode(mode: int) -> str:
    for test, label in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return label
    return "regular file" if stat.S_ISREG(mode) else "unknown file type"


def object_facts(kind: str, name: str) -> ObjectFacts:
    """lstat the object behind ``name`` (Linux shows both kinds in /dev/shm)."""
    if _LINUX:
        path = shm_path(name) if kind == "shm" else sem_path(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return ObjectFacts(exists=False)
        return ObjectFacts(True, st.st_mode, st.st_uid, st.st_dev, st.st_ino, st.st_size)
    return _object_facts_by_opening(kind, name)


class ObjectFolder:
    """Looks at and unlinks many objects, as a sweep does: ``object_facts`` and ``unlink``.

    On Linux both kinds are files in /dev/shm, and shm_unlink(3) and sem_unlink(3) are
    unlink(2) of them: this holds the folder open and calls ``lstat`` and ``unlink``
    relative to it, with no path to build and walk for each object (issue 15). Elsewhere,
    or if the folder cannot be opened, it calls the functions above. Use it as a context
    manager (it holds a descriptor).
    """

    def __init__(self) -> None:
        self._fd = -1
        if _LINUX:
            with contextlib.suppress(OSError):
                self._fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> ObjectFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def object_facts(self, kind: str, name: str) -> ObjectFacts:
        if self._fd < 0:
            return object_facts(kind, name)
        st = self.lstat_file(file_in_shm_dir(kind, name))
        if st is None:
            return ObjectFacts(exists=False)
        return ObjectFacts(True, st.st_mode, st.st_uid, st.st_dev, st.st_ino, st.st_size)

    def regular_files(self, wanted: int) -> tuple[int, dict[str, int]] | None:
        """The folder's device and, for each regular file in it, its inode (name -> inode, the
        file's name as ``file_in_shm_dir`` gives it), from one listing; None where a listing
        cannot stand in for an lstat per name, or would cost more than ``wanted`` of them.

        One ``getdents`` pass gives each name's inode and type (d_ino, d_type) without a stat
        call: for a sweep of thousands of names, a fraction of what an ``lstat`` per name costs
        (issue 15). A listing shows no owner, so it is given only where the kernel itself
        refuses to unlink a file that is not ours (``kernel_guards_owner``): ``unlink_file``
        then fails with PermissionError on another user's file, where lstat's st_uid would have
        told. A name that is not a regular file (d_type; tmpfs always fills it) is left out, and
        a name created or renamed while the folder is read may be: the caller looks at any name
        the listing does not vouch for with ``object_facts`` (lstat), as before.
        """
        if self._fd < 0 or wanted < _LISTING_MIN:
            return None
        try:
            st = os.fstat(self._fd)
            # A tmpfs folder's size is 20 bytes per entry (BOGO_DIRENT_SIZE): reading thousands
            # of others' names to look at a few of ours would cost more than it saves.
            if st.st_size > _LISTING_SHARE * _TMPFS_DIRENT * wanted or not kernel_guards_owner(st):
                return None
            with os.scandir(self._fd) as listing:
                inodes = {e.name: e.inode() for e in listing if e.is_file(follow_symlinks=False)}
        except OSError:
            return None
        return st.st_dev, inodes

    @property
    def holds_folder(self) -> bool:
        """True when it holds the folder (Linux): ``lstat_file`` and ``unlink_file`` work."""
        return self._fd >= 0

    def lstat_file(self, file: str) -> os.stat_result | None:
        """lstat of ``file`` (as ``file_in_shm_dir`` names it) in the folder; None if nothing is there."""
        try:
            return os.lstat(file, dir_fd=self._fd)
        except FileNotFoundError:
            return None

    def unlink_file(self, file: str) -> bool:
        """Unlink ``file``, as ``file_in_shm_dir`` names it in the folder (``holds_folder`` must be True);
        False if it was already gone. Where ``regular_files`` gave a listing, PermissionError if
        the file is not ours (``kernel_guards_owner``).

        For a name the journal reader has validated (``names.is_ours``): ``unlink`` checks each
        name again for the POSIX IPC functions, which this one never calls.
        """
        try:
            os.unlink(file, dir_fd=self._fd)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, kind: str, name: str) -> bool:
        """Unlink; False if it was already gone."""
        if self._fd < 0:
            return unlink(kind, name)
        return self.unlink_file(file_in_shm_dir(kind, _checked(name)))


_CAP_FOWNER = 3  # capability(7): bypasses the sticky bit's check in unlink(2)


def kernel_guards_owner(folder: os.stat_result) -> bool:
    """Does unlink(2) in this folder refuse, for this process, every file that is not its own?

    It does in a sticky folder (/dev/shm is mode 1777) owned by someone else, for a process
    whose filesystem uid is its effective uid and that lacks CAP_FOWNER: unlink(2) fails with
    EPERM "the directory has the sticky bit set and the caller is not the file's owner, nor the
    directory's owner, and the process is not privileged". Root (CAP_FOWNER) gets no such
    refusal; nor does the owner of the folder. When in doubt (no /proc), no.
    """
    if not folder.st_mode & stat.S_ISVTX or folder.st_uid == os.geteuid():
        return False
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        status = dict(line.partition(b":")[::2] for line in text.splitlines())
        fsuid = int(status[b"Uid"].split()[3])
        capabilities = int(status[b"CapEff"].strip(), 16)
    except (OSError, KeyError, IndexError, ValueError):
        return False
    return fsuid == os.geteuid() and not capabilities >> _CAP_FOWNER & 1


def _object_facts_by_opening(kind: str, name: str) -> ObjectFacts:
    # No listing of shared memory names outside Linux: open the object to see it.
    if kind == "shm":
        try:
            fd = shm_attach(name)
        except FileNotFoundError:
            return ObjectFacts(exists=False)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return ObjectFacts(True, st.st_mode, st.st_uid, st.st_dev, st.st_ino, st.st_size)
    try:
        sem = sem_attach(name)
    except FileNotFoundError:
        return ObjectFacts(exists=False)
    sem.close()
    # Semaphores show neither owner, mode nor inode here: the name pattern and the journal vouch for it.
    return ObjectFacts(True, stat.S_IFREG | _MODE, os.geteuid(), None, None, 0)
