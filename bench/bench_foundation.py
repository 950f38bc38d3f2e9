"""What the foundation costs: creating and freeing a block, and sweeping 10,000 entries.

Every number is measured beside its anchor in the same run, interleaved so that both
share the machine's noise, and reported as a median with p10/p90 and a ratio:

1. Create + free one 4 KiB block. Anchor: ``multiprocessing.shared_memory.SharedMemory``
   with its resource_tracker process (registering and unregistering are what users pay).
   Rows: ``leakguard.SharedMemory`` and ``leakguard.shared_array(512)`` + ``free()``.
   Each round times every operation on its own and keeps the round's median; the order
   of the variants rotates from round to round. Ratios are per round, then summarised.
   A second view counts CPU time per operation, the tracker process's included.

2. ``leakguard.sweep()`` of a folder holding 1,000, 10,000 and 100,000 entries (one
   owner's journal). Anchor (the floor any cleanup pays): unlinking as many files in
   /dev/shm whose names are already known, measured beside each sweep. Rows: entries
   orphaned by a SIGKILLed owner (blocks only; blocks and semaphores mixed), all
   removed; and the same folders while their owner is alive, all kept, swept twice in
   a row (the second time the journal is unchanged). A scaling table puts the sizes
   side by side.

Usage::

    python bench/bench_foundation.py [--quick] [--sizes N[,N...]] [--json FILE]

Every measurement runs in a child process of its own session with its own journal
folder (LEAKGUARD_DIR, in a fresh temporary folder), so Ctrl-C reaches only this
process, and never lands inside a create or a free. When the run is interrupted
(Ctrl-C, SIGTERM, SIGHUP) the children are asked to stop, then killed, reaped and their
folders swept. On a shared machine, run it in a private /dev/shm (``unshare -m``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing import resource_tracker
from multiprocessing import shared_memory as std_shm
from types import FrameType
from typing import Any

import psutil
from benchkit import Summary, check, paired_ratios, percentile, raise_exit, signals_ignored, summarise

import leakguard

SHM = "/dev/shm"
BLOCK = 4096  # bytes per block, in every measurement
ARRAY_LEN = BLOCK // 8  # float64 elements in a 4 KiB shared_array


@dataclass(frozen=True)
class Config:
    rounds: int  # create + free: rounds, each timing `ops` operations per variant
    ops: int
    warmup: int  # untimed operations per variant first (starts the resource tracker)
    sizes: tuple[int, ...]  # entries in each swept folder: one table per size
    reps: int  # sweep repetitions, per size
    sem_every: int  # in the mixed folder, every n-th entry is a semaphore


FULL = Config(rounds=20, ops=200, warmup=100, sizes=(1_000, 10_000, 100_000), reps=5, sem_every=4)
QUICK = Config(rounds=3, ops=50, warmup=20, sizes=(200, 1_000), reps=2, sem_every=4)


# ---------------------------------------------------------------------------- cleanup state

# Everything a run creates, so that the `finally` in main() can undo it whatever happened.
_children: list[subprocess.Popen[bytes]] = []
_child_folders: list[str] = []
_floor_paths: set[str] = set()


def _kill(proc: subprocess.Popen[bytes], grace: float = 0) -> None:
    """Stop the child and reap it: SIGKILL its process group (its own session).

    With ``grace``, first ask: SIGTERM and EOF on stdin make it stop creating and exit
    normally, which releases what it created. A SIGKILL during sem_open() can leave
    glibc's temporary file (/dev/shm/sem.XXXXXX) that no journal names.
    """
    if grace:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def _cleanup(root: str) -> list[str]:
    """Kill and reap children, sweep their folders, remove floor files; returns problems."""
    problems: list[str] = []
    for proc in list(_children):
        _kill(proc, grace=60)
    for folder in list(_child_folders):
        if os.path.isdir(folder):
            report = leakguard.sweep(folder=folder)
            problems += [f"sweep of {folder}: {e.name} {e.reason}" for e in report.errors]
        _child_folders.remove(folder)
    for path in list(_floor_paths):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _floor_paths.discard(path)
    shutil.rmtree(root, ignore_errors=True)
    return problems


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _spawn(args: list[str], folder: str, stdin: int) -> subprocess.Popen[bytes]:
    """Start this script as a child in its own session, with ``folder`` as LEAKGUARD_DIR.

    Stop signals are held back until the child is in ``_children``: a Ctrl-C while
    Popen waits for the exec would otherwise lose a child nobody reaps. The child
    inherits the blocked mask and unblocks it first thing (main()).
    """
    command = [sys.executable, *(f"-W{w}" for w in sys.warnoptions), os.path.abspath(__file__), *args]
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        proc = subprocess.Popen(
            command,
            env=dict(os.environ, LEAKGUARD_DIR=folder),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _children.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return proc


# A child's SIGTERM handler only sets this flag; the child stops between operations.
# (An exception raised at the wrong moment inside a create, as a KeyboardInterrupt
# would be, can leave an object that no journal names in leakguard 0.1.0.)
_stop_requested: list[int] = []


def _request_stop(signum: int, frame: FrameType | None) -> None:
    _stop_requested.append(signum)


# ---------------------------------------------------------------------------- 1. create + free


def op_stdlib() -> None:
    m = std_shm.SharedMemory(create=True, size=BLOCK)
    m.close()
    m.unlink()


def op_leakguard_shm() -> None:
    m = leakguard.SharedMemory(create=True, size=BLOCK)
    m.close()
    m.unlink()


def op_leakguard_array() -> None:
    a = leakguard.shared_array(ARRAY_LEN)
    leakguard.free(a)
    # returning drops the last reference: the block is unmapped here, inside the timing


CREATE_FREE: list[tuple[str, str, Callable[[], None]]] = [
    ("stdlib_shared_memory", "stdlib SharedMemory + resource_tracker (anchor)", op_stdlib),
    ("leakguard_shared_memory", "leakguard.SharedMemory", op_leakguard_shm),
    ("leakguard_shared_array", f"leakguard.shared_array({ARRAY_LEN}) + free()", op_leakguard_array),
]
ANCHOR = CREATE_FREE[0][0]


def _time_each(op: Callable[[], None], n: int) -> list[float]:
    """Per-operation times in microseconds."""
    clock = time.perf_counter_ns
    times: list[float] = []
    for _ in range(n):
        t0 = clock()
        op()
        times.append((clock() - t0) / 1000)
    return times


def process_cpu_ns(pid: int) -> int:
    """CPU time a single-threaded process has used: /proc/PID/schedstat (ns), else psutil."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        t = psutil.Process(pid).cpu_times()
        return int((t.user + t.system) * 1e9)


