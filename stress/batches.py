"""Batches of runs: each beside a fresh bystander in a fresh journal folder.

The bystander (stress/bystander.py, a live leakguard pool) lives in the same folder as
the batch's jobs, so that every sweep stress runs there must keep its objects; after
each run it says whether it lost anything. A batch shares one bystander because
starting one per run would cost as much as the run itself (docs/stress.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .observe import Child, child_env, inodes, wait_until
from .report import Record, Report, reproduce
from .runner import START_TIMEOUT, Runner

if TYPE_CHECKING:
    from .scenarios import Run

BATCH = 10  # runs per bystander (and per journal folder)


class Bystander:
    """A bystander process and what it owns; ``check()`` says what it lost, if anything."""

    def __init__(self, token: str, folder: str, logs: Path) -> None:
        err = str(logs / f"bystander-{Path(folder).name}.err")
        self.child = Child(["-m", "stress.bystander"], child_env(token, folder), err)
        ready = self.child.expect("ready", START_TIMEOUT)
        if ready is None:
            err = self.child.stderr()
            self.child.reap()
            raise RuntimeError(f"the bystander did not start within {START_TIMEOUT:g} s; its stderr:\n{err}")
        self.entries: list[str] = ready["entries"]
        self.inodes = inodes(self.entries)
        self.bad = 0
        self.rounds = 0

    def check(self) -> list[str]:
        lost = [f"{n} removed or replaced" for n, ino in inodes(self.entries).items() if ino != self.inodes[n]]
        mark = len(self.child.messages)
        self.child.send()
        status = self.child.expect("status", 10.0, after=mark)
        if status is None:
            return [*lost, f"no status from the bystander (exit status {self.child.exited()}): {self.child.stderr()}"]
        if status["bad"] > self.bad:
            lost.append(f"{status['bad'] - self.bad} bystander rounds went wrong: {status['errors']}")
        if status["rounds"] == self.rounds:
            lost.append(f"the bystander made no progress since the last check (still {self.rounds} rounds)")
        self.bad = status["bad"]
        self.rounds = status["rounds"]
        del self.child.messages[:-10]  # bounded over a long soak
        return lost

    def stop(self) -> list[str]:
        """End it normally; what went wrong, if anything."""
        mark = len(self.child.messages)
        self.child.close_input()
        final = self.child.expect("status", 30.0, after=mark)
        wait_until(lambda: self.child.exited() is not None, 10.0)
        status = self.child.exited()
        problems = []
        if final is None or final["bad"] or status != 0:
            problems.append(f"the bystander ended badly (exit status {status}, {final}): {self.child.stderr()}")
        self.child.reap()
        return problems


def run_plan(runs: list[Run], report: Report, token: str, work: Path, batch: int) -> None:
    """Every run, ``batch`` at a time beside a fresh bystander in a fresh journal folder."""
    width = len(str(len(runs)))
    done = 0
    for first in range(0, len(runs), batch):
        folder = work / f"dir-{first // batch}"
        folder.mkdir(mode=0o700)
        bystander = Bystander(token, str(folder), work)
        try:
            runner = Runner(token, folder, work, bystander)
            for run in runs[first : first + batch]:
                rec = runner.run(run)
                report.add(rec)
                done += 1
                print(progress(done, len(runs), width, rec, report.seed), flush=True)
        finally:
            report.problems += bystander.stop()


def progress(done: int, total: int, width: int, rec: Record, seed: int) -> str:
    clean = "-" if rec.clean_seconds is None else f"{rec.clean_seconds:.3f} s"
    state = "ok  " if rec.ok else "FAIL"
    line = f"[{done:>{width}}/{total}] {state} {rec.scenario:<62} died: {rec.died or '?':<10} clean: {clean}"
    if not rec.ok:
        line += f"\n    reproduce: {reproduce(rec, seed)}"
    return line
