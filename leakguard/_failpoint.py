"""Crash-test failpoints: ``LEAKGUARD_FAILPOINT=step[:how][,step[:how]...]`` makes the
process die when it reaches a named step.

``how`` is ``kill`` (SIGKILL, the default), ``segv`` (a real segmentation fault),
``exit`` (``os._exit(70)``, no cleanup), ``term`` (SIGTERM to itself, Python's
default action: no cleanup either) or ``interrupt`` (raises KeyboardInterrupt there,
as a Ctrl-C landing at that step does: the process lives on and must clean up).
Read once at import, so the hot path pays one truth test of an empty dict. The
tests and ``python -m stress`` use it to prove that no crash point leaves an object
the journal does not name (see tests/test_crash_points.py for the list of steps).
"""

from __future__ import annotations

import faulthandler
import os
import signal

__all__ = ["HOW", "failpoint"]

HOW = ("kill", "segv", "exit", "term", "interrupt")


def _parse(spec: str) -> dict[str, str]:
    armed: dict[str, str] = {}
    for item in spec.split(","):
        step, _, how = item.strip().partition(":")
        if step:
            armed[step] = how or "kill"
    return armed


_ARMED = _parse(os.environ.get("LEAKGUARD_FAILPOINT", ""))


def failpoint(step: str) -> None:
    """Die here, as armed, if ``step`` is armed."""
    if _ARMED and step in _ARMED:
        how = _ARMED[step]
        if how == "interrupt":
            raise KeyboardInterrupt(step)
        if how == "segv":
            faulthandler.disable()  # no traceback dump on stderr: the point is to die
            faulthandler._sigsegv()  # type: ignore[attr-defined]
        elif how == "exit":
            os._exit(70)
        elif how == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGKILL)  # kill, an unknown how, or a SIGTERM someone handles
