"""leakguard.dask.SweepPlugin on a real LocalCluster of processes: a worker killed with
SIGKILL, or by its nanny for passing its memory limit, leaves nothing in /dev/shm once the
nanny has restarted it; a live sibling's arrays survive; closing the cluster leaves nothing.

Functions that run in the workers live in tests/dask_tasks.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from distributed import Client, KilledWorker, LocalCluster

from leakguard.dask import SweepPlugin
from tests import dask_tasks as tasks
from tests.helpers import lg_entries, python, read_line, run, wait_for

# Out of the quick selection (pytest -m "not slow"): each test starts a dask cluster.
pytestmark = pytest.mark.slow

_MiB = 1 << 20


def _worker_pids(client: Client) -> dict[str, int]:
    """Address -> pid of the workers that answer now (a dying one may not)."""
    pids: dict[str, int] = client.run(tasks.worker_pid, on_error="ignore")
    return pids


def _wait_for_replacement(client: Client, dead: int, keep: int) -> str:
    """Wait until the nanny has replaced the worker with pid ``dead``; the new worker's address."""

    def replaced() -> str | None:
        pids = _worker_pids(client)
        fresh = [addr for addr, pid in pids.items() if pid not in (dead, keep)]
        return fresh[0] if len(pids) == 2 and keep in pids.values() and fresh else None

    address = wait_for(replaced, timeout=20, what=f"the nanny to replace worker pid {dead}")
    assert address is not None
    return address


