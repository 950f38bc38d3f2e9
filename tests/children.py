"""Child processes for the crash, liveness and concurrency tests.

``owners()`` starts owner processes that create blocks, arrays and semaphores filled with
known data, report them, and then wait for commands on stdin ("check", "exit", "raise",
"_exit", "segv"; end of input means a normal exit). ``child_main()`` starts a function of a
module under tests/, ``child()`` any script. All reap every process they start, whatever the
test does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import posix_ipc

import leakguard
from leakguard._os.names import posix_name
from tests.helpers import entry_of, finish, kill_group, python, python_main, read_line

OWNER = r"""
import faulthandler, hashlib, json, os, resource, sys
import numpy as np
import posix_ipc
import leakguard
from leakguard._os.names import posix_name

spec = json.loads(os.environ["LG_OWNER_SPEC"])
rng = np.random.default_rng(spec["seed"])
blocks = []  # (name, SharedMemory)
for size in spec["blocks"]:
    shm = leakguard.SharedMemory(create=True, size=size)
    shm.buf[:] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    blocks.append((shm.name, shm))
arrays = []  # (name, SharedArray)
for n in spec["arrays"]:
    a = leakguard.shared_array(n, dtype=np.float64, named=True)
    a[:] = rng.standard_normal(n)
    arrays.append((a.shm_name, a))
sems = [(leakguard.Semaphore(value), value) for value in spec["sems"]]


def digest(data):
    return hashlib.sha256(data).hexdigest()


def contents():
    return [(name, bytes(shm.buf)) for name, shm in blocks] + [(name, a.tobytes()) for name, a in arrays]


expected = {name: digest(data) for name, data in contents()}
objects = [{"kind": "shm", "name": n, "size": len(d), "digest": expected[n]} for n, d in contents()]
objects += [{"kind": "sem", "name": s.name, "size": 0, "value": v} for s, v in sems]
print(json.dumps({"pid": os.getpid(), "objects": objects}), flush=True)


def check():
    problems = []
    for name, data in contents():
        if digest(data) != expected[name]:
            problems.append(f"{name}: the data in this process's mapping changed")
        try:
            again = leakguard.SharedMemory(name)
        except FileNotFoundError:
            problems.append(f"{name}: the name no longer opens")
            continue
        if digest(again.buf) != expected[name]:
            problems.append(f"{name}: a fresh mapping by name shows other data")
        again.close()
    for sem, value in sems:
        if sem.get_value() != value:
            problems.append(f"{sem.name}: value {sem.get_value()}, expected {value}")
        try:
            other = posix_ipc.Semaphore(posix_name(sem.name))
        except posix_ipc.ExistentialError:
            problems.append(f"{sem.name}: the name no longer opens")
            continue
        other.release()
        same = sem.get_value() == value + 1
        sem.acquire(block=False)
        other.close()
        if not same:
            problems.append(f"{sem.name}: the name opens another semaphore than the one held")
    return problems


for line in sys.stdin:
    command = line.strip()
    if command == "check":
        print(json.dumps(check()), flush=True)
    elif command == "exit":
        sys.exit(0)
    elif command == "raise":
        raise RuntimeError("the owner's job failed")
    elif command == "_exit":
        os._exit(3)
    elif command == "segv":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        faulthandler._sigsegv()
"""


@dataclass(frozen=True)
class Obj:
    """One object an owner created: kind, name (``lg_...``, as users see it), journaled size."""

    kind: str
    name: str
    size: int
    digest: str | None = None
    value: int | None = None

    @property
    def entry(self) -> str:
        """Its name in /dev/shm."""
        return entry_of(self.kind, self.name)


@dataclass
class Owner:
    proc: subprocess.Popen[str]
    pid: int
    objects: list[Obj] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    @property
    def entries(self) -> set[str]:
        return {o.entry for o in self.objects}

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def check(self) -> list[str]:
        """The owner's own verdict on every object it holds: [] when all are intact."""
        self.send("check")
        problems: list[str] = json.loads(read_line(self.proc))
        return problems

    def finish(self) -> tuple[int, str, str]:
        """End of input: the owner exits normally. Returns (code, stdout, stderr)."""
        return finish(self.proc)

    def kill(self) -> int:
        """SIGKILL the owner's whole process group; returns its exit status."""
        return kill_group(self.proc, signal.SIGKILL)


def check_from_here(owner: Owner) -> list[str]:
    """Attach to each of the owner's objects from this process and compare with what it reported."""
    problems = []
    for obj in owner.objects:
        if obj.kind == "shm":
            try:
                block = leakguard.SharedMemory(obj.name)
            except FileNotFoundError:
                problems.append(f"{obj.name}: cannot be attached")
                continue
            if hashlib.sha256(block.buf).hexdigest() != obj.digest:
                problems.append(f"{obj.name}: data differs from what the owner wrote")
            block.close()
        else:
            try:
                sem = posix_ipc.Semaphore(posix_name(obj.name))
            except posix_ipc.ExistentialError:
                problems.append(f"{obj.name}: cannot be opened")
                continue
            if sem.value != obj.value:
                problems.append(f"{obj.name}: value {sem.value}, expected {obj.value}")
            sem.close()
    return problems


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill the child's process group if the child still runs; reap it and close its pipes."""
    if proc.poll() is None:
        kill_group(proc)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def child(code: str, env: dict[str, str] | None = None, **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """``python -W error -c code`` in its own session, reaped on the way out."""
    proc = python(code, env=env, **kw)
    try:
        yield proc
    finally:
        reap(proc)


@contextlib.contextmanager
def child_main(
    main: Callable[..., object], *args: str, env: dict[str, str] | None = None, **kw: Any
) -> Iterator[subprocess.Popen[str]]:
    """A child that runs ``main(*args)`` (tests/helpers.py ``python_main``), reaped on the way out."""
    proc = python_main(main, *args, env=env, **kw)
    try:
        yield proc
    finally:
        reap(proc)


@dataclass(frozen=True)
class Spec:
    """What one owner creates: block sizes, float64 array lengths, semaphore values."""

    blocks: Sequence[int] = ()
    arrays: Sequence[int] = ()
    sems: Sequence[int] = ()
    seed: int = 0


@contextlib.contextmanager
def owners(*specs: Spec, env: dict[str, str] | None = None) -> Iterator[list[Owner]]:
    """Start one owner per spec (all at once), wait until each has reported its objects."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            payload = json.dumps(
                {"blocks": list(spec.blocks), "arrays": list(spec.arrays), "sems": list(spec.sems), "seed": spec.seed}
            )
            procs.append(python(OWNER, env={**(env or {}), "LG_OWNER_SPEC": payload}))
        started = []
        for proc in procs:
            info = json.loads(read_line(proc))
            started.append(Owner(proc, info["pid"], [Obj(**o) for o in info["objects"]]))
        yield started
    finally:
        for proc in procs:
            reap(proc)


@contextlib.contextmanager
def owner(spec: Spec, env: dict[str, str] | None = None) -> Iterator[Owner]:
    with owners(spec, env=env) as (one,):
        yield one
