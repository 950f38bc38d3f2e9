"""``python -m stress``: the command line, the run of the plan, and the exit code.

Exit status: 0 when leakguard's rows show no leak, orphan, bystander loss, late cleanup
or failed outcome; 1 otherwise; 2 on a usage error. Everything it starts carries
``LEAKGUARD_STRESS=<token>``, and is killed and reaped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import leakguard
from leakguard.cli import parse_duration

from .batches import BATCH, run_plan
from .observe import (
    MARK,
    enter_private_shm,
    kill_all,
    leave_out_others_objects,
    marked,
    own_tmpdir,
    remove_tmpdir,
    wait_until,
)
from .report import Report, failures_text, table, verdict
from .scenarios import Run, delay_for, matrix, parse, plan, quick

DEFAULT_RUNS = 500
QUICK_RUNS = 0  # --quick: the sample once, no extra draws


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stress", description="leakguard's kill-scenario matrix")
    p.add_argument("--quick", action="store_true", help="a representative sample (under 3 minutes)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="at least this many kills (default 500)")
    p.add_argument("--seed", type=int, help="makes the plan and its delays repeatable (default: random, printed)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="with --only: runs 0..N-1 of each; with --anchors: N of each")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON too")
    p.add_argument("--duration", type=parse_duration, help="a soak of this length (e.g. 10m): concurrent pools, kills")
    p.add_argument("--anchors", action="store_true", help="the comparable scenarios on other pools, side by side")
    p.add_argument("--list", action="store_true", help="print the plan's scenarios and exit")
    p.add_argument("--batch", type=int, default=BATCH, help="runs per bystander and journal folder (default 10)")
    p.add_argument(
        "--real-shm",
        action="store_true",
        help="run on the machine's /dev/shm even as root (default as root: a private one; see docs/stress.md)",
    )
    return p


def _runs(args: argparse.Namespace, seed: int) -> list[Run]:
    if args.only:
        known = set(matrix())
        try:
            chosen = [parse(n) for n in args.only]
            unknown = [s.name for s in chosen if s not in known]
            if unknown:
                raise ValueError(f"no such scenario: {', '.join(unknown)} (python -m stress --list shows them all)")
        except ValueError as exc:
            print(f"python -m stress: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return [Run(s, k, delay_for(seed, s, k)) for s in chosen for k in range(args.repeat)]
    if args.quick:
        return plan(quick(), seed, QUICK_RUNS)
    return plan(matrix(), seed, args.runs)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, *, isolate: bool = False) -> int:
    """``isolate`` (the command line): a private /dev/shm as root, unless --real-shm; on
    the machine's, another program's live objects are left out of the diffs; a TMPDIR
    of the run's own. Called in-process (the tests), the caller provides all three."""
    args = parser().parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    runs = _runs(args, seed)
    if args.list:
        for run in runs:
            print(f"{run.scenario.name}  delay {run.delay:.3f} s")
        return 0
    # As root, a private /dev/shm: what is in it is this run's, so its diffs are exact and
    # no other program's object can be counted or touched. Before anything starts a thread.
    shm_problem = "called in-process" if not isolate else "--real-shm" if args.real_shm else enter_private_shm()
    token = secrets.token_hex(6)
    os.environ[MARK] = token  # this process too: a final census finds everything of this session
    if isolate and shm_problem:
        leave_out_others_objects(MARK, token)  # the machine's /dev/shm: another program's live objects are not ours
    work = Path(tempfile.mkdtemp(prefix="leakguard-stress-"))
    # The pymp-* folders (multiprocessing) of the processes it kills, joblib's: in a folder of its own.
    tmp = tempfile.mkdtemp(prefix="leakguard-stress-tmp-") if isolate else None
    if tmp:
        own_tmpdir(tmp)
    mode = "soak" if args.duration else "anchors" if args.anchors else "quick" if args.quick else "full"
    report = Report(seed=seed, mode=mode, keep_runs=2000 if args.duration else 100_000)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    where = f"the machine's ({shm_problem})" if shm_problem else "a private tmpfs"
    print(f"python -m stress: seed {seed} (repeat with --seed {seed}); work folder {work}", flush=True)
    print(f"python -m stress: /dev/shm: {where}", flush=True)
    interrupted = False
    try:
        if args.duration:
            from .soak import soak

            soak(args.duration, report, token, work, seed)
        elif args.anchors:
            from .anchors import anchors

            anchors(report, token, work, seed, max(1, args.repeat))
        else:
            run_plan(runs, report, token, work, max(1, args.batch))
    except KeyboardInterrupt:
        interrupted = True
        report.problems.append("interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
        _clean_up(token, work, tmp, report)
    print()
    if report.total.runs:
        print(table(report))
    if args.anchors:
        from .anchors import anchors_table

        print()
        print(anchors_table(report))
    if report.failures:
        print("\nfailing runs (first 10):")
        print(failures_text(report))
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"\n{verdict(report)} in {time.monotonic() - started:.0f} s")
    if args.json:
        report.write_json(args.json)
    return 130 if interrupted else 0 if report.passed else 1


def _clean_up(token: str, work: Path, tmp: str | None, report: Report) -> None:
    """Kill every process of this session, sweep its folders, remove its work and temporary folders."""
    # A guardian exits a moment after its pool's process: give the last ones time to.
    wait_until(lambda: not marked(MARK, token), 5.0)
    left = marked(MARK, token)
    if left:
        report.problems.append(f"{len(left)} processes of this session were still running at the end; killed")
        kill_all(left)
    for folder in sorted(work.glob("dir-*")):
        with contextlib.suppress(Exception):
            leakguard.sweep(folder=str(folder))
    shutil.rmtree(work, ignore_errors=True)
    if tmp:
        remove_tmpdir(tmp)


if __name__ == "__main__":
    sys.exit(main(isolate=True))
