"""Progress bars for ``progress=True``: a thread-safe wrapper around a tqdm bar.

tqdm is an optional extra (``pip install 'leakguard[progress]'``) and is imported
only when a bar is asked for, so ``progress=False`` costs nothing. A bar is
advanced from the pool's I/O thread as tasks end and may be closed from another
thread (a caller that stopped early); every call after ``close()`` does nothing.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Bar", "open_bar"]

# tqdm redraws at most this often (seconds); a fast map with many items stays cheap.
MININTERVAL = 0.1


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional, and only imported when a bar is asked for
    except ImportError as exc:
        raise ImportError(
            "progress=True needs the tqdm package, which is not installed (it is an optional "
            "dependency of leakguard). Install it with: pip install 'leakguard[progress]' "
            "(or pip install tqdm), or call without progress=True."
        ) from exc
    return tqdm


class Bar:
    """One tqdm bar; ``advance``, ``set_total`` and ``close`` may come from any thread."""

    def __init__(self, total: int | None, desc: str) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._bar = _tqdm_class()(total=total, desc=desc, unit="item", mininterval=MININTERVAL)

    def advance(self, n: int) -> None:
        with self._lock:
            if not self._closed and n:
                self._bar.update(n)

    def set_total(self, total: int) -> None:
        """The number of items, once known (an input read as the work went)."""
        with self._lock:
            if not self._closed:
                self._bar.total = total
                self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._bar.close()


def open_bar(total: int | None, desc: str) -> Bar:
    """A new bar of ``total`` items (None: not known yet); ImportError without tqdm."""
    return Bar(total, desc)
