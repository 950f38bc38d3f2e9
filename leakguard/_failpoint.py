"""Crash-test failpoints: ``LEAKGUARD_FAILPOINT=step[,step...]`` makes the process
SIGKILL itself when it reaches a named step.

Read once at import, so the hot path pays one truth test of an empty frozenset.
The tests use it to prove that no crash point leaves an object the journal does
not name (see tests/test_crash_points.py for the list of steps).
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]

_ARMED = frozenset(step.strip() for step in os.environ.get("LEAKGUARD_FAILPOINT", "").split(",") if step.strip())


def failpoint(step: str) -> None:
    """Die by SIGKILL here if ``step`` is armed."""
    if _ARMED and step in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
