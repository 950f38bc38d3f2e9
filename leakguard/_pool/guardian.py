"""The guardian: a process that outlives a killed pool and cleans up after it.

Each pool starts one, in a session of its own, so ``kill -9 -PGID`` on the job's
process group does not reach it. The pool writes to the guardian's stdin one line
per worker it starts (``w PID START``), one when a worker is ready (``r PID``) and
one when a worker is gone (``g PID``); it writes ``x`` and closes the pipe when it
shuts down normally. The guardian blocks reading that pipe, so it costs nothing
while the pool lives, and learns of the pool's death the instant the kernel closes
the pool's end, however the pool died.

Then it kills the pool's workers that are still alive (each checked by pid *and*
start time, and signalled through a pidfd where the OS has them, so a reused pid
is never hit), and sweeps the journal folder: the pool's and its workers' entries
are now all dead owners'. The pool watches the guardian's stdout for end of file
and starts a new guardian if this one is killed.

The guardian also sweeps what earlier dead owners left, within a time limit: this
is ``Pool()``'s start-up sweep, off the caller's path. It starts once every worker
the guardian knows of is ready, or ``STARTUP_SWEEP_DELAY`` after the guardian
started, whichever comes first: on a machine with few cores the guardian, the
workers and the caller compete for the CPU as a pool starts, and the guardian must
not lengthen the workers' start-up (issue 15). For the same reason the guardian
starts lean: it imports only the lightest modules of the standard library, and
what it needs to sweep or clean up (the journal reader, the sweep) only when it
does so; the imports marked "lean start" below are those.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sys
import threading
import time

TYPE_CHECKING = False  # typing's, without importing typing: a lean start (see leakguard/__init__.py)
if TYPE_CHECKING:
    import subprocess

    from leakguard._journal.identity import Identity

__all__ = ["GuardianLink", "main"]

STARTUP_SWEEP_SECONDS = 2.0  # the start-up sweep's time limit
STARTUP_SWEEP_DELAY = 1.0  # the start-up sweep starts at the latest this long after the guardian
_KILL_WAIT_SECONDS = 1.0
# How long the guardian keeps sweeping while an entry of its pool is kept because its owner
# is still exiting (a big process on a loaded machine can take seconds to tear down its
# mappings): it ends as soon as nothing of the pool is kept, and nobody else would clean up.
_SECOND_CHANCE_SECONDS = 5.0
# The main thread and the start-up sweep's import leakguard's modules lazily (lean start), maybe
# at the same moment: one at a time. A module half imported by one thread is in sys.modules for
# the other, and dataclasses reads typing from there without the import lock: a dataclass made
# while the other thread imports typing fails ("partially initialized module 'typing' has no
# attribute 'ClassVar'"), and the guardian with it.
_IMPORTING = threading.Lock()


def command(*args: str) -> list[str]:
    """How to run ``python -m <module> args`` as this interpreter runs: with its own flags
    (``-X``, ``-W``, ``-I``, ...), as loky starts its resource tracker, and with the
    module found on the interpreter's own path, never a path put ahead of the standard library."""
    import subprocess  # noqa: PLC0415 - lean start: the pool's side alone needs it

    return [sys.executable, *subprocess._args_from_interpreter_flags(), "-m", *args]  # type: ignore[attr-defined]


