"""SPEC 2.1, issue 13: functions from notebooks, stdin, ``-c`` and lambdas work; no main-guard trap.

What cannot travel by reference (a lambda, a closure, anything defined in ``__main__``)
travels by value (cloudpickle); an importable module-level function still goes by
reference. Workers never run the main module, under any start method: a script without
``if __name__ == "__main__":`` works once and prints once. Checked with real programs
(a script file, stdin, ``-c``), a real Jupyter kernel running a notebook, and pools in
this process; a SharedArray, a SharedMemory or a Semaphore captured by a closure still
travels by name.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import leakguard
import leakguard.joblib
from leakguard._pool import byvalue
from leakguard._pool.wire import ArgPickler
from tests import parity_tasks as tasks
from tests.helpers import kill_group, shm_entries, wait_for

PYTHON_METHODS = ("spawn", "forkserver")  # the start methods that would run __main__ again


def run_program(argv: list[str], *, stdin: str | None = None, cwd: Path | None = None, timeout: float = 90) -> Any:
    """Run ``python argv`` in its own session with warnings as errors; on a timeout (a fork
    bomb, a hang) its whole process group is killed. Returns the CompletedProcess."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", *argv],
        cwd=cwd,
        start_new_session=True,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------------------- __main__ programs

# A job as it is typed into a terminal or a notebook: no main guard, functions, a lambda, a
# closure, a partial and a class, all in __main__. Its first line counts its own runs.
PROGRAM = """
import functools, os, sys
import xml.etree.ElementTree
import leakguard
print("top level runs in", os.getpid(), flush=True)

OFFSET = 100

def add_offset(x):
    return x + OFFSET

def fib(n):  # refers to itself
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def tag(text):  # a submodule reached by attribute: imported in the worker too
    return xml.etree.ElementTree.fromstring(text).tag

def scaled(x, factor=2, *, plus=1):
    return x * factor + plus + scaled.extra

scaled.extra = 1000  # an attribute of the function

class Oops(Exception):
    pass

def fail(x):
    raise Oops(x)

def make_adder(n):
    return lambda x: x + n

class Box:
    def __init__(self, value):
        self.value = value

def box(x):
    return Box(x)

with leakguard.Pool(2, start_method=sys.argv[1]) as pool:
    print("function", pool.map(add_offset, range(3)))
    print("lambda", pool.map(lambda x: x * 10, range(3)))
    print("closure", pool.map(make_adder(5), range(3)))
    print("partial", pool.map(functools.partial(divmod, 7), [2, 3]), pool.map(functools.partial(add_offset), [1]))
    boxes = pool.map(box, range(3))
    print("class", [type(b) is Box and b.value for b in boxes])
    print("more", pool.map(fib, range(7)), pool.map(tag, ["<a/>"]), pool.map(scaled, [1]))
    try:
        pool.apply(fail, (7,))
    except Oops as exc:  # the caller's own class
        print("raised", exc.args)
    OFFSET = 1000  # the value as the caller has it when the task is sent
    print("changed", pool.apply(add_offset, (1,)))
print("done", flush=True)
"""

EXPECTED = [
    "function [100, 101, 102]",
    "lambda [0, 10, 20]",
    "closure [5, 6, 7]",
    "partial [(3, 1), (2, 1)] [101]",
    "class [0, 1, 2]",
    "more [0, 1, 1, 2, 3, 5, 8] ['a'] [1003]",
    "raised (7,)",
    "changed 1001",
    "done",
]


