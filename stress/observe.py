"""What stress sees: /dev/shm snapshots, the processes of a run, and the children it talks to.

Every process stress starts carries ``LEAKGUARD_STRESS=<session token>`` and, for a
scenario's job, ``LEAKGUARD_STRESS_RUN=<run id>`` in its environment; children inherit
both, so survivors are found by reading /proc/PID/environ even after they were
reparented to init. A name counts as left over only if it still exists when looked at
again a moment later (a glibc ``sem.XXXXXX`` temp file or an object being freed is
transient).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

SHM = "/dev/shm"
MARK = "LEAKGUARD_STRESS"
RUN_MARK = "LEAKGUARD_STRESS_RUN"
ROOT = str(Path(__file__).resolve().parent.parent)
T = TypeVar("T")
Message = dict[str, Any]


def shm_entries(directory: str = SHM) -> set[str]:
    """Everything in /dev/shm but hidden entries (leakguard's default journal folder is
    hidden) and, on the machine's own /dev/shm, what another program holds
    (``leave_out_others_objects``)."""
    try:
        names = {n for n in os.listdir(directory) if not n.startswith(".")}
    except FileNotFoundError:
        return set()
    if _others is None or directory != SHM:
        return names
    return names - _others.held(names)


class OthersObjects:
    """Tells which /dev/shm entries are another program's: those that a process not of
    ours maps or holds open when first seen (and from then on, as long as the entry is
    that same object).

    On the machine's own /dev/shm, other programs create and remove objects beside us;
    leaving their live objects out of our listings keeps them from counting as our
    leaks, or from seeming removed by us. An entry held by no one cannot be told apart
    from a leak of ours, and stays in (in a private /dev/shm, everything is ours).
    ``ours()`` returns the pids of our processes.
    """

    def __init__(self, ours: Callable[[], set[int]]) -> None:
        self.ours = ours
        self._theirs: dict[str, int] = {}  # entry -> inode
        self._mine: dict[str, int] = {}

    def held(self, names: Iterable[str]) -> set[str]:
        theirs = set()
        unknown: dict[str, int] = {}
        for name in names:
            try:
                ino = os.lstat(os.path.join(SHM, name)).st_ino
            except FileNotFoundError:
                continue
            if self._theirs.get(name) == ino:
                theirs.add(name)
            elif self._mine.get(name) != ino:
                unknown[name] = ino
        if not unknown:
            return theirs
        holders = held_inodes(int(e) for e in os.listdir("/proc") if e.isdigit())
        ours: set[int] | None = None
        for name, ino in unknown.items():
            pids = holders.get(ino)
            if not pids:
                continue  # held by no one we can see: maybe a leak of ours, so it counts
            if ours is None:
                ours = self.ours()
            if pids & ours:
                self._mine[name] = ino
            else:
                self._theirs[name] = ino
                theirs.add(name)
        return theirs


_others: OthersObjects | None = None


def others_than(key: str, token: str) -> OthersObjects:
    """Our processes: this one, its descendants, and those with ``key=token`` in their
    environment."""

    def ours() -> set[int]:
        pids = {os.getpid()}
        with contextlib.suppress(psutil.Error):
            pids |= {p.pid for p in psutil.Process().children(recursive=True)}
        return pids | {p.pid for p in marked(key, token)}

    return OthersObjects(ours)


def leave_out_others_objects(key: str, token: str) -> None:
    """From now on ``shm_entries()`` leaves out other programs' live objects (``others_than``)."""
    global _others
    _others = others_than(key, token)


_CLONE_NEWNS = 0x00020000  # <sched.h>
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000  # <sys/mount.h>


