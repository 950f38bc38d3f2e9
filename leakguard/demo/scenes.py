"""``leakguard demo``: what leakguard is for, shown on real jobs in under 30 seconds.

1. A ``leakguard.Pool`` map over a SharedArray, one of whose workers the demo
   SIGKILLs mid-task: the task runs again on a new worker, the results are right.
2. A leakguard job killed as a whole process group: the kernel frees its anonymous
   blocks, its guardian removes its named objects.
3. The same with ``multiprocessing.Pool``: its map hangs after a worker's death,
   and a group kill leaves its segment and semaphores in /dev/shm, which
   ``leakguard.sweep_foreign(only=...)`` then removes.
4. Docker's default 64 MiB /dev/shm (a mount namespace of the demo's own; root only,
   else the step says why it is skipped): the standard library's shared memory dies of
   SIGBUS with a 256 MiB array, a leakguard pool carries it through.
5. A census of both.

Everything leakguard makes lives under a journal folder the demo creates and
removes; the sweeps look only there, and the foreign sweep only at the names the
demo saw its own multiprocessing job create. Every process started is killed and
reaped on the way out, whether the demo ends, fails or is interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import psutil

import leakguard

from . import jobs

STEPS = 5
SIZE, TASKS = 8 << 20, 16  # step 1: 64 MiB of float64, 16 slices of 4 MiB
MP_SIZE, MP_TASKS, MP_HANG = 6 << 20, 12, 1.5  # step 3: a 48 MiB segment; the map's deadline
_BUG = ": leakguard.Pool did not recover from a lost worker; please report this with the output above"


def _say(step: int, text: str) -> None:
    print(f"[{step}/{STEPS}] {text}", flush=True)


def _line(text: str) -> None:
    print(f"      {text}", flush=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass
class _Census:
    retried: str = "not run"
    lg_objects: int = 0
    lg_bytes: int = 0
    lg_left: int = -1
    lg_procs: int = 0
    lg_procs_left: int = -1
    lg_seconds: float = -1.0
    mp_hang: str = "not run"
    mp_left: list[str] = field(default_factory=list)
    mp_bytes: int = 0
    mp_procs: int = 0
    mp_procs_left: int = -1
    mp_removed: int = 0
    mp_remove_ms: float = 0.0
    mp_kept_why: str = ""
    docker_lg: str = "not run"
    docker_mp: str = "not run"
    ok: list[bool] = field(default_factory=list)


class _Demo:
    def __init__(self, folder: str, signals: _Signals) -> None:
        self.folder = folder
        self.signals = signals
        self.census = _Census()
        self.jobs: list[jobs.Job] = []
        self.foreign: set[str] = set()  # what the demo saw its multiprocessing job create
        self.own: list[leakguard.SharedArray] = []

    def _free_own(self) -> None:
        while self.own:
            leakguard.free(self.own.pop())

    def _start(self, *args: str, small_shm: bool = False) -> jobs.Job:
        with self.signals.held():
            job = jobs.Job(*args, small_shm=small_shm)
            self.jobs.append(job)
        return job

    # ------------------------------------------------------------------ 1: a worker dies mid-map

    def step_pool(self) -> None:
        c = self.census
        _say(1, f"leakguard.Pool(2, retries=1): statistics of {TASKS} slices of a SharedArray")
        data = leakguard.shared_array(SIZE)
        self.own.append(data)
        np.random.default_rng(7).standard_normal(out=data)
        board = leakguard.shared_array((TASKS, jobs.BOARD_COLUMNS), dtype=np.int64, fill=0)
        self.own.append(board)
        step = SIZE // TASKS
        parts = [data[i * step : (i + 1) * step] for i in range(TASKS)]
        _line(
            f"a {_mib(data.nbytes)} SharedArray; each task gets a {_mib(parts[0].nbytes)} slice by reference (no copy)"
        )
        with self.signals.held():
            pool = leakguard.Pool(2, retries=1)
        with pool:
            started = time.monotonic()
            result = pool.starmap_async(jobs.slice_stats, [(p, board, i) for i, p in enumerate(parts)], chunksize=1)
            _line(f"map started: {TASKS} tasks on 2 workers (spawned)")
            killed = None
            while killed is None and not result.ready():
                killed = jobs.kill_busy_worker(board, min_done=3, timeout=2.0)
                if killed is None:
                    _line(f"... waiting for the workers ({int(board[:, jobs.DONE].sum())} tasks done)")
            if killed is None:
                raise jobs.DemoError(
                    "the map ended before a worker was caught mid-task (a very slow machine?); try again"
                )
            pid, task, busy = killed
            seen = {int(p) for p in board[:, jobs.FIRST_PID] if p} | {int(p) for p in board[:, jobs.LAST_PID] if p}
            at = time.monotonic() - started
            _line(f"+{at:.2f} s  kill -9 {pid}: a worker busy with task {task} for {busy * 1000:.0f} ms (SIGKILL)")
            if not jobs.wait(lambda: board[task, jobs.ATTEMPTS] >= 2 or result.ready(), 30, "the retry"):
                raise jobs.DemoError(f"task {task} did not run again within 30 s of its worker's death{_BUG}")
            again = int(board[task, jobs.LAST_PID])
            who = "a new worker the pool started" if again not in seen else "the pool's other worker"
            _line(f"+{time.monotonic() - started:.2f} s  task {task} runs again (attempt 2) on pid {again}: {who}")
            if not jobs.wait(result.ready, 30, "the map to finish"):
                raise jobs.DemoError(f"the map did not finish within 30 s of the retry{_BUG}")
            results = result.get()
            _line(f"+{time.monotonic() - started:.2f} s  map done: {len(results)} results, no error raised")
        expected = [jobs.stats_of(p) for p in parts]
        right = sum(np.allclose(r, e, rtol=1e-12, atol=0) for r, e in zip(results, expected, strict=True))
        _line(f"results equal to numpy's in this process: {right} of {TASKS}")
        c.retried = f"task retried, {right}/{TASKS} right"
        c.ok.append(right == TASKS and again != pid and board[task, jobs.ATTEMPTS] == 2)
        self._free_own()

    # ------------------------------------------------------------------ 2: a leakguard job killed as a group

    def step_leakguard_job(self) -> None:
        c = self.census
        _say(2, "a leakguard job in its own process group: 3 arrays, a lock, a semaphore, a pool of 2")
        job = self._start("leakguard")
        ready = job.expect("ready", doing="start its pool")
        guardians = jobs.guardians(self.folder, ready["pid"])
        report = leakguard.sweep(dry_run=True, folder=self.folder)
        objects = [i for i in report.kept if i.owner_pid != os.getpid() and i.name and i.kind]
        named = [i for i in objects if i.kind != "memfd"]
        anonymous = [i.name for i in objects if i.kind == "memfd" and i.name]
        entries = [i.name if i.kind == "shm" else f"sem.{i.name}" for i in named if i.name]
        _line(
            f"what the job has (from leakguard's journals): {len(objects)} objects, {len(named)} of them in "
            f"/dev/shm, {len(anonymous)} anonymous blocks (memfds: no name anywhere)"
        )
        roles = {n: "array" for n in ready["arrays"]} | {ready["lock"]: "lock", ready["gate"]: "semaphore"}
        roles[ready["board"]] = "task board"
        for item in objects:
            size = "-" if item.kind == "sem" else f"{item.size or 0:,} bytes"
            if item.owner_pid == ready["pid"]:
                what = f"the job's {roles.get(item.name or '', 'block')}"
            else:
                what = f"made by a task on worker {item.owner_pid}"
            where = f"anonymous {item.name}" if item.kind == "memfd" else f"/dev/shm/{entries[named.index(item)]}"
            _line(f"  {where:<35} {size:>18}  {what}")
        members = job.group()
        procs = members + [g for g in guardians if g not in members]
        pids = ", ".join(f"{p.pid} ({jobs.role(p, ready['pid'], ready['workers'], guardians)})" for p in procs)
        _line(f"its processes: {pids}")
        c.lg_objects = len(objects)
        c.lg_bytes = sum(i.size or 0 for i in objects)
        c.lg_procs = len(procs)
        killed = time.monotonic()
        job.kill_group()
        _line(
            f"kill -9 -{job.pgid}: the whole group dies (the guardian has a session of its own); the kernel "
            "frees the anonymous blocks with it"
        )
        shown: tuple[int, int] = (-1, -1)

        def state() -> tuple[int, int]:
            nonlocal shown
            left = sum(map(jobs.exists, entries)) + len(jobs.memfds_in_use(anonymous))
            now = (left, len([p for p in procs if jobs.alive(p)]))
            if now != shown:
                _line(f"+{time.monotonic() - killed:.3f} s  objects left {now[0]}, processes left {now[1]}")
                shown = now
            return now

        jobs.wait(lambda: state() == (0, 0), 10, "the guardian")
        c.lg_seconds = time.monotonic() - killed
        c.lg_left, c.lg_procs_left = state()
        job.reap()
        after = leakguard.sweep(dry_run=True, folder=self.folder)
        rest = len(after.removed) + len([i for i in after.kept if i.owner_pid != os.getpid()])
        _line(f"leakguard ls on the demo's folder now: {rest} entries (the guardian swept it)")
        c.ok.append(c.lg_left == 0 and c.lg_procs_left == 0 and rest == 0)

    # ------------------------------------------------------------------ 3: multiprocessing, the same

    def step_multiprocessing_job(self) -> None:
        c = self.census
        _say(3, "the same with multiprocessing.Pool (spawn) and multiprocessing.shared_memory")
        before = set(os.listdir(jobs.SHM))
        job = self._start("multiprocessing", str(MP_SIZE), str(MP_TASKS), str(MP_HANG))
        pool = job.expect("pool", "no-room", doing="start its pool")
        if pool["event"] == "no-room":
            raise jobs.DemoError(
                f"the multiprocessing job needs {_mib(pool['needed'])} of /dev/shm, which has {_mib(pool['free'])} "
                "free: multiprocessing.shared_memory does not reserve its size, so it would die of SIGBUS. "
                "Enlarge /dev/shm (Docker: --shm-size) to see this step; leakguard's steps above need none of it"
            )
        _line(
            f"job {pool['pid']}: a {_mib(pool['size'])} segment /dev/shm/{pool['segment']}, workers {pool['workers']}"
        )
        news = job.expect("killed", "missed", doing="catch a busy worker")
        if news["event"] == "killed":
            _line(f"kill -9 {news['pid']} (SIGKILL, sent by the job): a worker busy with task {news['task']}")
            waited = job.expect("waited", timeout=MP_HANG + 30, doing="report on its map")
            hung = not waited["ready"]
            c.mp_hang = f"map hung ({waited['done']}/{waited['tasks']} done)" if hung else "map finished"
            _line(
                f"{waited['seconds']:g} s later: {waited['done']} of {waited['tasks']} tasks done, the map is "
                + ("still waiting" if hung else "done")
            )
            if hung:
                _line("(multiprocessing.Pool waits forever for a task its dead worker held)")
        else:
            _line("no worker was caught mid-task; the map went on")
        self._claim(job, before)
        members = job.group()
        c.mp_procs = len(members)
        roles = ", ".join(f"{p.pid} ({jobs.role(p, job.pgid, pool['workers'], [])})" for p in members)
        _line(f"its processes: {roles}")
        job.kill_group()
        _line(f"kill -9 -{job.pgid}: the job, its workers and its resource_tracker die together")
        killed = time.monotonic()
        jobs.wait(lambda: not any(map(jobs.alive, members)), 10, "the job's processes to die", 0.005)
        c.mp_procs_left = len([p for p in members if jobs.alive(p)])
        c.mp_left = sorted(n for n in self.foreign if jobs.exists(n))
        c.mp_bytes = sum(os.stat(os.path.join(jobs.SHM, n)).st_size for n in c.mp_left)
        segs = [n for n in c.mp_left if n.startswith("psm_")]
        _line(f"+{time.monotonic() - killed:.3f} s  processes left {c.mp_procs_left}; left in /dev/shm until reboot:")
        _line(
            f"{len(segs)} segment + {len(c.mp_left) - len(segs)} semaphores, {_mib(c.mp_bytes)}, nobody to remove them"
        )
        for name in c.mp_left:
            _line(f"  /dev/shm/{name:<26} {os.stat(os.path.join(jobs.SHM, name)).st_size:>12,} bytes")
        job.reap()
        report = leakguard.sweep_foreign(only=set(c.mp_left), older_than=0, dry_run=False)
        c.mp_removed, c.mp_remove_ms = len(report.removed), report.seconds * 1000
        _line(
            f"leakguard.sweep_foreign(only=<those {len(c.mp_left)}>, older_than=0, dry_run=False)"
            "  (= leakguard sweep --foreign)"
        )
        _line(f"removed {len(report.removed)}, {_mib(report.bytes_freed)} freed, in {c.mp_remove_ms:.1f} ms")
        reasons = collections.Counter(item.reason for item in report.kept + report.errors)
        for reason, count in reasons.items():
            c.mp_kept_why = reason
            _line(f"  kept {count}: {reason}")
        c.ok.append(bool(c.mp_left) and not any(map(jobs.exists, self.foreign)))

    def _claim(self, job: jobs.Job, before: set[str]) -> None:
        """The new foreign entries in /dev/shm that the job's processes map: its own."""
        inodes = jobs.shm_inodes([p.pid for p in job.group()])
        for name in set(os.listdir(jobs.SHM)) - before:
            with contextlib.suppress(OSError):
                if name.startswith(("psm_", "sem.mp-")) and os.lstat(os.path.join(jobs.SHM, name)).st_ino in inodes:
                    self.foreign.add(name)

    # ------------------------------------------------------------------ 4: Docker's 64 MiB /dev/shm

    def step_small_shm(self) -> None:
        c = self.census
        size, shm = _mib(jobs.DOCKER_ARRAY), _mib(jobs.DOCKER_SHM)
        _say(4, f"Docker's default /dev/shm is {shm}: a {size} array there, with each library")
        why = jobs.small_shm_unavailable()
        if why:
            _line(f"skipped: {why}")
            c.docker_lg = c.docker_mp = "skipped"
            c.ok.append(True)
            return
        _line(f"each job runs in a mount namespace of its own, with a {shm} tmpfs on /dev/shm")
        stdlib = self._start("stdlib-small-shm", small_shm=True)
        created = stdlib.expect("created", doing="create its segment")
        _line(
            f"multiprocessing.shared_memory.SharedMemory(create=True, size={created['size']:,}): created "
            "(its size is not reserved); filling it with numpy ..."
        )
        jobs.wait(lambda: stdlib.proc.poll() is not None, 30, "the standard library's job")
        code = stdlib.proc.returncode
        if code == -signal.SIGBUS:
            c.docker_mp = "died of SIGBUS"
            _line(f"... killed by SIGBUS (bus error) at the first page past /dev/shm's {shm}: the job is gone")
        else:
            c.docker_mp = f"exit {code}"
            _line(f"... the job ended with exit status {code}")
        stdlib.reap()
        job = self._start("leakguard-small-shm", small_shm=True)
        carried = job.expect("carried", timeout=120, doing="run its pool")
        job.reap()
        _line(
            f"leakguard.Pool(2): a {size} SharedArray mapped by both workers (8 slices, written in place), a "
            f"{_mib(carried['plain'])} plain array to a worker and back: "
            + ("results right" if carried["right"] else "WRONG RESULTS")
            + f", {carried['seconds']:.2f} s"
        )
        _line(
            f"/dev/shm used meanwhile: at most {carried['shm_most']:,} bytes (anonymous blocks are memfds: "
            "memory, not /dev/shm)"
        )
        c.docker_lg = "carried, results right" if carried["right"] else "wrong results"
        c.ok.append(bool(carried["right"]) and carried["shm_most"] == 0 and code == -signal.SIGBUS)

    # ------------------------------------------------------------------ 5: census

    def step_census(self) -> bool:
        c = self.census
        _say(5, "census")
        mp_clean = (
            f"removed by leakguard sweep --foreign ({c.mp_remove_ms:.0f} ms)"
            if c.mp_removed == len(c.mp_left)
            else f"sweep --foreign kept {len(c.mp_left) - c.mp_removed}: {c.mp_kept_why}"
        )
        segs = len([n for n in c.mp_left if n.startswith("psm_")])
        rows = [
            ("", "leakguard", "multiprocessing (spawn)"),
            ("a worker SIGKILLed mid-map", c.retried, c.mp_hang),
            (
                "left after kill -9",
                f"{c.lg_left} of {c.lg_objects} ({_mib(c.lg_bytes)})",
                f"{len(c.mp_left)}: {segs} segment + {len(c.mp_left) - segs} semaphores ({_mib(c.mp_bytes)})",
            ),
            ("processes left", f"{c.lg_procs_left} of {c.lg_procs}", f"{c.mp_procs_left} of {c.mp_procs}"),
            ("time to clean", f"{c.lg_seconds:.2f} s (its guardian)", f"never; {mp_clean}"),
            (f"a {_mib(jobs.DOCKER_ARRAY)} array, {_mib(jobs.DOCKER_SHM)} /dev/shm", c.docker_lg, c.docker_mp),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        for row in rows:
            _line(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        return len(c.ok) == 4 and all(c.ok)

    # ------------------------------------------------------------------ the way out

    def cleanup(self) -> list[str]:
        """Kill and reap everything started, remove what is left; returns what went wrong."""
        problems = []
        with contextlib.suppress(Exception):
            self._free_own()
        for job in self.jobs:
            if job.name == "multiprocessing" and job.proc.returncode is None:
                job.stop()  # nothing new appears while its objects are looked for
                self._claim(job, set())
            job.reap()
        if not jobs.wait(lambda: not jobs.guardians(self.folder), 5, "", 0.02):
            for proc in jobs.guardians(self.folder):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        with contextlib.suppress(Exception):
            report = leakguard.sweep(folder=self.folder)
            problems += [f"{i.name}: {i.reason}" for i in report.errors + report.kept]
        if self.foreign:
            try:
                report = leakguard.sweep_foreign(only=self.foreign, older_than=0, dry_run=False)
                problems += [f"{i.name}: {i.reason}" for i in report.errors + report.kept]
            except Exception as exc:  # noqa: BLE001 - said with the other problems
                problems.append(f"multiprocessing's leftovers: {exc}")
        return problems


class _Signals:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside ``held()``, which defers
    one to the end of the block (so no process is ever half started and unrecorded),
    and after ``hold_from_now()`` (a second Ctrl-C must not cut the clean-up short)."""

    def __init__(self) -> None:
        self.holding = 0
        self.pending: int | None = None
        self.old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handler(self, signum: int, frame: object) -> None:
        if self.holding:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding and self.pending is not None:
            self.pending = None
            raise KeyboardInterrupt("deferred signal")

    def hold_from_now(self) -> None:
        self.holding += 1

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def run_demo() -> int:
    if not (os.path.isdir(jobs.SHM) and os.path.isdir("/proc/self/fd")):
        print("leakguard demo: needs Linux (/dev/shm and /proc), which this system does not have", file=sys.stderr)
        return 2
    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix="leakguard-demo-")
    saved = os.environ.get("LEAKGUARD_DIR")
    os.environ["LEAKGUARD_DIR"] = folder  # this process, its pools and its jobs share the demo's own folder
    # The demo kills processes: their multiprocessing pymp-* folders would stay in /tmp.
    temp, saved_temp = tempfile.mkdtemp(prefix="leakguard-demo-tmp-"), os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = temp  # for the processes it starts; this process keeps its own
    signals = _Signals()
    demo = _Demo(folder, signals)
    code = 1
    try:
        demo.step_pool()
        demo.step_leakguard_job()
        demo.step_multiprocessing_job()
        demo.step_small_shm()
        code = 0 if demo.step_census() else 1
        if code:
            print("leakguard demo: something above is not as it should be (see the census)", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nleakguard demo: interrupted; stopping everything it started", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        raise  # the reader is gone (`leakguard demo | head`): clean up quietly; the command line handles it
    except jobs.DemoError as exc:
        print(f"leakguard demo failed: {exc}", file=sys.stderr)
    except leakguard.OutOfSharedMemoryError as exc:
        print(f"leakguard demo failed: {exc} The demo needs {_mib(SIZE * 8 * 1.1)} at most.", file=sys.stderr)
    except Exception:  # noqa: BLE001 - said in full, then cleaned up after
        traceback.print_exc()
        print("leakguard demo failed with the error above; it cleans up and exits", file=sys.stderr)
    finally:
        signals.hold_from_now()
        problems = demo.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)  # still held: a Ctrl-C now must not cut it short
        if saved is None:
            os.environ.pop("LEAKGUARD_DIR", None)
        else:
            os.environ["LEAKGUARD_DIR"] = saved
        if saved_temp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_temp
        signals.restore()
    if problems:
        print(f"leakguard demo: could not remove {problems}", file=sys.stderr)
        code = code or 1
    _line(f"demo took {time.monotonic() - started:.1f} s; exit {code}")
    return code
