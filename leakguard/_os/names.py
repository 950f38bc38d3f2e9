"""Names of the objects leakguard creates, and the check that a name is one of ours.

SPEC 5: at most 30 characters with the leading slash (macOS allows 31), a fixed
prefix, at least 64 random bits. We use ``/lg_`` plus 16 base32 characters
(80 random bits): 20 characters in all.
"""

from __future__ import annotations

import base64
import re
import secrets

__all__ = ["PREFIX", "is_ours", "make_name", "sem_path", "shm_path"]

PREFIX = "/lg_"
_RANDOM_BYTES = 10  # 80 bits -> 16 base32 characters, no padding
_PATTERN = re.compile(r"/lg_[a-z2-7]{16}")
SHM_DIR = "/dev/shm"


def make_name() -> str:
    """A fresh name: ``/lg_`` and 80 random bits in lowercase base32."""
    token = base64.b32encode(secrets.token_bytes(_RANDOM_BYTES)).decode("ascii").lower()
    return PREFIX + token


def is_ours(name: object) -> bool:
    """True only for a string leakguard itself could have made.

    Anything else (``../x``, ``/etc/passwd``, NUL, newline, a long name) is refused
    before it reaches a system call.
    """
    return isinstance(name, str) and _PATTERN.fullmatch(name) is not None


def shm_path(name: str) -> str:
    """Where Linux shows the shared memory object ``name``."""
    return f"{SHM_DIR}/{name[1:]}"


def sem_path(name: str) -> str:
    """Where Linux (glibc) shows the named semaphore ``name``."""
    return f"{SHM_DIR}/sem.{name[1:]}"
