"""A process SIGKILLed at any step of creating or freeing an object leaves nothing that one
sweep does not remove, and the sweep touches nothing of a live bystander.

The steps are the failpoints in _blocks/shm.py, _blocks/sem.py and _journal/owner.py (see
docs/design.md, "Write-ahead order"). The list below is checked against the package source,
so a new step without a test fails.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import leakguard
from leakguard._journal.format import KINDS
from tests import crash_points_children as children
from tests.children import Spec, check_from_here, child_main, owner
from tests.helpers import entry_of, read_line, run, run_main, shm_entries

STEPS = [
    "shm.before-record",
    "shm.after-record",
    "shm.after-open",
    "shm.after-reserve",
    "shm.after-unlink",
    "shm.after-removal-record",
    "sem.before-record",
    "sem.after-record",
    "sem.after-open",
    "sem.after-unlink",
    "sem.after-removal-record",
]
FREEING = {"after-unlink", "after-removal-record"}  # steps of freeing: the child creates, then frees
OBJECT_LEFT = {"after-open", "after-reserve"}  # steps at which the target object exists in /dev/shm


def failpoints_in_source() -> dict[str, str]:
    """Every step named by a ``failpoint(...)`` call in the package -> where it is called."""
    found: dict[str, str] = {}
    package = Path(leakguard.__file__).parent
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name != "failpoint":
                continue
            where = f"{path.relative_to(package)}:{node.lineno}"
            arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found[arg.value] = where
            elif (
                isinstance(arg, ast.JoinedStr)
                and len(arg.values) == 2
                and isinstance(arg.values[0], ast.FormattedValue)
                and isinstance(arg.values[0].value, ast.Name)
                and arg.values[0].value.id == "kind"
                and isinstance(arg.values[1], ast.Constant)
                and isinstance(arg.values[1].value, str)
            ):
                # f"{kind}.after-unlink" in _owner.release(): reached for every kind of object.
                for kind in KINDS:
                    found[kind + arg.values[1].value] = where
            else:
                raise AssertionError(f"{where}: a failpoint whose step this test cannot read: {ast.unparse(node)}")
    return found


def test_every_failpoint_in_the_package_is_tested() -> None:
    # The pool's steps (pool.*, handover.*) have their own crash tests: test_pool_crash_points.py.
    in_source = {s: w for s, w in failpoints_in_source().items() if s.startswith(("shm.", "sem.", "sweep."))}
    assert len(STEPS) == len(set(STEPS))
    untested = sorted(set(in_source) - set(STEPS) - {"sweep.after-unlink"})
    assert not untested, f"failpoints without a crash test: {[(s, in_source[s]) for s in untested]}"
    assert "sweep.after-unlink" in in_source  # test_a_sweep_killed_mid_way_leaves_the_rest_to_the_next
    unknown = sorted(set(STEPS) - set(in_source))
    assert not unknown, f"steps tested here that no failpoint() call names any more: {unknown}"


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_step_is_undone_by_one_sweep(step: str, leakguard_dir: Path) -> None:
    kind, _, point = step.partition(".")
    crasher_env = {"LEAKGUARD_FAILPOINT": step, "LG_KIND": kind, "LG_FREE": "1" if point in FREEING else "0"}
    # The crasher starts (and imports) while the bystander sets up; it waits for "go".
    with (
        child_main(children.crasher, env=crasher_env) as crasher,
        owner(Spec(blocks=[12288], arrays=[1000], sems=[4])) as bystander,
    ):
        before = shm_entries()
        assert bystander.entries <= before
        assert crasher.stdin is not None
        crasher.stdin.write("go\n")
        crasher.stdin.flush()
        whole = json.loads(read_line(crasher))
        code = crasher.wait(timeout=30)
        assert crasher.stdout is not None
        assert crasher.stderr is not None
        assert code == -signal.SIGKILL, (
            f"the child should have SIGKILLed itself at {step}; exit status {code}, "
            f"stdout {crasher.stdout.read()!r}, stderr {crasher.stderr.read()!r}"
        )

        left = shm_entries() - before
        assert before <= shm_entries(), "the crash removed something it did not own"
        assert entry_of(whole["kind"], whole["name"]) in left
        assert len(left) == (2 if point in OBJECT_LEFT else 1), f"crash at {step} left {sorted(left)}"

        report = leakguard.sweep()

        assert report.errors == []
        assert shm_entries() == before, (
            f"after one sweep: still there {sorted(shm_entries() - before)}, missing {sorted(before - shm_entries())}"
        )
        assert {entry_of(i.kind or "", i.name or "") for i in report.removed} == left
        assert {i.owner_pid for i in report.removed} == {crasher.pid}
        assert {i.name for i in report.kept} == bystander.names
        assert {i.owner_pid for i in report.kept} == {bystander.pid}
        # The crasher's journal is settled and gone; only the bystander's is left.
        assert [p.name.split("-")[0] for p in leakguard_dir.iterdir()] == [str(bystander.pid)]

        assert bystander.check() == []
        assert check_from_here(bystander) == []
        code, _, err = bystander.finish()
        assert (code, err) == (0, "")
    assert shm_entries() == before - bystander.entries
    assert list(leakguard_dir.iterdir()) == []


@pytest.mark.slow
def test_a_sweep_killed_mid_way_leaves_the_rest_to_the_next(leakguard_dir: Path) -> None:
    with owner(Spec(blocks=[8192, 8192], sems=[1])) as victim, owner(Spec(arrays=[1000])) as bystander:
        orphans = victim.entries
        victim.kill()
        env = {**os.environ, "LEAKGUARD_FAILPOINT": "sweep.after-unlink"}
        killed = run([sys.executable, "-m", "leakguard", "sweep"], env=env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = orphans & shm_entries()
        assert len(left) == len(orphans) - 1, "the first sweep should have died right after its first unlink"

        report = leakguard.sweep()

        assert report.errors == []
        assert {entry_of(i.kind or "", i.name or "") for i in report.removed} == left
        assert not orphans & shm_entries()
        assert bystander.entries <= shm_entries()
        assert bystander.check() == []
        assert [p.name.split("-")[0] for p in leakguard_dir.iterdir()] == [str(bystander.pid)]
        assert bystander.finish()[0] == 0


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("kill", -signal.SIGKILL),
        ("segv", -signal.SIGSEGV),
        ("exit", 70),
        ("term", -signal.SIGTERM),
        ("", -signal.SIGKILL),
    ],
)
def test_a_failpoint_dies_the_way_it_is_armed(how: str, status: int, leakguard_dir: Path) -> None:
    step = f"shm.after-reserve:{how}" if how else "shm.after-reserve"
    done = run_main(children.one_block, env={"LEAKGUARD_FAILPOINT": step})
    assert (done.returncode, done.stdout) == (status, "")
    assert "Fatal Python error" not in done.stderr  # a segfault without faulthandler's dump
    report = leakguard.sweep()
    assert len(report.removed) == 1
    assert report.errors == []
