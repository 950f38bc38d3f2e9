"""Where journals live (SPEC 2.5), and the checks that make the folder safe to trust.

``$LEAKGUARD_DIR`` if set; else ``$XDG_RUNTIME_DIR/leakguard``; else a hidden
per-user folder in /dev/shm (if another user took its name first, a folder in
the user's own cache folder, with a warning); else the temp folder. The defaults share the
lifetime of /dev/shm (a reboot empties both), which is why the journal needs no
fsync there (docs/design.md).
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import warnings

from leakguard._errors import JournalFolderError

from .format import pid_of_file

__all__ = ["check_folder", "check_journal_folder", "default_folder", "open_folder"]


def default_folder() -> str:
    configured = os.environ.get("LEAKGUARD_DIR")
    if configured:
        return os.path.abspath(configured)
    uid = os.geteuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        try:
            if os.stat(runtime).st_uid == uid:
                return os.path.join(runtime, "leakguard")
        except OSError:
            pass
    if os.path.isdir("/dev/shm"):
        # Hidden, so that listings of /dev/shm show objects, not our bookkeeping.
        shared = f"/dev/shm/.leakguard-{uid}"
        squatter = _owner_if_not(shared, uid)
        if squatter is None:
            return shared
        # /dev/shm is world-writable and sticky: anyone can take this name first, and we
        # could never remove what they made. Fall back to a folder in our home, which only we
        # can create in (per host: a home may be shared between machines).
        fallback = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "leakguard", socket.gethostname()
        )
        warnings.warn(
            f"the default journal folder {shared} belongs to uid {squatter}, not to you (uid {uid}): "
            f"someone made it first. leakguard keeps its journals in {fallback} instead. Have its owner "
            "or root remove it, or set LEAKGUARD_DIR to a private folder of yours.",
            RuntimeWarning,
            stacklevel=2,
        )
        return fallback
    return os.path.join(tempfile.gettempdir(), f"leakguard-{uid}")


def _owner_if_not(path: str, uid: int) -> int | None:
    """The uid owning ``path`` if it exists and is not ``uid``'s, else None."""
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        return None
    return None if owner == uid else owner


def check_folder(path: str) -> None:
    """Refuse a folder we must not trust: raises JournalFolderError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise JournalFolderError(path, "does not exist") from None
    except OSError as exc:
        raise JournalFolderError(path, f"cannot be examined ({exc.strerror})") from exc
    if stat.S_ISLNK(st.st_mode):
        raise JournalFolderError(path, "is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise JournalFolderError(path, "is not a directory")
    if st.st_uid != os.geteuid():
        raise JournalFolderError(path, f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise JournalFolderError(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")


def check_journal_folder(path: str) -> None:
    """Refuse, beyond check_folder's reasons, a folder that is not a journal folder.

    What marks one (docs/cli.md): leakguard keeps nothing in it but its journal files,
    ``PID-TOKEN.journal`` and ``PID-TOKEN.tmp``. A folder holding anything else (a user's
    files, /etc, /proc, /) is not one, however safe its owner and mode: ``sweep --dir`` given
    the wrong folder must refuse it as a whole, not look for things to delete in it.
    """
    check_folder(path)
    try:
        with os.scandir(path) as listing:
            stranger = next((e.name for e in listing if pid_of_file(e.name) is None), None)
    except OSError as exc:
        raise JournalFolderError(path, f"cannot be listed ({exc.strerror})") from exc
    if stranger is not None:
        raise JournalFolderError(
            path,
            f"is not a journal folder: it holds {stranger!r}, which leakguard never makes (a journal "
            "folder holds only PID-TOKEN.journal and PID-TOKEN.tmp files), so nothing in it is swept",
        )


def _make_private(folder: str) -> None:
    """Create ``folder`` and any missing parents, each 0700 whatever the umask.

    (os.makedirs gives its mode to the leaf only; parents would follow the umask,
    and a world-writable parent lets others swap the journal folder.)
    """
    missing = []
    path = folder
    while path and not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # created meanwhile (another process): check_folder judges the leaf
        except OSError as exc:
            raise JournalFolderError(folder, f"cannot be created ({exc.strerror})") from exc
        os.chmod(path, 0o700)


def open_folder(path: str | None = None, *, create: bool = True) -> str:
    """The journal folder, created with mode 0700 if missing and ``create``, then checked."""
    folder = default_folder() if path is None else os.path.abspath(path)
    if create:
        _make_private(folder)
    check_folder(folder)
    return folder