def _tracker_pid() -> int:
    """The standard library's resource_tracker: the one child this process has by now."""
    trackers = [p.pid for p in psutil.Process().children() if any("resource_tracker" in part for part in p.cmdline())]
    check(len(trackers) == 1, f"expected one resource_tracker child process, found {trackers}")
    return trackers[0]


def _settled_cpu_ns(pid: int) -> int:
    """The tracker's CPU time once it has worked through its pipe (bounded wait)."""
    deadline = time.monotonic() + 2
    last = process_cpu_ns(pid)
    while True:
        time.sleep(0.01)  # the poll interval of a wait with a deadline
        now = process_cpu_ns(pid)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def bench_create_free(cfg: Config) -> dict[str, Any]:
    """Wall time per operation, and CPU time per operation including the tracker's.

    On two cores the tracker sometimes runs beside us and sometimes takes our core, so
    the standard library's wall time per operation is bimodal (about 18 or 37 us here);
    CPU time counts the tracker's work wherever it ran. All the tracker's CPU from the
    start of one stdlib batch to the start of the next is charged to that batch (it
    works for nobody else), so work it finishes after a batch ends is not lost.
    """
    for _, _, op in CREATE_FREE:
        _time_each(op, cfg.warmup)
    tracker = _tracker_pid()
    wall: dict[str, list[float]] = {key: [] for key, _, _ in CREATE_FREE}
    cpu: dict[str, list[float]] = {key: [] for key, _, _ in CREATE_FREE}
    tracker_marks = [_settled_cpu_ns(tracker)]
    for r in range(cfg.rounds):
        shift = r % len(CREATE_FREE)
        for key, _, op in CREATE_FREE[shift:] + CREATE_FREE[:shift]:
            if _stop_requested:
                raise SystemExit(128 + _stop_requested[0])
            gc.collect()
            if key == ANCHOR and r:
                tracker_marks.append(process_cpu_ns(tracker))
            own0 = time.thread_time_ns()
            wall[key].append(percentile(_time_each(op, cfg.ops), 50))
            cpu[key].append((time.thread_time_ns() - own0) / 1000 / cfg.ops)
    tracker_marks.append(_settled_cpu_ns(tracker))
    tracker_us = [(b - a) / 1000 / cfg.ops for a, b in itertools.pairwise(tracker_marks)]
    check(len(tracker_us) == cfg.rounds, "one tracker measurement per round")
    cpu[ANCHOR] = [own + extra for own, extra in zip(cpu[ANCHOR], tracker_us, strict=True)]
    return {
        "unit": "us",
        "rounds": cfg.rounds,
        "ops_per_round": cfg.ops,
        "rows": {key: summarise(values) for key, values in wall.items()},
        "ratios": {key: paired_ratios(wall[key], wall[ANCHOR]) for key, _, _ in CREATE_FREE[1:]},
        "cpu_rows": {key: summarise(values) for key, values in cpu.items()},
        "cpu_ratios": {key: paired_ratios(cpu[key], cpu[ANCHOR]) for key, _, _ in CREATE_FREE[1:]},
        "tracker_cpu": summarise(tracker_us),
    }