class GuardianLink:
    """The pool's end of its guardian."""

    def __init__(self, folder: str, parent: Identity) -> None:
        import subprocess  # noqa: PLC0415 - lean start: the pool's side alone needs it

        # A Ctrl-C inside Popen() can land between its pipes and its own clean-up, and strand
        # them: SIGINT waits, blocked, until the link holds the process (SPEC 6; the pool then
        # stops it). The guardian inherits the mask, and ignores SIGINT anyway.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                command(__spec__.name, folder, *map(str, _fields(parent))),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # out of reach of a kill aimed at the job's process group
                close_fds=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.fd = self.proc.stdout.fileno()  # end of file: the guardian died
        self.fds = (self.stdin.fileno(), self.fd)

    def _say(self, line: str) -> None:
        # A dead guardian raises here; the pool's I/O thread sees its stdout close and replaces it.
        with contextlib.suppress(OSError, ValueError):
            self.stdin.write(line.encode() + b"\n")
            self.stdin.flush()

    def worker_started(self, worker: Identity) -> None:
        self._say(f"w {worker.pid} {worker.start}")

    def worker_ready(self, pid: int) -> None:
        self._say(f"r {pid}")

    def worker_gone(self, pid: int) -> None:
        self._say(f"g {pid}")

    def shut_down(self, timeout: float = 5.0) -> None:
        """The pool is done: the guardian exits without touching anything."""
        import subprocess  # noqa: PLC0415 - lean start: the pool's side alone needs it

        self._say("x")
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.close()

    def reap(self) -> int | None:
        """After the guardian died: collect it and close our ends."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        code = self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _fields(identity: Identity) -> tuple[int, int, str, int]:
    return identity.pid, identity.start, identity.boot, identity.pidns


# ---------------------------------------------------------------------------- the process


def main(argv: list[str]) -> None:
    folder = argv[0]
    pool = (int(argv[1]), int(argv[2]), argv[3], int(argv[4]))  # an Identity's fields (lean start)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Pinned now, while the pool that started us runs; whether it is still the pool is
    # checked when it matters, once the pipe has closed (see _wait_for_pool).
    pool_fd = _pidfd(pool[0])
    workers: dict[int, int] = {}  # pid -> start time
    ready: set[int] = set()
    sweep_at: float | None = time.monotonic() + STARTUP_SWEEP_DELAY  # None: started
    closed = False
    rest = b""
    while True:
        if sweep_at is not None and not select.select([0], [], [], max(0.0, sweep_at - time.monotonic()))[0]:
            _start_sweep(folder)  # the pool's workers take long to start: sweep anyway
            sweep_at = None
            continue
        data = os.read(0, 1 << 16)
        if not data:
            break
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == b"w" and len(parts) == 3:
                workers[int(parts[1])] = int(parts[2])
            elif parts[0] == b"r" and len(parts) == 2:
                ready.add(int(parts[1]))
            elif parts[0] == b"g" and len(parts) == 2:
                workers.pop(int(parts[1]), None)
                ready.discard(int(parts[1]))
            elif parts[0] == b"x":
                closed = True
        if sweep_at is not None and workers and ready >= workers.keys():
            _start_sweep(folder)  # the pool's workers are up: its start-up is over
            sweep_at = None
    if closed:
        # The pool shut down normally and waits for us: leave at once. We own nothing, and
        # an interrupted start-up sweep is safe (each unlink is journaled).
        sys.stdout.flush()
        os._exit(0)
    with _IMPORTING:
        from leakguard._journal.identity import Identity  # noqa: PLC0415 - lean start

    boot, pidns = pool[2], pool[3]
    owner = Identity(*pool)
    _wait_for_pool(owner, pool_fd)
    clean_up_after(folder, owner, [Identity(pid, start, boot, pidns) for pid, start in workers.items()])


def _start_sweep(folder: str) -> None:
    # Beside the watch: a pool that closes at once must not wait for it.
    threading.Thread(target=_startup_sweep, args=(folder,), daemon=True).start()


def _startup_sweep(folder: str) -> None:
    if not anything_to_sweep(folder):
        return  # the usual case: importing the sweep would cost more than the look did
    with _IMPORTING:
        from leakguard._sweep.journaled import startup_sweep  # noqa: PLC0415 - lean start

    with contextlib.suppress(Exception):
        startup_sweep(folder, STARTUP_SWEEP_SECONDS)


# The names the sweep looks at (_journal/format.py's JOURNAL_SUFFIX and TEMP_SUFFIX; any
# other file in the folder it never touches), spelled here for the lean start.
_SWEPT_SUFFIXES = (".journal", ".tmp")


def anything_to_sweep(folder: str) -> bool:
    """False only if a sweep of ``folder`` now would keep everything: every journal in it is
    locked by its owner, a live process (the sweep's own test, _sweep/journaled.py), and no
    journal is being made. In doubt, True: the sweep itself then decides."""
    try:
        with os.scandir(folder) as listing:
            paths = [e.path for e in listing if e.name.endswith(_SWEPT_SUFFIXES)]
    except OSError:
        return True
    for path in paths:
        if path.endswith(_SWEPT_SUFFIXES[1]):
            return True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # gone, or one the sweep cannot open either (it skips those)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # held exclusively: its owner lives, and the sweep would keep all it names
        except OSError:
            return True
        finally:
            os.close(fd)  # a lock we took goes with it
        return True  # nobody holds it: its owner may be dead
    return False


def _wait_for_pool(pool: Identity, pidfd: int | None) -> None:
    """Our pipe closes as the pool's process starts to exit, a moment before it is gone
    (its pid still runs): until then the sweep would rightly keep everything it owns."""
    if pidfd is not None and not _is_running(pool):
        # Gone already, or this pid is another process's now: nothing to wait for on it.
        os.close(pidfd)
        pidfd = None
    if pidfd is not None:
        # Still the pool (it runs now, and ran when the pidfd was taken): wait on it.
        _wait_exited([pidfd], _KILL_WAIT_SECONDS)
        return
    deadline = time.monotonic() + _KILL_WAIT_SECONDS  # no pidfds on this OS: look until it is gone, briefly
    while _is_running(pool) and time.monotonic() < deadline:
        time.sleep(0.005)


def clean_up_after(folder: str, pool: Identity, workers: list[Identity]) -> None:
    """The pool died: stop its workers, then remove everything they and it owned."""
    with _IMPORTING:
        from leakguard._sweep.journaled import sweep_owners  # noqa: PLC0415 - lean start

    # Workers the pool started but had not told us about yet name it in their journals.
    known = {w.pid for w in workers}
    workers = workers + [w for w in _workers_in_journals(folder, pool) if w.pid not in known]
    pidfds = [fd for fd in (_kill(w) for w in workers) if fd is not None]
    _wait_exited(pidfds, _KILL_WAIT_SECONDS)
    for fd in pidfds:
        os.close(fd)
    # Only this pool's journals (SPEC 6: other owners' journals, however large or damaged,
    # must not delay this clean-up). A second chance, briefly, for entries still kept because
    # an owner of this pool was in its last moments (no pidfd on this OS, or a process we
    # could not pin).
    ours = {pool.pid} | {w.pid for w in workers}
    deadline = time.monotonic() + _SECOND_CHANCE_SECONDS
    while any(item.owner_pid in ours for item in sweep_owners(folder, ours).kept) and time.monotonic() < deadline:
        time.sleep(0.05)


def _workers_in_journals(folder: str, pool: Identity) -> list[Identity]:
    from leakguard._journal.format import JOURNAL_SUFFIX, open_journal, read_header_fd  # noqa: PLC0415 - lean start

    found = []
    try:
        paths = [e.path for e in os.scandir(folder) if e.name.endswith(JOURNAL_SUFFIX)]
    except OSError:
        return []
    for path in paths:
        fd = open_journal(path)
        if fd is None:
            continue
        try:
            header = read_header_fd(fd)  # the header alone: a damaged file costs nothing here
        finally:
            os.close(fd)
        if header is not None and header.parent == pool:
            found.append(header.owner)
    return found


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (its process cannot be replaced under it while we hold it; it
    turns readable when the process exits), or None where the OS has none."""
    with contextlib.suppress(OSError, AttributeError):
        return os.pidfd_open(pid)
    return None


def _pin(process: Identity) -> int | None:
    """A pidfd for ``process`` if it is still that very process, else None."""
    pidfd = _pidfd(process.pid)
    if _is_running(process):
        return pidfd
    if pidfd is not None:
        os.close(pidfd)
    return None


def _is_running(process: Identity) -> bool:
    from leakguard._journal.identity import start_time  # noqa: PLC0415 - lean start

    # A zombie main thread does not mean the process is gone: other threads may still
    # be exiting and holding its journal lock, so until the pidfd says so, it is not.
    try:
        return start_time(process.pid, exiting=True) == process.start
    except Exception:  # noqa: BLE001 - cannot tell: never act on what we cannot identify
        return False


def _kill(worker: Identity) -> int | None:
    """SIGKILL ``worker`` if it is still that very process; returns a pidfd to wait on."""
    pidfd = _pin(worker)
    if pidfd is None:
        if not hasattr(os, "pidfd_open") and _is_running(worker):
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGKILL)  # no pidfds here: checked, then signalled
        return None
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    return pidfd


def _wait_exited(pidfds: list[int], timeout: float) -> None:
    """Wait until every pidfd reports its process gone (readable), or the time is up."""
    deadline = time.monotonic() + timeout
    waiting = set(pidfds)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(list(waiting), [], [], left)
        waiting.difference_update(ready)


if __name__ == "__main__":
    main(sys.argv[1:])
