"""Task functions for test_start_methods.py (workers import them by reference)."""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from typing import Any

# The parent overwrites this at run time; what a worker reads shows how it was started.
SETTING = "set at import"


def read_setting() -> str:
    return SETTING


def send_through(conn: Connection, message: str) -> int:
    """Send ``message`` (and our pid) through a pipe end that came as an argument."""
    conn.send((message, os.getpid()))
    conn.close()
    return os.getpid()


def how_started() -> dict[str, Any]:
    """What tells the start methods apart from inside the worker."""
    return {"pid": os.getpid(), "ppid": os.getppid(), "argv": list(sys.orig_argv)}
