"""The processes ``leakguard demo`` runs and the tasks their pools run.

Two child jobs, each started by the demo in a session (and process group) of its
own and killed there as a whole group: one on ``leakguard.Pool``, one on
``multiprocessing.Pool`` with ``multiprocessing.shared_memory``. Two more run in a
mount namespace whose /dev/shm is 64 MiB, Docker's default (``small_shm_unavailable``
says why they cannot, where they cannot): the standard library's shared memory and a
leakguard pool, each with a 256 MiB array. They talk to the demo in JSON lines on
stdout. The tasks live here, in an importable module, because spawned workers import
a task by its module's name.

A task marks its row of a shared "board" (attempts, first and last pid, done,
start time) so that the process that kills a worker can pick one that is busy,
and later see on which worker a lost task ran again.

The demo's end of a job is here too (``Job``), with what it reads of the process
table and /dev/shm: a job's process group, a pool's guardian, the /dev/shm files
a process maps or holds open.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import psutil

import leakguard

__all__ = [
    "BOARD_COLUMNS",
    "DOCKER_SHM",
    "SHM",
    "DemoError",
    "Job",
    "Killed",
    "alive",
    "exists",
    "group",
    "guardians",
    "kill_busy_worker",
    "main",
    "memfds_in_use",
    "role",
    "say",
    "shm_inodes",
    "slice_stats",
    "small_shm_unavailable",
    "stats_of",
    "wait",
]

# The board: one row per task.
ATTEMPTS, FIRST_PID, LAST_PID, DONE, STARTED_NS = range(5)
BOARD_COLUMNS = 5

Killed = tuple[int, int, float]  # (pid, task, seconds the task had been running)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


# ---------------------------------------------------------------------------- tasks and the board


def stats_of(part: npt.NDArray[np.float64]) -> tuple[float, ...]:
    """Mean, standard deviation, minimum, median, 99th percentile and maximum of a slice."""
    ordered = np.sort(part)
    n = len(ordered)
    return (
        float(part.mean()),
        float(part.std()),
        float(ordered[0]),
        float(ordered[n // 2]),
        float(ordered[(n * 99) // 100]),
        float(ordered[-1]),
    )


def mark_start(board: npt.NDArray[np.int64], task: int) -> None:
    row = board[task]
    row[ATTEMPTS] += 1
    if row[ATTEMPTS] == 1:
        row[FIRST_PID] = os.getpid()
    row[DONE] = 0
    row[STARTED_NS] = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process
    row[LAST_PID] = os.getpid()  # last: a killer reading the row sees a whole start


def slice_stats(part: npt.NDArray[np.float64], board: npt.NDArray[np.int64], task: int) -> tuple[float, ...]:
    """A ``leakguard.Pool`` task: ``part`` and ``board`` are views of SharedArrays (sent by name)."""
    mark_start(board, task)
    result = stats_of(part)
    board[task, DONE] = 1
    return result


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.NoSuchProcess:
        return False


def kill_busy_worker(board: npt.NDArray[np.int64], *, min_done: int, timeout: float) -> Killed | None:
    """SIGKILL a worker in the middle of a task; None if none was caught busy within ``timeout``.

    A task can end between looking at the board and the kill, so the worker is
    stopped first (SIGSTOP), the board read again while it cannot move, and only
    then killed; a worker that finished meanwhile is let go on (SIGCONT).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(board[:, DONE].sum()) >= min_done:
            for task in np.flatnonzero((board[:, LAST_PID] != 0) & (board[:, DONE] == 0)):
                pid = int(board[task, LAST_PID])
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                killed = False
                try:
                    while not _stopped(pid) and time.monotonic() < deadline:
                        time.sleep(0.0005)  # a poll interval: SIGSTOP takes effect at the next scheduling
                    row = board[task]
                    if _stopped(pid) and row[LAST_PID] == pid and not row[DONE]:
                        busy = (time.monotonic_ns() - int(row[STARTED_NS])) / 1e9
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                        return pid, int(task), busy
                finally:
                    if not killed:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)  # a poll interval of a deadline wait
    return None


def hold(gate: leakguard.Semaphore, board: npt.NDArray[np.int64], task: int, megabytes: int) -> None:
    """A task that makes a block its worker owns, then waits on ``gate`` (nobody opens it)."""
    mine = leakguard.shared_array(megabytes << 17, fill=float(task))
    _held.append(mine)
    mark_start(board, task)
    gate.acquire()


_held: list[Any] = []


