"""Names of the objects leakguard creates, the check that a name is one of ours, and the
one place where a name changes form.

SPEC 5: at most 30 characters with the leading slash (macOS allows 31), a fixed
prefix, at least 64 random bits. We use ``/lg_`` plus 16 base32 characters
(80 random bits): 20 characters in all.

A name has two forms. Inside (posix_ipc calls, the journal, pickles) it is the POSIX
form, with its leading slash (``/lg_x``), as shm_open(3) and sem_open(3) take it.
Whatever a user sees (attributes, the sweep's items, ``leakguard ls``, error messages)
is the public form, without it (``lg_x``): what the standard library's
``SharedMemory.name`` reports and what ``ls /dev/shm`` shows. ``public_name`` and
``posix_name`` are the only conversions.
"""

from __future__ import annotations

import base64
import os
import re

__all__ = [
    "NAME_PATTERN",
    "PREFIX",
    "file_in_shm_dir",
    "is_ours",
    "make_name",
    "posix_name",
    "public_name",
    "sem_path",
    "shm_path",
]

PREFIX = "/lg_"
_RANDOM_BYTES = 10  # 80 bits -> 16 base32 characters, no padding
# Every name leakguard makes, and nothing else (the journal reader's fast path matches it too).
NAME_PATTERN = r"/lg_[a-z2-7]{16}"
_PATTERN = re.compile(NAME_PATTERN)
SHM_DIR = "/dev/shm"


def make_name() -> str:
    """A fresh name: ``/lg_`` and 80 random bits in lowercase base32."""
    # os.urandom is what secrets.token_bytes calls; the secrets module itself would cost
    # every pool worker an import of hashlib and hmac as it starts (issue 15).
    token = base64.b32encode(os.urandom(_RANDOM_BYTES)).decode("ascii").lower()
    return PREFIX + token


def is_ours(name: object) -> bool:
    """True only for a string leakguard itself could have made.

    Anything else (``../x``, ``/etc/passwd``, NUL, newline, a long name) is refused
    before it reaches a system call.
    """
    return isinstance(name, str) and _PATTERN.fullmatch(name) is not None


def public_name(name: str) -> str:
    """The form a user sees: ``/lg_x`` -> ``lg_x`` (a name already without the slash is kept)."""
    return name[1:] if name.startswith("/") else name


def posix_name(name: object) -> str:
    """The form posix_ipc takes, from what a user may pass: ``lg_x`` or ``/lg_x`` -> ``/lg_x``.

    Both forms are accepted, as by the standard library's ``SharedMemory(name)`` on Linux:
    it puts a slash in front of whatever it is given, and glibc's shm_open skips leading
    slashes, so ``lg_x``, ``/lg_x`` and ``//lg_x`` all name one object. A name with a slash
    inside, a NUL, or nothing but slashes names no shared memory object: ValueError.
    """
    bare = name.lstrip("/") if isinstance(name, str) else ""
    if not bare or "/" in bare or "\0" in bare:
        raise ValueError(f"name must be a shared memory name such as 'lg_...' (or '/lg_...'), got {name!r:.60}")
    return "/" + bare


def shm_path(name: str) -> str:
    """Where Linux shows the shared memory object ``name``."""
    return f"{SHM_DIR}/{name[1:]}"


def sem_path(name: str) -> str:
    """Where Linux (glibc) shows the named semaphore ``name``."""
    return f"{SHM_DIR}/sem.{name[1:]}"


def file_in_shm_dir(kind: str, name: str) -> str:
    """The name of the file in SHM_DIR that ``shm_path`` (kind ``shm``) or ``sem_path`` (``sem``) names."""
    return name[1:] if kind == "shm" else f"sem.{name[1:]}"
