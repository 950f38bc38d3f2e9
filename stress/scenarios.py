"""The kill-scenario matrix and the seeded plan of runs.

A scenario is who dies, how, when, what the job does and the start method; its name is
those five fields joined by ``/`` (``parent/SIGKILL/random/results/fork``,
``fp-parent/exit/handover.parent-after-adopt/results/spawn``), which ``--only`` takes.

- ``random`` scenarios send a signal from outside after a seeded delay;
- ``fp-parent`` and ``fp-worker`` scenarios arm a failpoint (how: kill, segv, exit, term)
  in the job or in its first worker, and the process dies when it reaches the step;
- ``sweep`` scenarios kill a job with everything, then kill a ``leakguard sweep`` at
  ``sweep.after-unlink`` before the remedy sweep;
- ``everything/SIGKILL/random/anon/...`` kills a job that holds anonymous blocks only, with
  everything, and runs nothing afterwards: the kernel alone must free it all (SPEC 4).

Every run's delay comes from ``(seed, scenario name, repeat)`` alone, so a run picked
with ``--only NAME --seed N`` gets the same delay as it had in the full plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

START_METHODS = ("spawn", "forkserver", "fork")
WORKLOADS = ("shared", "plain", "results", "sems")
# The workloads of the failpoints of named blocks (shm.*): the job makes its blocks named.
NAMED_WORKLOADS = ("shared-named", "results-named")
# A job with anonymous blocks only (no semaphore, no named block): everything killed, nothing after.
ANONYMOUS_WORKLOAD = "anon"
FAILPOINT_HOWS = ("kill", "segv", "exit", "term")

# who -> the signals sent from outside at a random instant
RANDOM_KILLS: dict[str, tuple[str, ...]] = {
    "worker": ("SIGKILL", "SIGTERM", "SIGINT", "SIGSEGV"),
    "workers": ("SIGKILL", "SIGTERM"),
    "parent": ("SIGKILL", "SIGTERM", "SIGINT"),
    "guardian": ("SIGKILL", "SIGTERM"),
    "parent+guardian": ("SIGKILL",),
    "group": ("SIGKILL", "SIGTERM", "SIGINT"),
    "everything": ("SIGKILL",),
}

# failpoint step -> (the process armed, the workload that reaches it)
FAILPOINTS: dict[str, tuple[str, str]] = {
    "pool.after-guardian": ("parent", "shared"),
    "pool.after-workers": ("parent", "shared"),
    "shm.before-record": ("parent", "shared-named"),
    "shm.after-record": ("parent", "shared-named"),
    "shm.after-open": ("parent", "shared-named"),
    "shm.after-reserve": ("parent", "shared-named"),
    "sem.before-record": ("parent", "sems"),
    "sem.after-record": ("parent", "sems"),
    "sem.after-open": ("parent", "sems"),
    "sem.after-unlink": ("parent", "sems"),
    "sem.after-removal-record": ("parent", "sems"),
    "pool.after-sharing-arguments": ("parent", "plain"),
    "handover.parent-after-map": ("parent", "results"),
    "handover.parent-after-adopt": ("parent", "results"),
    "shm.after-unlink": ("parent", "shared-named"),
    "shm.after-removal-record": ("parent", "shared-named"),
    "pool.shutdown": ("parent", "shared"),
    "w:shm.before-record": ("worker", "results-named"),
    "w:shm.after-record": ("worker", "results-named"),
    "w:shm.after-open": ("worker", "results-named"),
    "w:shm.after-reserve": ("worker", "results-named"),
    "handover.worker-after-send": ("worker", "results"),
    "handover.worker-after-release": ("worker", "results"),
}

# SPEC section 4's limits, in seconds, by what is expected to clean up
LIMITS = {
    "pool": 2.0,
    "guardian": 2.0,
    "new-guardian": 1.0,
    "sweep": None,
    "none": 2.0,
    "nothing": None,
    "kernel": 2.0,  # anonymous blocks: the kernel frees them as their last holder dies
}


@dataclass(frozen=True)
class Scenario:
    who: str  # worker, workers, parent, guardian, parent+guardian, group, everything, fp-parent, fp-worker, sweep
    how: str  # a signal name, or a failpoint's how
    when: str  # "random", or a failpoint step
    workload: str
    start_method: str

    @property
    def name(self) -> str:
        return "/".join((self.who, self.how, self.when, self.workload, self.start_method))

    @property
    def step(self) -> str:
        """The failpoint step as the package names it (the ``w:`` prefix only says where it is armed)."""
        return self.when.removeprefix("w:")

    @property
    def remedy(self) -> str:
        """What must clean up: the pool (the job lives on), the guardian, or a sweep."""
        if self.who == "everything" and self.workload == ANONYMOUS_WORKLOAD:
            return "kernel"
        if self.who in ("parent+guardian", "everything", "sweep"):
            return "sweep"
        if self.who in ("worker", "workers", "fp-worker"):
            return "none" if self.how == "SIGINT" else "pool"
        if self.who == "guardian":
            return "new-guardian"
        return "guardian"

    @property
    def family(self) -> str:
        """The table's row: the scenario without its workload and start method."""
        return "/".join((self.who, self.how, self.when))


