"""One run of one scenario: start the job, hurt it, watch what is left, sweep, check the bystander.

Runs go one after another, so that /dev/shm can be diffed against a snapshot taken just
before each run (the bystander's entries excluded). A batch of runs shares one journal
folder and one bystander living in it, so that every sweep of the folder must keep the
bystander's objects (see docs/stress.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

import leakguard

from .observe import (
    RUN_MARK,
    SHM,
    SHMEM_NOISE,
    Child,
    all_pids,
    boxed,
    child_env,
    ignores_sigint,
    is_guardian,
    kill_all,
    marked,
    memfd_inodes,
    shm_entries,
    shmem_bytes,
    still_there,
    stopped,
    wait_until,
)
from .report import Record
from .scenarios import LIMITS, Run, Scenario

if TYPE_CHECKING:
    from .batches import Bystander

GRACE = 10.0  # seconds past the limit that still count as "late", not as a leak
START_TIMEOUT = 60.0
FAILPOINT_TIMEOUT = 20.0
OURS = ("lg_", "sem.lg_")


class Runner:
    """Runs scenarios in one folder beside one bystander."""

    def __init__(
        self,
        token: str,
        folder: Path,
        logs: Path,
        bystander: Bystander | None,
        *,
        grace: float = GRACE,
        settle: float = 5.0,
        job_code: str | None = None,
    ) -> None:
        """``job_code`` replaces stress.job with ``python -c job_code`` (the tests' leaky jobs);
        ``settle`` is how long survivors get to exit before they count as orphans."""
        self.grace = grace
        self.settle = settle
        self.job_code = job_code
        self.token = token
        self.folder = folder
        self.logs = logs
        self.bystander = bystander
        self.count = 0

    def run(self, run: Run) -> Record:
        self.count += 1
        run_id = f"{self.token}-{self.folder.name}-{self.count}"
        rec = Record(run.scenario.name, run.repeat, run.delay, run.scenario.remedy)
        began = time.monotonic()
        ignore = set(self.bystander.entries) if self.bystander else set()
        before = shm_entries() | ignore
        marks = self.logs / f"{self.folder.name}-run-{self.count}"
        marks.mkdir(parents=True, exist_ok=True)
        job = self._start(run.scenario, run_id, marks)
        try:
            _Attempt(self, run, rec, job, run_id, before).go()
        except Exception as exc:  # noqa: BLE001 - a fault of the run itself: reported, never hidden
            rec.failures.append(f"stress error: {type(exc).__name__}: {exc}")
        finally:
            job.reap()
            self._finish(rec, run_id, before)
        rec.seconds = round(time.monotonic() - began, 3)
        if rec.failures and job.stderr():
            rec.failures.append("job stderr: " + job.stderr(600))
        return rec

    def _start(self, s: Scenario, run_id: str, marks: Path) -> Child:
        config: dict[str, Any] = {"workload": s.workload, "start_method": s.start_method, "marks": str(marks)}
        if s.who == "fp-parent":
            config["fail_parent"] = f"{s.step}:{s.how}"
        elif s.who == "fp-worker":
            config["fail_worker"] = f"{s.step}:{s.how}"
        env = child_env(self.token, str(self.folder), {RUN_MARK: run_id})
        argv = ["-c", self.job_code] if self.job_code else ["-m", "stress.job"]
        return Child([*argv, json.dumps(config)], env, str(marks / "job.err"))

    def _journaled(self) -> tuple[dict[str, str], str | None]:
        """Every entry the folder's journals name now -> what a dry-run sweep says of it."""
        try:
            report = leakguard.sweep(dry_run=True, folder=str(self.folder))
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the finding it explains
            return {}, f"dry-run sweep failed: {exc}"
        found = {}
        for item in report.removed + report.kept + report.errors + report.dropped + report.gone:
            entry = item.name or ""
            if item.kind == "sem":
                entry = f"sem.{entry}"
            found[entry] = f"{item.state}, owner {item.owner_pid}: {item.reason} ({item.journal})"
        return found, None

    def new_entries(self, before: set[str]) -> set[str]:
        return {n for n in shm_entries() - before if n.startswith(OURS)}

    def _finish(self, rec: Record, run_id: str, before: set[str]) -> None:
        """Whatever happened: sweep, count leftovers and survivors, check the bystander, clean up."""
        journaled, trouble = self._journaled()
        if trouble:
            rec.diagnosis.append(trouble)
        if rec.left_after_guardian and rec.remedy != "sweep":
            rec.diagnosis += [f"{n}: {journaled.get(n, 'in no journal')}" for n in rec.left_after_guardian]
        with contextlib.suppress(Exception):
            leakguard.sweep(folder=str(self.folder))
        rec.left_after_sweep = sorted(still_there(self.new_entries(before)))
        if rec.remedy == "sweep" and rec.fault_at is not None and not rec.left_after_sweep:
            rec.clean_seconds = round(time.monotonic() - rec.fault_at, 3)
        rec.leaks = sorted(
            set(rec.left_after_sweep) | (set() if rec.remedy == "sweep" else set(rec.left_after_guardian))
        )
        # A guardian may still be finishing its work after the job was killed: a moment's grace.
        wait_until(lambda: not marked(RUN_MARK, run_id), self.settle)
        survivors = marked(RUN_MARK, run_id)
        for proc in survivors:
            with contextlib.suppress(psutil.Error):
                rec.orphans.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                age = time.time() - proc.create_time()
                rec.diagnosis.append(
                    f"orphan {proc.pid}: parent {proc.ppid()}, status {proc.status()}, started {age:.2f} s ago, "
                    f"args {proc.cmdline()[3:]}"
                )
        kill_all(survivors)
        if self.bystander is not None:
            rec.bystander_loss = self.bystander.check()
        for name in rec.left_after_sweep:
            if name not in journaled:  # it appeared during the run, but nothing proves it is the run's
                rec.diagnosis.append(f"{name}: in no journal of {self.folder}: left in place")
                continue
            with contextlib.suppress(FileNotFoundError):  # a journal of the run's folder names it: ours
                os.unlink(os.path.join(SHM, name))


SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGSEGV": signal.SIGSEGV}


class _Attempt:
    """The steps of one run, with the job it started."""

    def __init__(self, runner: Runner, run: Run, rec: Record, job: Child, run_id: str, before: set[str]) -> None:
        self.r = runner
        self.s = run.scenario
        self.run = run
        self.rec = rec
        self.job = job
        self.run_id = run_id
        self.before = before  # /dev/shm just before the job started, and the bystander's entries
        # Remedy "kernel": the job's anonymous blocks and Shmem, seen with the job stopped, before the kill.
        self.blocks: dict[tuple[int, int], int] = {}
        self.shmem_held = 0

    # -------------------------------------------------------------- looking at the job

    def workers(self) -> list[int]:
        self.job.pump()
        for m in reversed(self.job.messages):
            if "workers" in m:
                return [p for p in m["workers"] if psutil.pid_exists(p)]
        return []

    def guardians(self) -> list[psutil.Process]:
        return [p for p in marked(RUN_MARK, self.run_id) if is_guardian(p)]

    def processes(self) -> list[psutil.Process]:
        return marked(RUN_MARK, self.run_id, exclude=[self.job.pid])

    def clean(self) -> bool:
        return (
            self.job.exited() is not None
            and not self.processes()
            and not still_there(self.r.new_entries(self.before), settle=0.0)
        )

    # -------------------------------------------------------------- the steps

    def fault(self) -> float:
        self.rec.fault_at = time.monotonic()
        return self.rec.fault_at

    def go(self) -> None:
        start = self.job.expect("start", START_TIMEOUT)
        if start is None:
            raise RuntimeError(f"the job did not start within {START_TIMEOUT:g} s (exit {self.job.exited()})")
        if self.s.who.startswith("fp-"):
            self.failpoint()
        elif self.s.who == "sweep":
            self.killed_sweep()
        else:
            self.random_kill(start["at"])

    def wait_ready(self) -> float:
        ready = self.job.expect("ready", START_TIMEOUT)
        if ready is None:
            raise RuntimeError(f"the job's pool did not start within {START_TIMEOUT:g} s (exit {self.job.exited()})")
        return float(ready["at"])

    def random_kill(self, started: float) -> None:
        s, sig = self.s, SIGNALS[self.s.how]
        base = started if s.who in ("parent", "group") else self.wait_ready()
        time.sleep(max(0.0, base + self.run.delay - time.monotonic()))  # the seeded random instant
        if s.who in ("worker", "workers"):
            victims = self.workers()[: 1 if s.who == "worker" else None]
            if not victims:
                raise RuntimeError("no live worker to kill")
            if (
                sig == signal.SIGINT
                and s.start_method == "forkserver"
                and not wait_until(lambda: all(map(ignores_sigint, victims)), 10.0)
            ):
                # Spawn and fork workers start with SIGINT blocked; a forkserver worker has a short
                # window after the server forks it in which a SIGINT still ends it (docs/pool.md).
                raise RuntimeError(f"workers {victims} did not come to ignore SIGINT within 10 s")
            fault = self.fault()
            for pid in victims:
                os.kill(pid, sig)
            if sig == signal.SIGINT:  # workers ignore it: the job goes on with the same workers
                self.rec.died = "nothing"
                self.lives_on(fault, [], spared=victims)
            else:
                self.rec.died = s.who
                self.lives_on(fault, victims)
        elif s.who == "guardian":
            found = self.guardians()
            if not found:
                raise RuntimeError("no guardian to kill")
            old = found[0]
            fault = self.fault()
            old.send_signal(sig)
            self.rec.died = "guardian"
            replaced = wait_until(lambda: [g for g in self.guardians() if g.pid != old.pid], 1.0)
            replaced_at = time.monotonic() - fault
            if replaced is None:
                self.rec.late = True
                self.rec.failures.append("no new guardian within 1 s")
            self.lives_on(fault, [])
            self.rec.clean_seconds = round(replaced_at, 3)
        elif s.who in ("parent", "group"):
            fault = self.fault()
            if s.who == "parent":
                os.kill(self.job.pid, sig)
            else:
                os.killpg(self.job.pid, sig)
            self.rec.died = s.who
            self.dies(fault)
        else:
            fault = self.kill_with_guardian(everything=s.who == "everything")
            self.dies(fault)

    def kill_with_guardian(self, everything: bool) -> float:
        guardian = self.guardians()
        if everything:  # stopped first, so that the pool cannot see its guardian die and start another
            members = [*self.processes(), psutil.Process(self.job.pid)]
            os.killpg(self.job.pid, signal.SIGSTOP)
            wait_until(lambda: all(stopped(p) for p in members), 10.0)
            if self.rec.remedy == "kernel":
                self.shmem_held = shmem_bytes()
                self.blocks = memfd_inodes([p.pid for p in members + guardian])
        fault = self.fault()
        for g in guardian:
            with contextlib.suppress(psutil.Error):
                g.kill()
        if everything:
            os.killpg(self.job.pid, signal.SIGKILL)
        else:
            os.kill(self.job.pid, signal.SIGKILL)
        self.rec.died = "everything" if everything else "parent+guardian"
        return fault

    def failpoint(self) -> None:
        if self.s.step == "pool.shutdown":
            self.job.expect("round", 30.0)
            self.job.close_input()
        seen: set[int] = set()

        def fell() -> str | None:
            if self.job.exited() is not None:
                return "parent"
            # Only the armed process can die of it; a parent's workers exit as it dies, a moment
            # before its exit can be seen.
            if self.s.who == "fp-parent":
                return None
            now = self.workers()
            seen.update(now)
            for m in self.job.messages:
                seen.update(m.get("workers", []))
            return "worker" if any(not psutil.pid_exists(p) for p in seen) else None

        who = wait_until(fell, FAILPOINT_TIMEOUT)
        fault = self.fault()
        if who is None:
            raise RuntimeError(
                f"nothing died at {self.s.step} within {FAILPOINT_TIMEOUT:g} s: the step was not reached"
            )
        self.rec.died = who
        if who == "parent":
            self.rec.remedy = "guardian"
            self.dies(fault)
        else:
            self.rec.remedy = "pool"
            self.lives_on(fault, [p for p in seen if not psutil.pid_exists(p)])

    def killed_sweep(self) -> None:
        self.wait_ready()
        self.job.expect("round", 30.0)
        self.kill_with_guardian(everything=True)
        wait_until(lambda: self.job.exited() is not None and not self.processes(), 10.0)
        self.rec.left_after_guardian = sorted(still_there(self.r.new_entries(self.before)))
        env = child_env(self.r.token, str(self.r.folder), {RUN_MARK: self.run_id})
        env["LEAKGUARD_FAILPOINT"] = f"sweep.after-unlink:{self.s.how}"
        done = subprocess.run(
            [sys.executable, "-m", "leakguard", "sweep", "--json", "--dir", str(self.r.folder)],
            env=env,
            capture_output=True,
            timeout=60,
            start_new_session=True,
            check=False,
        )
        died = {"kill": -signal.SIGKILL, "segv": -signal.SIGSEGV, "term": -signal.SIGTERM, "exit": 70}[self.s.how]
        if done.returncode != died and self.rec.left_after_guardian:
            self.rec.failures.append(
                f"the sweep was meant to die at sweep.after-unlink ({self.s.how}); it exited {done.returncode}: "
                + done.stderr.decode(errors="replace")[-300:]
            )
        self.rec.died = "everything, then a sweep"

    # -------------------------------------------------------------- what must follow

    def dies(self, fault: float) -> None:
        """The job is gone: the guardian (or, for the remedy "sweep", nobody) cleans up."""
        limit = LIMITS[self.rec.remedy]
        if self.rec.remedy == "kernel":
            self.kernel_frees(fault)
            return
        if self.rec.remedy == "sweep":
            wait_until(lambda: self.job.exited() is not None and not self.processes(), 10.0)
            self.rec.left_after_guardian = sorted(still_there(self.r.new_entries(self.before)))
            return
        assert limit is not None
        if wait_until(self.clean, limit - (time.monotonic() - fault)):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
            return
        if wait_until(self.clean, self.r.grace):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
            self.rec.late = True
            return
        self.rec.left_after_guardian = sorted(still_there(self.r.new_entries(self.before)))

    def kernel_frees(self, fault: float) -> None:
        """Everything was killed and nothing runs afterwards (SPEC 4): within the limit, no process
        holds or maps a block the job had, and Shmem fell by what those blocks held (less what
        other programs may have done meanwhile); /dev/shm never held anything of the job's.
        The runner's sweep comes only after this is decided."""
        limit = LIMITS["kernel"]
        assert limit is not None
        size = sum(self.blocks.values())

        def freed() -> bool:
            return (
                self.job.exited() is not None
                and not self.processes()
                and self.shmem_held - shmem_bytes() >= size - SHMEM_NOISE
                and not set(memfd_inodes(all_pids())) & set(self.blocks)
            )

        if wait_until(freed, limit - (time.monotonic() - fault)):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
        elif wait_until(freed, self.r.grace):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
            self.rec.late = True
        else:
            held = set(memfd_inodes(all_pids())) & set(self.blocks)
            self.rec.failures.append(
                f"anonymous blocks not freed {limit + self.r.grace:g} s after the kill: {len(held)} of "
                f"{len(self.blocks)} still held or mapped; Shmem fell by {self.shmem_held - shmem_bytes():,} "
                f"of {size:,} bytes"
            )
        # Nothing ran after the kill: whatever is in /dev/shm now is what the job left there.
        self.rec.left_after_guardian = sorted(still_there(self.r.new_entries(self.before)))

    def lives_on(self, fault: float, victims: list[int], spared: tuple[int, ...] | list[int] = ()) -> None:
        """The job goes on: a round ends after the fault, right, on live workers (within the limit);
        a whole round begun after it comes out right; then the job ends normally, leaving nothing."""
        mark = len(self.job.messages)

        def recovered() -> bool:
            """A round ended after the fault, each task right or failed alone, on live workers."""
            self.job.pump()
            return any(
                m.get("what") == "round"
                and m["at"] > fault
                and set(m["outcomes"]) <= {"ok", "lost"}
                and not set(victims) & set(m["workers"])
                for m in self.job.messages[mark:]
            )

        def usable() -> bool:
            """A whole round begun after the fault came out right: the pool is usable."""
            self.job.pump()
            return any(
                m.get("what") == "round" and m["started"] > fault and set(m["outcomes"]) == {"ok"}
                for m in self.job.messages[mark:]
            )

        limit = LIMITS[self.rec.remedy] or 2.0
        if wait_until(recovered, limit):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
        elif wait_until(recovered, self.r.grace):
            self.rec.clean_seconds = round(time.monotonic() - fault, 3)
            self.rec.late = True
        else:
            self.rec.failures.append(f"no round ended right on live workers within {limit + self.r.grace:g} s")
        if not wait_until(usable, 30.0):
            self.rec.failures.append(
                "no whole round came out right after the fault within 30 s: the pool is not usable"
            )
        gone = [p for p in spared if not psutil.pid_exists(p)]
        if gone:
            self.rec.failures.append(f"workers {gone} died of a signal they should ignore")
        for m in self.job.messages:
            if m.get("what") == "round" and set(m["outcomes"]) - {"ok", "lost"}:
                self.rec.failures.append(f"round {m['n']}: {m['outcomes']} {m['errors']}")
        self.job.close_input()
        joined = self.job.expect("joined", 30.0, after=mark)
        status = wait_until(lambda: boxed(self.job.exited()), 30.0)
        if joined is None or status != (0,):
            self.rec.failures.append(f"the job did not end normally after the fault (exit status {status})")
            return
        if not wait_until(self.clean, 2.0):
            self.rec.left_after_guardian = sorted(still_there(self.r.new_entries(self.before)))
