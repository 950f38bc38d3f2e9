"""Programs that run in a mount namespace whose /dev/shm is a 64 MiB tmpfs, as Docker gives a
container by default (tests/private_shm.py ``in_small_shm``); each prints one JSON line last.

``job()``: a 400 MB SharedArray mapped by a 2-worker pool, plain 100 MB arrays both ways and
results of 50 MB, with /dev/shm sampled all along and the bytes on the pool's pipes counted.
``killed()``: the same kind of job, SIGKILLed as a whole set of processes (pool owner,
workers, guardian) while it holds all of that, with nothing run afterwards: the kernel must
free everything, Shmem in /proc/meminfo back to where it was before the job within 2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

import leakguard
from leakguard._pool import wire
from stress.observe import SHMEM_NOISE, all_pids, memfd_inodes, shmem_bytes
from tests.helpers import block_name, descendants, main_code, memfds_held, memfds_mapped, process_gone

SHM = "/dev/shm"
MB = 1_000_000
SHARED_BYTES = 400 * MB
PLAIN_BYTES = 100 * MB
RESULT_BYTES = 50 * MB
SLICES = 8

Array = npt.NDArray[np.float64]


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# ---------------------------------------------------------------------------- tasks (workers import them)


def double_slice(part: Array) -> float:
    """Double a slice of the shared array in place (the parent sees it: zero copies); its sum."""
    part *= 2.0
    return float(part.sum())


def plus_one(x: Array) -> Array:
    return x + 1.0


def full(args: tuple[int, float]) -> Array:
    n, value = args
    return np.full(n, value)


def hold_then_sleep(args: tuple[Array, Array]) -> None:
    """Keep a slice of the shared array and a plain argument mapped, and wait to be killed."""
    part, big = args
    part[:1] = big[:1]
    time.sleep(600)


# ---------------------------------------------------------------------------- what is seen from outside


def shm_state() -> tuple[int, list[str]]:
    """(bytes used in /dev/shm, its entries)."""
    st = os.statvfs(SHM)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, sorted(os.listdir(SHM))


class Sampler:
    """Samples /dev/shm every 2 ms on a thread: the most it ever used, every entry it ever had."""

    def __init__(self) -> None:
        self.most, entries = shm_state()
        self.entries = set(entries)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            used, entries = shm_state()
            self.most = max(self.most, used)
            self.entries.update(entries)
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Counted:
    """Counts the bytes of every frame the pool's process writes (tasks and answers to workers)
    and reads (results) on the pool's pipes, by wrapping the wire's two entry points."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._frame = wire.frame
        self._receive = wire.receive

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        def frame(kind: int, tid: int, body: bytes) -> bytes:
            data = self._frame(kind, tid, body)
            self.sent += len(data)
            return data

        def receive(channel: int | socket.socket, size: int = wire.SMALL_READ) -> tuple[bytes, list[int]]:
            data, fds = self._receive(channel, size)
            self.received += len(data)
            return data, fds

        wire.frame, wire.receive = frame, receive
        try:
            yield
        finally:
            wire.frame, wire.receive = self._frame, self._receive


