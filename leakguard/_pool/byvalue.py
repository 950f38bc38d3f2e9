"""Functions and classes that cannot travel by reference travel by value (SPEC 2.1, issue 13).

The standard pickler sends a function or a class by reference: its module and name, which
the receiver imports. That fails for what a worker cannot import: a lambda, a closure, and
everything defined in ``__main__`` (a notebook cell, stdin, ``python -c``, a script), since
workers never run the main module (processes.py). Those travel by value, with cloudpickle,
as loky (joblib's default backend) sends them. An importable module-level function keeps the
standard path, decided in a few attribute reads (``by_value``): the common case costs
about what it did.

The picklers here are the base of the pool's (wire.py): whatever a by-value function holds
(its closure, its defaults, the globals it reads) goes through the same pickler, so a
``SharedArray`` or a ``Semaphore`` captured in a closure still travels by name (their
``__reduce__``), and a large array through a block.

One ``__main__`` per worker: a function of the caller's ``__main__`` is rebuilt in the
worker on the worker's own ``__main__`` namespace, with the globals it reads set there as
the caller has them when the task is sent. So an initializer defined in ``__main__`` that
sets a global (``global MODEL; MODEL = load()``) is seen by the tasks defined beside it, as
it is with ``multiprocessing`` and a script; the names the initializer bound are the
worker's from then on, never overwritten by the caller's values (the usual ``MODEL = None``
at the top of the script). cloudpickle alone gives each unpickled function a namespace of
its own, and the initializer's globals are lost (loky#206, loky#359, cloudpickle#187).
Such a function's code is pickled once and built once per worker; what may change between
tasks (the globals it reads, its closure, its defaults) travels with every task.
Results coming back keep cloudpickle's rule (a namespace of their own): nothing a worker
sends writes into the caller's globals. A class keeps its identity both ways (cloudpickle's
class tracker): an instance of the caller's ``__main__`` class comes back as one.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import dis
import io
import itertools
import os
import pickle
import sys
import types
import weakref
from collections.abc import Collection, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any, ClassVar

import cloudpickle

__all__ = [
    "DISPATCH",
    "ByValuePickler",
    "Shipped",
    "ToWorkerPickler",
    "by_value",
    "dumps",
    "explain",
    "initializing",
    "main_namespace",
]

_FunctionType = types.FunctionType
# The modules registered with cloudpickle.register_pickle_by_value, read as they change, at the
# cost of a truth test (its public reader copies the set: a third of a fast decision). Without
# it (another cloudpickle), cloudpickle decides for every function.
_BY_VALUE_MODULES: Collection[str] = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", ("?",))


def _reduce_text_file(obj: io.TextIOWrapper) -> tuple[Any, ...]:
    # cloudpickle sends an open text file as a StringIO holding a copy of its contents: a task
    # that writes to it would write nowhere. As with pickle, an open file cannot be sent (a
    # clear error in the caller, SPEC 6); the standard streams go by name.
    for name in ("stdout", "stderr", "stdin"):
        if obj is getattr(sys, name):
            return getattr, (sys, name)
    raise TypeError(f"cannot pickle '{type(obj).__module__}.{type(obj).__qualname__}' object")


# multiprocessing's reducers (a Connection, a socket, a multiprocessing.Lock cross processes
# through them; libraries register more at import: looked up live), then cloudpickle's (code
# objects, cells, modules, ...: what a by-value function is made of), then copyreg's.
DISPATCH = collections.ChainMap(
    ForkingPickler._extra_reducers,  # type: ignore[attr-defined]
    {**cloudpickle.Pickler.dispatch_table.maps[0], io.TextIOWrapper: _reduce_text_file},
    copyreg.dispatch_table,
)


class ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles by reference what can go so, and by value (cloudpickle) the functions and
    classes that cannot. Used for what workers send back.

    A subclass with a ``reducer_override`` of its own ends it with ``return by_value(self,
    obj)``: a plain call, where ``super()`` would cost about 70 ns an object (a tiny task's
    whole pickling takes about a microsecond here).
    """

    dispatch_table = DISPATCH
    binds_main: ClassVar[bool] = False  # rebuild __main__ functions on the receiver's __main__

    def reducer_override(self, obj: Any) -> Any:
        return by_value(self, obj)

    # The C pickler's own: cloudpickle's adds a Python call to every dump (a task's), only to
    # turn a RecursionError into a PicklingError; the pool reports either to the caller.
    dump = pickle.Pickler.dump


