"""``--duration``: a soak of concurrent pools, random kills and sweeps, for as long as asked.

``POOLS`` slots each hold a job (its own journal folder) and a bystander in the same
folder. A seeded loop picks a slot and either kills something of its job (a worker, the
guardian, the job, its group, or everything) and checks the outcome as the matrix does,
or sweeps the slot's folder and checks the bystander. A job that died is replaced by a
new one with a random workload and start method.

Concurrent jobs make a /dev/shm diff useless for attribution, so a job's objects are
read from its folder just before the kill (a dry-run sweep lists what live owners hold)
and must be gone afterwards; whatever slips between that look and the kill is caught by
the final census, which must find /dev/shm as the soak found it. Only aggregates are
kept (Report caps the per-run records), so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

import leakguard

from .batches import Bystander
from .observe import RUN_MARK, Child, child_env, is_guardian, kill_all, marked, shm_entries, still_there, wait_until
from .report import Record
from .runner import GRACE
from .scenarios import START_METHODS, WORKLOADS

if TYPE_CHECKING:
    from .report import Report

POOLS = 3
WHO = ("worker", "worker", "guardian", "parent", "group", "everything", "sweep")
PROGRESS_EVERY = 30.0


def _entry(kind: str | None, name: str | None) -> str | None:
    if not name:
        return None
    return name if kind == "shm" else f"sem.{name}"


class Slot:
    def __init__(self, k: int, token: str, work: Path, rng: random.Random) -> None:
        self.k = k
        self.token = token
        self.work = work
        self.rng = rng
        self.folder = work / f"soak-{k}"
        self.folder.mkdir(mode=0o700)
        self.bystander = Bystander(token, str(self.folder), work)
        self.jobs = 0
        self.job: Child | None = None
        self.run_id = ""
        self.workload = self.start_method = ""
        self.new_job()

    def new_job(self) -> None:
        self.jobs += 1
        self.run_id = f"{self.token}-soak-{self.k}-{self.jobs}"
        self.workload = self.rng.choice(WORKLOADS)
        self.start_method = self.rng.choice(START_METHODS)
        marks = self.work / f"soak-{self.k}-marks-{self.jobs % 4}"  # no failpoints: reused freely
        marks.mkdir(exist_ok=True)
        config = {"workload": self.workload, "start_method": self.start_method, "marks": str(marks)}
        env = child_env(self.token, str(self.folder), {RUN_MARK: self.run_id})
        self.job = Child(["-m", "stress.job", json.dumps(config)], env, str(self.work / f"soak-{self.k}.err"))

    def owned(self) -> set[str]:
        """The job's objects now: what live owners hold in the folder, but the bystander's."""
        report = leakguard.sweep(dry_run=True, folder=str(self.folder))
        names = {_entry(i.kind, i.name) for i in report.kept}
        return {n for n in names if n} - set(self.bystander.entries)

    def processes(self) -> list[psutil.Process]:
        assert self.job is not None
        return marked(RUN_MARK, self.run_id, exclude=[self.job.pid])

    def end_job(self, rec: Record) -> None:
        assert self.job is not None
        self.job.reap()
        wait_until(lambda: not self.processes(), 5.0)
        left = marked(RUN_MARK, self.run_id)
        rec.orphans += [str(p.pid) for p in left]
        kill_all(left)
        self.new_job()


def hurt(slot: Slot, who: str) -> Record:
    """One kill (or one sweep) in ``slot``, checked."""
    job = slot.job
    assert job is not None
    rec = Record(f"{who}/SIGKILL/random/{slot.workload}/{slot.start_method}", 0, 0.0, "guardian")
    if who == "sweep":
        rec.scenario = f"live-sweep/none/random/{slot.workload}/{slot.start_method}"
        rec.remedy = "nothing"
        started = time.monotonic()
        report = leakguard.sweep(folder=str(slot.folder))
        rec.clean_seconds = round(time.monotonic() - started, 3)
        if report.removed:
            rec.failures.append(f"a sweep beside live pools removed {[i.name for i in report.removed]}")
        rec.bystander_loss = slot.bystander.check()
        return rec
    if job.expect("round", 60.0) is None:
        rec.failures.append(f"the job did not start working within 60 s: {job.stderr(300)}")
        slot.end_job(rec)
        return rec
    owned = slot.owned()
    fault = time.monotonic()
    if who in ("worker", "guardian"):
        rec.remedy = "pool" if who == "worker" else "new-guardian"
        _survivable(slot, who, fault, rec)
    else:
        rec.remedy = "sweep" if who == "everything" else "guardian"
        _fatal(slot, who, owned, rec)
    rec.bystander_loss = slot.bystander.check()
    job.messages = job.messages[-20:]  # bounded: only aggregates are kept
    return rec


def _survivable(slot: Slot, who: str, fault: float, rec: Record) -> None:
    job = slot.job
    assert job is not None
    mark = len(job.messages)
    if who == "worker":
        ready = job.find("ready") or {"workers": []}
        rounds = [m for m in job.messages if "workers" in m] or [ready]
        victims = [p for p in rounds[-1]["workers"] if psutil.pid_exists(p)][:1]
    else:
        victims = []
        old = [p for p in slot.processes() if is_guardian(p)]
        for g in old:
            g.kill()
        if wait_until(lambda: [p for p in slot.processes() if is_guardian(p) and p not in old], 1.0) is None:
            rec.late = True
            rec.failures.append("no new guardian within 1 s")
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def recovered() -> bool:
        job.pump()
        return any(
            m.get("what") == "round"
            and m["at"] > fault
            and set(m["outcomes"]) <= {"ok", "lost"}
            and not set(victims) & set(m["workers"])
            for m in job.messages[mark:]
        )

    if not _timed(rec, recovered, fault):
        rec.failures.append(f"no right round on live workers within {2 + GRACE:g} s of the fault")
        slot.end_job(rec)


def _timed(rec: Record, done: Callable[[], bool], fault: float) -> bool:
    """Wait for ``done``: within the 2 s limit, late (within GRACE more), or not at all (False)."""
    if not wait_until(done, 2.0):
        if not wait_until(done, GRACE):
            return False
        rec.late = True
    rec.clean_seconds = round(time.monotonic() - fault, 3)
    return True


def _fatal(slot: Slot, who: str, owned: set[str], rec: Record) -> None:
    job = slot.job
    assert job is not None
    fault = time.monotonic()
    if who == "parent":
        os.kill(job.pid, signal.SIGKILL)
    elif who == "group":
        os.killpg(job.pid, signal.SIGKILL)
    else:
        guardians = [p for p in slot.processes() if is_guardian(p)]
        os.killpg(job.pid, signal.SIGSTOP)
        for g in guardians:
            with contextlib.suppress(psutil.Error):
                g.kill()
        os.killpg(job.pid, signal.SIGKILL)
        fault = time.monotonic()

    def clean() -> bool:
        return job.exited() is not None and not slot.processes() and not still_there(owned, settle=0.0)

    if who == "everything":
        wait_until(lambda: job.exited() is not None and not slot.processes(), 10.0)
        rec.left_after_guardian = sorted(still_there(owned))
        leakguard.sweep(folder=str(slot.folder))
        rec.left_after_sweep = sorted(still_there(owned))
        rec.leaks = rec.left_after_sweep
        rec.clean_seconds = round(time.monotonic() - fault, 3)
    elif not _timed(rec, clean, fault):
        rec.left_after_guardian = sorted(still_there(owned))
        rec.leaks = rec.left_after_guardian
    slot.end_job(rec)
    for name in rec.leaks:  # counted; removed so that the final census sees what else is left
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name))


def soak(seconds: float, report: Report, token: str, work: Path, seed: int) -> None:
    rng = random.Random(seed)
    before = shm_entries()
    started = time.monotonic()
    slots: list[Slot] = []
    try:
        slots = [Slot(k, token, work, rng) for k in range(POOLS)]
        last = started
        while time.monotonic() - started < seconds:
            time.sleep(rng.uniform(0.2, 1.0))  # the seeded pace of kills and sweeps
            slot = rng.choice(slots)
            rec = hurt(slot, rng.choice(WHO))
            report.add(rec)
            if not rec.ok:
                print(f"  FAIL {rec.scenario}: {_short(rec)}", flush=True)
            if time.monotonic() - last >= PROGRESS_EVERY:
                last = time.monotonic()
                t = report.total
                print(
                    f"soak {last - started:6.0f} s: {t.runs} kills and sweeps, {t.leaks} leaks, {t.orphans} orphans, "
                    f"{t.bystander} bystander losses, {t.late} late, {t.failed} failed; worst clean {t.worst} s",
                    flush=True,
                )
    finally:
        _end(slots, report, token, before)


def _short(rec: Record) -> str:
    parts: dict[str, Any] = {
        "leaks": rec.leaks,
        "orphans": rec.orphans,
        "bystander": rec.bystander_loss,
        "failures": rec.failures,
        "late": rec.late,
    }
    return str({k: v for k, v in parts.items() if v})[:400]


def _exited(job: Child) -> bool:
    return job.exited() is not None


def _none_marked(run_id: str) -> bool:
    return not marked(RUN_MARK, run_id)


def _end(slots: list[Slot], report: Report, token: str, before: set[str]) -> None:
    """Stop every job and bystander normally, sweep, and take the census."""
    for slot in slots:
        job = slot.job
        if job is not None:
            job.close_input()
            if wait_until(functools.partial(_exited, job), 30.0) is None:
                report.problems.append(f"soak job {slot.run_id} did not end within 30 s of its input's end")
            job.reap()
        report.problems += slot.bystander.stop()
    for slot in slots:
        wait_until(functools.partial(_none_marked, slot.run_id), 5.0)
        leakguard.sweep(folder=str(slot.folder))
    left = sorted(still_there(n for n in shm_entries() - before if n.startswith(("lg_", "sem.lg_"))))
    if left:  # reported, not removed: no journal names them any more, nothing proves they are ours
        report.problems.append(f"the soak left {len(left)} objects in /dev/shm that no sweep removed: {left[:10]}")