def create_free_child(cfg: Config) -> int:
    """The child that measures create + free; writes its results to stdout as JSON."""
    signal.signal(signal.SIGTERM, _request_stop)
    result = bench_create_free(cfg)
    # The tracker is our child: stop it (it then checks that nothing leaked) before we
    # report. (_stop: Python 3.8+, not in typeshed.)
    stop_tracker = getattr(resource_tracker._resource_tracker, "_stop", None)
    if callable(stop_tracker):
        stop_tracker()
    sys.stdout.write(json.dumps(result))
    return 0


def run_create_free(root: str, cfg: Config, quick: bool) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="create-free-", dir=root)
    _child_folders.append(folder)
    proc = _spawn(["--child-create-free", *(["--quick"] if quick else [])], folder, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=30 * 60)
    _children.remove(proc)
    check(proc.returncode == 0, f"the create + free child failed (exit {proc.returncode}):\n{err.decode()}")
    check(not os.listdir(folder), f"the create + free child left {os.listdir(folder)} in its journal folder")
    os.rmdir(folder)
    _child_folders.remove(folder)
    result: dict[str, Any] = json.loads(out)
    return result


# ---------------------------------------------------------------------------- 2. sweep


def child_main(entries: int, sem_every: int, names_path: str) -> int:
    """An owner: create ``entries`` objects, list their /dev/shm names, then wait.

    The parent SIGKILLs it once it is ready. Asked to stop earlier (SIGTERM), or should
    the parent die (stdin reaches EOF), it exits normally, releasing what it created.
    """
    signal.signal(signal.SIGTERM, _request_stop)
    semaphores: list[leakguard.Semaphore] = []  # a dropped Semaphore is unlinked: keep them
    names: list[str] = []
    for i in range(entries):
        if _stop_requested:
            return 0
        if sem_every and i % sem_every == sem_every - 1:
            sem = leakguard.Semaphore(0)
            semaphores.append(sem)
            names.append("sem." + sem.name.lstrip("/"))
        else:
            block = leakguard.SharedMemory(create=True, size=BLOCK)
            block.close()  # the block stays, owned and journaled; only this mapping goes
            names.append(block.name)
    with open(names_path, "w", encoding="ascii") as f:
        f.write("\n".join(names))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.buffer.read()
    return 0