def enter_private_shm() -> str:
    """Move this process (and so every process it starts) to a mount namespace of its
    own with a fresh tmpfs on /dev/shm; returns why it could not, or "".

    In a private /dev/shm, what is there is ours: diffs of it are exact, and cleaning
    up cannot touch another program's objects. unshare(2) with CLONE_NEWNS needs
    CAP_SYS_ADMIN and a single-threaded process: call it before starting anything.
    """
    import ctypes
    import ctypes.util

    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        return f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    # Without MS_PRIVATE on /, the tmpfs would propagate back to the machine's mount table.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return f"mount --make-rprivate /: {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"tmpfs", SHM.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777") != 0:
        return f"mount tmpfs on {SHM}: {os.strerror(ctypes.get_errno())}"
    return ""


def own_tmpdir(folder: str) -> None:
    """Temporary files of this process and all it starts go to ``folder`` (made here):
    multiprocessing's ``pymp-*`` folders, which a killed process leaves behind."""
    os.makedirs(folder, exist_ok=True)
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = None


def remove_tmpdir(folder: str) -> None:
    """Remove ``folder`` (see ``own_tmpdir``); if this process's own multiprocessing
    folder is in it, only once that is removed as the process exits (its finalizer,
    exit priority -100, would fail on a folder already gone)."""
    import multiprocessing.process
    import multiprocessing.util
    import shutil

    own = multiprocessing.process.current_process()._config.get("tempdir")  # type: ignore[attr-defined]
    if own and os.path.abspath(own).startswith(os.path.abspath(folder) + os.sep):
        multiprocessing.util.Finalize(
            None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-200
        )
    else:
        shutil.rmtree(folder, ignore_errors=True)


def still_there(names: Iterable[str], directory: str = SHM, settle: float = 0.05) -> set[str]:
    """The names that exist now and again ``settle`` seconds later."""
    first = {n for n in names if os.path.lexists(os.path.join(directory, n))}
    if not first:
        return first
    time.sleep(settle)  # the re-check that tells a transient name from a leftover
    return {n for n in first if os.path.lexists(os.path.join(directory, n))}


def inodes(names: Iterable[str], directory: str = SHM) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for n in names:
        try:
            found[n] = os.lstat(os.path.join(directory, n)).st_ino
        except FileNotFoundError:
            found[n] = None
    return found


