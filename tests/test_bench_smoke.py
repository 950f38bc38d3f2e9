"""The benchmarks run to the end and report every number (their speed is never tested)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import kill_group

# Out of the quick selection (pytest -m "not slow"): each test runs a benchmark for seconds.
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "bench_foundation.py"
POOL_SCRIPT = BENCH / "bench_pool.py"
SCALING_SCRIPT = BENCH / "bench_scaling.py"

CREATE_FREE_ROWS = {"stdlib_shared_memory", "leakguard_shared_memory", "leakguard_shared_array"}
SWEEP_ROWS = {
    "floor_unlink",
    "orphaned_shm",
    "orphaned_mixed",
    "live_shm",
    "live_shm_again",
    "live_mixed",
    "live_mixed_again",
}
WORKLOADS = {
    "shared_slices",
    "plain_slices",
    "large_results",
    "map_small",
    "imap_small",
    "apply_roundtrip",
    "startup",
}
DATA_WORKLOADS = {"shared_slices", "plain_slices", "large_results"}  # also named, and in a 64 MiB /dev/shm
IMPLS = {"multiprocessing", "leakguard", "executor"}
NAMED = "leakguard-named"
# One peer keeps the smoke test short: loky, which the test extra installs.
PEER = "loky"
PEERS = {PEER} if importlib.util.find_spec(PEER) else set()
OTHER_PEERS = {"joblib", "mpire", "billiard"}
FLOOR = "floor"  # the round trip's bare Pipe
ANCHOR = "multiprocessing"
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


def _check_workload(where: str, workload: Any, impls: set[str]) -> None:
    assert workload["unit"] in ("ms", "us"), f"{where}.unit is {workload['unit']!r}"
    assert isinstance(workload["title"], str)
    assert workload["title"]
    assert set(workload["rows"]) == impls, f"{where}.rows has {sorted(workload['rows'])}"
    for impl, summary in workload["rows"].items():
        _check_summary(summary, f"{where}.rows.{impl}")
        assert summary["n"] == workload["rounds"], f"{where}.rows.{impl}: one time per round"
    assert set(workload["ratios"]) == impls - {ANCHOR}, f"{where}.ratios has {sorted(workload['ratios'])}"
    for impl, summary in workload["ratios"].items():
        _check_summary(summary, f"{where}.ratios.{impl}")
    _positive(workload["target"]["max_ratio"], f"{where}.target.max_ratio")
    assert isinstance(workload["met"], bool), f"{where}.met is {workload['met']!r}"


def _check_peers(where: str, workload: Any) -> None:
    """The peer asked for is measured (or not installed); the others were not asked for."""
    statuses = workload["peers"]
    assert statuses[PEER] == ("measured" if PEERS else "not installed"), f"{where}.peers: {statuses}"
    assert all(statuses[key] == "not asked for" for key in OTHER_PEERS), f"{where}.peers: {statuses}"
    if PEERS:
        best = workload["best_peer"]
        _check_summary({k: v for k, v in best.items() if k in STATS}, f"{where}.best_peer")
        assert best["fastest"] == PEER
    else:
        assert "best_peer" not in workload


def _run_quick(script: Path, out: Path, tmp_path: Path, timeout: float, extra: Sequence[str] = ()) -> str:
    """Run ``script --quick --json out`` in its own session; returns its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(script), "--quick", "--json", str(out), *extra],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGTERM)  # SIGTERM: the benchmark stops its work and cleans up
        raise
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    return stdout


