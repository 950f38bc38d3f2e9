"""``--anchors``: the comparable scenarios on other pools, beside leakguard's figures.

For each anchor (``multiprocessing.Pool`` under spawn, forkserver and fork,
``concurrent.futures.ProcessPoolExecutor``, and loky and joblib when installed) and each
scenario (one worker SIGKILLed mid-map, the parent SIGKILLed, the whole group SIGKILLed)
a job (stress/anchor_job.py) shares one array between 2 workers and is hurt. After
``SETTLE`` seconds stress records the outcome (the map completed, broke, or hung until
``HANG`` seconds and was killed), the segments, semaphores and joblib folders left, and
the processes left. Then it kills the survivors and removes exactly the names that
appeared during the run with ``leakguard.sweep_foreign(only=...)``, and checks they are
gone. Anchors' leaks are reported, never failed; leakguard's rows are ordinary runs of
the matrix and fail as usual.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import leakguard

from .observe import (
    RUN_MARK,
    SHM,
    Child,
    child_env,
    inodes,
    kill_all,
    marked,
    shm_entries,
    still_there,
    wait_until,
)
from .report import Report, aligned
from .scenarios import START_METHODS, Run, Scenario, delay_for

KINDS = ("mp-spawn", "mp-forkserver", "mp-fork", "executor", "loky", "joblib")
SCENARIOS = ("worker", "parent", "group")
SETTLE = 3.0  # seconds after the fault before leftovers are counted
HANG = 10.0  # seconds a map may take after a worker's death before it counts as hung
JOBLIB = "joblib_memmapping_folder_"
FOREIGN = ("psm_", "sem.mp-", "sem.loky-", "sem.", JOBLIB, "loky-")


def installed(kind: str) -> bool:
    return kind not in ("loky", "joblib") or importlib.util.find_spec(kind) is not None


def _temp_entries() -> set[str]:
    temp = tempfile.gettempdir()
    try:
        return {n for n in os.listdir(temp) if n.startswith(JOBLIB)}
    except FileNotFoundError:
        return set()


def held(run_id: str, into: set[str]) -> None:
    """Add the /dev/shm entries and joblib folders the run's processes map or hold open now:
    what may be attributed to the run, and so removed after it.

    Matched by inode as well as by path: glibc maps a named semaphore under the temporary
    name it was created with (``sem.XXXXXX``) before linking it to its real name.
    """
    temp = os.path.join(tempfile.gettempdir(), "")
    paths: list[str] = []
    found_inodes: set[int] = set()
    for proc in marked(RUN_MARK, run_id):
        with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].startswith(SHM + "/"):
                    found_inodes.add(int(fields[4]))
                    paths.append(fields[5].strip())
                elif len(fields) == 6:
                    paths.append(fields[5].strip())
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    paths.append(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
                    if paths[-1].startswith(SHM + "/"):
                        found_inodes.add(os.stat(f"/proc/{proc.pid}/fd/{fd}").st_ino)
    for found in paths:
        path = found.removesuffix(" (deleted)")
        if path.startswith(temp + JOBLIB):
            into.add(path[len(temp) :].split("/")[0])
        elif path.startswith(SHM + "/"):
            first = path[len(SHM) + 1 :].split("/")[0]
            if first.startswith(JOBLIB) or "/" in path[len(SHM) + 1 :]:
                into.add(first)
    for name, ino in inodes(shm_entries()).items():
        if ino in found_inodes:
            into.add(name)


def anchor_run(kind: str, scenario: str, token: str, work: Path, index: int) -> dict[str, Any]:
    run_id = f"{token}-anchor-{index}"
    before, before_tmp = shm_entries(), _temp_entries()
    code = "from stress.anchor_job import main; main()"
    job = Child(["-c", code, kind], child_env(token, None, {RUN_MARK: run_id}), str(work / f"anchor-{index}.err"))
    row: dict[str, Any] = {"pool": kind, "scenario": f"{scenario} SIGKILL", "outcome": "", "note": ""}
    ours: set[str] = set()
    try:
        ready = job.expect("ready", 60.0)
        if ready is None or job.expect("round", 30.0) is None:
            row["outcome"] = "did not start"
            row["note"] = job.stderr(300)
            return row
        time.sleep(0.05)  # mid-map: the next round is running
        held(run_id, ours)
        if not ready["workers"]:
            row["outcome"] = "no worker found"
            return row
        fault = time.monotonic()
        if scenario == "worker":
            mark = len(job.messages)
            os.kill(ready["workers"][0], signal.SIGKILL)

            def after() -> str | None:
                held(run_id, ours)
                job.pump()
                for m in job.messages[mark:]:
                    if m["what"] == "broken":
                        return f"broke: {m['error']}"
                    if m["what"] == "round" and m["at"] > fault:
                        return "completed" if m["ok"] else "completed, wrong"
                return "broke: exit" if job.exited() is not None else None

            outcome = wait_until(after, HANG)
            row["outcome"] = outcome or f"hung ({HANG:g} s), killed"
            row["outcome_seconds"] = round(time.monotonic() - fault, 3)
            if outcome == "completed":
                job.close_input()
                wait_until(lambda: job.exited() is not None, 20.0)
            if job.exited() is None:
                os.killpg(job.pid, signal.SIGKILL)
        elif scenario == "parent":
            os.kill(job.pid, signal.SIGKILL)
            row["outcome"] = "parent killed"
        else:
            os.killpg(job.pid, signal.SIGKILL)
            row["outcome"] = "group killed"
        held(run_id, ours)
        wait_until(lambda: not marked(RUN_MARK, run_id, exclude=[job.pid]), SETTLE)
        _count(row, before, before_tmp, run_id, job.pid)
    finally:
        job.reap()
        # joblib and loky put their creator's pid in these names: the job's are the run's.
        ours |= {
            n for n in _appeared(before, before_tmp) if n.startswith((f"{JOBLIB}{job.pid}_", f"sem.loky-{job.pid}-"))
        }
        _clean(row, before, before_tmp, run_id, ours)
    return row


def _count(row: dict[str, Any], before: set[str], before_tmp: set[str], run_id: str, pid: int) -> None:
    new = sorted(still_there(n for n in shm_entries() - before if n.startswith(FOREIGN)))
    row["segments"] = sum(not n.startswith(("sem.", JOBLIB)) for n in new)
    row["semaphores"] = sum(n.startswith("sem.") for n in new)
    row["folders"] = sum(n.startswith(JOBLIB) for n in new) + len(_temp_entries() - before_tmp)
    row["processes"] = len(marked(RUN_MARK, run_id, exclude=[pid]))
    row["left"] = new + sorted(_temp_entries() - before_tmp)


def _appeared(before: set[str], before_tmp: set[str]) -> set[str]:
    return {n for n in shm_entries() - before if n.startswith(FOREIGN)} | (_temp_entries() - before_tmp)


def _clean(row: dict[str, Any], before: set[str], before_tmp: set[str], run_id: str, ours: set[str]) -> None:
    """Kill the survivors, then remove exactly the names that appeared during the run and that
    its processes were seen to map or hold open, and check that what appeared is gone."""
    held(run_id, ours)
    kill_all(marked(RUN_MARK, run_id))
    names = _appeared(before, before_tmp) & ours
    kept: list[str] = []
    if names:
        # The kernel's word (a write lease) decides, wherever /proc cannot see every process.
        try:
            report = leakguard.sweep_foreign(only=names, older_than=0, dry_run=False, shm_folder=SHM)
            kept = sorted({i.reason for i in report.kept + report.errors})
        except Exception as exc:  # noqa: BLE001 - reported in the row
            kept = [f"sweep_foreign failed: {exc}"]
    left = sorted(still_there(n for n in shm_entries() - before if n.startswith(FOREIGN)))
    left += sorted(_temp_entries() - before_tmp)
    row["cleaned"] = not left
    if left:
        unknown = sorted(set(left) - ours)
        row["note"] = (
            f"still there after the clean-up: {left}"
            + (f"; sweep_foreign kept: {'; '.join(kept)}" if kept else "")
            + (f"; {unknown} appeared but no process of the run was seen holding them: not removed" if unknown else "")
        )


def anchors(report: Report, token: str, work: Path, seed: int, repeat: int = 1) -> None:
    """Each anchor scenario ``repeat`` times, then leakguard's comparable runs as many times."""
    from .batches import run_plan

    index = 0
    for kind in KINDS:
        if not installed(kind):
            report.notes.append(f"{kind} is not installed: skipped")
            continue
        for scenario in [s for s in SCENARIOS for _ in range(repeat)]:
            index += 1
            try:
                row = anchor_run(kind, scenario, token, work, index)
            except Exception as exc:  # noqa: BLE001 - one anchor's trouble is reported, the others still run
                row = {"pool": kind, "scenario": f"{scenario} SIGKILL", "outcome": f"stress error: {exc}"}
            report.anchors.append(row)
            if not row.get("cleaned", False):
                # Their leaks are reported, not failed; what stress could not clean up after them is.
                report.problems.append(f"{kind} {row['scenario']}: not cleaned up: {row.get('note', row['outcome'])}")
            print(f"anchor {kind:<14} {row['scenario']:<15} {row['outcome']}", flush=True)
    ours = [Scenario(who, "SIGKILL", "random", "shared", sm) for sm in START_METHODS for who in SCENARIOS]
    runs = [Run(s, k, delay_for(seed, s, k)) for s in ours for k in range(repeat)]
    run_plan(runs, report, token, work, len(runs))


