"""This process's journal file: created locked and complete, appended one record per
``write()``, compacted when mostly settled, and removed at normal exit.

The record format and the reader are in format.py; owner.py holds the one
writer of each process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import stat
import sys
import threading
import time

from leakguard._errors import JournalFolderError, OutOfSharedMemoryError
from leakguard._os.fds import close_lost

from .format import FORMAT_VERSION, JOURNAL_SUFFIX, TEMP_SUFFIX, encode_record, open_journal, read_header_fd
from .identity import Identity

__all__ = ["COMPACT_BYTES", "JournalWriter", "remove_strays"]

# Compaction: rewrite a journal holding mostly settled entries once it passes this size.
COMPACT_BYTES = 1 << 20


def _command_line() -> str:
    return " ".join(sys.argv)[:200] if sys.argv else ""


class JournalWriter:
    """This process's journal. Created lazily by owner.py, one per process."""

    def __init__(self, folder: str, parent: Identity | None = None) -> None:
        self.folder = folder
        self.identity = Identity.current()
        self.parent = parent
        self._lock = threading.RLock()  # re-entrant: see owner.py
        # name -> (kind, the records that describe it): what this process owns
        self._live: dict[str, tuple[str, bytes]] = {}
        self._live_bytes = 0
        self._size = 0
        self._compact_at = COMPACT_BYTES
        self.fd, self.path = self._new_file(b"")

    def _new_file(self, body: bytes) -> tuple[int, str]:
        """Create, lock, fill and publish a journal file; returns (fd, path)."""
        fields: dict[str, object] = {
            "op": "journal",
            "v": FORMAT_VERSION,
            **dataclasses.asdict(self.identity),
            "uid": os.geteuid(),
            "at": round(time.time(), 3),
            "cmd": _command_line(),
        }
        if self.parent is not None:
            fields["parent"] = dataclasses.asdict(self.parent)
        header = encode_record(json.dumps(fields, separators=(",", ":")).encode("ascii"))
        while True:
            stem = f"{self.identity.pid}-{secrets.token_hex(6)}"
            temp = os.path.join(self.folder, stem + TEMP_SUFFIX)
            final = os.path.join(self.folder, stem + JOURNAL_SUFFIX)
            fd = -1
            try:
                # Inside the try, so an exception landing anywhere (even between open()
                # returning and fd being set) still removes the temporary file by name.
                fd = os.open(
                    temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._write_all(fd, header + body)
                os.rename(temp, final)
            except OSError as exc:
                if fd >= 0 and isinstance(exc, FileNotFoundError):
                    # A sweep removed the unlocked temporary file between open and flock: try again.
                    os.close(fd)
                    continue
                _discard(fd, temp)
                if fd < 0 and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE):
                    # open() failed for the folder's sake: gone, or one we may look at but not
                    # write in (/proc: ENOENT; a read-only mount: EROFS; EACCES).
                    raise self._unusable_folder(f"cannot hold files ({exc.strerror})") from exc
                raise
            except BaseException:
                _discard(fd, temp)
                raise
            self._size = len(header) + len(body)
            return fd, final

    def _unusable_folder(self, problem: str) -> JournalFolderError:
        with contextlib.suppress(OSError):
            if not os.path.isdir(self.folder):
                problem = "does not exist (any more)"
        return JournalFolderError(self.folder, problem)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        try:
            written = os.write(fd, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSharedMemoryError(len(data), None, "journal folder is full") from exc
            raise
        if written != len(data):
            # A short write (the filesystem filled up mid-record): cut it off, so the
            # torn piece never sits in the middle of the journal.
            end = os.lseek(fd, 0, os.SEEK_END)
            os.ftruncate(fd, end - written)
            raise OutOfSharedMemoryError(len(data), None, "journal folder is full")

    def _append(self, record: bytes) -> None:
        with self._lock:
            self._write_all(self.fd, record)
            self._size += len(record)

    # The live set below is this process's record of what it owns: a name enters it
    # with its add record and leaves it with the del record (the write-ahead order,
    # docs/design.md). owner.py releases from it at exit, so no object can exist that
    # neither the file nor this set names.

    def owns(self, name: str) -> bool:
        return name in self._live

    def kind_of(self, name: str) -> str | None:
        entry = self._live.get(name)
        return None if entry is None else entry[0]

    def live_names(self) -> list[str]:
        return list(self._live)

    # The three records, formatted by hand: this is the hot path, and every field is
    # either a number or a name that _names.make_name produced.

    def add(self, kind: str, name: str, size: int) -> None:
        record = encode_record(
            b'{"op":"add","kind":"%s","name":"%s","size":%d,"at":%.3f}'
            % (kind.encode(), name.encode(), size, time.time())
        )
        self._live[name] = (kind, record)  # first: owned from the instant the record may exist
        self._live_bytes += len(record)
        try:
            self._append(record)
        except BaseException:
            self._forget(name)
            raise

    def inode(self, name: str, dev: int, ino: int) -> None:
        record = encode_record(b'{"op":"ino","name":"%s","dev":%d,"ino":%d}' % (name.encode(), dev, ino))
        self._append(record)
        kind, records = self._live[name]
        self._live[name] = (kind, records + record)
        self._live_bytes += len(record)

    def _forget(self, name: str) -> None:
        entry = self._live.pop(name, None)
        if entry is not None:
            self._live_bytes -= len(entry[1])

    def adopt(self, kind: str, name: str, size: int, dev: int, ino: int) -> None:
        """Take over an object another process made (a pool result): add, then inode."""
        self.add(kind, name, size)
        self.inode(name, dev, ino)

    def remove(self, name: str) -> None:
        """Record that ``name`` no longer exists; raises if the record cannot be written."""
        self._forget(name)  # gone either way: a compacted journal must not name it
        self._append(encode_record(b'{"op":"del","name":"%s"}' % name.encode()))
        # Compact once the file is mostly settled records (a running total: O(1) per call).
        if self._size > self._compact_at and self._live_bytes * 4 <= self._size:
            self._compact()

    def settle(self, name: str) -> None:
        """``remove()`` for an object already gone or never made: never raises.

        If the record cannot be written (the journal's filesystem is full), the entry
        stays live in the file; the sweep finds nothing at the name and settles it.
        Raising here would hide the error that brought us here, or fail a free()
        whose unlink already succeeded.
        """
        with contextlib.suppress(OSError, OutOfSharedMemoryError):
            self.remove(name)

    def _compact(self) -> None:
        try:
            self._rewrite(unlink_old=True)
        except BaseException:
            # A full disk, say: try again once the file has doubled, not on every free.
            self._compact_at = 2 * self._size
            raise
        self._compact_at = COMPACT_BYTES

    def _rewrite(self, *, unlink_old: bool) -> None:
        with self._lock:
            body = b"".join(records for _, records in self._live.values())
            old_fd, old_path = self.fd, self.path
            # The new file is locked and complete before the old one goes: at every
            # instant some locked journal names each live object.
            self.fd, self.path = self._new_file(body)
            if unlink_old:
                os.unlink(old_path)
            os.close(old_fd)

    def lost(self) -> bool:
        """True if the journal file has lost its name: someone removed it or its folder
        (``rm -rf``, or systemd-logind's ``RemoveIPC=`` at the user's last logout)."""
        return os.fstat(self.fd).st_nlink == 0

    def republish(self) -> None:
        """Write what we own to a new journal file, after ``lost()``: records appended to
        a file no folder names would be out of every sweep's reach."""
        self._rewrite(unlink_old=False)

    def close(self, *, remove_file: bool) -> None:
        """Close the journal; with ``remove_file``, delete it first (still under the lock)."""
        with self._lock:
            if self.fd < 0:
                return
            if remove_file:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                remove_strays(self.folder, self.identity)
            os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        """In a forked child: drop our copy of the descriptor; the parent keeps its lock."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _discard(fd: int, temp: str) -> None:
    """Undo a journal file being made: close it and remove it by name."""
    if fd >= 0:
        os.close(fd)
    else:
        close_lost(temp)  # an exception that arrived during open() strands its descriptor
    with contextlib.suppress(OSError):
        os.unlink(temp)


def remove_strays(folder: str, identity: Identity) -> None:
    """Delete journal files of this very process that it lost track of.

    An exception landing while a journal file is made or swapped (a signal
    handler's: Python may run one between any two bytecodes) can leave a temporary
    file, or a published journal that no writer holds. A journal goes only if it
    reads back as ours, same pid and start time; a temporary file with our pid goes
    in any case, since it never holds more than a header (a writer of it in another
    pid namespace sees its rename fail and starts again). Anything else is left to
    the sweep.
    """
    prefix = f"{identity.pid}-"
    try:
        listing = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in listing:
        if not entry.name.endswith((JOURNAL_SUFFIX, TEMP_SUFFIX)):
            continue
        fd = open_journal(entry.path)
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
            mine = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            if mine and entry.name.endswith(JOURNAL_SUFFIX):
                header = read_header_fd(fd)
                mine = header is not None and header.owner == identity
        finally:
            os.close(fd)
        if mine:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