def parse(name: str) -> Scenario:
    parts = name.split("/")
    if len(parts) != 5:
        raise ValueError(
            f"scenario name {name!r} has {len(parts)} fields; expected who/how/when/workload/start_method "
            "(as printed in the table or by --list)"
        )
    return Scenario(*parts)


def matrix() -> list[Scenario]:
    """Every scenario, in a fixed order."""
    found: list[Scenario] = []
    for start in START_METHODS:
        for who, hows in RANDOM_KILLS.items():
            for how in hows:
                found += [Scenario(who, how, "random", w, start) for w in WORKLOADS]
        for when, (where, workload) in FAILPOINTS.items():
            found += [Scenario(f"fp-{where}", how, when, workload, start) for how in FAILPOINT_HOWS]
        found += [Scenario("sweep", how, "sweep.after-unlink", "shared", start) for how in FAILPOINT_HOWS]
        found.append(Scenario("everything", "SIGKILL", "random", ANONYMOUS_WORKLOAD, start))
    return found


def quick() -> list[Scenario]:
    """A representative sample: every (who, how) and every failpoint step once, start
    methods and workloads taken in turn."""
    found: list[Scenario] = []
    k = 0
    for who, hows in RANDOM_KILLS.items():
        for how in hows:
            found.append(Scenario(who, how, "random", WORKLOADS[k % 4], START_METHODS[k % 3]))
            k += 1
    for when, (where, workload) in FAILPOINTS.items():
        found.append(Scenario(f"fp-{where}", FAILPOINT_HOWS[k % 4], when, workload, START_METHODS[k % 3]))
        k += 1
    found.append(Scenario("sweep", "kill", "sweep.after-unlink", "shared", START_METHODS[k % 3]))
    found.append(Scenario("everything", "SIGKILL", "random", ANONYMOUS_WORKLOAD, START_METHODS[(k + 1) % 3]))
    return found


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    repeat: int
    delay: float  # seconds after the job's start (or ready, for worker and guardian kills)


def delay_for(seed: int, scenario: Scenario, repeat: int) -> float:
    return round(random.Random(f"{seed}:{scenario.name}:{repeat}").uniform(0.0, 1.2), 3)


def plan(scenarios: list[Scenario], seed: int, at_least: int) -> list[Run]:
    """Every scenario once (in a seeded order), then random-instant ones drawn again until
    there are ``at_least`` runs."""
    rng = random.Random(seed)
    order = list(scenarios)
    rng.shuffle(order)
    repeats: dict[str, int] = {}
    runs: list[Run] = []

    def add(s: Scenario) -> None:
        k = repeats.get(s.name, 0)
        repeats[s.name] = k + 1
        runs.append(Run(s, k, delay_for(seed, s, k)))

    for s in order:
        add(s)
    extra = [s for s in scenarios if s.when == "random"] or scenarios
    while len(runs) < at_least:
        add(rng.choice(extra))
    return runs
