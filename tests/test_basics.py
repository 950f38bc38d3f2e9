"""The public API in one process: blocks, arrays, semaphores, ownership."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

import leakguard
from tests.helpers import lg_entries


def test_shared_array_lives_in_a_journaled_block(leakguard_dir: Path) -> None:
    a = leakguard.shared_array((100, 10), dtype=np.int32, fill=7, named=True)
    assert a.shm_name is not None
    assert a.shm_name in lg_entries()
    assert int(a.sum()) == 7000
    journals = list(leakguard_dir.glob("*.journal"))
    assert len(journals) == 1
    assert a.shm_name.encode() in journals[0].read_bytes()
    leakguard.free(a)
    assert a.shm_name not in lg_entries()


def test_slice_pickles_by_name_whatever_its_size() -> None:
    a = leakguard.shared_array(10_000_000, dtype=np.float64)  # 80 MB
    piece = a[1_000:9_000_000:3]
    data = pickle.dumps(piece, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 400
    back = pickle.loads(data)
    back[0] = 42.0
    assert a[1_000] == 42.0
    leakguard.free(a)