def _spawn_owner(root: str, tag: str, entries: int, sem_every: int) -> tuple[subprocess.Popen[bytes], str, list[str]]:
    folder = tempfile.mkdtemp(prefix=f"owner-{tag}-", dir=root)
    _child_folders.append(folder)
    names_path = os.path.join(root, f"names-{tag}.txt")
    proc = _spawn(["--child-owner", str(entries), str(sem_every), names_path], folder, stdin=subprocess.PIPE)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = bool(sel.select(timeout=max(60.0, entries / 50))) and proc.stdout.readline() == b"READY\n"
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        _kill(proc)
        raise RuntimeError(f"owner process did not get ready (exit {proc.returncode}):\n{err}")
    with open(names_path, encoding="ascii") as f:
        names = f.read().split("\n")
    os.unlink(names_path)
    missing = [n for n in names if not os.path.exists(os.path.join(SHM, n))]
    check(len(names) == entries, f"owner listed {len(names)} objects, not {entries}")
    check(not missing, f"owner's objects missing from {SHM}: {missing[:3]}")
    return proc, folder, names


def _timed_sweep(folder: str) -> tuple[float, leakguard.SweepReport]:
    gc.collect()
    t0 = time.perf_counter()
    report = leakguard.sweep(folder=folder)
    return (time.perf_counter() - t0) * 1000, report


def _check_live(report: leakguard.SweepReport, entries: int) -> None:
    check(len(report.kept) == entries, f"live sweep kept {len(report.kept)} of {entries}")
    check(not report.removed, f"live sweep removed {len(report.removed)} entries, e.g. {report.removed[:1]}")
    check(not report.errors, f"live sweep failed: {report.errors[:3]}")


def sweep_rep(root: str, tag: str, entries: int, sem_every: int) -> tuple[float, float, float]:
    """One owner: sweep its folder twice while it lives, SIGKILL it, sweep again.

    Returns the times of the first live sweep, the second (its journal unchanged since
    the first) and the sweep of the orphans, in ms.
    """
    proc, folder, names = _spawn_owner(root, tag, entries, sem_every)
    live_ms, live = _timed_sweep(folder)
    _check_live(live, entries)
    again_ms, again = _timed_sweep(folder)
    _check_live(again, entries)
    _kill(proc)
    orphan_ms, orphan = _timed_sweep(folder)
    check(len(orphan.removed) == entries, f"sweep removed {len(orphan.removed)} of {entries}")
    check(not orphan.kept, f"sweep kept {len(orphan.kept)} orphans, e.g. {orphan.kept[:1]}")
    check(not orphan.errors, f"sweep failed: {orphan.errors[:3]}")
    left = [n for n in names if os.path.lexists(os.path.join(SHM, n))]
    check(not left, f"{len(left)} entries still in {SHM} after the sweep, e.g. {left[:3]}")
    check(not os.listdir(folder), f"sweep left files in the journal folder: {os.listdir(folder)}")
    os.rmdir(folder)
    _child_folders.remove(folder)
    return live_ms, again_ms, orphan_ms


def floor_rep(tag: str, entries: int) -> float:
    """The anchor: unlink ``entries`` files of 4 KiB in /dev/shm by known name. Time in ms."""
    paths = [os.path.join(SHM, f"lgbench_{tag}_{i}") for i in range(entries)]
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for path in paths:
        _floor_paths.add(path)  # first: an interrupt right after the open must not lose the path
        fd = os.open(path, flags, 0o600)
        try:
            os.posix_fallocate(fd, 0, BLOCK)
        finally:
            os.close(fd)
    gc.collect()
    t0 = time.perf_counter()
    for path in paths:
        os.unlink(path)
    elapsed = (time.perf_counter() - t0) * 1000
    _floor_paths.difference_update(paths)
    return elapsed


