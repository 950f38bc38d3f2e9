"""A pool worker: run tasks from one pipe, answer on another, exit when the pool goes.

The worker reads task frames from its own pipe (several per read), runs each,
and writes one result frame per task as soon as it is done, so the pool always
knows which task a dead worker was running: the first it sent and got no answer
for. It never decides anything about other tasks.

It exits when the pool says stop, when its task pipe reaches end of file, after
``maxtasksperchild`` tasks or when its memory passes ``max_memory_per_child``
(saying so in its last result), and within moments of the pool's death however
the pool died: a thread blocks on a pipe only the pool holds open (the lifeline),
and end of file on it means the pool is gone. SIGINT is ignored: a Ctrl-C reaches
the whole foreground process group, and it is the pool's to act on.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from leakguard._blocks.shm import attached_names, block_of, keep_mappings, name_every_block, still_mapped
from leakguard._failpoint import failpoint
from leakguard._journal import owner as _owner

from . import byvalue as _byvalue
from . import wire as _wire

if TYPE_CHECKING:
    from leakguard._journal.identity import Identity

__all__ = ["WorkerConfig", "run"]

APPLY, MAP, STARMAP = 0, 1, 2


KEPT_MAPPINGS = 8  # blocks whose mappings a worker keeps between tasks (issue 15; _blocks/shm.py)


def _kept_mappings() -> int:
    """LEAKGUARD_KEPT_MAPPINGS (0 keeps none) as the pool's process reads it, else KEPT_MAPPINGS."""
    text = os.environ.get("LEAKGUARD_KEPT_MAPPINGS", "").strip()
    if not text:
        return KEPT_MAPPINGS
    if not text.isdecimal():
        raise ValueError(
            f"LEAKGUARD_KEPT_MAPPINGS must be a whole number of blocks (0 keeps none), not {text!r:.40}; "
            "fix or unset it (docs/operations.md)"
        )
    return int(text)


@dataclass(frozen=True)
class WorkerConfig:
    folder: str
    parent: Identity
    init: _byvalue.Shipped  # (initializer, initargs), or None: by value to a spawned worker
    maxtasks: int | None
    max_memory: int | None
    share_threshold: int | None
    anonymous: bool = True  # the pool's process makes anonymous blocks: so do we (else named ones)
    kept_mappings: int = field(default_factory=_kept_mappings)  # read in the pool's process (a forkserver's env is old)


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    # multiprocessing's own class, not a look-alike: code (and CPython's Pool tests)
    # check `type(exc.__cause__) is multiprocessing.pool.RemoteTraceback`.
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """An exception with the worker's traceback text, rebuilt as ``__cause__`` in the parent."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.tb = '\n"""\n' + "".join(traceback.format_exception(exc)) + '"""'

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exception, (self.exc, self.tb))


def _share(array: Any) -> Any:
    """A result's large array copied into a block of ours (the result pickler's share)."""
    from leakguard._blocks.arrays import share  # noqa: PLC0415 - numpy is imported already: an array came

    return share(array)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # noqa: PLC0415 - off Linux only (see _journal/identity.py)

        return int(psutil.Process().memory_info().rss)


def _watch_lifeline(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    # The pool is gone: release what we own (a worker's blocks are its own), then go.
    try:
        _owner.exit_sequence()
    finally:
        os._exit(1)


class _Worker:
    def __init__(self, task_fd: int, result_fd: int, config: WorkerConfig) -> None:
        self.reader = _wire.BlockingReader(task_fd)
        self.result_fd = result_fd
        self.config = config
        self.pending: dict[int, dict[str, Any]] = {}  # tid -> blocks handed over, awaiting the answer
        self.done = 0
        self.pickler = _wire.ResultPickler(io.BytesIO(), config.share_threshold, _share)  # reused (encode)

    def send(self, kind: int, tid: int, body: bytes, fds: list[int] | None = None) -> None:
        if fds:  # a result's anonymous blocks: their descriptors go with its frame (wire.py)
            _wire.send_frame(self.result_fd, _wire.frame(kind, tid, body), fds)
        else:
            _wire.write_all(self.result_fd, _wire.frame(kind, tid, body))

    def loop(self) -> None:
        """Run tasks until told to stop; after the last task (retiring), only wait for the
        pool's answers about blocks handed over, so that none is left for it to settle."""
        retiring = False
        while not (retiring and not self.pending):
            message = self.reader.next()
            if message is None:
                return
            if message.kind == _wire.ACK:
                self.settle(message.tid, pickle.loads(message.body))
            elif message.kind == _wire.STOP:
                return
            elif not retiring:  # a retiring worker's queued tasks are sent elsewhere by the pool
                retiring = self.run_task(message.tid, message.body)

    def run_task(self, tid: int, body: bytes) -> bool:
        attached_names()
        task: _wire.TaskBody | None = None
        try:
            try:
                task = _wire.load_task(body)
            except Exception as exc:
                _byvalue.explain(exc)  # what went by reference and is not found here: why, and the fix
                raise
            func, args = task.func, task.args
            if task.mode == APPLY:
                value = func(*args[0], **args[1])
            elif task.mode == MAP:
                value = [func(x) for x in args]
            else:
                value = [func(*x) for x in args]
            ok = True
        except Exception as exc:  # noqa: BLE001 - the task's error is the caller's
            # (SystemExit and the like end the worker, as in multiprocessing: the pool
            # then reports the task's worker as lost.)
            ok, value = False, _ExceptionWithTraceback(exc)
        task = func = args = None
        arguments = attached_names()
        self.done += 1
        maxtasks = self.config.maxtasks
        max_memory = self.config.max_memory
        retiring = (maxtasks is not None and self.done >= maxtasks) or (
            max_memory is not None and _resident_bytes() > max_memory
        )
        encoded, handed, by_name, fds = self.encode(value)
        if encoded is None:
            ok = False
            encoded, handed = self.encode_failure(value)
            by_name, fds = set(), []
            del value
            gc.collect()  # rare: free now what the failed pickling left in cycles (arrays, blocks)
        value = None
        # The pool reuses an argument's block for later tasks unless something here still
        # uses it (a global kept it, or the result is a view of it): then it must not.
        retained = not by_name.isdisjoint(arguments) or still_mapped(arguments)
        kind = (
            (_wire.OK if ok else _wire.FAILED)
            | (_wire.RETIRING if retiring else 0)
            | (_wire.HANDED if handed else 0)
            | (_wire.RETAINED if retained else 0)
        )
        if handed:
            self.pending[tid] = handed
        self.send(kind, tid, encoded, fds)
        if handed:
            failpoint("handover.worker-after-send")
        return retiring

    def encode(self, value: Any) -> tuple[bytes | None, dict[str, Any], set[str], list[int]]:
        """(the pickled value, the blocks it hands over, others' blocks it names, the
        descriptors to send with it); None first if it cannot be pickled."""
        pickler = self.pickler
        try:
            pickler.dump(value)
        except Exception:  # noqa: BLE001 - reported to the caller as MaybeEncodingError
            for made in pickler.made:
                block = block_of(made)
                assert block is not None  # made by share(): a block of ours
                _owner.release(block.name)
            self.pickler = pickler.fresh()  # in whatever state the failure left it: replaced
            return None, {}, set(), []
        encoded = (pickler.file.getvalue(), pickler.handed, pickler.by_name, pickler.fds)
        pickler.reset()  # holds nothing of this result's until the next
        return encoded

    def encode_failure(self, value: Any) -> tuple[bytes, dict[str, Any]]:
        inner = value.exc if isinstance(value, _ExceptionWithTraceback) else value
        try:
            _byvalue.dumps(inner)  # as encode() pickles: a class of __main__ goes by value
            reason: BaseException = inner
        except Exception as exc:  # noqa: BLE001 - what made it unpicklable is the news
            reason = exc.with_traceback(None)  # its frames hold the value: no cycle to keep it alive
        error = MaybeEncodingError(reason, inner)  # it keeps repr()s only, as in multiprocessing
        return pickle.dumps(_ExceptionWithTraceback(error)), {}

    def settle(self, tid: int, adopted: list[str]) -> None:
        """The parent answered a hand-over: drop our record of what it adopted, free the rest."""
        for name, block in self.pending.pop(tid, {}).items():
            if name in adopted:
                _owner.hand_over(name)
                block.disown()
                failpoint("handover.worker-after-release")
            else:
                _owner.release(name)


