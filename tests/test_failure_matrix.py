"""SPEC section 4, the failure matrix: one test per row, under each start method.

Every job runs in a process of its own session (tests/matrix_tasks.py is the job and its
tasks) and holds real things: a SharedArray it made and passes to the workers, named
semaphores, a plain 2 MiB argument the pool shares by itself, and 1 MiB results that come
back through blocks. It is then hurt with real signals: one worker, the job's process
alone, its whole process group, its guardian, or all of them at once. Each test holds the
outcome to the row's deadline, measured from the fault, on /dev/shm, the journal folder
and the process table, waiting with deadlines, never with sleeps.

The deadlines ("within 2 s", "within 1 s") are the SPEC's own; each wait prints how long
it took (``pytest -s``), so a deadline that gets tight on a loaded machine shows up.

Why one long module: it is one concept, the SPEC's table, one test per row (as
docs/failure-matrix.md lists them), on one harness (``Job``, ``hold``, ``within``,
``guardians``) that every row drives; splitting the rows would split the harness from them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import posix_ipc
import psutil
import pytest

import leakguard
from leakguard._journal.format import encode_record
from leakguard._os.names import posix_name
from tests import matrix_tasks as mt
from tests import private_shm
from tests import small_shm_children as small_shm
from tests.helpers import SHM, entry_of, lg_entries, process_gone, python_main, wait_for

# Out of the quick selection (pytest -m "not slow"): each test starts a job with a pool and hurts it.
pytestmark = pytest.mark.slow

T = TypeVar("T")
Message = dict[str, Any]

BOOM = "tests.matrix_tasks.BoomError"


# ---------------------------------------------------------------------------- the job process


class Job:
    """A job process in a session of its own: JSON commands in on stdin, JSON lines out on stdout.

    The job is never reaped before ``reap()`` (its zombie keeps its pid, and so its process
    group id, from being reused), so the group can always be killed safely.
    """

    def __init__(self, start_method: str, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        # The rows watch named objects (in /dev/shm, journaled, unlinked by the guardian or
        # a sweep): the job names every block. Anonymous blocks have a row of their own
        # (test_everything_killed_nothing_run_afterwards_leaves_no_anonymous_block).
        env = {"LG_MATRIX": json.dumps({"start_method": start_method, **config}), "LEAKGUARD_NAMED_BLOCKS": "1"}
        self.proc = python_main(mt.main, env=env)
        self.pid = self.pgid = self.proc.pid
        self._out = b""
        self._err = b""
        self._unread: list[Message] = []
        self._eof = False
        self.ready: Message = {}

    # -------------------------------------------------------------- talking

    def send(self, do: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"do": do, **args}) + "\n")
        self.proc.stdin.flush()

    def _read(self, timeout: float) -> bool:
        """Read what the job wrote within ``timeout``; False at end of output or on timeout."""
        if self._eof:
            return False
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # raw reads: never through the text wrapper's buffer
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return False
        data = os.read(fd, 1 << 16)
        if not data:
            self._eof = True
            return False
        *lines, self._out = (self._out + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                message = {"what": "text", "text": line.decode(errors="replace")}
            self._unread.append(message)
        return True

    def _take(self, what: str, match: dict[str, Any]) -> Message | None:
        for k, m in enumerate(self._unread):
            if m.get("what") == what and all(m.get(key) == value for key, value in match.items()):
                return self._unread.pop(k)
        return None

    def poll(self, what: str, **match: Any) -> Message | None:
        """The first message ``what`` (with the given fields) already written, without waiting."""
        while self._read(0):
            pass
        found = self._take(what, match)
        if found is None and self._eof:
            raise AssertionError(
                f"no {what!r} message {match or ''} from the job: its output ended; unread: {self._unread}; "
                f"exit status {self.exited()}; stderr:\n{self.stderr()}"
            )
        return found

    def expect(self, what: str, timeout: float = 30.0, **match: Any) -> Message:
        """The first message ``what`` with the given fields, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (found := self._take(what, match)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._eof:
                end = "the job's output ended" if self._eof else f"none within {timeout:g} s"
                raise AssertionError(
                    f"no {what!r} message {match or ''} from the job: {end}; "
                    f"unread: {self._unread}; exit status {self.exited()}; stderr:\n{self.stderr()}"
                )
            self._read(left)
        return found

    def stderr(self) -> str:
        """What the job (and its children, which share the pipe) wrote to stderr so far."""
        stream = self.proc.stderr
        if stream is not None and not stream.closed:
            fd = stream.fileno()
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 16):
                    self._err += chunk
        return self._err.decode(errors="replace")

    # -------------------------------------------------------------- its processes

    def exited(self) -> int | None:
        """The job's exit status once it has exited (as Popen.returncode), without reaping it."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def wait_exit(self, timeout: float = 30.0) -> int:
        box = wait_for(lambda: _status_or_none(self.exited()), timeout=timeout, what="the job to exit")
        assert box is not None
        return box[0]

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """End of input (the job's cue to end normally); returns its exit status and stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        status = self.wait_exit(timeout)
        return status, self.stderr()

    def group(self) -> list[psutil.Process]:
        """The live processes of the job's process group (its workers, the stdlib's helpers)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getpgid(proc.pid) == self.pgid and not process_gone(proc):
                    found.append(proc)
        return found

    def reap(self) -> None:
        """Kill whatever is left of the job, its group and its guardians; reap the job."""
        if self.proc.returncode is not None:
            return
        members = self.group()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)  # the unreaped job holds the group id: it is still ours
        left = guardians(self.folder)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(AssertionError):  # gone for good: their journals' locks are free
            wait_for(lambda: all(map(process_gone, members)), timeout=10, what="the job's group to exit")
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _status_or_none(status: int | None) -> tuple[int] | None:
    return None if status is None else (status,)  # a truthy box: an exit status may be 0


@contextlib.contextmanager
def running_job(start_method: str, folder: Path, tmp_path: Path, **config: Any) -> Iterator[Job]:
    """A job with a pool of 2 workers, ready for commands; everything it started is killed after."""
    marks = tmp_path / f"marks-{uuid.uuid4().hex[:8]}"
    marks.mkdir()
    job = Job(start_method, folder, {"marks": str(marks), **config})
    try:
        job.ready = job.expect("ready", timeout=60)
        yield job
    except BaseException:
        job.reap()
        # After a failure, what the dead job left goes now, not into the next test's account.
        with contextlib.suppress(Exception):
            leakguard.sweep()
        raise
    finally:
        job.reap()


def guardians(folder: Path, pid: int | None = None) -> list[psutil.Process]:
    """Live guardians of pools whose journals are in ``folder`` (of the pool ``pid``, if given)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            proc.info["status"] != psutil.STATUS_ZOMBIE
            and any("leakguard._pool.guardian" in part for part in cmdline)
            and str(folder) in cmdline
            and (pid is None or str(pid) in cmdline[3:])
        ):
            found.append(proc)
    return found


