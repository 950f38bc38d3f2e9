"""The sharing program of tests/test_live_owner.py, run as a script (``python -W error
tests/live_owner_sharing.py``): it creates blocks, an array and a semaphore; shares them
with a spawned child (slices of the array, the block, the semaphore: all pickled by name)
and with a plain subprocess (a pickled slice on its stdin); frees everything; prints
"shared and freed".

A script rather than a function started with ``python_main``: a spy on
``resource_tracker.register`` must be in place in the spawned child before it unpickles its
arguments, and spawn re-imports a script (as ``__mp_main__``) before anything else.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import subprocess
import sys
from collections.abc import Sized
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection

import numpy as np

import leakguard

registered: list[tuple[Sized, str]] = []
_register = resource_tracker.register


def spy(name: Sized, rtype: str) -> None:
    registered.append((name, rtype))
    _register(name, rtype)


def work(
    conn: Connection, piece: leakguard.SharedArray, block: leakguard.SharedMemory, sem: leakguard.Semaphore
) -> None:
    piece[:] = np.arange(piece.size)
    block.buf[:4] = b"done"
    sem.release()
    conn.send(registered)
    conn.close()


def main() -> None:
    a = leakguard.shared_array((1000,), dtype=np.int64, fill=-1)
    block = leakguard.SharedMemory(create=True, size=4096)
    sem = leakguard.Semaphore(0)
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    p = ctx.Process(target=work, args=(there, a[100:200], block, sem))
    p.start()
    child_registered = here.recv()
    p.join()
    assert p.exitcode == 0, p.exitcode
    assert sem.acquire(timeout=10)
    assert (a[100:200] == np.arange(100)).all()
    assert (a[:100] == -1).all()
    assert (a[200:] == -1).all()
    assert bytes(block.buf[:4]) == b"done"

    data = pickle.dumps(a[::10], protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 400, len(data)
    # Inline on purpose: a plain program that never imports leakguard itself (unpickling does).
    code = "import pickle, sys; piece = pickle.loads(sys.stdin.buffer.read()); piece[:] = 7"
    subprocess.run([sys.executable, "-W", "error", "-c", code], input=data, check=True, timeout=60)
    assert (a[::10] == 7).all()
    assert (a[1::10] != 7).all()

    here.close()
    leakguard.free(a)
    block.unlink()
    block.close()
    sem.unlink()
    del a, sem
    assert registered == [], (registered, child_registered)
    assert child_registered == [], (registered, child_registered)
    print("shared and freed")


if __name__ in ("__main__", "__mp_main__"):  # the script, and its re-import in the spawned child
    resource_tracker.register = spy

if __name__ == "__main__":
    main()