def by_value(pickler: ByValuePickler, obj: Any) -> Any:
    """``pickler``'s reduction of ``obj``: NotImplemented (the standard path) but for a function
    or class that cannot go by reference."""
    if type(obj) is _FunctionType:
        # The fast path: a function found by its name in an imported module that is not
        # __main__ (nor registered by value) goes by reference, as pickle sends it. Any other
        # goes to cloudpickle, which decides again (a method reached through its class, say,
        # still goes by reference).
        module_name = obj.__module__
        if module_name != "__main__" and not _BY_VALUE_MODULES:
            module = sys.modules.get(module_name)
            if module is not None and getattr(module, obj.__qualname__, None) is obj:
                return NotImplemented
        if pickler.binds_main and obj.__globals__.get("__name__") == "__main__":
            return _reduce_main_function(obj)
        return _cloudpickle_reduce(pickler, obj)
    if isinstance(obj, type):
        return _cloudpickle_reduce(pickler, obj)
    return NotImplemented


_cloudpickle_reduce = cloudpickle.Pickler.reducer_override


class ToWorkerPickler(ByValuePickler):
    """Pickles what goes to a worker: a task, the initializer. A function of ``__main__``
    is rebuilt on the worker's ``__main__`` namespace."""

    binds_main = True


# ---------------------------------------------------------------------------- functions of __main__
#
# A function of the caller's __main__ travels with every task that uses it. cloudpickle would
# pickle its code object again each time (a script's task function cost about 20 us a task
# here, 20 times a reference), and the worker would build it again. Its code is pickled once
# (_Code), sent as bytes and built once per worker (_codes); what may change between tasks
# (the globals it reads, its closure, its defaults) is pickled fresh every time.

