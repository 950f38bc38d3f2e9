"""Test helpers: real processes, waits with deadlines, and views of /dev/shm."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from stress.observe import OthersObjects, others_than

SHM = "/dev/shm"
ROOT = str(Path(__file__).resolve().parent.parent)
T = TypeVar("T")

# Giving a file to another user (the "not ours" cases) takes root; CI runs as root.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another uid")


def shm_entries() -> set[str]:
    """Everything in /dev/shm except hidden entries (leakguard's default journal folder is
    hidden) and, where the session shares the machine's /dev/shm, what another program holds.

    In the session's private /dev/shm (tests/private_shm.py, as root) every entry is
    the session's, and a test's comparisons of two listings are exact. On the machine's
    own /dev/shm (not root, or LEAKGUARD_TEST_REAL_SHM=1) conftest turns on
    ``leave_out_others_objects``: an entry that a process of another program maps or
    holds open when first seen is left out from then on, so that a neighbour's live
    objects (a multiprocessing pool's semaphores, its shared memory blocks, another copy
    of this suite's pools) neither appear in a test's diff nor vanish from it. An entry
    held by no one cannot be told apart from a leak of ours and stays in.
    """
    names = {n for n in os.listdir(SHM) if not n.startswith(".")}
    if _others is None:
        return names
    return names - _others.held(names)


_others: OthersObjects | None = None


def leave_out_others_objects(key: str, token: str) -> None:
    """From now on ``shm_entries()`` leaves out other programs' live objects; the
    session's processes are this one, its descendants and those with ``key=token``."""
    global _others
    _others = others_than(key, token)


def lg_entries() -> set[str]:
    """leakguard's own objects in /dev/shm (blocks ``lg_*``, semaphores ``sem.lg_*``)."""
    return {n for n in shm_entries() if n.startswith(("lg_", "sem.lg_"))}


def entry_of(kind: str, name: str) -> str:
    """The /dev/shm entry for a block's or semaphore's name (``lg_x`` -> ``lg_x`` or
    ``sem.lg_x``): the name as users see it, or as a journal keeps it (``/lg_x``)."""
    bare = name.removeprefix("/")
    return bare if kind == "shm" else f"sem.{bare}"


def in_shm(name: str) -> bool:
    """Whether ``name`` (a block's ``lg_x``, as a journal keeps it ``/lg_x``, or an entry
    such as ``sem.lg_x``) is in /dev/shm."""
    return os.path.exists(os.path.join(SHM, name.lstrip("/")))


def shm_gone(*names: str) -> bool:
    """None of ``names`` is in /dev/shm any more."""
    return not any(in_shm(n) for n in names)


def process_gone(proc: psutil.Process) -> bool:
    """The process has exited: every one of its threads (a zombie has, it awaits reaping only).

    Not the "Z" of /proc/PID/stat: a multi-threaded process's main thread shows "Z" as
    soon as it is done, while its other threads may still be exiting and holding its
    files (and so its journal lock). A pidfd turns readable once all of them are gone.
    """
    try:
        if not proc.is_running():
            return True  # reaped, or the pid is another process's now
        pidfd = os.pidfd_open(proc.pid)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], 0)
    finally:
        os.close(pidfd)
    return bool(readable) and proc.is_running()  # still that process: the pidfd spoke of it


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # the poll interval of a deadline wait, not a wait for an outcome
        delay = min(delay * 2, 0.05)


def python(
    code: str, *args: str, env: dict[str, str] | None = None, new_session: bool = True, **kw: object
) -> subprocess.Popen[str]:
    """Start ``python -c code`` (dedented) with this environment plus ``env``, in its own session."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
        env=full_env,
        start_new_session=new_session,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def main_code(main: Callable[..., object]) -> str:
    """The ``python -c`` program that calls ``main(*arguments)``, a function of a module under tests/.

    Child programs live in modules (linted and type-checked) and are started through this
    rather than ``python -m``: with ``-m`` the module would be ``__main__``, whose functions a
    pool sends by value (SPEC 2.1), where the tests mean the ordinary path, by reference.
    """
    return (
        f"import sys; sys.path.insert(0, {ROOT!r}); "
        f"from {main.__module__} import {main.__qualname__} as main; main(*sys.argv[1:])"
    )


def python_main(
    main: Callable[..., object], *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """Start a child that runs ``main(*args)`` (see ``main_code``), as ``python()`` does."""
    return python(main_code(main), *args, env=env, **kw)


def run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own session (``env`` replaces the environment) and wait for it;
    on a timeout or any error, its whole process group is killed and reaped."""
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return run([sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args], env=full_env, timeout=timeout)


