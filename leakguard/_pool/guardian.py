"""The guardian: a process that outlives a killed pool and cleans up after it.

Each pool starts one, in a session of its own, so ``kill -9 -PGID`` on the job's
process group does not reach it. The pool writes to the guardian's stdin one line
per worker it starts (``w PID START``) and one when a worker is gone (``g PID``);
it writes ``x`` and closes the pipe when it shuts down normally. The guardian
blocks reading that pipe, so it costs nothing while the pool lives, and learns of
the pool's death the instant the kernel closes the pool's end, however the pool died.

Then it kills the pool's workers that are still alive (each checked by pid *and*
start time, and signalled through a pidfd where the OS has them, so a reused pid
is never hit), and sweeps the journal folder: the pool's and its workers' entries
are now all dead owners'. The pool watches the guardian's stdout for end of file
and starts a new guardian if this one is killed.

As it starts, the guardian also sweeps what earlier dead owners left, within a
time limit: this is ``Pool()``'s start-up sweep, off the caller's path.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time

from leakguard._journal.format import JOURNAL_SUFFIX, open_journal, read_header_fd
from leakguard._journal.identity import Identity, start_time
from leakguard._sweep.journaled import startup_sweep, sweep_owners

__all__ = ["GuardianLink", "main"]

STARTUP_SWEEP_SECONDS = 2.0
_KILL_WAIT_SECONDS = 1.0
# How long the guardian keeps sweeping while an entry of its pool is kept because its owner
# is still exiting (a big process on a loaded machine can take seconds to tear down its
# mappings): it ends as soon as nothing of the pool is kept, and nobody else would clean up.
_SECOND_CHANCE_SECONDS = 5.0


def command(*args: str) -> list[str]:
    """How to run ``python -m <module> args`` as this interpreter runs: with its own flags
    (``-X``, ``-W``, ``-I``, ...), as loky starts its resource tracker, and with the
    module found on the interpreter's own path, never a path put ahead of the standard library."""
    return [sys.executable, *subprocess._args_from_interpreter_flags(), "-m", *args]  # type: ignore[attr-defined]


class GuardianLink:
    """The pool's end of its guardian."""

    def __init__(self, folder: str, parent: Identity) -> None:
        # A Ctrl-C inside Popen() can land between its pipes and its own clean-up, and strand
        # them: SIGINT waits, blocked, until the link holds the process (SPEC 6; the pool then
        # stops it). The guardian inherits the mask, and ignores SIGINT anyway.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
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

    def worker_gone(self, pid: int) -> None:
        self._say(f"g {pid}")

    def shut_down(self, timeout: float = 5.0) -> None:
        """The pool is done: the guardian exits without touching anything."""
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
    pool = Identity(pid=int(argv[1]), start=int(argv[2]), boot=argv[3], pidns=int(argv[4]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool_fd = _pin(pool)
    # The start-up sweep runs beside the watch: a pool that closes at once must not
    # wait for it (an interrupted sweep is safe, each unlink is journaled).
    threading.Thread(target=_startup_sweep, args=(folder,), daemon=True).start()
    workers: dict[int, Identity] = {}
    closed = False
    for line in sys.stdin.buffer:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == b"w" and len(parts) == 3:
            pid = int(parts[1])
            workers[pid] = Identity(pid=pid, start=int(parts[2]), boot=pool.boot, pidns=pool.pidns)
        elif parts[0] == b"g" and len(parts) == 2:
            workers.pop(int(parts[1]), None)
        elif parts[0] == b"x":
            closed = True
    if closed:
        # The pool shut down normally and waits for us: leave at once. We own nothing, and
        # an interrupted start-up sweep is safe (each unlink is journaled).
        sys.stdout.flush()
        os._exit(0)
    # Our pipe closes as the pool's process starts to exit, a moment before it is gone
    # (its pid still runs): until then the sweep would rightly keep everything it owns.
    if pool_fd is not None:
        _wait_exited([pool_fd], _KILL_WAIT_SECONDS)
    else:  # no pidfds on this OS: look until it is gone, briefly
        deadline = time.monotonic() + _KILL_WAIT_SECONDS
        while _is_running(pool) and time.monotonic() < deadline:
            time.sleep(0.005)
    clean_up_after(folder, pool, list(workers.values()))


def _startup_sweep(folder: str) -> None:
    with contextlib.suppress(Exception):
        startup_sweep(folder, STARTUP_SWEEP_SECONDS)


def clean_up_after(folder: str, pool: Identity, workers: list[Identity]) -> None:
    """The pool died: stop its workers, then remove everything they and it owned."""
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


def _pin(process: Identity) -> int | None:
    """A pidfd for ``process`` if it is still that very process (its pid cannot be reused
    while we hold it; it turns readable when the process exits), else None."""
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(process.pid)
    if _is_running(process):
        return pidfd
    if pidfd is not None:
        os.close(pidfd)
    return None


def _is_running(process: Identity) -> bool:
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
