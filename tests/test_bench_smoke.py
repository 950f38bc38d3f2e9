"""The foundation benchmark runs to the end and reports every number (its speed is not tested)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import kill_group

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_foundation.py"

CREATE_FREE_ROWS = {"stdlib_shared_memory", "leakguard_shared_memory", "leakguard_shared_array"}
SWEEP_ROWS = {"floor_unlink", "orphaned_shm", "orphaned_mixed", "live_shm", "live_mixed"}
STATS = {"median", "p10", "p90", "n"}


def _positive(value: Any, where: str) -> None:
    assert isinstance(value, (int, float)), f"{where} is {value!r}, not a number"
    assert not isinstance(value, bool), f"{where} is a bool"
    assert math.isfinite(value), f"{where} is {value}"
    assert value > 0, f"{where} is {value}, not positive"


def _check_summary(summary: Any, where: str, extra: frozenset[str] = frozenset()) -> None:
    assert isinstance(summary, dict), f"{where} is not an object"
    assert set(summary) == STATS | extra, f"{where} has keys {sorted(summary)}"
    for key, value in summary.items():
        _positive(value, f"{where}.{key}")
    assert summary["p10"] <= summary["median"] <= summary["p90"], f"{where}: percentiles out of order"


def test_quick_benchmark_writes_every_number(tmp_path: Path) -> None:
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
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGTERM)  # SIGTERM: the benchmark cleans up after itself
        raise
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "ratio to anchor" in stdout

    data = json.loads(out.read_text())
    assert set(data) == {"meta", "create_free", "sweep"}
    assert data["meta"]["quick"] is True

    create_free = data["create_free"]
    assert create_free["unit"] == "us"
    assert set(create_free["rows"]) == CREATE_FREE_ROWS
    for key, summary in create_free["rows"].items():
        _check_summary(summary, f"create_free.rows.{key}")
    assert set(create_free["cpu_rows"]) == CREATE_FREE_ROWS
    for key, summary in create_free["cpu_rows"].items():
        _check_summary(summary, f"create_free.cpu_rows.{key}")
    for table in ("ratios", "cpu_ratios"):
        assert set(create_free[table]) == CREATE_FREE_ROWS - {"stdlib_shared_memory"}
        for key, summary in create_free[table].items():
            _check_summary(summary, f"create_free.{table}.{key}")
    _check_summary(create_free["tracker_cpu"], "create_free.tracker_cpu")

    sweep = data["sweep"]
    assert sweep["unit"] == "ms"
    _positive(sweep["entries"], "sweep.entries")
    assert sweep["mixed_blocks"] + sweep["mixed_semaphores"] == sweep["entries"]
    assert set(sweep["rows"]) == SWEEP_ROWS
    for key, summary in sweep["rows"].items():
        _check_summary(summary, f"sweep.rows.{key}", frozenset({"per_entry_us"}))
    assert set(sweep["ratios"]) == SWEEP_ROWS - {"floor_unlink"}
    for key, summary in sweep["ratios"].items():
        _check_summary(summary, f"sweep.ratios.{key}")

    # The benchmark's temporary folder (under TMPDIR) is gone; /dev/shm and the process
    # table are checked by the fixtures in conftest.py.
    assert not list(tmp_path.glob("leakguard-bench-*"))
