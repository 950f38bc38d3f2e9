"""Aggregates of runs, the table a person reads, the JSON document, and the verdict.

Memory stays bounded however many runs are added: a row keeps counts and worst times,
and the report keeps at most ``keep_runs`` per-run records and ``keep_failures``
failing ones (the soak adds runs for as long as it is asked to).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .scenarios import LIMITS, parse


@dataclass
class Record:
    """What one run showed. ``leaks`` are the leftovers the remedy should have removed."""

    scenario: str
    repeat: int
    delay: float
    remedy: str
    died: str = ""  # which process died: parent, worker, group, nothing...
    left_after_guardian: list[str] = field(default_factory=list)
    left_after_sweep: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    bystander_loss: list[str] = field(default_factory=list)
    clean_seconds: float | None = None
    late: bool = False
    failures: list[str] = field(default_factory=list)  # the job's outcome, or the run itself
    seconds: float = 0.0
    diagnosis: list[str] = field(default_factory=list)  # what a dry-run sweep said of the leftovers
    fault_at: float | None = None  # time.monotonic() of the fault

    @property
    def ok(self) -> bool:
        return not (self.leaks or self.orphans or self.bystander_loss or self.late or self.failures)

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        del found["fault_at"]
        return found


def row_of(name: str) -> str:
    """The table row of a scenario: random kills by who and how, failpoints by who and step."""
    s = parse(name)
    if s.who == "live-sweep":
        return "sweep beside live pools (soak)"
    if s.when == "random" and s.remedy == "kernel":
        return f"{s.who} {s.how} at a random instant, anonymous blocks only, nothing run after"
    if s.when == "random":
        return f"{s.who} {s.how} at a random instant"
    if s.who == "sweep":
        return "sweep killed at sweep.after-unlink"
    return f"{s.who.removeprefix('fp-')} dies at {s.step}"


@dataclass
class Row:
    runs: int = 0
    remedies: set[str] = field(default_factory=set)
    left_after_guardian: int = 0  # runs with leftovers once the guardian (or pool) was done
    leaks: int = 0
    orphans: int = 0
    bystander: int = 0
    late: int = 0
    failed: int = 0
    worst: float | None = None

    def add(self, rec: Record) -> None:
        self.runs += 1
        self.remedies.add(rec.remedy)
        self.left_after_guardian += bool(rec.left_after_guardian)
        self.leaks += bool(rec.leaks)
        self.orphans += bool(rec.orphans)
        self.bystander += bool(rec.bystander_loss)
        self.late += rec.late
        self.failed += bool(rec.failures)
        if rec.clean_seconds is not None:
            self.worst = max(self.worst or 0.0, rec.clean_seconds)

    @property
    def bad(self) -> bool:
        return bool(self.leaks or self.orphans or self.bystander or self.late or self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "remedy": sorted(self.remedies),
            "left_after_guardian": self.left_after_guardian,
            "leaks": self.leaks,
            "orphans": self.orphans,
            "bystander_losses": self.bystander,
            "late": self.late,
            "failed": self.failed,
            "worst_clean_seconds": self.worst,
        }


@dataclass
class Report:
    seed: int
    mode: str
    keep_runs: int = 100_000
    keep_failures: int = 50
    rows: dict[str, Row] = field(default_factory=dict)
    scenarios: dict[str, Row] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    total: Row = field(default_factory=Row)
    anchors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # failures outside any one run (a bystander's end)

    def add(self, rec: Record) -> None:
        self.rows.setdefault(row_of(rec.scenario), Row()).add(rec)
        self.scenarios.setdefault(rec.scenario, Row()).add(rec)
        self.total.add(rec)
        if len(self.runs) < self.keep_runs:
            self.runs.append(rec.as_dict())
        if not rec.ok and len(self.failures) < self.keep_failures:
            self.failures.append({**rec.as_dict(), "reproduce": reproduce(rec, self.seed)})

    @property
    def passed(self) -> bool:
        return not self.total.bad and not self.problems and self.total.runs > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "passed": self.passed,
            "total": self.total.as_dict(),
            "rows": {k: v.as_dict() for k, v in self.rows.items()},
            "scenarios": {k: v.as_dict() for k, v in self.scenarios.items()},
            "failures": self.failures,
            "runs": self.runs,
            "anchors": self.anchors,
            "notes": self.notes,
            "problems": self.problems,
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=1)
            f.write("\n")


def reproduce(rec: Record, seed: int) -> str:
    return f"python -m stress --only '{rec.scenario}' --seed {seed} --repeat {rec.repeat + 1}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _limit(remedies: set[str]) -> str:
    limits = {LIMITS[r] for r in remedies}
    if remedies == {"nothing"}:
        return "-"
    if limits == {None}:
        return "sweep"
    return "/".join(f"{x:g} s" for x in sorted(x for x in limits if x is not None))


def table(report: Report) -> str:
    head = ["scenario", "remedy", "runs", "left by guardian", "leaks", "orphans", "bystander", "late", "failed",
            "worst clean", "limit"]  # fmt: skip
    lines = []
    for name, row in sorted(report.rows.items()):
        lines.append(
            [
                name,
                "/".join(sorted(row.remedies)),
                str(row.runs),
                str(row.left_after_guardian),
                str(row.leaks),
                str(row.orphans),
                str(row.bystander),
                str(row.late),
                str(row.failed),
                _seconds(row.worst),
                _limit(row.remedies),
            ]
        )
    t = report.total
    lines.append(["total", "", str(t.runs), str(t.left_after_guardian), str(t.leaks), str(t.orphans),
                  str(t.bystander), str(t.late), str(t.failed), _seconds(t.worst), ""])  # fmt: skip
    return aligned(head, lines)


def aligned(head: list[str], lines: list[list[str]], footer: bool = True) -> str:
    """Columns padded to their widths; the last line set apart as a total if ``footer``."""
    widths = [max(len(r[k]) for r in [head, *lines]) for k in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if k and _numeric(c) else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    if not footer or not lines:
        return "\n".join([fmt(head), rule, *(fmt(r) for r in lines)])
    return "\n".join([fmt(head), rule, *(fmt(r) for r in lines[:-1]), rule, fmt(lines[-1])])


def _numeric(cell: str) -> bool:
    return cell in ("-", "") or cell.replace(".", "", 1).replace(" s", "").isdigit()


def verdict(report: Report) -> str:
    t = report.total
    if report.passed:
        return (f"PASS: {t.runs} runs, no leak, no orphan, no bystander loss, nothing late "
                f"(worst time to clean {_seconds(t.worst)} s; seed {report.seed})")  # fmt: skip
    return (f"FAIL: {t.runs} runs: {t.leaks} with leaks, {t.orphans} with orphans, {t.bystander} with "
            f"bystander losses, {t.late} late, {t.failed} failed, {len(report.problems)} other problems "
            f"(seed {report.seed})")  # fmt: skip


def failures_text(report: Report, limit: int = 10) -> str:
    out = []
    for f in report.failures[:limit]:
        what = []
        for key in ("leaks", "orphans", "bystander_loss", "failures", "diagnosis"):
            if f[key]:
                what.append(f"{key}: {f[key]}")
        if f["late"]:
            what.append(f"late: clean after {f['clean_seconds']} s")
        out.append(f"  {f['scenario']} (delay {f['delay']} s): " + "; ".join(what)[:600])
        out.append(f"    reproduce: {f['reproduce']}")
    return "\n".join(out)