def processes(pids: list[int]) -> list[psutil.Process]:
    """The processes with these pids; one that is already gone stands as a process that is."""
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def within(seconds: float, since: float, predicate: Callable[[], T], what: str) -> T:
    """``predicate`` comes true within ``seconds`` of the fault at ``since`` (time.monotonic())."""
    try:
        value = wait_for(predicate, timeout=since + seconds - time.monotonic(), what=f"{what}, within {seconds:g} s")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_state()}") from None
    print(f"timing: {what}: {time.monotonic() - since:.3f} s (limit {seconds:g} s)")
    return value


def _state() -> str:
    """What a failed wait saw: leakguard's objects, the journals, what a sweep would do."""
    folder = Path(os.environ["LEAKGUARD_DIR"])
    lines = [f"in /dev/shm: {sorted(lg_entries())}", f"journals: {journals(folder)}"]
    with contextlib.suppress(Exception):
        report = leakguard.sweep(dry_run=True)
        for item in report.removed + report.kept + report.errors:
            lines.append(f"  sweep would say: {item.name} (owner {item.owner_pid}): {item.state}: {item.reason}")
    lines.append(f"guardians: {[(p.pid, p.status()) for p in guardians(folder)]}")
    return "\n".join(lines)


def release_gate(name: str, times: int = 1) -> None:
    """Let tasks waiting on the job's gate semaphore go on (by name, as any process can)."""
    gate = posix_ipc.Semaphore(posix_name(name))
    try:
        for _ in range(times):
            gate.release()
    finally:
        gate.close()