def _leakguard_rows(report: Report) -> list[list[str]]:
    rows = []
    for run in report.runs:
        who, _, _, _, start = run["scenario"].split("/")
        left = run["left_after_guardian"]
        if who == "worker":
            outcome = "completed" if not run["failures"] else "failed: " + run["failures"][0][:40]
        else:
            outcome = f"{'parent' if who == 'parent' else 'group'} killed"
        rows.append(
            [
                f"leakguard {start}",
                f"{who} SIGKILL",
                outcome,
                str(sum(not n.startswith("sem.") for n in left)),
                str(sum(n.startswith("sem.") for n in left)),
                "0",
                str(len(run["orphans"])),
                "yes" if not run["left_after_sweep"] else "no",
            ]
        )
    return rows


def anchors_table(report: Report) -> str:
    head = ["pool", "scenario", "outcome", "segments", "semaphores", "folders", "processes", "cleaned up"]
    lines = _leakguard_rows(report)
    for row in report.anchors:
        lines.append(
            [
                row["pool"],
                row["scenario"],
                row["outcome"][:48],
                *(str(row.get(k, "-")) for k in ("segments", "semaphores", "folders", "processes")),
                "yes" if row.get("cleaned") else "no",
            ]
        )
    lines.sort(key=lambda r: (SCENARIOS.index(r[1].split()[0]), not r[0].startswith("leakguard"), r[0]))
    return f"left after {SETTLE:g} s (anchors) or the guardian's work (leakguard):\n" + aligned(
        head, lines, footer=False
    )