def read_bytes(pids: list[int]) -> int:
    """Bytes these processes have read with read(2) and the like (rchar in /proc/PID/io):
    what a worker reads from its task pipe counts here."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    total += int(line.split()[1])
    return total


def pool_processes() -> list[int]:
    """This process's descendants: the workers, the guardian, the standard library's helpers."""
    return [p.pid for p in psutil.Process().children(recursive=True)]


# ---------------------------------------------------------------------------- the job


def job(start_method: str) -> None:
    result: dict[str, Any] = {"shm_total": os.statvfs(SHM).f_blocks * os.statvfs(SHM).f_frsize}
    # The limit is real here: a named block of the shared array's size does not fit.
    try:
        leakguard.shared_array(SHARED_BYTES // 8, named=True)
    except leakguard.OutOfSharedMemoryError as exc:
        result["named_refused"] = exc.limit
    sampler = Sampler()
    counted = Counted()
    n = SHARED_BYTES // 8
    shared = leakguard.shared_array(n, fill=1.0)
    with counted.counting(), leakguard.Pool(2, start_method=start_method) as pool:
        pool.map(time.sleep, [0.05, 0.05], chunksize=1)  # both workers up
        workers = pool_processes()
        read_before = read_bytes(workers)
        moved = 0

        # A 400 MB SharedArray, mapped by both workers through slices: they write into it.
        step = n // SLICES
        parts = [shared[k * step : (k + 1) * step] for k in range(SLICES)]
        sums = pool.map(double_slice, parts, chunksize=1)
        result["slices_right"] = sums == [2.0 * step] * SLICES and bool((shared[::4096] == 2.0).all())
        moved += SHARED_BYTES

        # A plain 100 MB array there and back: an argument and a result.
        x = np.arange(PLAIN_BYTES // 8, dtype=np.float64)
        y = pool.apply(plus_one, (x,))
        result["plain_right"] = bool(isinstance(y, leakguard.SharedArray) and np.array_equal(y, x + 1.0))
        result["plain_anonymous"] = isinstance(y, leakguard.SharedArray) and y.shm_name is None and bool(block_name(y))
        moved += 2 * PLAIN_BYTES
        leakguard.free(y)
        del x, y

        # Results of 50 MB.
        values = [1.0, 2.0]
        results = pool.map(full, [(RESULT_BYTES // 8, v) for v in values], chunksize=1)
        result["results_right"] = all(
            isinstance(r, leakguard.SharedArray) and r.shape == (RESULT_BYTES // 8,) and bool((r == v).all())
            for r, v in zip(results, values, strict=True)
        )
        moved += len(values) * RESULT_BYTES
        for r in results:
            leakguard.free(r)
        del results, r

        result["worker_reads"] = read_bytes(workers) - read_before
        pool.close()
        pool.join()
    result["moved"] = moved
    result["pipe_sent"] = counted.sent
    result["pipe_received"] = counted.received
    leakguard.free(shared)
    del shared, parts
    sampler.stop()
    result["shm_most"] = sampler.most
    result["shm_entries"] = sorted(sampler.entries)
    result["samples"] = sampler.samples
    result["shm_after"] = shm_state()
    me = [os.getpid()]
    result["left_here"] = sorted(memfds_held(me) | memfds_mapped(me))
    deadline = time.monotonic() + 10
    while descendants() and time.monotonic() < deadline:
        time.sleep(0.01)  # the poll interval of a wait with a deadline
    result["left_processes"] = [p.pid for p in descendants()]
    say(**result)


# ---------------------------------------------------------------------------- killed as a whole


def holding_job(start_method: str) -> None:
    """The job ``killed()`` kills: it makes the same arrays, keeps a 100 MB argument and a slice
    of the 400 MB array mapped in each worker, keeps two 50 MB results, says so, and waits."""
    n = SHARED_BYTES // 8
    shared = leakguard.shared_array(n, fill=1.0)
    pool = leakguard.Pool(2, start_method=start_method)
    kept = pool.map(full, [(RESULT_BYTES // 8, 1.0), (RESULT_BYTES // 8, 2.0)], chunksize=1)
    assert all(isinstance(r, leakguard.SharedArray) for r in kept)
    big = np.ones(PLAIN_BYTES // 8)
    half = n // 2
    waiting = [pool.apply_async(hold_then_sleep, ((shared[k * half : (k + 1) * half], big),)) for k in range(2)]
    say(pid=os.getpid(), kept=[block_name(r) for r in kept], shared=block_name(shared))
    for w in waiting:
        w.wait()


def killed(start_method: str) -> None:
    baseline = shmem_bytes()
    shm_before = shm_state()
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", main_code(holding_job), start_method],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    everyone = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    pids = [p.pid for p in everyone]
    # Every worker has started its task: both map their slice and the 100 MB argument.
    deadline = time.monotonic() + 60
    while len({name for name in memfds_mapped(pids[1:])}) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the poll interval of a wait with a deadline
    held = shmem_bytes()
    inodes = memfd_inodes(pids)
    blocks = sum(inodes.values())
    # All at once, as a cgroup's kill: stopped first, so that none sees another die and acts.
    for p in everyone:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGSTOP)
    fault = time.monotonic()
    for p in everyone:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    while not all(process_gone(p) for p in everyone):
        time.sleep(0.001)  # the poll interval of a wait with a deadline (the caller's timeout)
    gone_after = time.monotonic() - fault
    # Shmem back to its baseline: it falls by what the blocks held (less others' noise).
    freed_after = None
    while time.monotonic() - fault < 10:
        if held - shmem_bytes() >= blocks - SHMEM_NOISE:
            freed_after = time.monotonic() - fault
            break
        time.sleep(0.005)  # the poll interval of a wait with a deadline
    survivors = set(memfd_inodes(all_pids())) & set(inodes)
    say(
        ready=ready,
        processes=len(everyone),
        baseline=baseline,
        held=held,
        blocks=blocks,
        after=shmem_bytes(),
        gone_after=gone_after,
        freed_after=freed_after,
        inodes=len(inodes),
        survivors=sorted(survivors),
        shm_before=shm_before,
        shm_after=shm_state(),
        journals=sorted(os.listdir(os.environ["LEAKGUARD_DIR"])),
    )


def main(what: str, start_method: str) -> None:
    {"job": job, "killed": killed}[what](start_method)