def test_quick_benchmark_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = _run_quick(SCRIPT, out, tmp_path, timeout=90)
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
    _positive(sweep["repetitions"], "sweep.repetitions")
    sizes = [size["entries"] for size in sweep["sizes"]]
    assert len(sizes) >= 2, f"sweep.sizes: {sizes}, not a scaling table"
    assert sizes == sorted(set(sizes)), f"sweep.sizes: {sizes}"
    for size in sweep["sizes"]:
        where = f"sweep.sizes[{size['entries']}]"
        _positive(size["entries"], f"{where}.entries")
        assert size["mixed_blocks"] + size["mixed_semaphores"] == size["entries"]
        assert set(size["rows"]) == SWEEP_ROWS
        for key, summary in size["rows"].items():
            _check_summary(summary, f"{where}.rows.{key}", frozenset({"per_entry_us"}))
            assert summary["n"] == sweep["repetitions"], f"{where}.rows.{key}: one time per repetition"
        assert set(size["ratios"]) == SWEEP_ROWS - {"floor_unlink"}
        for key, summary in size["ratios"].items():
            _check_summary(summary, f"{where}.ratios.{key}")
    assert "Sweep scaling" in stdout

    # The benchmark's temporary folder (under TMPDIR) is gone; /dev/shm and the process
    # table are checked by the fixtures in conftest.py.
    assert not list(tmp_path.glob("leakguard-bench-*"))


@pytest.mark.timeout(240)
def test_quick_pool_benchmark_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout = _run_quick(POOL_SCRIPT, out, tmp_path, timeout=210, extra=["--peers", PEER])
    assert "ratio to anchor" in stdout
    assert "targets met" in stdout
    assert "the Pipe floor" in stdout

    data = json.loads(out.read_text())
    assert set(data) == {"meta", "workloads", "small_shm"}
    assert data["meta"]["quick"] is True
    assert set(data["workloads"]) == WORKLOADS
    for key, workload in data["workloads"].items():
        # The data workloads run with named blocks too, beside the default anonymous ones;
        # the round trip beside its floor.
        named = {NAMED} if key in DATA_WORKLOADS else set()
        floor = {FLOOR} if key == "apply_roundtrip" else set()
        _check_workload(f"workloads.{key}", workload, IMPLS | named | PEERS | floor)
        _check_peers(f"workloads.{key}", workload)
        if floor:
            to_floor = workload["floor"]
            _check_summary({k: v for k, v in to_floor.items() if k in STATS}, f"workloads.{key}.floor")
            assert to_floor["max_ratio"] == 2.0
            assert isinstance(to_floor["met"], bool)
        else:
            assert "floor" not in workload
        if key in DATA_WORKLOADS:
            versus = workload["anonymous_vs_named"]
            _check_summary({k: v for k, v in versus.items() if k in STATS}, f"workloads.{key}.anonymous_vs_named")
            assert versus["max_ratio"] == 1.10
            assert isinstance(versus["met"], bool)
    # In a 64 MiB /dev/shm (a mount namespace: root only): the data workloads, anonymous blocks only.
    small = data["small_shm"]
    if os.geteuid() != 0:
        assert set(small) == {"skipped"}
        assert "root" in small["skipped"]
    else:
        assert set(small) == {"meta", "workloads"}, small
        assert small["meta"]["shm_bytes"] == 64 << 20
        assert set(small["workloads"]) == DATA_WORKLOADS
        for key, workload in small["workloads"].items():
            _check_workload(f"small_shm.workloads.{key}", workload, IMPLS | PEERS)
            _check_peers(f"small_shm.workloads.{key}", workload)
        assert "In a 64 MiB /dev/shm" in stdout

    # The benchmark's temporary folder (under TMPDIR) is gone; /dev/shm and the process
    # table are checked by the benchmark itself and again by the fixtures in conftest.py.
    assert not list(tmp_path.glob("leakguard-bench-pool-*"))


