"""python -m stress can fail: a real leak, a real orphan and a real bystander loss are each
counted and turn the verdict (and the exit status) to failure; a clean run is not; the
plan is the same for the same seed, and covers every failpoint in the package.

The jobs here are real processes killed with real signals; the leaky ones are small
``python -c`` programs given to the runner in place of stress.job. (CI runs
``python -m stress --quick`` itself, separately.)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import stress.__main__ as stress_main
from stress.anchors import anchor_run
from stress.batches import Bystander
from stress.observe import MARK
from stress.report import Record, Report, verdict
from stress.runner import Runner
from stress.scenarios import FAILPOINTS, Run, delay_for, matrix, parse, plan, quick
from tests.helpers import shm_entries
from tests.test_crash_points import failpoints_in_source

# Out of the quick selection (pytest -m "not slow"): each test runs the stress matrix on a small plan.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

EMIT = """
import json, os, sys, time
def emit(what, **kw):
    os.write(1, (json.dumps({"what": what, "at": time.monotonic(), **kw}) + "\\n").encode())
"""

# A job with no pool, so no guardian: its journaled block outlives a SIGKILL (a sweep
# removes it), and a file named like leakguard's in no journal outlives even the sweep.
LEAKY_JOB = (
    EMIT
    + """
import leakguard
block = leakguard.shared_array(128, named=True)
raw = "/dev/shm/lg_stresstest" + os.urandom(6).hex()
os.close(os.open(raw, os.O_CREAT | os.O_WRONLY, 0o600))
emit("start", pid=os.getpid())
emit("ready", pid=os.getpid(), workers=[])
time.sleep(60)
"""
)

# A job that leaves a process of its own in a session of its own: a group kill misses it.
ORPHANING_JOB = (
    EMIT
    + """
import subprocess
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
emit("start", pid=os.getpid(), child=child.pid)
emit("ready", pid=os.getpid(), workers=[])
time.sleep(60)
"""
)


# A job whose anonymous block is also held by a process of its own session: a kill of the job's
# group misses it, so the kernel cannot free the block (and that process is an orphan).
HELD_ELSEWHERE_JOB = (
    EMIT
    + """
