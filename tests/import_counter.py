"""A module with an import-time side effect, for test_start_methods.py's job.

Each time its body runs, it appends the pid of the running process to the file
named by $LG_IMPORT_LOG, if set (one short write to a file opened in append mode: whole
lines, whatever the number of writers). The job imports it in the parent, uses it
as the pool's initializer, task and argument type, so a worker meets it by every
route a job does.
"""

from __future__ import annotations

import importlib
import os

_LOG = os.environ.get("LG_IMPORT_LOG")
if _LOG:
    with open(_LOG, "a") as _log:
        _log.write(f"{os.getpid()}\n")

# "The object initialised at import": one per process, created with the module.
REGISTRY: dict[str, int] = {"created_in": os.getpid()}


class Token:
    """An argument whose class lives in this module: unpickling it finds the module."""

    def __init__(self, value: int) -> None:
        self.value = value


def initialise() -> None:
    """The pool's initializer; it also imports this module by name once more."""
    importlib.import_module(__name__)


def report(token: Token) -> tuple[int, int, int]:
    """(this worker's pid, the pid that created REGISTRY, the token's value)."""
    again = importlib.import_module(__name__)
    assert again.REGISTRY is REGISTRY
    return os.getpid(), REGISTRY["created_in"], token.value