def run(task_conn: Any, result_conn: Any, lifeline_conn: Any, config: WorkerConfig) -> None:
    """The worker process's target (multiprocessing.Process, any start method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while we started: processes.py
    os.environ["LEAKGUARD_DIR"] = config.folder
    _owner.set_parent(config.parent)
    if not config.anonymous:
        name_every_block()
    # Not with max_memory_per_child: a kept block's pages count in the resident size that limit
    # reads, and would retire the worker for memory that is not its own.
    keep_mappings(0 if config.max_memory is not None else config.kept_mappings)
    threading.Thread(target=_watch_lifeline, args=(lifeline_conn.fileno(),), daemon=True).start()
    worker = _Worker(task_conn.fileno(), result_conn.fileno(), config)
    # What exists now (the modules imported to start, this worker's own objects) lives until
    # the worker exits: the collector need not look at it again, in a task's collections nor
    # at exit, where the interpreter's last collections took about 10 ms of a worker's 13 ms
    # exit here (issue 15; gc.freeze). What the initializer and the tasks make is collected
    # as usual.
    gc.freeze()
    try:
        try:
            try:
                init = config.init.value()  # rebuilt here: a failure is the initializer's (byvalue.Shipped)
            except Exception as exc:
                _byvalue.explain(exc)
                raise
            if init is not None:
                initializer, initargs = init
                with _byvalue.initializing():
                    initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which fails its tasks
            body, _, _, fds = worker.encode(_ExceptionWithTraceback(exc))
            worker.send(_wire.INIT_FAILED, 0, body or worker.encode_failure(exc)[0], fds if body else None)
            return
        worker.send(_wire.READY, 0, b"")
        worker.loop()
    except BrokenPipeError:
        pass  # the pool is gone
    finally:
        # Blocks handed over and not yet answered stay in our journal: the pool settles them.
        keep = {name for handed in worker.pending.values() for name in handed}
        _owner.release_all(keep=keep)
        sys.stdout.flush()
