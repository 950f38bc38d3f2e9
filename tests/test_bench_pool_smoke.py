"""The pool benchmark runs to the end and reports every number (its speed is not tested)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import kill_group

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_pool.py"

WORKLOADS = {
    "shared_slices",
    "plain_slices",
    "large_results",
    "map_small",
    "imap_small",
    "apply_roundtrip",
    "startup",
}
IMPLS = {"multiprocessing", "leakguard", "executor"}
ANCHOR = "multiprocessing"
STATS = {"median", "p10", "p90", "n"}


def _positive(value: Any, where: str) -> None:
    assert isinstance(value, (int, float)), f"{where} is {value!r}, not a number"
    assert not isinstance(value, bool), f"{where} is a bool"
    assert math.isfinite(value), f"{where} is {value}"
    assert value > 0, f"{where} is {value}, not positive"


def _check_summary(summary: Any, where: str) -> None:
    assert isinstance(summary, dict), f"{where} is not an object"
    assert set(summary) == STATS, f"{where} has keys {sorted(summary)}"
    for key, value in summary.items():
        _positive(value, f"{where}.{key}")
    assert summary["p10"] <= summary["median"] <= summary["p90"], f"{where}: percentiles out of order"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_pool_benchmark_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(SCRIPT), "--quick", "--json", str(out)],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGTERM)  # SIGTERM: the benchmark stops its pools and cleans up
        raise
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "ratio to anchor" in stdout
    assert "targets met" in stdout

    data = json.loads(out.read_text())
    assert set(data) == {"meta", "workloads"}
    assert data["meta"]["quick"] is True
    assert set(data["workloads"]) == WORKLOADS
    for key, workload in data["workloads"].items():
        where = f"workloads.{key}"
        assert workload["unit"] in ("ms", "us"), f"{where}.unit is {workload['unit']!r}"
        assert isinstance(workload["title"], str)
        assert workload["title"]
        assert set(workload["rows"]) == IMPLS, f"{where}.rows has {sorted(workload['rows'])}"
        for impl, summary in workload["rows"].items():
            _check_summary(summary, f"{where}.rows.{impl}")
            assert summary["n"] == workload["rounds"], f"{where}.rows.{impl}: one time per round"
        assert set(workload["ratios"]) == IMPLS - {ANCHOR}, f"{where}.ratios has {sorted(workload['ratios'])}"
        for impl, summary in workload["ratios"].items():
            _check_summary(summary, f"{where}.ratios.{impl}")
        _positive(workload["target"]["max_ratio"], f"{where}.target.max_ratio")
        assert isinstance(workload["met"], bool), f"{where}.met is {workload['met']!r}"

    # The benchmark's temporary folder (under TMPDIR) is gone; /dev/shm and the process
    # table are checked by the benchmark itself and again by the fixtures in conftest.py.
    assert not list(tmp_path.glob("leakguard-bench-pool-*"))