@pytest.fixture
def cluster() -> Iterator[tuple[Client, str, str]]:
    """Two worker processes (each under a nanny), 400 MiB each; (client, address a, address b).

    ``allowed-failures: 0``: a task whose worker dies fails at once with KilledWorker instead
    of being sent to the next worker (which it would kill too)."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="400MiB"
        ) as local,
        Client(local) as client,  # type: ignore[no-untyped-call]
    ):
        a, b = sorted(client.scheduler_info()["workers"])
        yield client, a, b
    assert not lg_entries(), "closing the cluster left leakguard blocks in /dev/shm"


@pytest.mark.timeout(60)
def test_a_sigkilled_workers_blocks_go_when_the_nanny_restarts_it(cluster: tuple[Client, str, str]) -> None:
    client, a, b = cluster
    kept = client.run(tasks.make_arrays, 2, 1000, workers=[a])[a]
    doomed = client.run(tasks.make_arrays, 3, 1000, workers=[b])[b]

    # Without the plugin nothing removes what a killed worker left.
    os.kill(doomed["pid"], signal.SIGKILL)
    _wait_for_replacement(client, doomed["pid"], kept["pid"])
    assert set(doomed["names"]) <= lg_entries()

    # Registered: it sweeps on the live workers at once, and the dead one's blocks go.
    client.register_plugin(SweepPlugin())
    wait_for(lambda: not (set(doomed["names"]) & lg_entries()), timeout=10, what="the dead worker's blocks")
    assert set(kept["names"]) <= lg_entries()

    # Killed again: the replacement's start-up sweep removes the blocks, the sibling's stay.
    b = next(addr for addr, pid in _worker_pids(client).items() if pid != kept["pid"])
    doomed = client.run(tasks.make_arrays, 3, 1000, workers=[b])[b]
    os.kill(doomed["pid"], signal.SIGKILL)
    new = _wait_for_replacement(client, doomed["pid"], kept["pid"])
    wait_for(lambda: not (set(doomed["names"]) & lg_entries()), timeout=10, what="the dead worker's blocks")
    assert set(kept["names"]) <= lg_entries()
    assert client.run(tasks.sums, workers=[a])[a] == [1000.0, 2000.0]  # intact, and still readable
    (start,) = client.run(tasks.sweep_reports, workers=[new])[new]
    assert start["when"] == "start"
    assert start["removed"] == sorted(doomed["names"])
    assert start["dead_owners"] == [doomed["pid"]]
    assert start["kept"] == 2  # the sibling's, owner alive


@pytest.mark.timeout(60)
def test_a_worker_the_nanny_kills_for_memory_leaves_nothing(cluster: tuple[Client, str, str], tmp_path: Path) -> None:
    client, a, b = cluster
    client.register_plugin(SweepPlugin())
    kept = client.run(tasks.make_arrays, 2, 1000, workers=[a])[a]
    note = tmp_path / "note"
    # 600 MiB touched in a worker limited to 400 MiB: the nanny terminates it (SIGTERM, which
    # runs no clean-up in the worker), then starts a new one.
    future = client.submit(tasks.outgrow_memory, 600 * _MiB, str(note), 30, workers=[b], pure=False)
    with pytest.raises(KilledWorker):
        future.result(timeout=30)
    pid, name = note.read_text().split()
    new = _wait_for_replacement(client, int(pid), kept["pid"])
    wait_for(lambda: name not in lg_entries(), timeout=10, what="the 600 MiB block to go")
    assert set(kept["names"]) <= lg_entries()
    reports = client.run(tasks.sweep_reports, workers=[new])[new]
    assert [r["removed"] for r in reports] == [[name]]
    assert reports[0]["bytes_freed"] >= 600 * _MiB


def _orphan() -> tuple[str, int]:
    """A block whose owner (a child process of this test) was SIGKILLed: (name, its pid)."""
    child = python(
        """
        import sys, leakguard
        a = leakguard.shared_array(1000, fill=1.0, named=True)
        print(a.shm_name, flush=True)
        sys.stdin.read()
        """
    )
    name = read_line(child)
    child.kill()
    child.wait(timeout=10)
    for stream in (child.stdin, child.stdout, child.stderr):
        assert stream is not None
        stream.close()
    return name, child.pid


@pytest.mark.timeout(60)
def test_a_worker_sweeps_again_as_it_closes() -> None:
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,  # type: ignore[no-untyped-call]
    ):
        client.register_plugin(SweepPlugin())
        name, _ = _orphan()  # dies after the worker's start-up sweep
        assert name in lg_entries()
    assert name not in lg_entries()  # the worker's sweep at close removed it


class _Worker:
    """What the plugin reads of a worker: its address."""

    address = "tcp://127.0.0.1:0"


def test_the_sweep_reports_through_the_workers_logger(leakguard_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    name, pid = _orphan()
    plugin = SweepPlugin()
    with caplog.at_level(logging.INFO, logger="distributed.worker"):
        plugin.setup(_Worker())
    assert name not in lg_entries()
    (report,) = plugin.reports
    assert report["removed"] == [name]
    assert report["dead_owners"] == [pid]
    assert report["folder"] == str(leakguard_dir)
    (record,) = [r for r in caplog.records if "leakguard" in r.getMessage()]
    assert record.name == "distributed.worker"
    assert "removed 1 object(s)" in record.getMessage()
    assert str(pid) in record.getMessage()


def test_a_failed_sweep_is_logged_and_does_not_stop_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    unsafe.chmod(0o777)  # writable by others: leakguard refuses it
    plugin = SweepPlugin(folder=str(unsafe))
    with caplog.at_level(logging.ERROR, logger="distributed.worker"):
        plugin.setup(_Worker())
        plugin.teardown(_Worker())
    assert [r["when"] for r in plugin.reports] == ["start", "close"]
    assert all("writable by others" in r["failed"] for r in plugin.reports)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("leakguard sweep" in m for m in messages)


def test_directory_is_the_old_name_of_folder(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="call it folder="):
        plugin = SweepPlugin(directory=str(tmp_path))
    assert plugin.folder == str(tmp_path)


def test_the_documented_example_runs(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "dask.md").read_text()
    block = text.split("<!-- tested-example:begin -->")[1].split("<!-- tested-example:end -->")[0]
    script = tmp_path / "example.py"
    script.write_text(block.strip().removeprefix("```python").removesuffix("```"))
    done = run([sys.executable, "-W", "error", str(script)], env=dict(os.environ), cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["[0.0, 1000000.0, 2000000.0, 3000000.0]", "['start']", "['start']", ""]
