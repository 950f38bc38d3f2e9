"""Child programs of tests/test_api.py, each a function its test starts with ``python_main``
or ``run_main`` (tests/helpers.py); arguments arrive as strings (pickles as hex)."""

from __future__ import annotations

import json
import pickle
import sys

import leakguard
from leakguard._os import ipc as _ipc


def attach_and_write(name: str) -> None:
    """Attach to block ``name``, print its first three bytes, write an "x" over the first."""
    s = leakguard.SharedMemory(name)
    print(bytes(s.buf[:3]).decode())
    s.buf[0] = ord("x")
    s.close()


def unpickle_crafted(crafted: str, name: str) -> None:
    """Unpickle each of ``crafted`` (JSON: case -> pickle as hex), then attach to ``name``
    with a NUL in it; print what each did."""
    for case, data in json.loads(crafted).items():
        try:
            pickle.loads(bytes.fromhex(data))
        except (TypeError, ValueError) as exc:
            print(case, type(exc).__name__, exc)
        else:
            print(case, "accepted")
    try:
        _ipc.shm_attach(name + "\0x")
    except ValueError as exc:
        print("ipc", type(exc).__name__)


def free_a_view(view_pickle: str) -> None:
    """Try to free a view of another process's array (a pickle, hex); print the refusal."""
    view = pickle.loads(bytes.fromhex(view_pickle))
    try:
        leakguard.free(view)
    except leakguard.NotOwnerError as exc:
        print("refused", isinstance(exc, PermissionError), exc.name, str(exc).split()[0])


def release_twice(sem_pickle: str) -> None:
    """Release another process's semaphore (a pickle, hex) twice, say so, wait for end of input."""
    s = pickle.loads(bytes.fromhex(sem_pickle))
    s.release()
    s.release()
    print("released", flush=True)
    sys.stdin.read()


def unlink_both(shm_name: str, sem_pickle: str) -> None:
    """Unlink another process's block ``shm_name`` and semaphore (a pickle, hex)."""
    for handle in (leakguard.SharedMemory(shm_name), pickle.loads(bytes.fromhex(sem_pickle))):
        handle.unlink()
        print("unlinked")
