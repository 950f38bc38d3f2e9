"""Child programs of tests/test_interrupts.py, each a function its test starts with
``child_main`` (tests/children.py); arguments arrive as strings."""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import signal
import sys
import time
from types import FrameType
from typing import Any

import leakguard


class TimerFiredError(Exception):
    """What the timer raises inside the armed region."""


armed = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Raise only inside the region below: Python may run a handler at any bytecode,
    # including the loop's back-edge, where an exception would end the child.
    if armed:
        raise TimerFiredError


def churn(kind: str, ending: str, seed: str, seconds: str) -> None:
    """Create and free ``kind`` objects ("shm" or "sem") for ``seconds`` while a timer raises
    TimerFiredError at random instants; free what is held if ``ending`` is "normal exit"; print
    the counts, then wait for end of input."""
    global armed
    # An exception landing just as open() returns leaks that descriptor (Python cannot
    # bind a result atomically); _blocks/shm.py closes the ones it can find. Objects are
    # what this test is about, so give descriptors room (root's default is 20,000 here,
    # others' often 1,024).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    descriptors_before = len(os.listdir("/proc/self/fd"))

    signal.signal(signal.SIGALRM, _interrupt)
    # An exception that lands inside a finalizer is "unraisable": count, don't print.
    unraisable: list[sys.UnraisableHookArgs] = []
    sys.unraisablehook = unraisable.append
    random.seed(int(seed))
    interrupted = 0
    deadline = time.monotonic() + float(seconds)
    held: list[Any] = []  # blocks or semaphores: no isinstance check where the timer may land
    while time.monotonic() < deadline:
        try:
            armed = True
            signal.setitimer(signal.ITIMER_REAL, random.uniform(5e-6, 2e-4))
            try:
                if kind == "shm":
                    block = leakguard.SharedMemory(create=True, size=4096)
                    held.append(block)
                    if len(held) > 3:
                        old = held.pop(0)
                        old.close()
                        old.unlink()
                else:
                    held.append(leakguard.Semaphore(1))
                    if len(held) > 3:
                        held.pop(0).unlink()
            finally:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except TimerFiredError:
            # It may have landed in the finally above, before the disarming: disarm here
            # too (the timer is one-shot and has just fired, so nothing can land now).
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            interrupted += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    # Under load every attempt at the first journal can be interrupted (it takes longer
    # than the longest timer), leaving nothing held: make one last object in peace, so
    # the SIGKILL ending always has something to orphan.
    held.append(leakguard.SharedMemory(create=True, size=4096) if kind == "shm" else leakguard.Semaphore(1))
    if ending == "normal exit":
        # Free what we hold: what is still open then was lost to an interrupt.
        for h in held:
            if kind == "shm":
                h.close()
            h.unlink()
        held.clear()
        gc.collect()
    lost_descriptors = len(os.listdir("/proc/self/fd")) - descriptors_before
    entries = [("sem." if kind == "sem" else "") + h.name for h in held]
    state = {
        "interrupted": interrupted,
        "unraisable": len(unraisable),
        "held": entries,
        "lost_fds": lost_descriptors,
        "exist": [os.path.exists("/dev/shm/" + e) for e in entries],
    }
    print(json.dumps(state), flush=True)
    sys.stdin.read()