def check_program_output(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    runs = [line for line in lines if line.startswith("top level runs in")]
    assert len(runs) == 1, done.stdout  # workers never ran it (nor started pools of their own)
    assert lines[1:] == EXPECTED, done.stdout
    assert "bootstrapping phase" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", PYTHON_METHODS)
def test_a_script_without_the_main_guard_runs_once(method: str, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(PROGRAM)
    check_program_output(run_program([str(script), method], cwd=tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", PYTHON_METHODS)
def test_a_program_on_stdin_works(method: str) -> None:
    check_program_output(run_program(["-", method], stdin=PROGRAM))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", PYTHON_METHODS)
def test_a_program_given_with_dash_c_works(method: str) -> None:
    check_program_output(run_program(["-c", PROGRAM, method]))


# The classic initializer of a script: a global set to None at the top, bound in each worker
# by the initializer, read by the tasks. Workers do not run the script, so the functions travel
# by value; the worker's __main__ namespace keeps what the initializer bound (byvalue.py).
INITIALIZER_SCRIPT = """
import sys
import leakguard

MODEL = None
SCALE = 2

def load(name):
    global MODEL
    MODEL = {"name": name}

def predict(x):
    return (MODEL and MODEL["name"], x * SCALE)

if __name__ == "__main__":
    with leakguard.Pool(2, initializer=load, initargs=("loaded",), start_method=sys.argv[1]) as pool:
        print(pool.map(predict, range(3)))
        SCALE = 10  # the caller's change reaches the tasks; the initializer's MODEL stays
        print(pool.map(predict, range(3)))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
@pytest.mark.slow
def test_an_initializer_in_main_binds_globals_its_tasks_read(method: str, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(INITIALIZER_SCRIPT)
    done = run_program([str(script), method], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[('loaded', 0), ('loaded', 2), ('loaded', 4)]",
        "[('loaded', 0), ('loaded', 10), ('loaded', 20)]",
    ]


# ---------------------------------------------------------------------------- a Jupyter kernel

NOTEBOOK_CELLS = [
    """
    import json, os, signal
    import leakguard, leakguard.joblib
    from joblib import Parallel, delayed, parallel_config
    leakguard.joblib.register()
    MARKS = MARKS_FOLDER  # die_once leaves a mark here as it kills its worker
    METHODS = ("spawn", "forkserver")
    results = {}
    named = leakguard.SharedMemory(create=True, size=4096)  # named: must be gone after shutdown
    guard = leakguard.Semaphore(1)
    print(json.dumps({"named": [e for e in os.listdir("/dev/shm") if e.endswith((named.name, guard.name))]}))
    """,
    """
    def square(x):
        return x * x

    cube = lambda x: x ** 3

    class Point:
        def __init__(self, x):
            self.x = x

    def make_point(x):
        return Point(x)

    def die_once(x):
        # item 3 SIGKILLs its worker the first time it runs (a mark says it did); retried
        mark = os.path.join(MARKS, f"{KIND}-{METHOD}")
        if x == 3 and not os.path.exists(mark):
            open(mark, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def points(found):
        return [type(p) is Point and p.x for p in found]
    """,
    """
    KIND = "pool"
    for METHOD in METHODS:
        with leakguard.Pool(2, start_method=METHOD, retries=1) as pool:
            got = []
            pool.apply_async(make_point, (9,), callback=got.append).get(timeout=60)
            shared = leakguard.shared_array(6, fill=0.0)
            pool.map(lambda i: shared.__setitem__(i, i + 1), range(6))  # a closure over a SharedArray
            results[f"pool {METHOD}"] = {
                "function": pool.map(square, range(6)),
                "lambda": pool.map(cube, range(6)),
                "class": points(pool.map(make_point, range(3))),
                "callback": points(got),
                "shared": shared.tolist(),
                "killed": pool.map(die_once, range(6), chunksize=1),
            }
    """,
    """
    KIND = "executor"
    for METHOD in METHODS:
        with leakguard.Executor(2, start_method=METHOD, retries=1) as ex:
            results[f"executor {METHOD}"] = {
                "function": list(ex.map(square, range(6))),
                "lambda": list(ex.map(cube, range(6))),
                "class": points(ex.map(make_point, range(3))),
                "killed": list(ex.map(die_once, range(6))),
            }
    """,
    """
    KIND = "joblib"
    for METHOD in METHODS:
        with parallel_config(backend="leakguard", start_method=METHOD, retries=1):
            results[f"joblib {METHOD}"] = {
                "function": Parallel(n_jobs=2)(delayed(square)(i) for i in range(6)),
                "lambda": Parallel(n_jobs=2)(delayed(cube)(i) for i in range(6)),
                "class": points(Parallel(n_jobs=2)(delayed(make_point)(i) for i in range(3))),
                "killed": Parallel(n_jobs=2, batch_size=1)(delayed(die_once)(i) for i in range(6)),
            }
    print(json.dumps(results))
    """,
    """
    # Left open, as notebooks often leave a pool: the kernel shuts down with it running.
    kept = leakguard.Pool(2)
    print(kept.apply(cube, (2,)))
    """,
]


def _cell_json(cell: Any) -> Any:
    text = "".join(out.get("text", "") for out in cell.outputs if out.get("name") == "stdout")
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_notebook_maps_its_functions_lambdas_and_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leakguard_dir: Path
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # Jupyter's files (connection files, IPython's profile) go to the test's folder.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    marks = tmp_path / "marks"
    marks.mkdir()
    before = shm_entries()
    cells = [textwrap.dedent(code).replace("MARKS_FOLDER", repr(str(marks))) for code in NOTEBOOK_CELLS]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    # One kernel, started and shut down (gracefully: its exit releases what it owns) by execute().
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()

    named = _cell_json(notebook.cells[0])["named"]
    results = _cell_json(notebook.cells[-2])
    for method in PYTHON_METHODS:
        for kind in ("pool", "executor", "joblib"):
            got = results[f"{kind} {method}"]
            assert got["function"] == [0, 1, 4, 9, 16, 25], (kind, method)
            assert got["lambda"] == [0, 1, 8, 27, 64, 125], (kind, method)
            assert got["class"] == [0, 1, 2], (kind, method)
            assert got["killed"] == [0, 1, 2, 3, 4, 5], (kind, method)  # item 3's worker was SIGKILLed, retried
        assert results[f"pool {method}"]["callback"] == [9]
        assert results[f"pool {method}"]["shared"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert sorted(p.name for p in marks.iterdir()) == sorted(
        f"{kind}-{method}" for kind in ("pool", "executor", "joblib") for method in PYTHON_METHODS
    )
    # The kernel is gone, with a pool still open: nothing of its own, nor of its pools, is
    # left in /dev/shm. (ipykernel waits for multiprocessing's helpers to exit, which they do
    # only with the kernel, so jupyter_client SIGTERMs it: the open pool's guardian cleans up.)
    assert len(named) == 2, named  # they were in /dev/shm while the kernel ran
    # The guardian removes them once the kernel is gone: within SPEC 4's 2 s, longer on a busy machine.
    wait_for(lambda: not set(named) & shm_entries(), timeout=10, what="the guardian to remove the kernel's objects")
    wait_for(lambda: shm_entries() == before, timeout=10, what="/dev/shm to be as the kernel found it")


# ---------------------------------------------------------------------------- pools in this process


def make_adder(n: int) -> Callable[[int], int]:
    return lambda x: x + n


@pytest.mark.timeout(120)
def test_lambdas_closures_partials_and_local_classes_travel_by_value(start_method: str) -> None:
    class Local:  # a class of a function's locals: no name a worker could import
        def __init__(self, value: int) -> None:
            self.value = value

    called_back: list[Any] = []
    with leakguard.Pool(2, start_method=start_method) as pool:
        assert pool.map(lambda x: x * 2, range(4)) == [0, 2, 4, 6]
        assert pool.map(make_adder(10), range(3)) == [10, 11, 12]
        assert pool.starmap(functools.partial(lambda a, b, c: a + b + c, 100), [(1, 2)]) == [103]
        assert list(pool.imap(lambda x: -x, range(3), chunksize=1)) == [0, -1, -2]
        made = pool.map(Local, range(3))
        assert [type(m) is Local and m.value for m in made] == [0, 1, 2]  # the caller's class, not a copy
        assert pool.apply(lambda m: m.value + 1, (Local(41),)) == 42
        pool.apply_async(Local, (7,), callback=called_back.append).get(timeout=60)
        assert type(called_back[0]) is Local
        assert pool.apply(tasks.square, (5,)) == 25  # by reference, as before


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_the_executor_and_joblib_take_lambdas(start_method: str) -> None:
    from joblib import Parallel, delayed

    with leakguard.Executor(2, start_method=start_method) as ex:
        assert list(ex.map(lambda x: x + 1, range(4))) == [1, 2, 3, 4]
        assert list(ex.map(lambda x: x + 1, range(4), chunksize=2)) == [1, 2, 3, 4]
        assert ex.submit(make_adder(5), 1).result(timeout=60) == 6
    leakguard.joblib.register()
    out = Parallel(n_jobs=2, backend="leakguard", start_method=start_method)(
        delayed(lambda x: x**2)(i) for i in range(5)
    )
    assert out == [0, 1, 4, 9, 16]


@pytest.mark.timeout(120)
def test_an_initializer_and_its_arguments_travel_by_value(start_method: str) -> None:
    class Setting:
        def __init__(self, value: str) -> None:
            self.value = value

    def initializer(setting: Setting) -> None:
        os.environ["LEAKGUARD_TEST_SETTING"] = setting.value

    setting = Setting("from a local class")
    with leakguard.Pool(2, initializer=initializer, initargs=(setting,), start_method=start_method) as pool:
        assert (
            pool.map(lambda _: os.environ.get("LEAKGUARD_TEST_SETTING"), range(2), chunksize=1)
            == ["from a local class"] * 2
        )


@pytest.mark.timeout(120)
def test_shared_objects_in_a_closure_travel_by_name(start_method: str) -> None:
    # SPEC 2.2/2.3: cloudpickle pickles a closure's cells with the pool's pickler, which
    # calls their __reduce__: a SharedArray, a SharedMemory and a Semaphore go by name.
    array = leakguard.shared_array(1_000_000, fill=0.0)  # 8 MB
    memory = leakguard.SharedMemory(create=True, size=16)
    semaphore = leakguard.Semaphore(1)
    try:

        def fill(i: int) -> int:
            array[i] = i + 1
            memory.buf[i] = i + 1
            return i

        def take() -> bool:
            return semaphore.acquire(block=False)  # held by this name until released here

        body = byvalue.dumps((fill, array), to_worker=True)
        assert len(body) < 64 * 1024, len(body)  # the 8 MB array went by name, not by value
        with leakguard.Pool(2, start_method=start_method) as pool:
            assert pool.map(fill, range(4), chunksize=1) == [0, 1, 2, 3]
            assert pool.apply(take) is True
        assert array[:5].tolist() == [1.0, 2.0, 3.0, 4.0, 0.0]  # written into the caller's array
        assert bytes(memory.buf[:5]) == b"\x01\x02\x03\x04\x00"
        assert semaphore.acquire(block=False) is False  # the worker took the caller's semaphore
        semaphore.release()
    finally:
        memory.close()
        memory.unlink()
        semaphore.unlink()
        leakguard.free(array)


def test_importable_functions_still_go_by_reference() -> None:
    # The fast path: a module-level function of an importable module is pickled as pickle
    # pickles it (its module and name), never by value.
    pickler = ArgPickler(io.BytesIO(), None, leakguard.share)
    pickler.dump((tasks.square, 1, [3]))
    body = pickler.file.getvalue()
    assert b"cloudpickle" not in body
    assert pickle.loads(body)[0] is tasks.square
    pickler.reset()
    pickler.dump((lambda x: x, 1, [3]))
    assert b"cloudpickle" in pickler.file.getvalue()


@pytest.mark.timeout(120)
def test_an_open_file_is_refused_not_copied(tmp_path: Path) -> None:
    # cloudpickle would send an open file as a copy of its contents: writes to it would be
    # lost. As with pickle, it raises in the caller, and the pool stays usable.
    path = tmp_path / "log.txt"
    with path.open("w") as log, leakguard.Pool(1) as pool:
        calls: list[Callable[[], object]] = [
            lambda: pool.apply(tasks.identity, (log,)),
            lambda: pool.apply(lambda: log.write("x")),
        ]
        for call in calls:
            with pytest.raises(TypeError, match=r"cannot pickle '_io\.TextIOWrapper' object"):
                call()
        assert pool.apply(tasks.square, (3,)) == 9


@pytest.fixture
def made_up_module() -> Iterator[types.ModuleType]:
    """A module made at run time: in sys.modules here, importable nowhere else."""
    module = types.ModuleType("leakguard_made_up_module")
    exec("def triple(x):\n    return 3 * x\n", module.__dict__)
    sys.modules[module.__name__] = module
    yield module
    if module.__name__ in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.unregister_pickle_by_value(module)
    del sys.modules[module.__name__]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", PYTHON_METHODS)
def test_what_a_worker_cannot_import_fails_at_once_naming_the_fix(
    method: str, made_up_module: types.ModuleType
) -> None:
    triple = made_up_module.triple
    with leakguard.Pool(1, start_method=method) as pool:
        with pytest.raises(ModuleNotFoundError, match="leakguard_made_up_module") as raised:
            pool.apply(triple, (2,))
        if sys.version_info >= (3, 11):
            assert "register_pickle_by_value" in "\n".join(raised.value.__notes__)
        cloudpickle.register_pickle_by_value(made_up_module)  # the fix the note names
        assert pool.apply(triple, (2,)) == 6
    # An initializer the worker cannot rebuild fails the tasks with its cause at once,
    # not a worker that dies as it starts ("exited with code 1").
    cloudpickle.unregister_pickle_by_value(made_up_module)
    with (
        leakguard.Pool(1, initializer=triple, initargs=(1,), start_method=method) as pool,
        pytest.raises(ModuleNotFoundError, match="leakguard_made_up_module"),
    ):
        pool.apply(tasks.square, (2,))
