"""The package's architecture, held to the layers in docs/design.md.

Each folder of ``leakguard/`` is a layer; a module may import its own layer and the
layers below it, never one above, and never another module's private name.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import leakguard

PACKAGE = Path(leakguard.__file__).parent

# layer -> the layers it may import besides its own ("leakguard" is the public API, __init__)
BASE = {"_errors", "_failpoint"}
ALLOWED: dict[str, set[str]] = {
    "_errors": set(),
    "_failpoint": set(),
    "_os": {"_errors"},
    "_journal": BASE | {"_os"},
    "_blocks": BASE | {"_os", "_journal"},
    "_sweep": BASE | {"_os", "_journal"},
    "_pool": BASE | {"_os", "_journal", "_blocks", "_sweep"},
    "executor": {"_errors", "_journal", "_pool"},
    "joblib": {"_errors", "_pool"},
    "dask": {"leakguard"},
    "demo": {"leakguard"},
    "cli": {"leakguard", "demo"},
    "__main__": {"cli"},
    "__init__": {"_errors", "_blocks", "_pool", "_sweep", "executor"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def _layer(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module (inside leakguard, without the prefix) ``node`` imports from."""
    if node.level == 0:
        assert node.module is not None
        return node.module.removeprefix("leakguard").lstrip(".") or "__init__"
    package = module.split(".")[: -node.level] if module.count(".") >= node.level else []
    target = ".".join([*package, *([node.module] if node.module else [])])
    return target or "__init__"


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module imported from, name imported) for every import of leakguard's own code."""
    module = _module_name(path)
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("leakguard"):
                continue
            source = _resolve(module, node)
            found.extend((source, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "leakguard":
                    found.append((alias.name.removeprefix("leakguard").lstrip(".") or "__init__", ""))
    return found


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_known_layer() -> None:
    unknown = {m for m in MODULES if _layer(m) not in ALLOWED}
    assert not unknown, f"new layers {sorted(unknown)}: add them here and to docs/design.md"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_follow_the_layers(module: str) -> None:
    layer = _layer(module)
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    for source, name in _imports(path):
        target = _layer(source) if source != "__init__" else "leakguard"
        if target == "leakguard" and name in ALLOWED:  # from leakguard import _pool and the like
            target = name
        assert target == layer or target in ALLOWED[layer], (
            f"leakguard/{module} imports {source or 'leakguard'}.{name}: the {layer} layer may import only "
            f"{sorted(ALLOWED[layer])}"
        )


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_another_modules_private_names(module: str) -> None:
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    private = [
        f"{source}.{name}"
        for source, name in _imports(path)
        if name.startswith("_") and not name.startswith("__") and name not in ALLOWED
    ]
    assert not private, f"leakguard/{module} imports private names {private}"
    # ... nor reaches into a module it imported: ``_owner._release_all()``
    tree = ast.parse(path.read_text())
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("leakguard"))
        for alias in node.names
    }
    reached = sorted(
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    )
    assert not reached, f"leakguard/{module} reaches into private names {reached}"


@pytest.mark.parametrize("module", MODULES)
def test_modules_say_what_they_own(module: str) -> None:
    """A module is one concept, whatever its length; its docstring names it."""
    source = PACKAGE.joinpath(*module.split(".")).with_suffix(".py").read_text()
    assert ast.get_docstring(ast.parse(source)), f"leakguard/{module} needs a docstring saying what it owns"


def test_implementation_modules_are_private() -> None:
    public = {m for m in MODULES if not any(part.startswith("_") for part in m.split("."))}
    assert public == {"cli", "dask", "demo.jobs", "demo.scenes", "executor", "joblib"}


def test_public_names_are_exported_and_exist() -> None:
    assert sorted(leakguard.__all__) == sorted(set(leakguard.__all__))
    for name in leakguard.__all__:
        assert hasattr(leakguard, name), name
    public = {n for n in vars(leakguard) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(leakguard, n)).__name__ == "module"}
    assert public - modules == set(leakguard.__all__)


@pytest.mark.parametrize("name", leakguard.__all__)
def test_public_names_print_and_pickle_as_leakguard(name: str) -> None:
    value = getattr(leakguard, name)
    assert value.__module__ == "leakguard", f"{name} prints as {value.__module__}.{name}"
    assert pickle.loads(pickle.dumps(value)) is value


def test_py_typed_ships() -> None:
    assert (PACKAGE / "py.typed").exists()
