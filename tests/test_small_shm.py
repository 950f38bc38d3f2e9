"""SPEC 2.2 where most data jobs run: a container whose /dev/shm is Docker's default 64 MiB.

Each test runs a job in a mount namespace of its own with a 64 MiB tmpfs on /dev/shm
(tests/private_shm.py, root only; skipped elsewhere). A named block of the job's size does
not fit there; anonymous blocks are not counted against /dev/shm at all. The job maps a
400 MB SharedArray in a 2-worker pool, sends plain 100 MB arrays both ways and gets 50 MB
results: every value right, no byte of those arrays on the pool's pipes, /dev/shm never
used, nothing left after. (The same job SIGKILLed as a whole is a row of the failure
matrix: tests/test_failure_matrix.py.)

Each job holds about 1 GB at its peak: they run one after another, as pytest runs tests.
"""

from __future__ import annotations

import pytest

from tests import private_shm
from tests import small_shm_children as children

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MIB = 1 << 20


def test_a_400_mb_job_runs_through_a_64_mib_shm_with_zero_copies(start_method: str) -> None:
    result = private_shm.in_small_shm(
        children.main, "job", start_method, why="a 64 MiB /dev/shm needs a mount namespace", timeout=220
    )
    assert result["shm_total"] == 64 * MIB
    assert result["named_refused"] == "/dev/shm"  # the limit is real: a named block of 400 MB does not fit
    # Every value right: the workers' writes into the shared array are the parent's.
    assert result["slices_right"]
    assert result["plain_right"]
    assert result["plain_anonymous"]
    assert result["results_right"]
    # Zero copies: of the 700 MB moved (400 MB mapped, 100 MB each way, 2 x 50 MB back), what
    # crossed the pool's pipes is references. Counted in the parent (every frame it wrote and
    # read) and, as the kernel counts them, the bytes the workers read.
    assert result["moved"] == 700_000_000
    assert result["pipe_sent"] < MIB, result
    assert result["pipe_received"] < MIB, result
    assert result["worker_reads"] < 16 * MIB, result  # their task pipes, and any module they imported
    # /dev/shm never grew: sampled every 2 ms all along (hundreds of samples), empty throughout.
    assert result["samples"] > 100
    assert result["shm_most"] == 0
    assert result["shm_entries"] == []
    assert result["shm_after"] == [0, []]
    # Nothing left: no descriptor or mapping of a block in the job, no process of the pool.
    assert result["left_here"] == []
    assert result["left_processes"] == []