def journals(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def live_threads(pid: int) -> list[int]:
    """The threads of process ``pid`` that have not exited yet (none: it is gone or a zombie).

    Not the process's own state (psutil's ``status()``, the "Z" of /proc/PID/stat): that
    is its main thread's, which turns "Z" as soon as the main thread is done while the
    process's other threads may still be running, and holding its files, its mappings and
    its journal lock (see tests/test_failure_matrix.py ``gone``). Each thread's own state
    is in /proc/PID/task/TID/stat.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    live = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited since the listing
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]  # the field after "(comm)"
        if state not in (b"Z", b"X", b"x"):
            live.append(int(tid))
    return live


def marked(key: str, value: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Processes whose environment has ``key=value`` and that have a thread still running.

    The one scan by environment marker of the tests, stress, the benchmarks and the
    demo's tests (tests/conftest.py, tests/test_pool_crash_points.py,
    tests/demo_scenarios.py, bench/bench_pool.py import it from here: stress is a
    package at the repository root that all of them can import, and it needs nothing
    but psutil). A marker found in /proc/PID/environ stays with a process wherever it
    is reparented to. A process whose main thread has exited but whose other threads
    have not counts as running (``live_threads``), and its environment is read through
    one of those threads: the main thread's /proc/PID/environ is empty once it exited.
    """
    skip = set(exclude) | {os.getpid()}
    wanted = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        threads = live_threads(pid)
        if not threads:
            continue
        try:
            with open(f"/proc/{pid}/task/{threads[0]}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone since, or not ours to read
        if wanted in environ.split(b"\0"):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
    return found


def held_inodes(pids: Iterable[int], directory: str = SHM) -> dict[int, set[int]]:
    """Inode -> the pids (of ``pids``) that map it or hold it open, for the files of
    ``directory``'s file system. The inode, not the path, tells which entry: glibc maps
    a new semaphore under a temporary name (``sem.XXXXXX``) before it links it to its
    own. Processes that exited or may not be read are left out."""
    dev = os.stat(directory).st_dev
    holders: dict[int, set[int]] = {}
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:  # proc(5): start-end perms offset major:minor(hex) inode [path]
                fields = line.split(None, 5)
                major, minor = fields[3].split(b":")
                if os.makedev(int(major, 16), int(minor, 16)) == dev:
                    holders.setdefault(int(fields[4]), set()).add(pid)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if st.st_dev == dev:
                        holders.setdefault(st.st_ino, set()).add(pid)
    return holders


def shmem_bytes() -> int:
    """Shmem in /proc/meminfo, in bytes: every shmem page on the machine, tmpfs files and
    anonymous blocks (memfds) alike, in every mount namespace."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Shmem line in /proc/meminfo")


# Other programs on the machine move Shmem too (a shared machine, a CI runner): what a kill of
# anonymous blocks must free is measured against this much of their doing meanwhile.
SHMEM_NOISE = 64 << 20


def memfd_inodes(pids: Iterable[int]) -> dict[tuple[int, int], int]:
    """(device, inode) of every memfd (an anonymous block) these processes hold or map -> its
    size (0 when only mapped: a mapping does not say)."""
    found: dict[tuple[int, int], int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        found[(st.st_dev, st.st_ino)] = st.st_size
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[5].startswith("/memfd:"):
                    major, minor = (int(x, 16) for x in fields[3].split(":"))
                    found.setdefault((os.makedev(major, minor), int(fields[4])), 0)
    return found


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def is_guardian(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return any("leakguard._pool.guardian" in part for part in proc.cmdline())
    return False


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def wait_until(predicate: Callable[[], T], timeout: float) -> T | None:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)  # the poll interval of a deadline wait
        delay = min(delay * 2, 0.02)


def child_env(token: str, folder: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LEAKGUARD_FAILPOINT", RUN_MARK)}
    env[MARK] = token
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if folder is not None:
        env["LEAKGUARD_DIR"] = folder
    env.update(extra or {})
    return env


class Child:
    """A Python child in a session of its own: JSON lines out on stdout, stderr to a file.

    It is never reaped before ``reap()`` (its zombie keeps its pid, and so its process
    group id, from being reused), so its group can always be killed safely.
    """

    def __init__(self, argv: list[str], env: dict[str, str], stderr_path: str) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.pid = self.proc.pid
        self._buf = b""
        self._eof = False
        self.messages: list[Message] = []  # everything read so far, in order

    def _read(self, timeout: float) -> bool:
        if self._eof:
            return False
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out.fileno()], [], [], max(timeout, 0.0))
        if not ready:
            return False
        data = os.read(out.fileno(), 1 << 16)
        if not data:
            self._eof = True
            return False
        *lines, self._buf = (self._buf + data).split(b"\n")
        for line in lines:
            try:
                self.messages.append(json.loads(line))
            except ValueError:
                self.messages.append({"what": "text", "text": line.decode(errors="replace")})
        return True

    def pump(self) -> None:
        while self._read(0):
            pass

    def find(self, what: str, after: int = 0) -> Message | None:
        return next((m for m in self.messages[after:] if m.get("what") == what), None)

    def expect(self, what: str, timeout: float, after: int = 0) -> Message | None:
        """The first message ``what`` (from index ``after``), waiting at most ``timeout``; None if none."""
        deadline = time.monotonic() + timeout
        while (found := self.find(what, after)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._eof:
                return None
            self._read(min(left, 0.05))
        return found

    def send(self, line: str = "?") -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def close_input(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def exited(self) -> int | None:
        """The exit status (as Popen.returncode) once it exited, without reaping it."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def stderr(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return Path(self.stderr_path).read_text(errors="replace")[-limit:]
        return ""

    def reap(self) -> None:
        """Kill its whole group (its pgid is still its own while unreaped) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def boxed(status: int | None) -> tuple[int] | None:
    return None if status is None else (status,)


def ignores_sigint(pid: int) -> bool:
    """The process ignores SIGINT now (its SigIgn mask in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(mask & (1 << (signal.SIGINT - 1)))


def stopped(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True
