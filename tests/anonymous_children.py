"""Child programs of tests/test_anonymous.py, each a function its test starts with
``python_main`` or ``run_main`` (tests/helpers.py); arguments arrive as strings (pickles as
hex). Each prints one JSON line per thing it was asked to do."""

from __future__ import annotations

import json
import os
import pickle
import sys
from typing import Any

import numpy as np

import leakguard
from tests.helpers import memfds_held, memfds_mapped


def _me() -> dict[str, list[str]]:
    """The anonymous blocks this process holds a descriptor of, and maps."""
    pid = [os.getpid()]
    return {"held": sorted(memfds_held(pid)), "mapped": sorted(memfds_mapped(pid))}


def attach_each(pickles: str) -> None:
    """Unpickle each of ``pickles`` (JSON: case -> pickle as hex); say what it did, and what
    this process holds and maps afterwards (nothing, for a refused one)."""
    for case, data in json.loads(pickles).items():
        result: dict[str, Any] = {"case": case}
        try:
            array = pickle.loads(bytes.fromhex(data))
        except Exception as exc:
            result.update(error=type(exc).__name__, message=str(exc), attrs=getattr(exc, "__dict__", {}))
            result["file_not_found"] = isinstance(exc, FileNotFoundError)
        else:
            result.update(error=None, values=np.asarray(array).tolist())
            del array
        result.update(_me())
        print(json.dumps(result), flush=True)


def attach_write_then_outlive(view_pickle: str) -> None:
    """Attach a view (a pickle, hex), write -1 over it, say so; on a line of input, read it
    again (its owner has freed the block meanwhile), write it again and say what it holds."""
    view = pickle.loads(bytes.fromhex(view_pickle))
    view[:] = -1
    print(json.dumps({"attached": True, **_me()}), flush=True)
    sys.stdin.readline()
    view[:] = view + 10  # still mapped here: the owner's free() only stops new attachments
    print(json.dumps({"values": view.tolist(), **_me()}), flush=True)


def hold_anonymous(n: str) -> None:
    """Make an anonymous array of ``n`` float64 (fill 1.0), print its name, size and this
    process's pid, then wait for end of input (or a SIGKILL)."""
    from tests.helpers import block_name

    a = leakguard.shared_array(int(n), fill=1.0)
    print(json.dumps({"name": block_name(a), "size": a.nbytes, "pid": os.getpid()}), flush=True)
    sys.stdin.read()
    leakguard.free(a)
