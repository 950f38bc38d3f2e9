"""A Dask worker plugin that runs ``leakguard.sweep()`` as each worker starts and closes.

A Dask worker that the nanny kills (memory limit: SIGTERM, then SIGKILL) or that dies
any other way runs no clean-up, so the shared memory its tasks made stays in
/dev/shm. The nanny then starts a new worker process; the plugin's ``setup`` runs in
it before it takes tasks and removes what dead owners left, the dead worker's blocks
included. A live sibling worker's blocks stay: the sweep only removes objects whose
owner is provably dead.

The sweep runs in the worker process, on the journal folder that process's own
leakguard objects use (``LEAKGUARD_DIR`` from the worker's environment, else the
default), so it looks exactly where the workers of that machine record what they make.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from distributed import WorkerPlugin

from . import SweepReport, sweep

__all__ = ["SweepPlugin"]

# The worker's own logger: the sweep's report appears among the worker's messages,
# with the worker's log configuration.
logger = logging.getLogger("distributed.worker")

_MiB = 1 << 20


class SweepPlugin(WorkerPlugin):
    """Sweep leakguard's journal folder when a Dask worker starts and when it closes.

    ``folder``: the journal folder to sweep; by default the one the worker process
    itself uses (its ``LEAKGUARD_DIR``, else leakguard's default), resolved in the worker,
    not where the plugin was made. ``time_limit``: seconds after which no further journal
    is started (what is left waits for the next sweep), so that a folder full of
    leftovers cannot hold up a worker's start.

    Each worker keeps a summary of its sweeps in ``reports`` (the plugin object on the
    worker: ``worker.plugins[SweepPlugin.name]``). ``directory`` is the old name of
    ``folder`` (deprecated; it goes in the next release).
    """

    name = "leakguard-sweep"
    idempotent = True  # registering it again (another client, a second call) changes nothing

    def __init__(
        self, folder: str | None = None, *, time_limit: float | None = 10.0, directory: str | None = None
    ) -> None:
        if directory is not None:
            warnings.warn(
                "directory= is deprecated; call it folder= (the old name goes in the next release)",
                DeprecationWarning,
                stacklevel=2,
            )
            folder = directory if folder is None else folder
        self.folder = folder
        self.time_limit = time_limit
        self.reports: list[dict[str, Any]] = []

    def setup(self, worker: Any) -> None:
        """At start (or registration): remove what dead processes left, a killed predecessor's too."""
        self._sweep(worker, "start")

    def teardown(self, worker: Any) -> None:
        """At close: remove what processes that died meanwhile left (the worker's own objects
        go when its process exits normally)."""
        self._sweep(worker, "close")

    def _sweep(self, worker: Any, when: str) -> None:
        address = getattr(worker, "address", None) or "(no address yet)"
        started = time.monotonic()
        try:
            report = sweep(folder=self.folder, time_limit=self.time_limit)
        except Exception as exc:  # noqa: BLE001 - a failed sweep must not stop the worker
            logger.error(
                "leakguard: the sweep at the %s of worker %s (pid %d) failed: %s. Leftovers of dead "
                "processes stay in /dev/shm until a later sweep; run `leakguard sweep` on this machine "
                "once the cause is fixed.",
                when,
                address,
                os.getpid(),
                exc,
            )
            self.reports.append({"when": when, "pid": os.getpid(), "failed": str(exc)})
            return
        summary = _summary(report, when, time.monotonic() - started)
        self.reports.append(summary)
        if report.removed:
            owners = ", ".join(str(pid) for pid in summary["dead_owners"])
            logger.info(
                "leakguard: sweep at the %s of worker %s (pid %d) removed %d object(s), %.1f MiB, left by "
                "dead process(es) %s; kept %d of live owners; %.1f ms",
                when,
                address,
                os.getpid(),
                len(report.removed),
                report.bytes_freed / _MiB,
                owners,
                len(report.kept),
                summary["seconds"] * 1000,
            )
        else:
            logger.debug(
                "leakguard: sweep at the %s of worker %s: nothing to remove (kept %d of live owners)",
                when,
                address,
                len(report.kept),
            )
        for item in report.errors:
            logger.warning(
                "leakguard: sweep at the %s of worker %s could not handle %s (journal %s): %s. "
                "It was left alone; `leakguard ls` on this machine shows it.",
                when,
                address,
                item.name or "a journal",
                item.journal,
                item.reason,
            )


def _summary(report: SweepReport, when: str, seconds: float) -> dict[str, Any]:
    return {
        "when": when,
        "pid": os.getpid(),
        "folder": report.folder,
        "removed": sorted(item.name for item in report.removed if item.name),
        "dead_owners": sorted({item.owner_pid for item in report.removed if item.owner_pid is not None}),
        "kept": len(report.kept),
        "errors": len(report.errors),
        "bytes_freed": report.bytes_freed,
        "seconds": seconds,
    }