def run_main(
    main: Callable[..., object], *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a child that runs ``main(*args)`` (see ``main_code``) and wait for it, as ``run_python()``."""
    return run_python(main_code(main), *args, env=env, timeout=timeout)


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The child's next stdout line (children print READY-style markers when set up)."""
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            kill_group(proc)
            raise AssertionError(f"no output from child within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        code = kill_group(proc)  # reaps it and closes its pipes
        raise AssertionError(f"child exited (code {code}) before printing; stderr:\n{err}")
    return line.strip()


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> int:
    """Signal the child's whole process group and reap the child; returns its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    returncode = proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return returncode


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    """Close the child's stdin (its cue to exit), wait, and return (code, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    return proc.returncode, out, err


def stdlib_helpers() -> set[int]:
    """The standard library's per-process helpers started for this process (they live
    as long as it does, by design): multiprocessing's resource tracker and forkserver."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(resource_tracker._resource_tracker, "_pid", None),
        getattr(forkserver._forkserver, "_forkserver_pid", None),
    }
    return {pid for pid in pids if pid is not None}


def descendants() -> list[psutil.Process]:
    """This process's live descendants, but the standard library's long-lived helpers."""
    helpers = stdlib_helpers()
    try:
        return [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in helpers and p.status() != psutil.STATUS_ZOMBIE
        ]
    except psutil.Error:
        return []


# ---------------------------------------------------------------------------- anonymous blocks
# An anonymous block (a memfd) has no entry in /dev/shm: it lives while a process holds a
# descriptor of it (the owner does: that is what others open, /proc/PID/fd/N) or maps it.
# The kernel names it ``/memfd:lg_x`` in /proc/PID/fd and /proc/PID/maps.


def block_name(array: Any) -> str | None:
    """The public name (``lg_x``) of the block a SharedArray's elements lie in, named or
    anonymous; None for any other object."""
    from leakguard._blocks.arrays import SharedArray

    return array.block_name if isinstance(array, SharedArray) else None


def _our_pids() -> list[int]:
    return [os.getpid(), *(p.pid for p in descendants())]


def memfds_held(pids: list[int] | None = None) -> set[str]:
    """Names of the anonymous blocks these processes (default: this one and its
    descendants) hold a descriptor of: the blocks others can still attach."""
    found = set()
    for pid in _our_pids() if pids is None else pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/memfd:lg_"):
                        found.add(target.removeprefix("/memfd:").removesuffix(" (deleted)"))
    return found


def memfds_mapped(pids: list[int] | None = None) -> set[str]:
    """Names of the anonymous blocks these processes map (default: this one and its descendants)."""
    found = set()
    for pid in _our_pids() if pids is None else pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                at = line.find("/memfd:lg_")
                if at >= 0:
                    found.add(line[at:].split()[0].removeprefix("/memfd:"))
    return found


def block_live(name: str) -> bool:
    """The block can still be attached: a named one is in /dev/shm, an anonymous one is held
    (a descriptor of it open) by this process or one of its descendants."""
    return in_shm(name) or name.lstrip("/") in memfds_held()


def block_gone(*names: str) -> bool:
    """None of these blocks exists any more: no name in /dev/shm, and no descriptor or mapping
    of an anonymous one in this process or its descendants (the kernel has freed it)."""
    bare = {n.lstrip("/") for n in names}
    return shm_gone(*names) and not bare & (memfds_held() | memfds_mapped())