_GLOBAL_OPS = frozenset(dis.opmap[op] for op in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"))


def _code_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """The global names ``code`` and the code nested in it use, and every name they use (the
    attribute names too: ``pkg.sub`` needs ``pkg.sub`` imported)."""
    globals_ = {str(i.argval) for i in dis.get_instructions(code) if i.opcode in _GLOBAL_OPS}
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner_globals, inner_names = _code_names(const)
            globals_ |= inner_globals
            names |= inner_names
    return globals_, names


class _Code:
    """A ``__main__`` function's code object, pickled once (cloudpickle's reducer for code)."""

    __slots__ = ("blob", "globals", "names", "submodules", "token")

    def __init__(self, code: types.CodeType) -> None:
        self.token = os.urandom(8).hex()  # not secrets: its import costs a worker's start-up (issue 15)
        self.blob = dumps(code)
        globals_, self.names = _code_names(code)
        self.globals = tuple(sorted(globals_))
        self.submodules: dict[str, tuple[int, list[types.ModuleType]]] = {}

    def submodules_of(self, package: types.ModuleType) -> list[types.ModuleType]:
        """The imported submodules of ``package`` this code can reach by attribute, as
        cloudpickle finds them; looked for again when a module was imported since."""
        known = self.submodules.get(package.__name__)
        if known is None or known[0] != len(sys.modules):
            prefix = package.__name__ + "."
            found = [
                module
                for name, module in list(sys.modules.items())
                if name.startswith(prefix)
                and module is not None
                and not set(name[len(prefix) :].split(".")) - self.names
            ]
            known = self.submodules[package.__name__] = (len(sys.modules), found)
        return known[1]


_CODES: dict[int, tuple[weakref.ref[types.CodeType], _Code]] = {}  # id(code) -> (code, its _Code)


def _code_of(code: types.CodeType) -> _Code:
    entry = _CODES.get(id(code))
    if entry is not None and entry[0]() is code:
        return entry[1]
    made = _Code(code)
    key = id(code)

    def forget(_: object) -> None:  # the code is gone: its id may be another's next
        _CODES.pop(key, None)

    _CODES[key] = (weakref.ref(code, forget), made)
    return made


class _EmptyCell:
    """Stands for a closure cell with nothing in it yet."""

    def __reduce__(self) -> str:
        return "_EMPTY_CELL"


_EMPTY_CELL = _EmptyCell()


def _reduce_main_function(func: types.FunctionType) -> tuple[Any, ...]:
    code = _code_of(func.__code__)
    namespace = func.__globals__
    values = {name: namespace[name] for name in code.globals if name in namespace} if code.globals else {}
    cells = None if func.__closure__ is None else tuple(_contents(cell) for cell in func.__closure__)
    modules = []
    for value in itertools.chain(values.values(), cells) if cells else values.values():
        if type(value) is types.ModuleType and getattr(value, "__package__", None):
            modules += code.submodules_of(value)
    # What refers back to the function (itself, for recursion) is in the state, set once the
    # function exists, as cloudpickle does. Empty is None: a container costs a reducer_override.
    state = (
        func.__qualname__,
        func.__module__,
        func.__doc__,
        func.__defaults__,
        func.__kwdefaults__,
        func.__annotations__ or None,
        func.__dict__ or None,
        values or None,
        cells,
        modules or None,
    )
    made = (code.token, code.blob, func.__name__, None if cells is None else len(cells))
    return (_main_function, made, state, None, None, _set_main_function_state)


def _contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not assigned yet
        return _EMPTY_CELL


def dumps(obj: Any, *, to_worker: bool = False) -> bytes:
    buf = io.BytesIO()
    (ToWorkerPickler if to_worker else ByValuePickler)(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


# ---------------------------------------------------------------------------- the receiver's side


def main_namespace() -> dict[str, Any]:
    """This process's ``__main__`` namespace, where the caller's ``__main__`` functions are rebuilt."""
    return sys.modules["__main__"].__dict__


_codes: dict[str, types.CodeType] = {}  # the code of the caller's __main__ functions, by _Code.token


def _main_function(token: str, blob: bytes, name: str, cells: int | None) -> types.FunctionType:
    """A function of the caller's ``__main__``, on this process's ``__main__`` namespace."""
    code = _codes.get(token)
    if code is None:
        code = _codes[token] = pickle.loads(blob)  # noqa: S301 - what our own pool sent us
    closure = None if cells is None else tuple(types.CellType() for _ in range(cells))
    return types.FunctionType(code, main_namespace(), name, None, closure)


def _set_main_function_state(func: types.FunctionType, state: tuple[Any, ...]) -> None:
    """Sets the globals the function reads, as the caller has them, but what this worker's
    initializer bound in ``__main__``, which stays; then its closure and attributes."""
    qualname, module, doc, defaults, kwdefaults, annotations, attributes, values, cells, _ = state
    if values:
        namespace = func.__globals__
        kept = {name: namespace[name] for name in _initialized if name in namespace}
        namespace.update(values)
        namespace.update(kept)
    if cells is not None:
        for cell, value in zip(func.__closure__ or (), cells, strict=True):
            if value is not _EMPTY_CELL:
                cell.cell_contents = value
    func.__qualname__ = qualname
    func.__module__ = module
    func.__doc__ = doc
    func.__defaults__ = defaults
    func.__kwdefaults__ = kwdefaults
    if annotations:
        func.__annotations__ = annotations
    if attributes:
        func.__dict__.update(attributes)


_initialized: set[str] = set()  # names of __main__ this worker's initializer bound


@contextlib.contextmanager
def initializing() -> Iterator[None]:
    """Around a worker's initializer: the ``__main__`` names it binds stay the worker's."""
    namespace = main_namespace()
    before = dict(namespace)
    missing = object()
    try:
        yield
    finally:
        _initialized.update(name for name, value in namespace.items() if before.get(name, missing) is not value)


def explain(exc: BaseException) -> None:
    """Name the likely cause and the fix on an error raised as a worker rebuilt what it was
    sent (a note: its type and message stay). What failed went by reference: by name, to be
    imported here. Python 3.10 has no notes: the error is left as it is."""
    add_note = getattr(exc, "add_note", None)
    if add_note is None or not isinstance(exc, (ImportError, AttributeError)):
        return
    if isinstance(exc, AttributeError) and "on <module '__main__'" in str(exc):
        add_note(
            "leakguard: it was sent by name from the caller's __main__, which workers do not run. Its type "
            "pickles it by name (a functools.lru_cache wrapper does), so it could not travel by value as the "
            "functions and classes of __main__ do. Define it in a module the workers can import."
        )
    else:
        add_note(
            "leakguard: a function, class or module sent by reference (by its module and name) could not be "
            "imported in the worker. Make its module importable there (a file on sys.path as the pool starts, "
            "not one made at run time), or send that module's functions by value: "
            "cloudpickle.register_pickle_by_value(module)."
        )


class Shipped:
    """A value a worker needs from its start (the initializer and its arguments).

    Under fork the worker inherits it as it is. Under spawn and forkserver it is pickled
    by value (``ToWorkerPickler``) with the worker's process object, and rebuilt only when
    the worker asks for it (``value()``): a failure to rebuild it (a module the worker
    cannot import) is then the initializer's failure, reported with its cause, and not a
    worker that dies as it starts.
    """

    def __init__(self, value: Any) -> None:
        self._value = value
        self._data: bytes | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_shipped, (dumps(self._value, to_worker=True),))

    def value(self) -> Any:
        if self._data is not None:
            self._value = pickle.loads(self._data)  # noqa: S301 - what our own pool sent us
            self._data = None
        return self._value


def _shipped(data: bytes) -> Shipped:
    shipped = Shipped(None)
    shipped._data = data
    return shipped