SWEEP_ROWS = [
    ("floor_unlink", "floor: unlink {n:,} files by name (anchor)"),
    ("orphaned_shm", "orphaned: {n:,} blocks, all removed"),
    ("orphaned_mixed", "orphaned: {blocks:,} blocks + {sems:,} semaphores"),
    ("live_shm", "live owner: {n:,} blocks, all kept"),
    ("live_shm_again", "  the same, swept again (journal unchanged)"),
    ("live_mixed", "live owner: mixed, all kept"),
    ("live_mixed_again", "  the same, swept again (journal unchanged)"),
]


def bench_sweep_size(root: str, cfg: Config, entries: int) -> dict[str, Any]:
    """Every sweep row for folders of ``entries`` entries, each repetition beside its floor."""
    times: dict[str, list[float]] = {key: [] for key, _ in SWEEP_ROWS}
    run_id = secrets.token_hex(4)

    def floor(rep: int) -> None:
        times["floor_unlink"].append(floor_rep(f"{run_id}_{rep}", entries))

    def shm_only(rep: int) -> None:
        live, again, orphan = sweep_rep(root, f"shm{entries}-{rep}", entries, 0)
        times["live_shm"].append(live)
        times["live_shm_again"].append(again)
        times["orphaned_shm"].append(orphan)

    def mixed(rep: int) -> None:
        live, again, orphan = sweep_rep(root, f"mixed{entries}-{rep}", entries, cfg.sem_every)
        times["live_mixed"].append(live)
        times["live_mixed_again"].append(again)
        times["orphaned_mixed"].append(orphan)

    steps: list[Callable[[int], None]] = [floor, shm_only, mixed]
    for rep in range(cfg.reps):
        shift = rep % len(steps)
        for step in steps[shift:] + steps[:shift]:
            step(rep)
    rows: dict[str, Summary] = {}
    for key, values in times.items():
        rows[key] = summarise(values)
        rows[key]["per_entry_us"] = rows[key]["median"] * 1000 / entries
    sems = entries // cfg.sem_every
    return {
        "entries": entries,
        "mixed_blocks": entries - sems,
        "mixed_semaphores": sems,
        "rows": rows,
        "ratios": {key: paired_ratios(times[key], times["floor_unlink"]) for key, _ in SWEEP_ROWS[1:]},
    }


def bench_sweep(root: str, cfg: Config) -> dict[str, Any]:
    needed = 3 * max(cfg.sizes) * BLOCK
    st = os.statvfs(SHM)
    if st.f_bavail * st.f_frsize < needed:
        raise SystemExit(f"{SHM} has less than the {needed >> 20} MiB free this benchmark needs")
    return {
        "unit": "ms",
        "repetitions": cfg.reps,
        "sizes": [bench_sweep_size(root, cfg, entries) for entries in cfg.sizes],
    }


# ---------------------------------------------------------------------------- report


def _row(label: str, s: Summary, ratio: Summary | None, extra: str = "") -> str:
    r = "1.00 (anchor)" if ratio is None else f"{ratio['median']:.2f} ({ratio['p10']:.2f}-{ratio['p90']:.2f})"
    return f"  {label:<48} {s['median']:9.1f} {s['p10']:9.1f} {s['p90']:9.1f} {extra}  {r}"


SCALING_COLUMNS = [
    ("floor_unlink", "floor"),
    ("orphaned_shm", "orphaned"),
    ("orphaned_mixed", "mixed"),
    ("live_shm", "live"),
    ("live_shm_again", "again"),
]


