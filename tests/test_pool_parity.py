"""SPEC 2.1: ``leakguard.Pool`` has the methods and semantics of ``multiprocessing.Pool``.

Each case below is a function that takes a pool factory (and a private folder for
the files that gate tasks) and returns a comparable outcome: values, and for an
exception its type and arguments. ``test_same_outcome`` runs every case on both
implementations, under every start method, and asserts that the outcomes are
equal. Pools start once per case and implementation, not once per assertion:
each case groups the checks that can share a pool.

Where the two legitimately differ, the cases compare what they have in common:
leakguard returns a large numpy array as a ``SharedArray`` (an ndarray subclass,
so arrays are compared with numpy), and leakguard never hangs where
multiprocessing does (work pending at ``terminate()``, an initializer that
raises, an exception that cannot be unpickled): those are tested on leakguard
alone, at the end.

Why one long module: it is one concept, the parity of the two pools. Every case shares
the comparison machinery above them (outcomes, ``describe``, the two factories), and the
leakguard-only cases at the end are the exceptions to that parity, kept beside the rule.
"""

from __future__ import annotations

import copyreg
import functools
import multiprocessing
import multiprocessing.pool
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

import leakguard
from leakguard._pool.results import ApplyResult
from tests import parity_tasks as tasks
from tests.helpers import descendants, wait_for

IMPLS = ("multiprocessing", "leakguard")
Outcome = Any


class MakePool(Protocol):
    def __call__(
        self,
        processes: int = 2,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ) -> Any: ...


Case = Callable[[MakePool, Path], Outcome]


@pytest.fixture
def make_pools(start_method: str) -> Iterator[Callable[[str], MakePool]]:
    """``make_pools(impl)`` is a factory of ``impl`` pools under ``start_method``;
    every pool it made is terminated and joined when the test ends, pass or fail."""
    made: list[Any] = []

    def factory_for(impl: str) -> MakePool:
        def make(
            processes: int = 2,
            initializer: Callable[..., object] | None = None,
            initargs: Iterable[Any] = (),
            maxtasksperchild: int | None = None,
        ) -> Any:
            pool: Any
            if impl == "multiprocessing":
                ctx = multiprocessing.get_context(start_method)
                pool = ctx.Pool(processes, initializer, initargs, maxtasksperchild)
            else:
                pool = leakguard.Pool(processes, initializer, initargs, maxtasksperchild, start_method=start_method)
            made.append(pool)
            return pool

        return make

    yield factory_for
    for pool in made:
        pool.terminate()
        pool.join()
    # multiprocessing's named semaphores go when its Pool object is collected; pytest holds
    # this fixture's value until after conftest's /dev/shm check, so drop the pools here.
    made.clear()


# ---------------------------------------------------------------------------- describing outcomes

_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _normal(value: object) -> object:
    """Memory addresses differ between runs: ``<function f at 0x7f..>`` -> ``<function f at 0x..>``."""
    if isinstance(value, str):
        return _ADDRESS.sub(" at 0x..", value)
    if isinstance(value, tuple):
        return tuple(_normal(v) for v in value)
    return value


def raised(exc: BaseException) -> Outcome:
    return ("raised", f"{type(exc).__module__}.{type(exc).__qualname__}", _normal(exc.args))


def outcome(call: Callable[[], object], *, kind: type[Exception] | None = None) -> Outcome:
    """``("ok", value)`` or what ``call`` raised. With ``kind``, an exception of that
    kind is reported by the kind alone, for errors whose class or message legitimately
    differ (leakguard's ``PoolClosedError`` is a ``ValueError``, as multiprocessing's is)."""
    try:
        value = call()
    except Exception as exc:
        if kind is not None and isinstance(exc, kind):
            return ("raised", kind.__name__)
        return raised(exc)
    return ("ok", value)


def drain(iterator: Iterator[Any], describe: Callable[[BaseException], Outcome] = raised) -> list[Outcome]:
    """Every step of an iterator until StopIteration: its values and what it raised on the way."""
    steps = []
    for _ in range(100):
        try:
            steps.append(("ok", next(iterator)))
        except StopIteration:
            return steps
        except Exception as exc:
            steps.append(describe(exc))
    raise AssertionError(f"the iterator did not stop: {steps[:10]}")


def unordered(steps: list[Outcome]) -> list[Outcome]:
    return sorted(steps, key=repr)


def all_exit(pids: set[int], timeout: float = 5.0) -> bool:
    """Whether all of ``pids`` are gone (or zombies) within ``timeout``."""

    def none_left() -> bool:
        alive = {p.pid for p in descendants()}
        return not (pids & alive)

    try:
        wait_for(none_left, timeout=timeout, what=f"processes {sorted(pids)} to exit")
    except AssertionError:
        return False
    return True


def children() -> set[int]:
    return {p.pid for p in descendants()}


def first_seen(values: list[int]) -> list[int]:
    """Pids renamed by order of first appearance: [812, 812, 977] -> [0, 0, 1]."""
    names: dict[int, int] = {}
    return [names.setdefault(v, len(names)) for v in values]


