"""``leakguard demo``: a job killed as a whole process group, its leftovers, and the sweep.

Everything happens in a private journal folder the demo makes and removes; the
sweep it runs looks only there, so it never touches anything it did not create.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import leakguard

_JOB = """
import sys
import numpy as np

import leakguard
import leakguard

arrays = [leakguard.shared_array((1000, 1000), dtype=np.float64, fill=i) for i in range(3)]
lock = leakguard.Lock()
slots = leakguard.Semaphore(4)
total = sum(float(a[:10].sum()) for a in arrays)
print("READY", total, flush=True)
sys.stdin.read()   # works until killed
"""


def _ours() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(("lg_", "sem.lg_")))
    except OSError:
        return []


def _say(step: int, text: str) -> None:
    print(f"[{step}/5] {text}", flush=True)


def run_demo() -> int:
    folder = tempfile.mkdtemp(prefix="leakguard-demo-")
    os.environ["LEAKGUARD_DIR"] = folder  # this process and the job share the demo's own folder
    job: subprocess.Popen[str] | None = None
    started = time.monotonic()
    try:
        _say(1, "this process shares an array of its own (a live owner the sweep must not touch)")
        mine = leakguard.share(np.arange(1_000_000, dtype=np.int64))
        before = set(_ours())

        _say(2, "a job (its own process group) creates 3 shared arrays of 8 MB, a lock and a semaphore")
        job = subprocess.Popen(
            [sys.executable, "-c", _JOB],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert job.stdout is not None
        line = job.stdout.readline()
        if not line.startswith("READY"):
            print("the job failed to start", file=sys.stderr)
            return 1

        _say(3, f"kill -9 -{job.pid}: the whole process group dies, nothing of it can clean up")
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        left = sorted(set(_ours()) - before)
        print(f"      left in /dev/shm: {len(left)} objects")
        for name in left:
            size = os.stat(os.path.join("/dev/shm", name)).st_size
            print(f"        /dev/shm/{name:<28} {size:>10,} bytes")

        _say(4, "leakguard sweep (only dead owners' objects go)")
        t0 = time.perf_counter()
        report = leakguard.sweep()
        took = (time.perf_counter() - t0) * 1000
        print(
            f"      removed {len(report.removed)} objects, {report.bytes_freed / 2**20:.1f} MiB freed, "
            f"kept {len(report.kept)} of a live owner, in {took:.1f} ms"
        )

        _say(5, "census")
        still = sorted(set(_ours()) - before)
        intact = bool(mine[-1] == 999_999) and mine.shm_name is not None and mine.shm_name[1:] in _ours()
        rows = [
            ("job's objects left in /dev/shm", str(len(still))),
            ("job's processes left", "0" if job.poll() is not None else "1"),
            ("live owner's array intact", "yes" if intact else "NO"),
            ("demo took", f"{time.monotonic() - started:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"      {key:<{width}}  {value}")
        leakguard.free(mine)
        return 0 if not still and intact else 1
    finally:
        if job is not None and job.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        with contextlib.suppress(Exception):
            leakguard.sweep()
        shutil.rmtree(folder, ignore_errors=True)
