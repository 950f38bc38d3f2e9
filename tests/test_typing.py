"""``Pool``'s methods are typed as typeshed types ``multiprocessing.pool.Pool``'s.

mypy checks this module (``files`` in pyproject.toml): each assignment says what a method
returns. A line marked ``# type: ignore[...]`` must not type-check: under ``strict``, mypy
reports an ignore that silences nothing, so were the methods typed ``Any`` (as they once
were) those lines would fail the check. The test runs the same calls on a real pool, so
the types describe what the calls actually return.
"""

from __future__ import annotations

from collections.abc import Iterator

import leakguard
from leakguard import ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, MapResult
from tests import parity_tasks as tasks


def test_each_method_returns_what_its_type_says() -> None:
    with leakguard.Pool(1) as pool:
        applied: int = pool.apply(tasks.square, (3,))
        pending: ApplyResult[int] = pool.apply_async(tasks.square, (4,))
        same: AsyncResult[int] = pending  # the standard library's two names for one class
        mapped: list[int] = pool.map(tasks.square, [1, 2])
        map_pending: MapResult[int] = pool.map_async(tasks.square, [1, 2])
        as_apply: ApplyResult[list[int]] = map_pending
        starred: list[int] = pool.starmap(tasks.add, [(1, 2), (3, 4)])
        star_pending: MapResult[int] = pool.starmap_async(tasks.add, [(1, 2)])
        ordered: IMapIterator[int] = pool.imap(tasks.square, [1, 2, 3])
        unordered: IMapUnorderedIterator[int] = pool.imap_unordered(tasks.square, [1, 2])
        chunked: Iterator[int] = pool.imap(tasks.square, [1, 2, 3], chunksize=2)

        got: int = pending.get(timeout=60)
        first: int = ordered.next(timeout=60)
        assert (applied, got, same.get(timeout=60)) == (9, 16, 16)
        assert mapped == map_pending.get(timeout=60) == as_apply.get(timeout=60) == [1, 4]
        assert starred == [3, 7]
        assert star_pending.get(timeout=60) == [3]
        assert [first, *ordered] == [1, 4, 9]
        assert sorted(unordered) == [1, 4]
        assert list(chunked) == [1, 4, 9]
        assert isinstance(pending, leakguard.ApplyResult)
        assert isinstance(map_pending, leakguard.MapResult)
        assert isinstance(ordered, leakguard.IMapIterator)
        assert isinstance(unordered, leakguard.IMapUnorderedIterator)


def _must_not_type_check(pool: leakguard.Pool) -> None:
    """Never run: mypy must find an error on each line (see the module's docstring)."""
    wrong_item: list[str] = pool.map(tasks.square, [1])  # type: ignore[arg-type]
    wrong_input: list[int] = pool.map(tasks.square, ["1"])  # type: ignore[arg-type]
    wrong_value: str = pool.apply(tasks.square, (1,))  # type: ignore[assignment]
    wrong_result: ApplyResult[str] = pool.apply_async(tasks.square, (1,))  # type: ignore[arg-type]
    # With chunks of more than one item, imap hands back a plain iterator (no next(timeout)).
    not_imap_iterator: IMapIterator[int] = pool.imap(tasks.square, [1], chunksize=2)  # type: ignore[assignment]
    del wrong_item, wrong_input, wrong_value, wrong_result, not_imap_iterator