def mp_stats(name: str, size: int, tasks: int, start: int, stop: int, task: int) -> tuple[float, ...]:
    """A ``multiprocessing.Pool`` task: attaches the segment by name, as its workers must."""
    if name not in _segments:  # attached once per worker
        _segments[name] = shared_memory.SharedMemory(name=name)
    buf = _segments[name].buf
    board = np.ndarray((tasks, BOARD_COLUMNS), dtype=np.int64, buffer=buf, offset=size * 8)
    mark_start(board, task)
    result = stats_of(np.ndarray((size,), dtype=np.float64, buffer=buf)[start:stop])
    board[task, DONE] = 1
    return result


_segments: dict[str, Any] = {}


# ---------------------------------------------------------------------------- the jobs


def leakguard_job() -> None:
    """Shared arrays, a lock, a semaphore and a pool whose 2 workers each hold a block and wait."""
    arrays = [leakguard.shared_array(1 << 21, fill=float(i)) for i in range(3)]  # 3 x 16 MiB
    lock = leakguard.Lock()
    gate = leakguard.Semaphore(0)
    board = leakguard.shared_array((2, BOARD_COLUMNS), dtype=np.int64, fill=0)
    pool = leakguard.Pool(2)
    waiting = [pool.apply_async(hold, (gate, board, i, 4)) for i in range(2)]
    if not wait(lambda: bool(np.all(board[:, LAST_PID])), 60, "the workers"):
        raise TimeoutError("the pool's 2 workers did not start their tasks within 60 s")
    emit(
        "ready",
        pid=os.getpid(),
        workers=sorted(int(p) for p in board[:, LAST_PID]),
        arrays=[a.block_name for a in arrays],
        lock=lock.name,
        gate=gate.name,
        board=board.block_name,
    )
    sys.stdin.read()  # works until it is killed
    del waiting


def multiprocessing_job(size: int, tasks: int, hang_seconds: float) -> None:
    """One segment and a spawn pool; a worker is SIGKILLed mid-map, and the map waits."""
    needed = size * 8 + tasks * BOARD_COLUMNS * 8
    st = os.statvfs(SHM)
    if st.f_bavail * st.f_frsize < needed + (1 << 20):
        # Creating it would succeed (multiprocessing does not reserve its size) and filling it
        # would die of SIGBUS: say so instead, and wait to be ended.
        emit("no-room", needed=needed, free=st.f_bavail * st.f_frsize)
        sys.stdin.read()
        return
    segment = shared_memory.SharedMemory(create=True, size=needed)
    data = np.ndarray((size,), dtype=np.float64, buffer=segment.buf)
    np.random.default_rng(7).standard_normal(out=data)
    board = np.ndarray((tasks, BOARD_COLUMNS), dtype=np.int64, buffer=segment.buf, offset=size * 8)
    board.fill(0)
    pool = multiprocessing.get_context("spawn").Pool(2)
    workers = sorted(p.pid for p in multiprocessing.active_children() if p.pid is not None)
    emit("pool", pid=os.getpid(), workers=workers, segment=segment.name, size=segment.size)
    step = size // tasks
    args = [(segment.name, size, tasks, i * step, (i + 1) * step, i) for i in range(tasks)]
    result = pool.starmap_async(mp_stats, args, chunksize=1)
    killed = kill_busy_worker(board, min_done=2, timeout=30)
    if killed is None:
        emit("missed")
    else:
        emit("killed", pid=killed[0], task=killed[1], busy=killed[2])
    result.wait(hang_seconds)
    emit("waited", seconds=hang_seconds, ready=result.ready(), done=int(board[:, DONE].sum()), tasks=tasks)
    sys.stdin.read()  # hung, as multiprocessing leaves it, until it is killed


# ---------------------------------------------------------------------------- Docker's 64 MiB /dev/shm

DOCKER_SHM = 64 << 20  # bytes: what Docker gives a container's /dev/shm unless told --shm-size
DOCKER_ARRAY = 256 << 20  # bytes: the array each job shares there, four times that
DOCKER_PLAIN = 64 << 20  # bytes: a plain array the leakguard job sends through its pool and back


