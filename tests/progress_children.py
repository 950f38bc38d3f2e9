"""Child programs of tests/test_progress.py, each a function its test starts with ``run_main``
(tests/helpers.py).

leakguard is imported inside the functions: ``without_tqdm`` hides tqdm before it is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def without_tqdm() -> None:
    """With tqdm hidden, ask for a bar from Pool.map, Pool.imap and Executor.map: print each
    ImportError; the pool and the executor still work."""
    sys.modules["tqdm"] = None  # type: ignore[assignment]  # as if it were not installed
    import leakguard

    with leakguard.Pool(1) as pool:
        assert pool.map(abs, [-1, 2]) == [1, 2]
        with leakguard.Executor(1) as ex:
            calls: tuple[Callable[[], object], ...] = (
                lambda: pool.map(abs, [-1], progress=True),
                lambda: pool.imap(abs, [-1], progress=True),
                lambda: ex.map(abs, [-1], progress=True),
            )
            for call in calls:
                try:
                    call()
                except ImportError as exc:
                    print(exc)
            assert list(ex.map(abs, [-4])) == [4]
        assert pool.map(abs, [-3]) == [3]


def progress_false() -> None:
    """Map without a bar in every way; print whether tqdm was imported."""
    import leakguard

    with leakguard.Pool(1) as pool:
        pool.map(abs, [-1])
        list(pool.imap(abs, [-1]))
        pool.starmap(divmod, [(7, 2)])
    with leakguard.Executor(1) as ex:
        list(ex.map(abs, [-1]))
    print("tqdm" in sys.modules)
