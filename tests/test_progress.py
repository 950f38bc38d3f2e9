"""``progress=True``: a tqdm bar on stderr that reaches n/n, advances as work ends,
closes at the end (also on an error or an early exit), and changes no result;
without tqdm, a clear ImportError; with ``progress=False``, tqdm is not imported."""

from __future__ import annotations

import functools
import io
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import leakguard
from leakguard._pool import progress as _progress
from tests import executor_tasks as tasks
from tests import progress_children
from tests.helpers import run_main, wait_for


class Recorder(io.StringIO):
    """A stderr that several threads may write to while the test reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.monkeypatch: pytest.MonkeyPatch | None = None

    def write(self, s: str) -> int:
        with self.lock:
            return super().write(s)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """sys.stderr, recorded once the test calls ``record(stderr)`` as it starts: pytest's
    capture sets sys.stderr again between a fixture's setup and the test's call."""
    recorder = Recorder()
    recorder.monkeypatch = monkeypatch
    return recorder


def record(recorder: Recorder) -> Recorder:
    assert recorder.monkeypatch is not None
    recorder.monkeypatch.setattr(sys, "stderr", recorder)
    return recorder


def counts(text: str) -> list[tuple[int, int | None]]:
    """Every ``n/total`` (or ``n item`` when the total is unknown) the bar printed, in order."""
    found: list[tuple[int, int | None]] = []
    for frame in re.split(r"[\r\n]+", text):
        if m := re.search(r"\|\s*(\d+)/(\d+) \[", frame):
            found.append((int(m.group(1)), int(m.group(2))))
        elif m := re.search(r":\s*(\d+)item \[", frame):
            found.append((int(m.group(1)), None))
    return found


def shows(recorder: Recorder, count: tuple[int, int]) -> bool:
    return count in counts(recorder.text())


def closed(text: str) -> bool:
    """tqdm ends a closed bar (leave=True) with a newline."""
    return text.endswith("\n")


Method = Callable[[leakguard.Pool, bool], list[Any]]
METHODS: dict[str, Method] = {
    "map": lambda pool, progress: pool.map(tasks.square, range(10), chunksize=3, progress=progress),
    "starmap": lambda pool, progress: pool.starmap(tasks.add, [(i, i) for i in range(10)], progress=progress),
    "imap": lambda pool, progress: list(pool.imap(tasks.square, range(10), progress=progress)),
    "imap_unordered": lambda pool, progress: sorted(
        pool.imap_unordered(tasks.square, range(10), chunksize=4, progress=progress)
    ),
}


@pytest.fixture
def pool() -> Iterator[leakguard.Pool]:
    with leakguard.Pool(2) as p:
        yield p


@pytest.mark.parametrize("method", METHODS)
def test_the_bar_reaches_n_of_n_and_results_are_unchanged(method: str, pool: leakguard.Pool, stderr: Recorder) -> None:
    record(stderr)
    plain = METHODS[method](pool, False)
    assert stderr.text() == ""  # progress=False shows nothing
    assert METHODS[method](pool, True) == plain
    wait_for(lambda: closed(stderr.text()), what="the bar to close")
    text = stderr.text()
    assert counts(text)[-1] == (10, 10)
    assert f"{method}(" in text


def test_imap_of_a_generator_learns_its_total(pool: leakguard.Pool, stderr: Recorder) -> None:
    record(stderr)
    results = list(pool.imap(tasks.square, (i for i in range(7)), chunksize=2, progress=True))
    assert results == [i * i for i in range(7)]
    wait_for(lambda: closed(stderr.text()), what="the bar to close")
    text = stderr.text()
    assert counts(text)[-1] == (7, 7)


def test_the_bar_advances_during_a_map(
    pool: leakguard.Pool, stderr: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(stderr)
    monkeypatch.setattr(_progress, "MININTERVAL", 0)  # draw every update: the test reads each one
    out: list[Any] = []
    worker = threading.Thread(
        target=lambda: out.append(
            pool.starmap(tasks.gated_square, [(str(tmp_path), i) for i in range(4)], progress=True)
        )
    )
    worker.start()
    try:
        for i in range(4):
            assert not closed(stderr.text())
            (tmp_path / str(i)).touch()
            wait_for(functools.partial(shows, stderr, (i + 1, 4)), timeout=30, what=f"the bar to show {i + 1}/4")
    finally:
        for i in range(4):
            (tmp_path / str(i)).touch()
        worker.join(60)
    assert out == [[0, 1, 4, 9]]
    assert closed(stderr.text())


def test_the_bar_closes_when_the_map_fails(pool: leakguard.Pool, stderr: Recorder) -> None:
    record(stderr)
    with pytest.raises(tasks.CustomError):
        pool.starmap(tasks.fail_on, [(2, i) for i in range(5)], progress=True)
    assert closed(stderr.text())
    assert counts(stderr.text())[-1] == (5, 5)


def test_the_bar_closes_when_the_pool_stops_an_imap_read_in_part(stderr: Recorder, tmp_path: Path) -> None:
    record(stderr)
    (tmp_path / "0").touch()
    with leakguard.Pool(1) as p:
        results = p.imap(functools.partial(tasks.gated_square, str(tmp_path)), range(5), progress=True)
        assert next(results) == 0
        assert not closed(stderr.text())
    # terminate() failed the tasks left: each counts, and the last closes the bar
    wait_for(lambda: closed(stderr.text()), timeout=30, what="the bar to close")


def test_the_executor_map_has_a_bar_too(stderr: Recorder, tmp_path: Path) -> None:
    record(stderr)
    with leakguard.Executor(2) as ex:
        assert list(ex.map(tasks.add, range(9), range(9), chunksize=2, progress=True)) == [2 * i for i in range(9)]
        wait_for(lambda: closed(stderr.text()), timeout=30, what="the bar to close")
        assert counts(stderr.text())[-1] == (9, 9)
        # an early exit closes the bar too (the map's iterator is closed when dropped)
        before = len(stderr.text())
        results = ex.map(tasks.gated_square, [str(tmp_path)] * 3, range(3), progress=True)
        (tmp_path / "0").touch()
        assert next(results) == 0
        results.close()  # type: ignore[attr-defined]
        assert closed(stderr.text()[before:])
        for i in (1, 2):
            (tmp_path / str(i)).touch()


@pytest.mark.slow
def test_without_tqdm_progress_says_what_to_install() -> None:
    done = run_main(progress_children.without_tqdm, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines:
        assert "tqdm" in line
        assert "pip install 'leakguard[progress]'" in line


@pytest.mark.slow
def test_progress_false_does_not_import_tqdm() -> None:
    done = run_main(progress_children.progress_false, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