# ---------------------------------------------------------------------------- the cases

CASES: list[Any] = []


def case(bug: str | None = None) -> Callable[[Case], Case]:
    """Register a case; ``bug`` (a difference leakguard should not have) makes it a strict xfail."""

    def register(func: Case) -> Case:
        # raises=AssertionError: only a difference in outcome counts, not a crash of the case
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"bug: {bug}")] if bug else []
        CASES.append(pytest.param(func, id=func.__name__, marks=marks))
        return func

    return register


@case()
def map_order_and_chunksize(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    items = list(range(23))
    out = {
        # earlier items take longer: results arrive out of order, and are returned in order
        "out of order arrival": pool.map(tasks.square_slowly, range(8), chunksize=1),
        "default chunksize": pool.map(tasks.square, items),
        **{f"chunksize={n}": pool.map(tasks.square, items, chunksize=n) for n in (1, 2, 5, 23, 100)},
        "empty": pool.map(tasks.square, []),
        "empty, chunksize=4": pool.map(tasks.square, [], chunksize=4),
        "tuple input": pool.map(tasks.square, (3, 1, 2)),
        "generator input": pool.map(tasks.square, tasks.count_up(7)),
        "range input": pool.map(tasks.square, range(5, 0, -1)),
        "many items": sum(pool.map(tasks.square, range(5000))),
        "builtin functions": (pool.map(abs, [-1, 2]), pool.map(len, ["ab", "c"]), pool.starmap(max, [(1, 5)])),
        "a method, a partial": (pool.map(str.upper, ["a"]), pool.map(functools.partial(tasks.add, 10), [1, 2])),
        # an input that raises as map() reads it: raised in the caller
        "input raises": outcome(lambda: pool.map(tasks.square, tasks.count_up(7, fail_after=4))),
        "input not iterable": outcome(lambda: pool.map(tasks.square, 5)),
        "imap chunksize=0": outcome(lambda: pool.imap(tasks.square, [1], chunksize=0), kind=ValueError),
        "imap_unordered chunksize=0": outcome(
            lambda: pool.imap_unordered(tasks.square, [1], chunksize=0), kind=ValueError
        ),
    }
    pool.close()
    pool.join()
    return out


@case()
def map_async_with_callbacks(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    out: dict[str, Outcome] = {}

    got: list[Any] = []
    errors: list[BaseException] = []
    r = pool.map_async(tasks.square, range(10), chunksize=3, callback=got.append, error_callback=errors.append)
    value = r.get(timeout=20)
    # the callback has run by the time get() returns, with the very list get() returns
    out["success"] = (value, got, got[0] is value, errors, r.ready(), r.successful(), r.wait(1))

    got, errors = [], []
    r = pool.map_async(tasks.fail_on_3, range(8), chunksize=2, callback=got.append, error_callback=errors.append)
    try:
        r.get(timeout=20)
    except ValueError as exc:
        first = exc
    out["failure"] = (raised(first), got, [raised(e) for e in errors], errors[0] is first, r.successful())
    out["failure, get again"] = outcome(lambda: r.get(timeout=1))

    got, errors = [], []
    r = pool.starmap_async(tasks.add, [(1, 2), (3, 4), (5, 6)], callback=got.append, error_callback=errors.append)
    out["starmap_async"] = (r.get(timeout=20), got, errors, r.successful())

    got, errors = [], []
    r = pool.starmap_async(tasks.add_or_fail, [(1, 2), (3, 3)], callback=got.append, error_callback=errors.append)
    out["starmap_async failure"] = (outcome(lambda: r.get(timeout=20)), got, [raised(e) for e in errors])
    pool.close()
    pool.join()
    return out


@case()
def map_async_on_empty_input(make: MakePool, tmp: Path) -> Outcome:
    # multiprocessing calls no callback for an empty input (leakguard did, before b05f4cc)
    pool = make(1)
    got: list[Any] = []
    values = [
        pool.map_async(tasks.square, [], callback=got.append).get(timeout=20),
        pool.map_async(tasks.square, [], chunksize=3, callback=got.append).get(timeout=20),
        pool.starmap_async(tasks.add, [], callback=got.append).get(timeout=20),
    ]
    pool.close()
    pool.join()
    return (values, got)


@case()
def apply_and_apply_async(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    out: dict[str, Outcome] = {
        "args": pool.apply(tasks.add, (2, 3)),
        "args as a list": pool.apply(tasks.add, [2, 3]),
        "args and kwds": pool.apply(tasks.describe, (1,), {"b": 2, "c": 3}),
        "kwds only": pool.apply(tasks.describe, kwds={"a": 7, "c": 1}),
        "no args": type(pool.apply(tasks.get_pid)).__name__,
        "wrong arguments": outcome(lambda: pool.apply(tasks.add, (1,))),
        "unknown keyword": outcome(lambda: pool.apply(tasks.describe, (1,), {"d": 2})),
    }

    got: list[Any] = []
    errors: list[BaseException] = []
    r = pool.apply_async(tasks.describe, (4, 5), {"c": 6}, callback=got.append, error_callback=errors.append)
    out["apply_async"] = (r.get(timeout=20), got, errors, r.ready(), r.successful(), r.wait(1))

    # a callback may submit more work (it runs on one of the pool's threads)
    chained: list[Any] = []
    r = pool.apply_async(tasks.square, (3,), callback=lambda v: chained.append(pool.apply_async(tasks.square, (v,))))
    out["callback submits"] = (r.get(timeout=20), chained[0].get(timeout=20))

    got, errors = [], []
    r = pool.apply_async(tasks.raise_custom, (7,), callback=got.append, error_callback=errors.append)
    try:
        r.get(timeout=20)
    except tasks.CustomError as exc:
        first = exc
    out["apply_async failure"] = (
        raised(first),
        outcome(lambda: r.get(timeout=1)),  # raised again, the same error
        got,
        [raised(e) for e in errors],
        errors[0] is first,
        r.ready(),
        r.successful(),
    )
    pool.close()
    pool.join()
    return out


@case()
def starmap(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    pairs = [(i, 10 * i) for i in range(9)]
    out = {
        "default chunksize": pool.starmap(tasks.add, pairs),
        **{f"chunksize={n}": pool.starmap(tasks.add, pairs, chunksize=n) for n in (1, 4, 100)},
        "generator input": pool.starmap(tasks.add, tasks.pairs(5)),
        "lists as arguments": pool.starmap(tasks.add, [[1, 2], [3, 4]]),
        "one-argument tuples": pool.starmap(tasks.square, [(2,), (3,)]),
        "empty": pool.starmap(tasks.add, []),
        "failure": outcome(lambda: pool.starmap(tasks.add_or_fail, [(1, 2), (3, 3), (4, 5)])),
        "wrong arity": outcome(lambda: pool.starmap(tasks.add, [(1, 2, 3)])),
    }
    pool.close()
    pool.join()
    return out


@case()
def imap_and_imap_unordered(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    it = pool.imap(tasks.square, range(3))
    out = {
        "iter(it) is it": iter(it) is it,
        "imap": list(it),
        "out of order arrival": list(pool.imap(tasks.square_slowly, range(8))),
        "out of order arrival, chunksize=3": list(pool.imap(tasks.square_slowly, range(8), chunksize=3)),
        "chunksize larger than the input": list(pool.imap(tasks.square, range(5), chunksize=50)),
        "unordered": sorted(pool.imap_unordered(tasks.square_slowly, range(8))),
        "unordered, chunksize=3": sorted(pool.imap_unordered(tasks.square, range(10), chunksize=3)),
        "generator": list(pool.imap(tasks.square, tasks.count_up(9))),
        "generator, chunksize=4": list(pool.imap(tasks.square, tasks.count_up(9), chunksize=4)),
        "generator, unordered": sorted(pool.imap_unordered(tasks.square, tasks.count_up(9))),
        "generator, unordered, chunksize=2": sorted(pool.imap_unordered(tasks.square, tasks.count_up(9), 2)),
        "many items": list(pool.imap(tasks.square, range(1000))) == [x * x for x in range(1000)],
        "many items from a generator, chunksize=7": (
            list(pool.imap(tasks.square, iter(range(1000)), chunksize=7)) == [x * x for x in range(1000)]
        ),
        "many items, unordered": sorted(pool.imap_unordered(tasks.square, iter(range(1000)))),
        "empty": list(pool.imap(tasks.square, [])),
        "empty generator": list(pool.imap(tasks.square, tasks.count_up(0))),
        "empty, unordered, chunksize=2": list(pool.imap_unordered(tasks.square, [], chunksize=2)),
        # not iterable: the first next() raises TypeError, then the iterator ends
        "not iterable": drain(pool.imap(tasks.square, 5)),
        "not iterable, unordered, chunksize=2": drain(pool.imap_unordered(tasks.square, 5, 2)),
    }
    pool.close()
    pool.join()
    return out


@case()
def imap_with_an_error_at_one_position(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    squares = {x * x for x in range(7)}

    def unordered_chunks(steps: list[Outcome]) -> Outcome:
        # which chunks arrive before the failing one is a race: compare what is certain
        errors = [s for s in steps if s[0] == "raised"]
        values = {s[1] for s in steps if s[0] == "ok"}
        return (errors, values <= squares, steps[-1][0] == "raised")

    out = {
        # chunksize 1: the error is raised at its place, and iteration goes on after it
        "imap": drain(pool.imap(tasks.fail_on_3, range(7))),
        # chunksize > 1: the results come from a generator, which ends at the error
        "imap, chunksize=2": drain(pool.imap(tasks.fail_on_3, range(7), chunksize=2)),
        "imap_unordered": unordered(drain(pool.imap_unordered(tasks.fail_on_3, range(7)))),
        "imap_unordered, chunksize=2": unordered_chunks(
            drain(pool.imap_unordered(tasks.fail_on_3, range(7), chunksize=2))
        ),
        # the input itself raises: the error takes the place of the item it failed to give
        "input raises": drain(pool.imap(tasks.square, tasks.count_up(6, fail_after=3))),
        "input raises, chunksize=2": drain(pool.imap(tasks.square, tasks.count_up(7, fail_after=3), chunksize=2)),
        "input raises, unordered": unordered(drain(pool.imap_unordered(tasks.square, tasks.count_up(6, 3)))),
        "custom error": drain(pool.imap(tasks.raise_custom, [1, 2])),
    }
    pool.close()
    pool.join()
    return out


@case()
def exceptions_keep_their_type_and_args(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)

    def described(call: Callable[[], object]) -> Outcome:
        try:
            call()
        except Exception as exc:
            return (
                raised(exc),
                type(exc) is tasks.CustomError,
                getattr(exc, "code", None),
                # the worker's traceback rides along as the cause, as text
                "Traceback" in str(exc.__cause__),
                "raise_custom" in str(exc.__cause__),
            )
        raise AssertionError("no exception")

    def imap_first(it: Iterator[Any]) -> None:
        next(it)

    def every_way(func: Callable[[Any], Any], arg: object) -> dict[str, Outcome]:
        return {
            "apply": described(lambda: pool.apply(func, (arg,))),
            "apply_async": described(lambda: pool.apply_async(func, (arg,)).get(timeout=20)),
            "map": described(lambda: pool.map(func, [arg])),
            "map_async": described(lambda: pool.map_async(func, [arg], chunksize=1).get(timeout=20)),
            "starmap": described(lambda: pool.starmap(func, [(arg,)])),
            "imap": described(lambda: imap_first(pool.imap(func, [arg]))),
            "imap, chunksize=2": described(lambda: imap_first(pool.imap(func, [arg], chunksize=2))),
            "imap_unordered": described(lambda: imap_first(pool.imap_unordered(func, [arg]))),
        }

    out = {
        "custom": every_way(tasks.raise_custom, 5),
        "KeyError": every_way(tasks.raise_key_error, "missing"),
        "ValueError": every_way(tasks.fail_on_3, 3),
    }
    pool.close()
    pool.join()
    return out


@case()
def async_results_before_and_after_ready(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    gate = tmp / "gate"
    r = pool.apply_async(tasks.wait_for_file, (str(gate),))
    m = pool.map_async(tasks.wait_for_file, [str(gate)])

    def timeout_error(call: Callable[[], object]) -> Outcome:
        try:
            call()
        except multiprocessing.TimeoutError as exc:
            return (raised(exc), type(exc) is multiprocessing.TimeoutError)
        return "no TimeoutError"

    out = {
        "get(timeout)": timeout_error(lambda: r.get(timeout=0.05)),
        "wait(timeout)": (r.wait(0.05), r.ready()),
        "successful()": outcome(r.successful, kind=ValueError),
        "map get(timeout)": timeout_error(lambda: m.get(timeout=0.05)),
        "map successful()": outcome(m.successful, kind=ValueError),
        "map ready()": m.ready(),
    }
    gate.touch()
    out["after"] = (r.get(timeout=20), r.ready(), r.successful(), r.wait(0.05), r.wait())
    out["map after"] = (m.get(timeout=20), m.ready(), m.successful())

    # imap's iterator (chunksize 1) has next(timeout)
    gate = tmp / "gate2"
    it = pool.imap(tasks.wait_for_file, [str(gate)])
    out["imap next(timeout)"] = timeout_error(lambda: it.next(timeout=0.05))
    gate.touch()
    out["imap after"] = (it.next(timeout=20), outcome(lambda: it.next(timeout=20)))
    pool.close()
    pool.join()
    return out


@case()
def close_then_join(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    gate = tmp / "gate"
    out: dict[str, Outcome] = {"join() while running": outcome(pool.join, kind=ValueError)}
    r = pool.apply_async(tasks.wait_for_file, (str(gate),))
    m = pool.map_async(tasks.square, range(6))
    it = pool.imap(tasks.square, range(4))
    pool.close()
    submit: dict[str, Callable[[], object]] = {
        "apply": lambda: pool.apply(tasks.square, (1,)),
        "apply_async": lambda: pool.apply_async(tasks.square, (1,)),
        "map": lambda: pool.map(tasks.square, [1]),
        "map_async": lambda: pool.map_async(tasks.square, [1]),
        "starmap": lambda: pool.starmap(tasks.add, [(1, 2)]),
        "starmap_async": lambda: pool.starmap_async(tasks.add, [(1, 2)]),
        "imap": lambda: pool.imap(tasks.square, [1]),
        "imap_unordered": lambda: pool.imap_unordered(tasks.square, [1]),
        "with": pool.__enter__,
    }
    out["after close()"] = {name: outcome(call, kind=ValueError) for name, call in submit.items()}
    out["close() again"] = outcome(pool.close)
    gate.touch()
    out["join()"] = outcome(pool.join)
    # what was submitted before close() is done
    out["results"] = (r.get(timeout=1), m.get(timeout=1), list(it))
    out["join() again"] = outcome(pool.join)
    return out


@case()
def terminate_stops_the_workers(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    pids = children()
    pool.apply_async(tasks.wait_for_file, (str(tmp / "never"),))
    pool.map_async(tasks.wait_for_file, [str(tmp / "never")] * 3, chunksize=1)
    out = {
        "terminate()": outcome(pool.terminate),
        "workers gone": (len(pids) >= 2, all_exit(pids)),
        "apply_async after": outcome(lambda: pool.apply_async(tasks.square, (1,)), kind=ValueError),
        "map after": outcome(lambda: pool.map(tasks.square, [1]), kind=ValueError),
        "join()": outcome(pool.join),
        "terminate() again": outcome(pool.terminate),
        "close() after": outcome(pool.close),
        "join() again": outcome(pool.join),
    }

    # "stop at the first error": terminate() from an error_callback, on the pool's own thread
    other = make(1)
    errors: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        errors.append(exc)
        other.terminate()

    failing = other.apply_async(tasks.raise_custom, (2,), error_callback=stop)
    out["terminate() in error_callback"] = (
        outcome(lambda: failing.get(timeout=20)),
        [raised(e) for e in errors],
        outcome(other.join),
        outcome(lambda: other.apply(tasks.square, (1,)), kind=ValueError),
    )
    return out


@case()
def context_manager_terminates(make: MakePool, tmp: Path) -> Outcome:
    made = make(2)
    with made as pool:
        same = pool is made
        pids = children()
        value = pool.map(tasks.square, range(5))
        pool.apply_async(tasks.wait_for_file, (str(tmp / "never"),))
    out: dict[str, Outcome] = {
        "__enter__ returns the pool": same,
        "value": value,
        "workers gone": (len(pids) >= 2, all_exit(pids)),
        "apply after": outcome(lambda: made.apply(tasks.square, (1,)), kind=ValueError),
        "join()": outcome(made.join),
    }

    other = make(1)

    def fail_inside() -> None:
        with other:
            raise tasks.CustomError(1, "inside the with block")

    out["exception inside"] = outcome(fail_inside)  # not swallowed by __exit__
    out["enter a terminated pool"] = outcome(other.__enter__, kind=ValueError)
    out["join() the other"] = outcome(other.join)
    return out


@case()
def maxtasksperchild_replaces_workers(make: MakePool, tmp: Path) -> Outcome:
    pool = make(1, initializer=tasks.set_tag, initargs=("new worker",), maxtasksperchild=2)
    seen = [pool.apply(tasks.tag_and_pid) for _ in range(2)] + pool.map(tasks.tag_and_pid, range(3), chunksize=1)
    pool.close()
    pool.join()
    return {
        # a worker runs two tasks, then a new one (initialized anew) takes over
        "pids": first_seen([pid for _, _, pid in seen]),
        "initializer ran once in each": [(tag, calls) for tag, calls, _ in seen],
    }


@case()
def initializer_sets_worker_state(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2, initializer=tasks.set_tag, initargs=["from initargs"])
    out = {
        "map": pool.map(tasks.read_tag, range(4), chunksize=1),
        "apply": pool.apply(tasks.read_tag),
        "this process": tasks.read_tag(),  # even under fork, the initializer ran in the workers only
    }
    pool.close()
    pool.join()
    return out


@case()
def unpicklable_argument(make: MakePool, tmp: Path) -> Outcome:
    # SPEC 6: a clear error in the caller, and the pool stays usable. multiprocessing
    # behaves well here too (its task thread fails the task it could not pickle), so
    # the two are compared directly: same exception type and message, same positions.
    # (A lambda is unpicklable to multiprocessing only: leakguard sends it by value, SPEC
    # 2.1; tests/test_by_value.py.)
    pool = make(2)
    lock = threading.Lock()
    mp_lock = multiprocessing.Lock()
    mp_queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    errors: list[BaseException] = []
    out = {
        "apply, a lock": outcome(lambda: pool.apply(tasks.identity, (lock,))),
        "apply_async, kwds": outcome(lambda: pool.apply_async(tasks.describe, (1,), {"c": lock}).get(timeout=20)),
        "map, one item": outcome(lambda: pool.map(tasks.identity, [1, lock, 3])),
        "map_async, error_callback": (
            outcome(lambda: pool.map_async(tasks.identity, [lock], error_callback=errors.append).get(timeout=20)),
            [raised(e) for e in errors],
        ),
        "starmap": outcome(lambda: pool.starmap(tasks.add, [(1, lock)])),
        # the classic mistake: these only pass to a child by inheritance (RuntimeError)
        "a multiprocessing.Lock": outcome(lambda: pool.apply(tasks.identity, (mp_lock,))),
        "a multiprocessing.Queue": outcome(lambda: pool.apply(tasks.identity, (mp_queue,))),
        "imap, one item": drain(pool.imap(tasks.identity, [1, lock, 3])),
        "imap_unordered, one item": unordered(drain(pool.imap_unordered(tasks.identity, [1, lock, 3]))),
        # the pool stays usable
        "after": pool.map(tasks.square, range(5)),
    }
    mp_queue.close()
    pool.close()
    pool.join()
    return out


def encoding_error(exc: BaseException) -> Outcome:
    # args[1] holds the value's repr, with an address: maybe_encoding_error_message compares it
    return (type(exc).__qualname__, isinstance(exc, MaybeEncodingError), _normal(exc.args[0]))


@case()
def unpicklable_result(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)

    def failure(call: Callable[[], object]) -> Outcome:
        try:
            call()
        except Exception as exc:
            return encoding_error(exc)
        return "no error"

    out = {
        "apply": failure(lambda: pool.apply(tasks.return_unpicklable, (1,))),
        "apply_async": failure(lambda: pool.apply_async(tasks.return_unpicklable, (1,)).get(timeout=20)),
        "map": failure(lambda: pool.map(tasks.unpicklable_if_odd, range(4), chunksize=1)),
        "imap": drain(pool.imap(tasks.unpicklable_if_odd, range(4)), encoding_error),
        "an exception that cannot be pickled": failure(lambda: pool.apply(tasks.raise_with_lock)),
        "after": pool.map(tasks.square, range(4)),
    }
    pool.close()
    pool.join()
    return out


@case()
def maybe_encoding_error_message(make: MakePool, tmp: Path) -> Outcome:
    # the whole message, value included (leakguard quoted the value once more, before b05f4cc)
    pool = make(1)
    try:
        pool.apply(tasks.return_unpicklable, (1,))
    except MaybeEncodingError as exc:
        error = exc
    pool.close()
    pool.join()
    return (_normal(error.args), _normal(str(error)))


@case()
def large_numpy_arrays(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB: above leakguard's share_threshold
    small = np.arange(10, dtype=np.float64)

    def summary(a: Any, expected: Any) -> Outcome:
        # leakguard hands large arrays back as SharedArray, an ndarray subclass
        return (isinstance(a, np.ndarray), a.shape, str(a.dtype), bool(np.array_equal(a, expected)))

    doubled = pool.map(tasks.double, [big, small, big[::3]])
    out = {
        "apply": summary(pool.apply(tasks.double, (big,)), big * 2),
        "map": [summary(a, e) for a, e in zip(doubled, [big * 2, small * 2, big[::3] * 2], strict=True)],
        "small stays a plain ndarray": type(doubled[1]) is np.ndarray,
        "made in the worker": summary(pool.apply(tasks.make_array, (300_000,)), big),
        "argument": pool.apply(tasks.array_sum, (big,)),
        "view argument": pool.apply(tasks.array_sum, (big[1::2],)),
    }
    del doubled
    pool.close()
    pool.join()
    return out


@case()
def invalid_arguments(make: MakePool, tmp: Path) -> Outcome:
    return {
        "processes=0": outcome(lambda: make(0), kind=ValueError),
        "processes=-1": outcome(lambda: make(-1), kind=ValueError),
        "maxtasksperchild=0": outcome(lambda: make(1, maxtasksperchild=0), kind=ValueError),
        "maxtasksperchild=-2": outcome(lambda: make(1, maxtasksperchild=-2), kind=ValueError),
        "initializer not callable": outcome(lambda: make(1, initializer=5), kind=TypeError),  # type: ignore[arg-type]
    }


@case()
def map_error_comes_after_every_chunk(make: MakePool, tmp: Path) -> Outcome:
    # Item 0 fails at once, item 1 writes its mark 0.3 s later: multiprocessing raises
    # only once every chunk is done, so the mark is there when map() raises (leakguard
    # raised at the first error, before b05f4cc).
    pool = make(2)
    out = outcome(lambda: pool.map(tasks.fail_or_mark, [("fail", ""), ("mark", str(tmp))], chunksize=1))
    finished_when_raised = (tmp / "mark").exists()
    pool.close()
    pool.join()
    return (out, finished_when_raised)


@case()
def idle_workers_each_take_a_task(make: MakePool, tmp: Path) -> Outcome:
    # multiprocessing's workers take one task at a time from a shared queue: with two
    # idle workers, two tasks run at once. Here they must (each waits up to 1 s for the
    # other to start). Short tasks first: leakguard queues up to 8 tasks per worker once
    # it has seen short ones (and, since b05f4cc, 2 on a fresh pool).
    pool = make(2)
    warm = [list(pool.imap(tasks.square, range(300))) for _ in range(2)]
    met = pool.starmap(tasks.rendezvous, [(str(tmp), 2, 0), (str(tmp), 2, 1)], chunksize=1)
    pool.close()
    pool.join()
    return (len(warm), met)


def endless(stop: threading.Event, state: dict[str, bool]) -> Iterator[int]:
    """An input without end (until ``stop``); ``state["closed"]`` says the generator was closed."""
    try:
        i = 0
        while not stop.is_set():
            yield i
            i += 1
    finally:
        state["closed"] = True


@case()
def terminate_stops_reading_the_imap_input(make: MakePool, tmp: Path) -> Outcome:
    pool = make(2)
    stop = threading.Event()
    state = {"closed": False}
    try:
        it = pool.imap(tasks.square, endless(stop, state))
        first = [next(it) for _ in range(5)]
        pool.terminate()
        pool.join()
        # multiprocessing's task handler stops at terminate(), dropping (so closing) the input;
        # leakguard's feeder thread read it on forever, failing each item, before b05f4cc
        closed = True
        try:
            wait_for(lambda: state["closed"], timeout=1, what="the input to be closed")
        except AssertionError:
            closed = False
    finally:
        stop.set()  # whatever happened, nothing reads the input after this test
    return (first, closed)


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES)
def test_same_outcome(case: Case, make_pools: Callable[[str], MakePool], tmp_path: Path) -> None:
    outcomes = {}
    for impl in IMPLS:
        folder = tmp_path / impl
        folder.mkdir()
        outcomes[impl] = case(make_pools(impl), folder)
    assert outcomes["leakguard"] == outcomes["multiprocessing"]


# ---------------------------------------------------------------------------- leakguard alone
# multiprocessing hangs in each of these: the test shows that leakguard does not.


@pytest.fixture
def lg_pool(start_method: str) -> Iterator[Callable[..., leakguard.Pool]]:
    made: list[leakguard.Pool] = []

    def make(processes: int = 2, **kw: Any) -> leakguard.Pool:
        pool = leakguard.Pool(processes, start_method=start_method, **kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.terminate()


@pytest.mark.timeout(30)
def test_work_pending_at_terminate_fails(lg_pool: Callable[..., leakguard.Pool], tmp_path: Path) -> None:
    # multiprocessing: get() on work that was running or queued at terminate() never returns.
    pool = lg_pool(2)
    never = str(tmp_path / "never")
    running = [pool.apply_async(tasks.wait_for_file, (never,)) for _ in range(2)]
    queued = pool.map_async(tasks.square, range(4))
    fed = pool.imap(tasks.wait_for_file, (never for _ in range(20)))  # read by a thread of the pool
    pool.terminate()
    waiting: list[leakguard.ApplyResult[Any]] = [*running, queued]
    for result in waiting:
        with pytest.raises(leakguard.PoolClosedError):
            result.get(timeout=10)
    # every item fails (none hangs), then the iterator ends
    assert drain(fed, describe=type) == [leakguard.PoolClosedError] * 20


@pytest.mark.timeout(30)
def test_an_initializer_error_fails_later_tasks(lg_pool: Callable[..., leakguard.Pool]) -> None:
    # multiprocessing restarts the workers whose initializer raised, forever: map() hangs.
    pool = lg_pool(2, initializer=tasks.fail_to_initialize, initargs=("no config",))
    with pytest.raises(RuntimeError):  # the pool knows its initializer failed once this fails
        pool.apply(tasks.square, (1,))
    for call in (lambda: pool.map(tasks.square, range(4)), lambda: pool.apply(tasks.square, (2,))):
        with pytest.raises(RuntimeError) as info:
            call()
        assert type(info.value) is RuntimeError
        assert info.value.args == ("initializer failed", "no config")
    pool.close()
    pool.join()


@pytest.mark.timeout(30)
def test_an_initializer_error_fails_the_tasks_already_sent(
    lg_pool: Callable[..., leakguard.Pool], tmp_path: Path
) -> None:
    # The initializer fails only once the gate opens, so the task is surely in the
    # worker's hands by then. It never started: it should fail with the initializer's
    # error, as every later task does, not as if its worker had crashed running it.
    gate = tmp_path / "gate"
    pool = lg_pool(2, initializer=tasks.fail_to_initialize_at, initargs=(str(gate), "no config"))
    sent = pool.apply_async(tasks.square, (2,))
    gate.touch()
    failure = outcome(lambda: sent.get(timeout=20))
    pool.close()
    pool.join()
    assert failure == ("raised", "builtins.RuntimeError", ("initializer failed", "no config"))


@pytest.mark.timeout(30)
def test_an_exception_that_cannot_be_rebuilt_fails_its_task(
    lg_pool: Callable[..., leakguard.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # multiprocessing: unpickling the error kills the pool's result thread; get() hangs,
    # and terminate() then raises AssertionError.
    # A forked worker inherits copyreg's table: once this process has imported dask's
    # distributed, tblib's reducer for every exception class there rebuilds any of them.
    monkeypatch.delitem(copyreg.dispatch_table, tasks.NeedsKeywordError, raising=False)
    pool = lg_pool(2)
    with pytest.raises(Exception, match="NeedsKeywordError"):
        pool.apply(tasks.raise_needs_keyword, (4,))
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.join()


@pytest.mark.timeout(30)
def test_a_task_error_carries_the_workers_traceback_as_multiprocessing_does(
    lg_pool: Callable[..., leakguard.Pool],
) -> None:
    pool = lg_pool(1)
    with pytest.raises(tasks.CustomError) as info:
        pool.apply(tasks.raise_custom, (5,))
    cause: Any = info.value.__cause__
    # CPython's Pool tests check the exact type of the cause, and that it holds the worker's lines.
    assert type(cause) is multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]
    assert 'raise CustomError(code, f"custom failure {code}")' in cause.tb
    pool.close()
    pool.join()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", [float("inf"), 1e7, 1e300])
def test_a_task_timeout_too_far_to_wait_for_is_no_limit(lg_pool: Callable[..., leakguard.Pool], limit: float) -> None:
    # Waiting on a deadline this far away raised OverflowError on the pool's I/O thread:
    # the first task failed and the pool was dead.
    pool = lg_pool(1, task_timeout=limit)
    assert pool.apply(tasks.square, (3,)) == 9
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.join()


def _raise(exc: BaseException) -> Callable[[object], None]:
    def callback(_: object) -> None:
        raise exc

    return callback


@pytest.mark.timeout(60)
def test_a_callback_that_raises_system_exit_is_reported_and_its_result_settles(
    lg_pool: Callable[..., leakguard.Pool], capfd: pytest.CaptureFixture[str]
) -> None:
    # Such a callback ended the pool's I/O thread: get() hung, and the next submit said
    # the pool was "closed". (multiprocessing: its result thread dies; get() hangs too.)
    pool = lg_pool(2)
    done = pool.apply_async(tasks.square, (3,), callback=_raise(SystemExit(3)))
    failed = pool.apply_async(tasks.raise_custom, (4,), error_callback=_raise(KeyboardInterrupt()))
    mapped = pool.map_async(tasks.square, range(4), callback=_raise(GeneratorExit()))
    assert done.get(timeout=20) == 9
    with pytest.raises(tasks.CustomError):
        failed.get(timeout=20)
    assert mapped.get(timeout=20) == [0, 1, 4, 9]
    assert pool.apply(tasks.square, (5,)) == 25  # the pool goes on
    err = capfd.readouterr().err
    for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        assert f"Exception in a leakguard.Pool callback ({name})" in err
    pool.close()
    pool.join()


@pytest.mark.timeout(60)
def test_a_blocking_call_from_a_callback_raises_runtime_error(lg_pool: Callable[..., leakguard.Pool]) -> None:
    # A callback runs on the thread that delivers results: waiting there deadlocked the
    # process (multiprocessing's too). Non-blocking calls, and other pools, still work.
    pool, other = lg_pool(2), lg_pool(1)
    pending = pool.apply_async(tasks.wait_for_file, ("/nonexistent/never", 20.0))
    seen: dict[str, object] = {}

    def outcome_of(name: str, call: Callable[[], object]) -> None:
        try:
            seen[name] = call()
        except BaseException as exc:
            seen[name] = exc

    def callback(_: object) -> None:
        outcome_of("apply", lambda: pool.apply(tasks.square, (2,)))
        outcome_of("map", lambda: pool.map(tasks.square, range(3)))
        outcome_of("get", pending.get)
        outcome_of("wait", lambda: pending.wait(5))
        outcome_of("imap", lambda: next(pool.imap(tasks.square, range(3))))
        outcome_of("poll", pending.ready)
        outcome_of("async", lambda: pool.apply_async(tasks.square, (6,)))
        outcome_of("other pool", lambda: other.apply(tasks.square, (7,)))

    assert pool.apply_async(tasks.square, (1,), callback=callback).get(timeout=30) == 1
    for name in ("apply", "map", "get", "wait", "imap"):
        assert type(seen[name]) is RuntimeError, (name, seen[name])
        assert "callback of the same pool" in str(seen[name])
    assert seen["poll"] is False
    assert isinstance(seen["async"], ApplyResult)
    assert seen["async"].get(timeout=20) == 36
    assert seen["other pool"] == 49
    assert pool.apply(tasks.square, (8,)) == 64
    pool.terminate()


@pytest.mark.timeout(60)
def test_a_result_that_raises_system_exit_when_rebuilt_fails_its_task_alone(
    lg_pool: Callable[..., leakguard.Pool],
) -> None:
    # SystemExit while unpickling a result ended the I/O thread: get() hung, and the pool
    # said it was closed. Now the task fails as a result that cannot travel does.
    pool = lg_pool(2)
    with pytest.raises(MaybeEncodingError, match=r"apply\(exits_when_rebuilt\).*SystemExit\(3\)") as info:
        pool.apply(tasks.exits_when_rebuilt)
    assert type(info.value.__cause__) is SystemExit
    results = pool.map_async(tasks.exits_when_rebuilt, range(3), chunksize=1)
    with pytest.raises(MaybeEncodingError):
        results.get(timeout=20)
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.join()