@pytest.mark.timeout(150)
def test_quick_descriptor_benchmark_writes_every_number(tmp_path: Path) -> None:
    from leakguard._blocks.shm import anonymous_by_default

    if not anonymous_by_default():
        pytest.skip("no anonymous blocks on this system")
    out = tmp_path / "bench.json"
    stdout = _run_quick(BENCH / "bench_descriptors.py", out, tmp_path, timeout=120)
    assert "SCM_RIGHTS" in stdout
    data = json.loads(out.read_text())
    assert set(data) == {"quick", "attach", "pool_task"}
    assert set(data["attach"]) == {"named (shm_open)", "/proc/PID/fd/N", "SCM_RIGHTS"}
    assert set(data["pool_task"]) == {"named", "anonymous"}
    for table in ("attach", "pool_task"):
        for way, numbers in data[table].items():
            _check_summary(numbers["time_us"], f"{table}.{way}.time_us")
            _check_summary(numbers["ratio"], f"{table}.{way}.ratio")
    assert not list(tmp_path.glob("leakguard-bench-descriptors-*"))


def test_bench_kept_mappings_reports_both_runs_and_the_floor() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_kept_mappings.py"), "--mb", "16", "--pools", "1", "--rounds", "3"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("transparent huge pages: private memory [")
    assert "floor for 16 MB on 2 workers" in lines[1]
    assert "floor on its pages" in lines[2]
    assert [line.split(":")[0].strip() for line in lines[3:]] == ["mappings not kept (before)", "mappings kept (after)"]
    assert all("ratio to floor" in line and "to the floor on its pages" in line for line in lines[3:])


@pytest.mark.timeout(300)
def test_quick_scaling_benchmark_writes_every_number(tmp_path: Path) -> None:
    # The sweep's scaling is bench_foundation.py's: the scaling benchmark reads its JSON.
    foundation = tmp_path / "foundation.json"
    _run_quick(SCRIPT, foundation, tmp_path, timeout=90)
    out = tmp_path / "scaling.json"
    figure = tmp_path / "scaling.png"
    plotting = importlib.util.find_spec("matplotlib") is not None  # the bench extra
    extra = ["--sweep-json", str(foundation), *(["--plot", str(figure)] if plotting else [])]
    stdout = _run_quick(SCALING_SCRIPT, out, tmp_path, timeout=180, extra=extra)
    assert "Start-up" in stdout

    data = json.loads(out.read_text())
    tables = {"tasks", "task_ratios", "memory", "memory_ratios", "startup", "startup_ratios", "sweep"}
    assert set(data) == {"meta", *tables}
    assert data["meta"]["quick"] is True
    counts = [str(n) for n in data["meta"]["config"]["workers"]]
    assert counts == ["1", "2"]
    pools = {"leakguard", "multiprocessing"}
    assert set(data["tasks"]) == set(data["startup"]) == pools
    assert set(data["memory"]) == pools | PEERS  # loky's workers too, when installed
    for n in counts:
        for pool in pools:
            assert set(data["tasks"][pool][n]) == {"map_us", "round_trip_us", "in_flight_us"}
            for key, summary in data["tasks"][pool][n].items():
                _check_summary(summary, f"tasks.{pool}.{n}.{key}")
            _check_summary(data["startup"][pool][n], f"startup.{pool}.{n}")
        for key, summary in data["task_ratios"][n].items():
            _check_summary(summary, f"task_ratios.{n}.{key}")
        _check_summary(data["startup_ratios"][n], f"startup_ratios.{n}")
        for pool, numbers in data["memory"].items():
            for key in ("uss_mib", "rss_mib"):
                _check_summary(numbers[n][key], f"memory.{pool}.{n}.{key}")
            assert numbers[n]["others"]["median"] >= 0
        assert set(data["memory_ratios"][n]) == (pools | PEERS) - {"leakguard"}
        for pool, summary in data["memory_ratios"][n].items():
            _check_summary(summary, f"memory_ratios.{n}.{pool}")
    swept = json.loads(foundation.read_text())["sweep"]
    assert [size["entries"] for size in data["sweep"]] == [size["entries"] for size in swept.get("sizes", [swept])]
    for size in data["sweep"]:
        for key in ("floor_ms", "orphaned_ms", "orphaned_us_per_entry", "live_ms", "orphaned_to_floor"):
            _positive(size[key], f"sweep.{key}")
    if plotting:
        assert figure.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("leakguard-bench-scaling-*"))
