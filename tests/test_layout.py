"""The package's architecture, held to the table in docs/design.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import leakguard

PACKAGE = Path(leakguard.__file__).parent

# module -> the leakguard modules it may import ("leakguard" is the public API, __init__)
ALLOWED: dict[str, set[str]] = {
    "_errors": set(),
    "_names": set(),
    "_failpoint": set(),
    "_fds": set(),
    "_identity": set(),
    "_folder": {"_errors"},
    "journal": {"_identity", "_names"},
    "_writer": {"_errors", "_fds", "_identity", "journal"},
    "_ipc": {"_errors", "_fds", "_names"},
    "_owner": {"_writer", "_ipc", "_folder", "_failpoint", "_identity"},
    "shm": {"_owner", "_ipc", "_names", "_failpoint", "_errors"},
    "sem": {"_owner", "_ipc", "_names", "_failpoint", "_errors"},
    "sweep": {"journal", "_ipc", "_identity", "_folder", "_failpoint"},
    "_foreign": {"sweep", "_ipc", "_names"},
    "_wire": {"_errors", "shm"},
    "_worker": {"_owner", "_wire", "_identity", "_failpoint", "shm"},
    "_results": set(),
    "guardian": {"sweep", "_identity", "journal"},
    "_procs": {"_owner", "_wire", "_worker", "_identity"},
    "_core": {"_procs", "_failpoint", "_owner", "_wire", "_worker", "_errors", "_folder", "_identity", "guardian"}
    | {"_results"}
    | {"shm", "sweep"},
    "pool": {"_core", "_errors", "_results", "_worker", "_progress"},
    "_progress": set(),
    "executor": {"pool", "_owner", "_errors", "_progress"},
    "joblib": {"pool", "_errors"},
    "dask": {"sweep"},
    "_demo": {"leakguard", "_demo_jobs"},
    "_demo_jobs": {"leakguard"},
    "cli": {"leakguard", "_demo"},
    "__main__": {"cli"},
}


def _internal_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import x: a module of ours, or a name of the public API
                    found.update(
                        "leakguard"
                        if a.name in leakguard.__all__ or not (PACKAGE / f"{a.name}.py").exists()
                        else a.name
                        for a in node.names
                    )
            elif node.module and node.module.split(".")[0] == "leakguard":
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "leakguard")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "leakguard":
                    found.add(parts[1] if len(parts) > 1 else "leakguard")
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_follow_the_layers(module: str) -> None:
    assert module in ALLOWED, f"leakguard/{module}.py is new: add it to the table here and in docs/design.md"
    extra = _internal_imports(PACKAGE / f"{module}.py") - ALLOWED[module]
    assert not extra, f"leakguard/{module}.py imports {sorted(extra)}, which its layer may not"


@pytest.mark.parametrize("module", [*MODULES, "__init__"])
def test_modules_stay_small_and_say_what_they_own(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text()
    assert len(source.splitlines()) <= 500
    assert ast.get_docstring(ast.parse(source)), f"leakguard/{module}.py needs a docstring saying what it owns"


def test_public_names_are_exported_and_exist() -> None:
    assert sorted(leakguard.__all__) == sorted(set(leakguard.__all__))
    for name in leakguard.__all__:
        assert hasattr(leakguard, name), name
    public = {n for n in vars(leakguard) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(leakguard, n)).__name__ == "module"}
    assert public - modules == set(leakguard.__all__)


def test_py_typed_ships() -> None:
    assert (PACKAGE / "py.typed").exists()
