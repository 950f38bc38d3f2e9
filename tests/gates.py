"""Gates for tasks: a task waits in a worker until the test creates a file.

Tasks import this, not tests.helpers: workers should not import pytest or psutil.
"""

from __future__ import annotations

import os
import time


def wait_for_path(path: str, timeout: float) -> bool:
    """Whether ``path`` exists within ``timeout`` seconds (the test's cue to go on)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # the poll interval of a deadline wait
    return True