def _shm_used() -> int:
    st = os.statvfs(SHM)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def stdlib_in_small_shm() -> None:
    """multiprocessing.shared_memory with a 256 MiB segment in a 64 MiB /dev/shm: creating it
    succeeds (its size is not reserved), and filling it dies of SIGBUS as the tmpfs runs out."""
    import resource  # noqa: PLC0415 - this job only

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a bus error, not a core file
    segment = shared_memory.SharedMemory(create=True, size=DOCKER_ARRAY)
    emit("created", name=segment.name, size=segment.size, shm=os.statvfs(SHM).f_blocks * os.statvfs(SHM).f_frsize)
    np.ndarray((DOCKER_ARRAY // 8,), dtype=np.float64, buffer=segment.buf).fill(1.0)
    emit("filled")  # not reached: SIGBUS at the first page past /dev/shm's 64 MiB


def double(part: npt.NDArray[np.float64]) -> float:
    """A leakguard task: double a slice of the shared array in place; its new sum."""
    part *= 2.0
    return float(part.sum())


def plus_one(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x + 1.0


def leakguard_in_small_shm() -> None:
    """A leakguard pool with a 256 MiB SharedArray and a 64 MiB plain array there and back, in a
    64 MiB /dev/shm: anonymous blocks are not counted against /dev/shm, which stays empty."""
    import threading  # noqa: PLC0415 - this job only

    most = [_shm_used()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            most[0] = max(most[0], _shm_used())

    threading.Thread(target=sample, daemon=True).start()
    started = time.monotonic()
    n = DOCKER_ARRAY // 8
    data = leakguard.shared_array(n, fill=1.0)
    with leakguard.Pool(2) as pool:
        parts = [data[i * (n // 8) : (i + 1) * (n // 8)] for i in range(8)]
        sums = pool.map(double, parts, chunksize=1)
        plain = np.arange(DOCKER_PLAIN // 8, dtype=np.float64)
        back = pool.apply(plus_one, (plain,))
        right = sums == [2.0 * (n // 8)] * 8 and bool((data[:: 1 << 16] == 2.0).all())
        right = right and isinstance(back, leakguard.SharedArray) and bool(np.array_equal(back, plain + 1.0))
        pool.close()
        pool.join()
    seconds = time.monotonic() - started
    leakguard.free(data)
    if isinstance(back, leakguard.SharedArray):
        leakguard.free(back)
    done.set()
    emit("carried", right=right, seconds=seconds, shm_most=most[0], size=DOCKER_ARRAY, plain=DOCKER_PLAIN)


def small_shm_unavailable() -> str:
    """Why the demo cannot run a job with a 64 MiB /dev/shm of its own here, or ""."""
    if not sys.platform.startswith("linux"):
        return "mount namespaces are Linux's"
    if os.geteuid() != 0:
        return "a mount namespace with a 64 MiB tmpfs on /dev/shm needs root (try it in a container: docker run ...)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(_in_small_shm(["true"]), capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"this system allows no mount namespace with a tmpfs on /dev/shm ({probe.stderr.strip()[:120]})"
    return ""


def _in_small_shm(command: list[str]) -> list[str]:
    """``command`` in a mount namespace of its own whose /dev/shm is a 64 MiB tmpfs."""
    mount = f'mount -t tmpfs -o size={DOCKER_SHM},mode=1777 tmpfs {SHM} && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, *command]


# ---------------------------------------------------------------------------- the demo's end of a job

SHM = "/dev/shm"


class DemoError(Exception):
    """Something the demo needs did not happen; the message says what and what to check."""


def say(text: str) -> None:
    print(f"      {text}", flush=True)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def guardians(folder: str, parent: int | None = None) -> list[psutil.Process]:
    """Live guardians of pools whose journals are in ``folder`` (of the pool ``parent``, if given)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline: list[str] = proc.info["cmdline"] or []
        if any("leakguard._pool.guardian" in part for part in cmdline) and folder in cmdline and alive(proc):
            after = cmdline[cmdline.index(folder) + 1 : cmdline.index(folder) + 2]
            if parent is None or after == [str(parent)]:
                found.append(proc)
    return found


def role(proc: psutil.Process, job: int, workers: list[int], guardians: list[psutil.Process]) -> str:
    """What a process of a job is, for people."""
    if proc.pid == job:
        return "job"
    if proc.pid in workers:
        return "worker"
    if proc in guardians:
        return "guardian"
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        if "resource_tracker" in cmdline:
            return "resource tracker"
        if "spawn_main" in cmdline:
            return "worker, new"
    return "helper"


def shm_inodes(pids: list[int]) -> set[int]:
    """Inodes of the /dev/shm files these processes map or hold open. The inode, not
    the path, tells which: glibc maps a new semaphore under a temporary name."""
    dev = os.stat(SHM).st_dev
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:  # proc(5): start-end perms offset major:minor(hex) inode [path]
                fields = line.split(None, 5)
                major, minor = fields[3].split(b":")
                if os.makedev(int(major, 16), int(minor, 16)) == dev:
                    inodes.add(int(fields[4]))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if st.st_dev == dev:
                        inodes.add(st.st_ino)
    return inodes


def exists(entry: str) -> bool:
    return os.path.lexists(os.path.join(SHM, entry))


def memfds_in_use(names: list[str]) -> set[str]:
    """Which of these anonymous blocks (``lg_x``) a process still holds or maps: the kernel
    shows each as ``/memfd:lg_x`` in /proc/PID/fd and /proc/PID/maps."""
    wanted = {f"/memfd:{name}" for name in names}
    found: set[str] = set()
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{entry}/fd/{fd}").removesuffix(" (deleted)")
                    if target in wanted:
                        found.add(target)
        with contextlib.suppress(OSError), open(f"/proc/{entry}/maps", "rb") as f:
            for line in f:
                at = line.find(b"/memfd:lg_")
                if at >= 0:
                    target = line[at:].split()[0].decode()
                    if target in wanted:
                        found.add(target)
    return {t.removeprefix("/memfd:") for t in found}


def wait(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.002) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False), saying every 2 s
    that it still waits for ``what`` (if given: the clean-up says nothing, its output may be gone)."""
    started = time.monotonic()
    note = started + 2.0
    while not predicate():
        now = time.monotonic()
        if now - started > timeout:
            return False
        if what and now >= note:
            say(f"... still waiting for {what} ({now - started:.0f} s)")
            note += 2.0
        time.sleep(interval)  # the poll interval of a deadline wait
    return True


class Job:
    """A child job in a session (and process group) of its own, speaking JSON lines (with
    ``small_shm``, in a mount namespace whose /dev/shm is 64 MiB)."""

    def __init__(self, *args: str, small_shm: bool = False) -> None:
        self.name = args[0]
        self.err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by reap()
        # -m with this interpreter's own flags: the job finds leakguard where this process did.
        command = [sys.executable, *subprocess._args_from_interpreter_flags(), "-m", __spec__.name, *args]  # type: ignore[attr-defined]
        self.proc = subprocess.Popen(
            _in_small_shm(command) if small_shm else command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # valid until reap(): the unreaped job holds the group id
        self._buffer = b""
        self._messages: list[dict[str, Any]] = []
        self._eof = False

    def expect(self, *events: str, timeout: float = 60.0, doing: str = "") -> dict[str, Any]:
        """The job's next message of one of these kinds; every 2 s of waiting says so."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        started = time.monotonic()
        next_note = started + 2.0
        while True:
            for k, message in enumerate(self._messages):
                if message.get("event") in events:
                    return self._messages.pop(k)
            now = time.monotonic()
            if self._eof or now - started > timeout:
                why = "its output ended" if self._eof else f"nothing within {timeout:g} s"
                raise DemoError(
                    f"the {self.name} job did not report {'/'.join(events)} ({why}); "
                    f"its stderr:\n{self.stderr().strip() or '(empty)'}"
                )
            if now >= next_note:
                say(f"... still waiting for the job to {doing or '/'.join(events)} ({now - started:.0f} s)")
                next_note += 2.0
            ready, _, _ = select.select([fd], [], [], min(next_note - now, 0.5))
            if ready:
                data = os.read(fd, 1 << 16)
                self._eof = not data
                *lines, self._buffer = (self._buffer + data).split(b"\n")
                self._messages += [json.loads(line) for line in lines if line.startswith(b"{")]

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def group(self) -> list[psutil.Process]:
        return [] if self.proc.returncode is not None else group(self.pgid)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)

    def stop(self) -> None:
        """SIGSTOP the whole group and wait (at most 2 s) until every member has stopped."""
        self.kill_group(signal.SIGSTOP)
        wait(lambda: all(_stopped(p.pid) for p in self.group()), 2.0, "", 0.005)

    def reap(self, timeout: float = 10.0) -> None:
        """Kill the group, wait (bounded) for every member to exit, reap the job."""
        self.kill_group()
        wait(lambda: not self.group(), timeout, "", 0.01)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.err):
            if stream is not None:
                stream.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["leakguard"]:
        leakguard_job()
    elif argv[:1] == ["multiprocessing"]:
        multiprocessing_job(int(argv[1]), int(argv[2]), float(argv[3]))
    elif argv[:1] == ["stdlib-small-shm"]:
        stdlib_in_small_shm()
    elif argv[:1] == ["leakguard-small-shm"]:
        leakguard_in_small_shm()
    else:
        raise SystemExit(
            f"usage: {sys.executable} -m leakguard.demo.jobs leakguard | multiprocessing SIZE TASKS SECONDS"
            " | stdlib-small-shm | leakguard-small-shm"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
