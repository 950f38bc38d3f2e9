"""Who owns what: a process is (pid, start time, boot id, pid namespace).

A pid alone is not an identity: pids are reused. The start time tells a reused
pid from the original, the boot id tells this boot from an earlier one (a
journal on disk survives a reboot, the objects in /dev/shm do not), and the pid
namespace tells whether our pid numbers mean anything for the owner at all.

The decisive fact is the owner's lock (``flock`` on its journal file, see
writer.py): the kernel releases it when the owner dies, however it dies. The
identity is the second witness. Only when both agree is an owner dead; any doubt
means alive (fail closed).
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass

__all__ = ["Identity", "Liveness", "boot_id", "identity_liveness", "start_time"]


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"  # could not be decided: treated as alive
    OTHER_BOOT = "other-boot"  # recorded before the last reboot


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        # macOS and others: the boot time, to the second, identifies the boot.
        import psutil  # noqa: PLC0415 - off Linux only: importing it costs each worker ~10 ms

        return f"boot-{int(psutil.boot_time())}"


_BOOT_ID = _read_boot_id()
_LINUX = sys.platform.startswith("linux")


def boot_id() -> str:
    return _BOOT_ID


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0  # no namespaces on this OS: every process shares ours


_PIDNS = _pid_namespace()


def start_time(pid: int, *, exiting: bool = False) -> int | None:
    """The process's start time as an exact integer, or None if it does not exist.

    Linux: clock ticks since boot, field 22 of /proc/PID/stat (exact, no float
    rounding). Elsewhere: psutil's create time in microseconds.
    Raises PermissionError when the OS will not say. With ``exiting``, a process
    whose main thread is a zombie still counts (its other threads may still be exiting,
    holding its files and locks).
    """
    if _LINUX:
        try:
            # os.open and one read, not open(): a third of the time, and an anonymous block's
            # attachment asks this of its holder every time (_blocks/shm.py).
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            return None
        try:
            data = os.read(fd, 4096)  # one line, well under a page: the kernel gives it whole
        except ProcessLookupError:  # ESRCH: the process was reaped after the open
            return None
        finally:
            os.close(fd)
        # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] == b"Z" and not exiting:  # zombie: it has exited, only its exit status remains
            return None
        return int(fields[19])
    import psutil  # noqa: PLC0415 - off Linux only (see _read_boot_id)

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE and not exiting:
            return None
        return int(proc.create_time() * 1_000_000)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied as exc:
        raise PermissionError(f"cannot read the start time of pid {pid}") from exc


@dataclass(frozen=True)
class Identity:
    pid: int
    start: int
    boot: str
    pidns: int

    @classmethod
    def current(cls) -> Identity:
        pid = os.getpid()
        start = start_time(pid)
        assert start is not None  # we are running
        return cls(pid=pid, start=start, boot=_BOOT_ID, pidns=_PIDNS)


def identity_liveness(owner: Identity) -> Liveness:
    """What the process table says of ``owner`` (the lock is checked by the caller)."""
    if owner.boot != _BOOT_ID:
        return Liveness.OTHER_BOOT
    if owner.pidns != _PIDNS:
        return Liveness.UNKNOWN  # its pid numbers are not ours to look up
    try:
        start = start_time(owner.pid)
    except PermissionError:
        return Liveness.UNKNOWN
    except (OSError, ValueError, IndexError):
        return Liveness.UNKNOWN
    if start is None or start != owner.start:
        return Liveness.DEAD  # gone, a zombie, or the pid now belongs to someone else
    return Liveness.ALIVE