import subprocess
import leakguard
from leakguard._blocks.shm import block_of
block = leakguard.shared_array(1 << 20, fill=1.0)
fd = os.dup(block_of(block).holder.fd)
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True, pass_fds=[fd]
)
emit("start", pid=os.getpid(), child=child.pid)
emit("ready", pid=os.getpid(), workers=[])
time.sleep(60)
"""
)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"test-{secrets.token_hex(4)}"
    monkeypatch.setenv(MARK, value)  # and restored afterwards: main() sets it too
    return value


@pytest.fixture
def folder(leakguard_dir: Path) -> Path:
    leakguard_dir.mkdir(mode=0o700)
    return leakguard_dir


def _run(runner: Runner, name: str, delay: float = 0.0) -> Record:
    return runner.run(Run(parse(name), 0, delay))


@pytest.mark.timeout(60)
def test_a_job_that_leaks_is_counted_and_fails_the_verdict(token: str, folder: Path, tmp_path: Path) -> None:
    before = shm_entries()
    runner = Runner(token, folder, tmp_path, None, grace=0.2, settle=1.0, job_code=LEAKY_JOB)

    rec = _run(runner, "parent/SIGKILL/random/shared/spawn")

    assert rec.died == "parent"
    blocks = [n for n in rec.left_after_guardian if not n.startswith("lg_stresstest")]
    raw = [n for n in rec.left_after_guardian if n.startswith("lg_stresstest")]
    assert len(blocks) == 1, rec  # the journaled block: no guardian removed it
    assert len(raw) == 1, rec
    assert rec.left_after_sweep == raw  # the sweep removed the journaled one, not the other
    assert set(rec.leaks) == set(blocks + raw)  # the remedy was the guardian: both are leaks
    assert rec.clean_seconds is None
    assert not rec.ok
    assert any(line.startswith(f"{blocks[0]}: orphaned") for line in rec.diagnosis), rec.diagnosis
    # What no journal of the run's folder names, stress does not remove: it cannot prove it is the run's.
    assert f"{raw[0]}: in no journal of {folder}: left in place" in rec.diagnosis
    os.unlink(f"/dev/shm/{raw[0]}")
    assert shm_entries() == before

    report = Report(seed=1, mode="test")
    report.add(rec)
    assert not report.passed
    assert verdict(report).startswith("FAIL: 1 runs: 1 with leaks")
    assert report.failures[0]["reproduce"] == (
        "python -m stress --only 'parent/SIGKILL/random/shared/spawn' --seed 1 --repeat 1"
    )


@pytest.mark.timeout(60)
def test_a_leak_makes_the_exit_status_non_zero(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def leaky_plan(runs: list[Run], report: Report, *args: object) -> None:
        assert [r.scenario.name for r in runs] == ["group/SIGKILL/random/plain/fork"]
        rec = Record(runs[0].scenario.name, 0, runs[0].delay, "guardian", left_after_guardian=["lg_x"], leaks=["lg_x"])
        report.add(rec)

    monkeypatch.setattr(stress_main, "run_plan", leaky_plan)
    assert stress_main.main(["--only", "group/SIGKILL/random/plain/fork", "--seed", "4"]) == 1

    def clean_plan(runs: list[Run], report: Report, *args: object) -> None:
        report.add(Record(runs[0].scenario.name, 0, runs[0].delay, "guardian", clean_seconds=0.05))

    monkeypatch.setattr(stress_main, "run_plan", clean_plan)
    assert stress_main.main(["--only", "group/SIGKILL/random/plain/fork", "--seed", "4"]) == 0


@pytest.mark.timeout(60)
def test_a_surviving_process_of_the_run_is_an_orphan(token: str, folder: Path, tmp_path: Path) -> None:
    runner = Runner(token, folder, tmp_path, None, grace=0.2, settle=0.5, job_code=ORPHANING_JOB)

    rec = _run(runner, "group/SIGKILL/random/shared/spawn")

    assert len(rec.orphans) == 1, rec
    assert "time.sleep(60)" in rec.orphans[0]
    assert not rec.ok
    pid = int(rec.orphans[0].split()[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.timeout(90)
def test_a_clean_run_passes_and_a_bystander_that_loses_its_block_is_a_loss(
    token: str, folder: Path, tmp_path: Path
) -> None:
    before = shm_entries()
    bystander = Bystander(token, str(folder), tmp_path)
    stopped = False
    try:
        runner = Runner(token, folder, tmp_path, bystander)
        rec = _run(runner, "worker/SIGKILL/random/results/fork", delay=0.2)
        assert rec.ok, rec  # a real job, a real kill: the pool recovered, nothing left
        assert rec.clean_seconds is not None
        assert rec.clean_seconds < 2
        assert rec.bystander_loss == []

        block = next(n for n in bystander.entries if n.startswith("lg_"))
        os.unlink(f"/dev/shm/{block}")  # what a sweep that touched a live owner would do
        lost = bystander.check()
        assert any(block in line for line in lost), lost
        problems = bystander.stop()
        stopped = True
        assert problems  # its workers could not attach any more: it ended badly
    finally:
        if not stopped:
            bystander.child.reap()
    assert shm_entries() == before


@pytest.mark.timeout(120)
def test_everything_killed_with_anonymous_blocks_only_is_freed_by_the_kernel_or_counted(
    token: str, folder: Path, tmp_path: Path
) -> None:
    before = shm_entries()
    runner = Runner(token, folder, tmp_path, None)
    rec = _run(runner, "everything/SIGKILL/random/anon/spawn", delay=0.5)
    assert rec.remedy == "kernel"
    assert rec.ok, rec  # nothing ran after the kill, and nothing was left
    assert rec.clean_seconds is not None
    assert rec.clean_seconds < 2
    assert rec.left_after_guardian == []

    leaky = Runner(token, folder, tmp_path, None, grace=0.2, settle=1.0, job_code=HELD_ELSEWHERE_JOB)
    rec = _run(leaky, "everything/SIGKILL/random/anon/spawn")
    assert not rec.ok
    assert any("anonymous blocks not freed" in f and "1 of 1 still held" in f for f in rec.failures), rec
    assert len(rec.orphans) == 1, rec
    assert shm_entries() == before


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("10m", 600), ("1h30m", 5400), ("1d", 86400)])
def test_duration_reads_as_the_clis_older_than(text: str, seconds: float) -> None:
    """One duration syntax: ``python -m stress --duration`` parses as ``leakguard sweep --older-than``."""
    assert stress_main.parser().parse_args(["--duration", text]).duration == seconds


def test_the_same_seed_gives_the_same_plan() -> None:
    first = plan(matrix(), 12345, 500)
    again = plan(matrix(), 12345, 500)
    other = plan(matrix(), 54321, 500)
    assert len(first) == 500
    assert first == again
    assert first != other
    assert {r.scenario for r in first} == set(matrix())  # every scenario at least once
    # --only NAME --seed N --repeat K gives a run the delay it had in the full plan
    for run in first[::37]:
        assert delay_for(12345, run.scenario, run.repeat) == run.delay

    def listed(seed: int) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stress", "--quick", "--list", "--seed", str(seed)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    assert listed(7) == listed(7)
    assert listed(7) != listed(8)
    assert len(listed(7).splitlines()) == len(quick())


@pytest.mark.timeout(30)
def test_the_matrix_covers_every_failpoint_in_the_package() -> None:
    in_source = set(failpoints_in_source())
    covered = {step.removeprefix("w:") for step in FAILPOINTS} | {"sweep.after-unlink"}
    assert in_source - covered == set(), "failpoints no stress scenario reaches"
    assert covered - in_source == set(), "stress scenarios for failpoints that no longer exist"
    assert {parse(s.name) for s in quick()} == set(quick())
    assert {s.when for s in quick() if s.when != "random"} == set(FAILPOINTS) | {"sweep.after-unlink"}


def test_the_json_report_round_trips(tmp_path: Path) -> None:
    report = Report(seed=3, mode="test")
    report.add(Record("parent/SIGKILL/random/shared/spawn", 0, 0.1, "guardian", clean_seconds=0.05))
    path = tmp_path / "out.json"
    report.write_json(str(path))
    data = json.loads(path.read_text())
    assert data["passed"] is True
    assert data["total"]["runs"] == 1
    assert data["rows"]["parent SIGKILL at a random instant"]["worst_clean_seconds"] == 0.05


@pytest.mark.timeout(60)
def test_what_an_anchor_leaks_is_counted_then_removed(tmp_path: Path) -> None:
    # multiprocessing.Pool (spawn) killed as a group leaves its segment and semaphores: stress
    # counts them, then sweep_foreign removes exactly them, under write leases (no fallback of
    # its own for a process /proc cannot inspect, as pid 1 is here and in many containers).
    before = shm_entries()
    row = anchor_run("mp-spawn", "group", secrets.token_hex(4), tmp_path, 1)
    assert row["segments"] == 1
    assert row["semaphores"] >= 1
    assert row["cleaned"], row
    assert not row["note"], row
    assert shm_entries() == before