def hold(job: Job) -> tuple[Message, list[Message], set[str]]:
    """Have the job keep 1 MiB results and give each worker a task that holds a block of its
    own and waits on the gate. Returns the job's report, the workers' reports, and the
    /dev/shm entries known to exist now (all of them are checked)."""
    job.send("hold")
    holding = job.expect("holding")
    held = [job.expect("held", i=i) for i in range(2)]
    assert {m["pid"] for m in held} == set(holding["workers"]), "each worker holds one task"
    assert all(m["big_by_name"] for m in held), "the 2 MiB argument reached the workers as a shared block"
    assert None not in holding["kept"], "the 1 MiB results came back as shared blocks"
    known = {entry_of("shm", holding["shared"])} | {entry_of("sem", holding[s]) for s in ("lock", "gate", "started")}
    known |= {entry_of("shm", name) for name in holding["kept"]}
    known |= {entry_of("shm", m["block"]) for m in held}
    assert len(known) == 4 + 3 + 2
    assert known <= lg_entries()
    return holding, held, known


def journals(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def ends_normally(job: Job) -> None:
    """The job ends normally: exit status 0, nothing on stderr, no process of its left."""
    status, err = job.finish()
    assert (status, err) == (0, ""), err
    assert guardians(job.folder, job.pid) == []
    # The standard library's helpers (forkserver, resource tracker) exit once they see the job go.
    wait_for(lambda: not job.group(), timeout=5, what="the job's process group to be empty")


def ends_cleanly(job: Job, before: set[str]) -> None:
    """The job ends normally, and nothing is left of it anywhere."""
    ends_normally(job)
    assert guardians(job.folder) == []
    assert lg_entries() - before == set()
    assert journals(job.folder) == []


def kill_everything(job: Job) -> None:
    """What a cgroup or container kill does: the job's whole group and its guardian, at once.

    The group is stopped first, so that the pool cannot see its guardian die and start another.
    """
    members = job.group()
    os.killpg(job.pgid, signal.SIGSTOP)
    stopped = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    wait_for(
        lambda: all(process_gone(p) or p.status() in stopped for p in members),
        timeout=10,
        what="the job's group to stop",
    )
    [guardian] = guardians(job.folder, job.pid)
    guardian.kill()
    wait_for(lambda: process_gone(guardian), timeout=10, what="the guardian to die")
    os.killpg(job.pgid, signal.SIGKILL)
    wait_for(lambda: all(process_gone(p) for p in members), timeout=10, what="the job's group to die")
    assert job.exited() == -signal.SIGKILL
    assert guardians(job.folder) == []


# ---------------------------------------------------------------------------- row 1: exception in a task


@pytest.mark.timeout(60)
def test_exception_in_a_task_reaches_the_caller_with_its_type(
    start_method: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        job.send("exceptions")
        facts = job.expect("exceptions")

        assert facts["map"]["type"] == BOOM
        assert facts["map"]["args"] == [repr("item 3 failed on purpose"), "3"]
        assert "maybe_raise" in facts["map"]["remote_traceback"]  # the worker's traceback, as __cause__
        assert facts["apply"]["type"] == "builtins.ValueError"
        assert facts["starmap"]["type"] == "builtins.KeyError"
        assert facts["async"]["successful"] is False
        assert facts["async"]["get"]["type"] == BOOM
        assert [e["type"] for e in facts["async"]["callback"]] == [BOOM]
        assert facts["imap"] == [0, 2, 4, 6, BOOM, 10, 12, 14]  # raised at its place; the rest arrive
        assert facts["map_after"] is True  # the pool is usable
        assert facts["workers_after"] == facts["workers_before"]  # and an exception costs no worker
        ends_cleanly(job, before)


# ---------------------------------------------------------------------------- row 2: a worker dies

EXIT_STATUS = {"SIGKILL": -signal.SIGKILL, "segfault": -signal.SIGSEGV, "_exit": mt.DIE_EXIT_CODE}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGKILL", "segfault", "_exit"])
def test_worker_death_fails_its_task_alone_and_its_blocks_go(
    start_method: str, how: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    victim, n = 2, 8
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        job.send("imap", n=n, plan={str(victim): [f"gate-{how}"]})
        fate = job.expect("fate", i=victim)
        block = entry_of("shm", fate["block"])
        assert block in lg_entries()
        worker = psutil.Process(fate["pid"])

        fault = time.monotonic()
        if how == "SIGKILL":
            os.kill(worker.pid, signal.SIGKILL)
        else:
            release_gate(job.ready["gate"])  # the task goes on to segfault or os._exit
        lost = within(2, fault, lambda: job.poll("item", i=victim), "the dead worker's task to fail")
        assert lost is not None
        within(2, fault, lambda: block not in lg_entries(), "the dead worker's block to be unlinked")

        assert lost["ok"] is False
        error = lost["error"]
        assert error["public"] == "WorkerLostError"
        assert error["is_leakguard"]
        assert error["pid"] == worker.pid
        assert error["exitcode"] == EXIT_STATUS[how]
        assert error["signal"] == (-EXIT_STATUS[how] if how != "_exit" else None)
        assert error["attempts"] == 1
        assert f"{victim}" in error["task"]
        others = [job.expect("item", i=i) for i in range(n) if i != victim]
        assert [m["i"] for m in others if not (m["ok"] and m["right"])] == []  # every other item arrived, right
        done = job.expect("imap-done")
        assert process_gone(worker)
        assert worker.pid not in done["workers"]

        job.send("map")  # the pool is usable, with a full set of workers
        mapped = job.expect("mapped")
        assert mapped["ok"]
        assert len(mapped["workers"]) == 2
        ends_cleanly(job, before)


def _main_thread_state(pid: int) -> str:
    with open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii") as f:
        data = f.read()
    return data[data.rindex(")") + 2]


@pytest.mark.timeout(60)
def test_worker_death_while_the_job_reads_its_stdin(
    start_method: str, leakguard_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same row, in a job whose main thread reads its input while the pool works.

    Under fork, a replacement worker is forked while the main thread holds sys.stdin's
    lock; multiprocessing closes stdin as the worker starts, which used to hang it.
    """
    before = lg_entries()
    victim, n = 0, 6
    with running_job(start_method, leakguard_dir, tmp_path, processes=1) as job:
        job.send("imap", n=n, plan={str(victim): ["gate-SIGKILL"]}, read_stdin=True)
        fate = job.expect("fate", i=victim)
        job.expect("reading")
        wait_for(lambda: _main_thread_state(job.pid) == "S", timeout=10, what="the job to wait for its input")
        worker = psutil.Process(fate["pid"])

        fault = time.monotonic()
        worker.kill()  # the pool replaces its only worker while the job's main thread reads
        block = entry_of("shm", fate["block"])
        within(2, fault, lambda: block not in lg_entries(), "the dead worker's block to be unlinked")
        assert job.proc.stdin is not None
        job.proc.stdin.write("go on\n")
        job.proc.stdin.flush()
        assert job.expect("read")["line"] == "go on"
        lost = job.expect("item", i=victim)
        assert lost["error"]["public"] == "WorkerLostError"
        others = [job.expect("item", i=i, timeout=10) for i in range(n) if i != victim]
        assert [m["i"] for m in others if not (m["ok"] and m["right"])] == []
        job.expect("imap-done")
        ends_cleanly(job, before)


@pytest.mark.timeout(60)
def test_retries_then_worker_lost_after_n_plus_1_deaths(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    n = 8
    doomed = ["SIGKILL", "segfault", "_exit"]  # dies on each of 1 + retries attempts
    saved = ["_exit", "SIGKILL"]  # dies twice, then succeeds
    with running_job(start_method, leakguard_dir, tmp_path, pool={"retries": 2}) as job:
        job.send("imap", n=n, plan={"2": doomed, "5": saved})
        items = {i: job.expect("item", i=i) for i in range(n)}
        job.expect("imap-done")
        deaths = {
            (i, a): job.expect("fate", i=i, attempt=a)
            for i, fates in ((2, doomed), (5, saved))
            for a in range(1, len(fates) + 1)
        }

        lost = items[2]
        assert lost["ok"] is False
        assert lost["error"]["public"] == "WorkerLostError"
        assert lost["error"]["attempts"] == 3
        assert lost["error"]["exitcode"] == mt.DIE_EXIT_CODE  # the last death: os._exit
        assert lost["error"]["pid"] == deaths[2, 3]["pid"]
        assert items[5]["ok"]
        assert items[5]["right"]
        # Each death cost one worker, and each retry ran on a live one.
        pids = [d["pid"] for d in deaths.values()]
        assert len(set(pids)) == len(pids)
        assert items[5]["pid"] not in {deaths[5, 1]["pid"], deaths[5, 2]["pid"]}
        assert [i for i, m in items.items() if i != 2 and not (m["ok"] and m["right"])] == []
        blocks = {entry_of("shm", d["block"]) for d in deaths.values()}
        wait_for(lambda: not (blocks & lg_entries()), timeout=2, what="the dead workers' blocks to go")
        assert all(process_gone(p) for p in processes([d["pid"] for d in deaths.values()]))

        job.send("map")
        assert job.expect("mapped")["ok"]
        ends_cleanly(job, before)


@pytest.mark.timeout(60)
def test_task_timeout_stops_the_task_and_its_worker(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    timeout, slow, n = 1.0, 1, 6
    with running_job(start_method, leakguard_dir, tmp_path, pool={"task_timeout": timeout}) as job:
        job.send("imap", n=n, plan={str(slow): ["sleep"]})
        fate = job.expect("fate", i=slow)
        block = entry_of("shm", fate["block"])
        worker = psutil.Process(fate["pid"])
        stopped = job.expect("item", i=slow, timeout=timeout + 2)
        # The task's clock starts when it is sent, a moment before it reported itself.
        assert stopped["at"] - fate["at"] > timeout - 0.25
        error = stopped["error"]
        assert error["public"] == "TaskTimeoutError"
        assert error["is_timeout"]  # a TimeoutError
        assert error["pid"] == worker.pid
        within(2, stopped["at"], lambda: process_gone(worker), "the timed-out worker to be gone")
        within(2, stopped["at"], lambda: block not in lg_entries(), "the timed-out worker's block to go")
        others = [job.expect("item", i=i) for i in range(n) if i != slow]
        assert [m["i"] for m in others if not (m["ok"] and m["right"])] == []
        job.expect("imap-done")

        job.send("map")
        mapped = job.expect("mapped")
        assert mapped["ok"]
        assert len(mapped["workers"]) == 2
        assert worker.pid not in mapped["workers"]
        ends_cleanly(job, before)


@pytest.mark.timeout(60)
def test_a_worker_retiring_slowly_is_not_timed_out_for_tasks_it_gave_back(start_method: str) -> None:
    # Over max_memory_per_child after every task, each worker retires with the next task
    # already sent to it, gives that back, and takes longer than task_timeout to exit: no task
    # of its is running, so no deadline applies (one did, and stopped the I/O thread).
    exit_time, timeout = 0.6, 0.3
    with leakguard.Pool(1, start_method=start_method, max_memory_per_child=1, task_timeout=timeout) as pool:
        assert pool.map(functools.partial(mt.slow_to_exit, seconds=exit_time), range(3), chunksize=1) == [0, 1, 2]
        assert pool.apply(abs, (-3,)) == 3


@pytest.mark.timeout(60)
def test_max_memory_per_child_replaces_the_worker(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    hog, n = 2, 8
    with running_job(start_method, leakguard_dir, tmp_path, memory_headroom=200 << 20) as job:
        first = set(job.ready["workers"])
        job.send("imap", n=n, plan={str(hog): ["hog"]})
        hogged = job.expect("hogged", timeout=60)
        over = processes([hogged["pid"]])
        assert hogged["rss"] > job.ready["limit"]
        items = [job.expect("item", i=i) for i in range(n)]
        assert [m["i"] for m in items if not (m["ok"] and m["right"])] == []
        assert items[hog]["pid"] == hogged["pid"]
        # It ran nothing after the task that took it past the limit.
        assert [m["i"] for m in items if m["pid"] == hogged["pid"] and m["i"] > hog] == []
        job.expect("imap-done")
        wait_for(lambda: all(map(process_gone, over)), timeout=2, what="the worker over the limit to exit")

        job.send("map")
        mapped = job.expect("mapped")
        assert mapped["ok"]
        assert len(mapped["workers"]) == 2
        assert hogged["pid"] not in mapped["workers"]
        assert first - {hogged["pid"]} <= set(mapped["workers"])  # the other worker was under the limit
        ends_cleanly(job, before)


# ---------------------------------------------------------------------------- rows 3-5: the job dies


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_parent_stopped_by_a_signal_leaves_nothing(
    start_method: str, sig: signal.Signals, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        holding, _, _ = hold(job)
        workers = processes(holding["workers"])
        [guardian] = guardians(leakguard_dir, job.pid)

        fault = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(job.pgid, sig)  # Ctrl-C: the terminal signals the whole foreground group
        else:
            os.kill(job.pid, sig)  # a scheduler stops the job's process
        within(2, fault, lambda: not (lg_entries() - before), "every block and semaphore to be unlinked")
        within(2, fault, lambda: all(process_gone(p) for p in workers), "the workers to exit")
        within(2, fault, lambda: process_gone(guardian), "the guardian to exit")
        within(2, fault, lambda: not journals(leakguard_dir), "the journals to go")

        status = job.wait_exit()
        assert status == -sig
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in job.stderr()


@pytest.mark.timeout(60)
def test_parent_sigkill_the_guardian_cleans_up(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        holding, _, _ = hold(job)
        workers = processes(holding["workers"])
        [guardian] = guardians(leakguard_dir, job.pid)

        fault = time.monotonic()
        os.kill(job.pid, signal.SIGKILL)
        within(2, fault, lambda: all(process_gone(p) for p in workers), "the workers to exit")
        within(2, fault, lambda: not (lg_entries() - before), "the guardian to unlink everything")
        within(2, fault, lambda: not journals(leakguard_dir), "the journals to go")
        within(2, fault, lambda: process_gone(guardian), "the guardian to exit")
        assert job.exited() == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_process_group_sigkill_the_guardian_cleans_up(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        holding, _, _ = hold(job)
        workers = processes(holding["workers"])
        [guardian] = guardians(leakguard_dir, job.pid)
        assert os.getsid(guardian.pid) != os.getsid(job.pid)  # out of reach of kill -9 -PGID

        fault = time.monotonic()
        os.killpg(job.pgid, signal.SIGKILL)
        within(2, fault, lambda: not (lg_entries() - before), "the guardian to unlink everything")
        within(2, fault, lambda: not journals(leakguard_dir), "the journals to go")
        within(2, fault, lambda: process_gone(guardian), "the guardian to exit")
        assert all(process_gone(p) for p in workers)
        assert job.exited() == -signal.SIGKILL


# ---------------------------------------------------------------------------- row 6: the guardian dies


@pytest.mark.timeout(60)
def test_guardian_sigkill_the_pool_starts_a_new_one(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        [old] = guardians(leakguard_dir, job.pid)

        fault = time.monotonic()
        old.kill()
        [new] = within(
            1, fault, lambda: [g for g in guardians(leakguard_dir, job.pid) if g.pid != old.pid], "a new guardian"
        )

        job.send("map")  # the pool still works
        assert job.expect("mapped")["ok"]
        # ... and the new guardian still cleans up after it.
        holding, _, _ = hold(job)
        workers = processes(holding["workers"])
        fault = time.monotonic()
        os.kill(job.pid, signal.SIGKILL)
        within(2, fault, lambda: all(process_gone(p) for p in workers), "the workers to exit")
        within(2, fault, lambda: not (lg_entries() - before), "the new guardian to unlink everything")
        within(2, fault, lambda: not journals(leakguard_dir), "the journals to go")
        within(2, fault, lambda: process_gone(new), "the new guardian to exit")


# ---------------------------------------------------------------------------- row 7: everything killed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("next_step", ["sweep", "Pool()"])
def test_everything_killed_the_next_sweep_or_pool_removes_it_all(
    start_method: str, next_step: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        _, _, known = hold(job)
        kill_everything(job)
    left = lg_entries() - before
    assert known <= left  # nobody was left to clean up
    assert len(journals(leakguard_dir)) >= 3  # the job's and its two workers'

    if next_step == "sweep":
        report = leakguard.sweep()
        assert report.errors == []
        assert {entry_of(i.kind or "", i.name or "") for i in report.removed} == left
        assert lg_entries() - before == set()
        assert journals(leakguard_dir) == []
        return

    with running_job(start_method, leakguard_dir, tmp_path) as job:
        mine = {entry_of("shm", job.ready["shared"])} | {
            entry_of("sem", job.ready[s]) for s in ("lock", "gate", "started")
        }
        # Pool() sweeps as it starts, off the caller's path: give it a moment.
        wait_for(lambda: not (left & lg_entries()), timeout=5, what="the new pool's start-up sweep")
        assert mine <= lg_entries()  # and it touched nothing of the new job's
        job.send("map")
        assert job.expect("mapped")["ok"]
        ends_cleanly(job, before)


# ---------------------------------------------------------------------------- row 8: everything killed, nothing run


@pytest.mark.timeout(240)
def test_everything_killed_nothing_run_afterwards_leaves_no_anonymous_block(start_method: str) -> None:
    """SPEC 4, "everything killed, nothing run afterwards": anonymous blocks, nothing left within 2 s.

    In a 64 MiB /dev/shm (Docker's default), a job holds a 400 MB SharedArray, two 100 MB
    arguments mapped by its two workers and two 50 MB results; then every one of its processes
    (pool owner, workers, guardian, the standard library's helpers) is SIGKILLed at once, as a
    cgroup's kill does, and nothing runs afterwards: no guardian, no sweep, no new Pool(). The
    kernel frees every block with its last holder (tests/small_shm_children.py ``killed``).
    """
    result = private_shm.in_small_shm(
        small_shm.main, "killed", start_method, why="a 64 MiB /dev/shm needs a mount namespace", timeout=220
    )
    assert len(result["ready"]["kept"]) == 2
    assert result["processes"] >= 4, result  # the job, its two workers, its guardian (and helpers)
    # The blocks: the shared array, two arguments, two results; 700 MB, all of it in Shmem.
    assert result["inodes"] >= 5, result
    assert result["blocks"] >= 700_000_000, result
    assert result["held"] - result["baseline"] > result["blocks"] - (64 << 20), result
    # Within 2 s of the kill, Shmem is back to its baseline: it falls by the blocks' 700 MB (less
    # 64 MiB for what other programs on the machine do meanwhile), and no process anywhere holds
    # or maps one of them.
    assert result["freed_after"] is not None, result
    assert result["freed_after"] <= 2.0, result
    assert result["survivors"] == [], result
    print(f"timing: processes gone {result['gone_after']:.3f} s, Shmem back {result['freed_after']:.3f} s (limit 2 s)")
    # /dev/shm never held any of it, and nothing cleaned up: the dead job's journals are still there.
    assert result["shm_before"] == result["shm_after"] == [0, []]
    assert result["journals"], "a sweep ran: the job's journals are gone"


# ---------------------------------------------------------------------------- row 9: sweep beside live pools


def _inodes(entries: set[str]) -> dict[str, int]:
    return {e: os.stat(os.path.join(SHM, e)).st_ino for e in entries}


@pytest.mark.timeout(60)
def test_sweep_while_pools_run_touches_nothing_live(start_method: str, leakguard_dir: Path, tmp_path: Path) -> None:
    before = lg_entries()
    with (
        running_job(start_method, leakguard_dir, tmp_path) as first,
        running_job(start_method, leakguard_dir, tmp_path) as second,
    ):
        jobs = [first, second]
        holdings = [hold(job) for job in jobs]
        known = set().union(*(k for _, _, k in holdings))
        ours = lg_entries() - before
        snapshot = _inodes(ours)
        files = journals(leakguard_dir)
        assert len(files) == 2 * 3  # each job's and each of its workers'
        for _ in range(3):
            report = leakguard.sweep()
            assert (report.removed, report.errors, report.journals_removed) == ([], [], [])
            assert known <= {entry_of(i.kind or "", i.name or "") for i in report.kept}
        assert _inodes(ours) == snapshot
        assert journals(leakguard_dir) == files

        for job, (holding, _, _) in zip(jobs, holdings, strict=True):
            release_gate(holding["gate"], times=2)
            assert job.expect("released")["ok"]  # the held tasks' blocks and data were intact

        # Sweep over and over while results are handed over from workers to the jobs.
        for job in jobs:
            job.send("churn", rounds=30)
        sweeps = 0
        churned: list[Message] = []
        while len(churned) < len(jobs):
            report = leakguard.sweep()
            assert (report.removed, report.errors) == ([], []), report
            sweeps += 1
            churned += [m for job in jobs if (m := job.poll("churned")) is not None]
        assert sweeps > 1
        assert all(m["ok"] and m["shared_intact"] for m in churned), churned
        for job in jobs:
            ends_normally(job)
        assert lg_entries() - before == set()
        assert journals(leakguard_dir) == []


# ---------------------------------------------------------------------------- row 10: reboot


def _move_to_another_boot(journal: Path, boot: str) -> None:
    """Rewrite the journal's header as if it had been written before a reboot."""
    data = journal.read_bytes()
    assert data.startswith(b"\n")
    header, newline, rest = data[1:].partition(b"\n")
    payload = json.loads(header.split(b" ", 2)[2])
    assert payload["op"] == "journal"
    payload["boot"] = boot
    if isinstance(payload.get("parent"), dict):
        payload["parent"]["boot"] = boot
    journal.write_bytes(encode_record(json.dumps(payload, separators=(",", ":")).encode("ascii")) + newline + rest)


@pytest.mark.timeout(60)
def test_reboot_entries_of_another_boot_are_dropped_without_unlinking(
    start_method: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path) as job:
        _, _, known = hold(job)
        kill_everything(job)
    left = lg_entries() - before
    try:
        assert known <= left
        snapshot = _inodes(left)
        files = sorted(leakguard_dir.glob("*.journal"))
        assert len(files) >= 3
        other_boot = str(uuid.uuid4())
        for journal in files:
            _move_to_another_boot(journal, other_boot)

        report = leakguard.sweep()

        assert report.errors == []
        assert report.removed == []
        assert {entry_of(i.kind or "", i.name or "") for i in report.dropped} == left
        assert {i.state for i in report.dropped} == {"other-boot"}
        assert _inodes(left) == snapshot  # the objects of this boot stand
        assert journals(leakguard_dir) == []
    finally:
        for entry in left:  # this boot's objects, which the "old" journals named: ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM, entry))


# ---------------------------------------------------------------------------- a normal end


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["close-join", "context-manager", "interpreter-exit"])
def test_a_pool_that_ends_normally_leaves_no_guardian_and_no_journal(
    start_method: str, ending: str, leakguard_dir: Path, tmp_path: Path
) -> None:
    before = lg_entries()
    with running_job(start_method, leakguard_dir, tmp_path, ending=ending) as job:
        [guardian] = guardians(leakguard_dir, job.pid)
        workers = processes(job.ready["workers"])
        job.send("map")
        assert job.expect("mapped")["ok"]
        if ending != "interpreter-exit":
            assert job.proc.stdin is not None
            job.proc.stdin.close()
            job.expect("joined")
            # join() returned: the workers and the guardian are gone, the job itself still runs.
            assert all(process_gone(p) for p in workers)
            assert process_gone(guardian)
            assert job.exited() is None
        status, err = job.finish() if ending == "interpreter-exit" else (job.wait_exit(), job.stderr())
        assert (status, err) == (0, ""), err
        assert process_gone(guardian)
        assert all(process_gone(p) for p in workers)
        wait_for(lambda: not job.group(), timeout=5, what="the job's process group to be empty")
        assert lg_entries() - before == set()
        assert journals(leakguard_dir) == []
