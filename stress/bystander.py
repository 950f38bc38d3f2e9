"""The bystander: ``python -m stress.bystander``, a live pool beside the scenarios' jobs.

It runs in the same ``LEAKGUARD_DIR`` as the jobs it watches (so every sweep of that
folder sees it), in a session of its own, and works without pause: a pool of one worker
sums slices of a SharedArray it owns, and every answer and the array's checksum are
checked. Any line on stdin asks for a status line; end of file ends it normally.

Lines on stdout (JSON): ``ready`` with the /dev/shm entries it owns (they must survive
every sweep), then one ``status`` per request: rounds done, rounds that went wrong and
the first few errors.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import TYPE_CHECKING, Any

import leakguard

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

ITEMS = 1 << 16
PARTS = 8
FILL = 0.5


def emit(what: str, **fields: Any) -> None:
    os.write(1, (json.dumps({"what": what, "at": time.monotonic(), **fields}) + "\n").encode())


def part_sum(part: npt.NDArray[np.float64]) -> float:
    return float(part.sum())


def _request() -> bool | None:
    """True: a status request; None: end of file; False: nothing asked."""
    ready, _, _ = select.select([0], [], [], 0)
    if not ready:
        return False
    return True if os.read(0, 1 << 16) else None


def main() -> None:
    # Named: what the sweeps beside it must keep is what they could remove (an anonymous block
    # has nothing a sweep could unlink).
    data = leakguard.shared_array(ITEMS, fill=FILL, named=True)
    sem = leakguard.Semaphore(1)
    size = ITEMS // PARTS
    expected = FILL * size
    rounds = bad = 0
    errors: list[str] = []
    with leakguard.Pool(1, start_method="spawn") as pool:
        names = [str(data.shm_name), "sem." + sem.name]
        emit("ready", pid=os.getpid(), entries=names)
        while (asked := _request()) is not None:
            if asked:
                emit("status", rounds=rounds, bad=bad, errors=errors[:5])
            try:
                with sem:
                    sums = pool.map(part_sum, [data[k * size : (k + 1) * size] for k in range(PARTS)])
                ok = sums == [expected] * PARTS and float(data.sum()) == FILL * ITEMS
            except Exception as exc:  # noqa: BLE001 - any error is a loss, counted and reported
                ok = False
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            rounds += 1
            bad += not ok
            time.sleep(0.005)  # leave the CPUs to the scenarios; the checks go on all the time
    emit("status", rounds=rounds, bad=bad, errors=errors[:5], final=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