def render_scaling(sw: dict[str, Any]) -> list[str]:
    """How sweep time grows with the number of entries: medians in ms, and per entry."""
    head = "".join(f" {title:>10}" for _, title in SCALING_COLUMNS)
    lines = [
        "Sweep scaling: median ms (us per entry); ratio = orphaned / floor, paired per repetition",
        f"  {'entries':>9}{head} {'ratio':>6} (p10-p90)",
    ]
    for size in sw["sizes"]:
        n = size["entries"]
        cells = "".join(f" {size['rows'][key]['median']:10.1f}" for key, _ in SCALING_COLUMNS)
        ratio = size["ratios"]["orphaned_shm"]
        lines.append(f"  {n:>9,}{cells} {ratio['median']:6.2f} ({ratio['p10']:.2f}-{ratio['p90']:.2f})")
        per = "".join(f" {'({:.2f})'.format(size['rows'][key]['per_entry_us']):>10}" for key, _ in SCALING_COLUMNS)
        lines.append(f"  {'':>9}{per}")
    return lines


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    cf = result["create_free"]
    sw = result["sweep"]
    lines = [
        f"leakguard foundation benchmark: Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs, "
        f"load {meta['load_before']:.2f} -> {meta['load_after']:.2f}{', --quick' if meta['quick'] else ''}",
        "",
        f"Create + free one 4 KiB block: {cf['rounds']} rounds x {cf['ops_per_round']} ops; "
        "per-op median of each round, in us",
        f"  {'':<48} {'median':>9} {'p10':>9} {'p90':>9}  ratio to anchor (p10-p90)",
    ]
    for key, label, _ in CREATE_FREE:
        lines.append(_row(label, cf["rows"][key], cf["ratios"].get(key)))
    lines += [
        "",
        "  CPU time per op (the measuring process, plus the tracker process's for the stdlib),"
        " mean of each round, in us",
    ]
    for key, label, _ in CREATE_FREE:
        lines.append(_row(label, cf["cpu_rows"][key], cf["cpu_ratios"].get(key)))
    tracker = cf["tracker_cpu"]
    lines.append(
        f"  {'(of which the tracker process)':<48} {tracker['median']:9.1f} {tracker['p10']:9.1f} {tracker['p90']:9.1f}"
    )
    for size in sw["sizes"]:
        n = size["entries"]
        lines += [
            "",
            f"Sweep of a folder of {n:,} entries: {sw['repetitions']} repetitions, in ms",
            f"  {'':<48} {'median':>9} {'p10':>9} {'p90':>9} {'us/entry':>9}  ratio to anchor (p10-p90)",
        ]
        for key, template in SWEEP_ROWS:
            label = template.format(n=n, blocks=size["mixed_blocks"], sems=size["mixed_semaphores"])
            row = size["rows"][key]
            lines.append(_row(label, row, size["ratios"].get(key), f"{row['per_entry_us']:9.2f}"))
    lines += ["", *render_scaling(sw)]
    return "\n".join(lines)


def run(cfg: Config, quick: bool, root: str) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    create_free = run_create_free(root, cfg, quick)
    sweep = bench_sweep(root, cfg)
    return {
        "meta": {
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 0,
            "quick": quick,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "block_bytes": BLOCK,
        },
        "create_free": create_free,
        "sweep": sweep,
    }


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of entry counts") from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("each entry count must be at least 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, small sizes (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument(
        "--sizes", type=_sizes, metavar="N[,N...]", help="entries per swept folder (default 1000,10000,100000)"
    )
    parser.add_argument("--child-create-free", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-owner", nargs=3, metavar=("ENTRIES", "SEM_EVERY", "NAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.sizes:
        cfg = replace(cfg, sizes=args.sizes)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # see _spawn()
    if args.child_create_free:
        return create_free_child(cfg)
    if args.child_owner:
        return child_main(int(args.child_owner[0]), int(args.child_owner[1]), args.child_owner[2])

    root = tempfile.mkdtemp(prefix="leakguard-bench-")
    # This process creates nothing itself; should it ever, its journal goes here.
    os.environ["LEAKGUARD_DIR"] = os.path.join(root, "self")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)
    try:
        result = run(cfg, args.quick, root)
    finally:
        with signals_ignored():
            problems = _cleanup(root)
        for problem in problems:
            print(f"cleanup: {problem}", file=sys.stderr)
    print(render(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
