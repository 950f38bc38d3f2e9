"""The command line: ``leakguard sweep``, ``leakguard ls``, ``leakguard demo`` (SPEC 3).

Exit codes of ``sweep``: 0 when nothing that should go is left, 1 when something
could not be removed or a journal could not be read, 2 on a usage or
journal-folder error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from . import ForeignItem, JournalFolderError, SweepItem, SweepReport, __version__, sweep, sweep_foreign
from .demo.scenes import run_demo

__all__ = ["main", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m`` -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h, 1d)")
    return sum(float(n) * _UNITS[u or "s"] for n, u in parts)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"


def _rows(report: SweepReport, *, for_ls: bool) -> list[tuple[str, SweepItem]]:
    removed = "orphaned" if for_ls else ("would remove" if report.dry_run else "removed")
    groups: list[tuple[str, list[SweepItem]]] = [
        (removed, report.removed),
        ("live" if for_ls else "kept", report.kept),
        ("other boot" if for_ls else "dropped", report.dropped),
        ("gone", report.gone),
        ("error", report.errors),
        ("skipped", report.skipped),
    ]
    return [(label, item) for label, items in groups for item in items]


def _table(rows: list[tuple[str, SweepItem]], *, foreign: bool = False) -> str:
    # A foreign leftover has no journal, so no owner process: the pid shown is one that
    # uses it (maps it, holds it open), where /proc named one. EVIDENCE says what decided:
    # a write lease, /proc, or what lstat showed (SPEC 3).
    header = ["STATE", "KIND", "NAME", "SIZE", "USED BY" if foreign else "OWNER", "AGE"]
    header += ["EVIDENCE", "WHY"] if foreign else ["WHY"]
    lines = [header]
    for label, item in rows:
        row = [
            label,
            item.kind or "-",
            item.name or item.journal,
            _size(item.size),
            "-" if item.owner_pid is None else str(item.owner_pid),
            _age(item.age),
        ]
        if foreign:
            row.append((item.evidence if isinstance(item, ForeignItem) else None) or "-")
        lines.append([*row, item.reason])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in lines
    )


def _summary(report: SweepReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    return (
        f"{verb} {len(report.removed)} object(s), {_size(report.bytes_freed)}; "
        f"kept {len(report.kept)}; dropped {len(report.dropped)} from another boot; "
        f"{len(report.gone)} already gone; {len(report.errors)} error(s); "
        f"{len(report.journals_removed)} journal(s) removed; {report.seconds * 1000:.1f} ms"
    )


def _ls_document(report: SweepReport) -> dict[str, object]:
    """``ls --json`` (SPEC 3): the objects and their owners, not a sweep's report."""
    objects = [
        {
            "name": item.name,
            "kind": item.kind,
            # An anonymous block (a memfd) is listed while it lives; it never needs a sweep.
            "anonymous": item.kind == "memfd",
            "size": item.size,
            "owner_pid": item.owner_pid,
            "age": item.age,
            "state": label,
            "reason": item.reason,
            "journal": item.journal,
        }
        for label, item in _rows(report, for_ls=True)
    ]
    owners = sorted({o["owner_pid"] for o in objects if o["owner_pid"] is not None and o["state"] == "live"})
    return {"folder": report.folder, "live_owners": owners, "objects": objects}


def _print_report(report: SweepReport, *, as_json: bool, for_ls: bool = False, foreign: bool = False) -> None:
    if as_json:
        print(json.dumps(_ls_document(report) if for_ls else report.to_dict(), indent=2))
        return
    if for_ls:
        title = "leakguard ls"
    else:
        title = "leakguard sweep" + (" --foreign" if foreign else "") + (" --dry-run" if report.dry_run else "")
    print(f"{title}: {report.folder}")
    rows = _rows(report, for_ls=for_ls)
    if rows:
        print(_table(rows, foreign=foreign))
    else:
        print("nothing here")
    if not for_ls:
        print(_summary(report))


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.foreign:
        report = sweep_foreign(older_than=args.older_than, dry_run=args.dry_run or not args.yes)
    else:
        if args.yes or args.older_than is not None:
            raise _UsageError("--yes and --older-than go with --foreign")
        report = sweep(dry_run=args.dry_run, folder=_folder_argument(args))
    _print_report(report, as_json=args.json, foreign=args.foreign)
    if args.foreign and report.dry_run and report.removed and not args.json:
        print("(dry run: add --yes to remove them)")
    return 0 if report.clean else 1


def _cmd_ls(args: argparse.Namespace) -> int:
    report = sweep(dry_run=True, folder=_folder_argument(args))
    _print_report(report, as_json=args.json, for_ls=True)
    return 0


def _folder_argument(args: argparse.Namespace) -> str | None:
    """The folder a person named (``--dir``, else ``$LEAKGUARD_DIR``): it must exist (exit 2
    if not, as a typo there must not read as "nothing to sweep"). None: the per-user default,
    which may not exist yet (no object was ever made)."""
    named: str | None = args.dir or os.environ.get("LEAKGUARD_DIR") or None
    if named is not None and args.dir is None and not os.path.lexists(named):
        raise JournalFolderError(os.path.abspath(named), "does not exist (LEAKGUARD_DIR names it)")
    return named


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo()


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leakguard",
        description="Shared memory and named semaphores that cannot outlive the job.",
    )
    parser.add_argument("--version", action="version", version=f"leakguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("sweep", help="remove what dead owners left in /dev/shm")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--dir", metavar="DIR", help="journal folder (default: $LEAKGUARD_DIR or the per-user default)")
    p.add_argument(
        "--foreign",
        action="store_true",
        help="look instead for leftovers of multiprocessing, loky and joblib (dry run unless --yes)",
    )
    p.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="AGE",
        help="with --foreign: only leftovers older than this (default 10m)",
    )
    p.add_argument("--yes", action="store_true", help="with --foreign: really remove them")
    p.set_defaults(func=_cmd_sweep)

    p = commands.add_parser("ls", help="list owners and their objects: live, orphaned, ...")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--dir", metavar="DIR", help="journal folder (default: $LEAKGUARD_DIR or the per-user default)")
    p.set_defaults(func=_cmd_ls)

    p = commands.add_parser("demo", help="SIGKILL a worker and whole jobs: leakguard and multiprocessing side by side")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "foreign", False):
        if args.dir is not None:
            parser.error("--dir does not go with --foreign (foreign leftovers have no journal)")
        if args.older_than is None:
            args.older_than = 600.0
    try:
        code: int = args.func(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except JournalFolderError as exc:
        print(f"leakguard: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `leakguard ls | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
