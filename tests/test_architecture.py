"""The layering and packaging rules of the project (docs/DESIGN.md), checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "ranker", "training", "serving")
# who may import whom (besides itself)
ALLOWED = {
    "features": set(),
    "ranker": {"features"},
    "training": {"features", "ranker", "serving"},
    "serving": {"features", "ranker"},
}


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported_packages(path: Path, package: str) -> set[str]:
    """trustfeed sub-packages that ``path`` imports (relative or absolute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    depth = len(path.relative_to(REPO / package).parts)  # 1 for a module at the package root
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "trustfeed" and len(parts) > 1:
                    found.add(parts[1])
                elif parts[0] in PACKAGES:
                    found.add(f"top-level:{parts[0]}")
            elif node.level == depth:  # `from .x` inside the package root -> same package
                found.add(package)
            elif node.level == depth + 1 and node.module:  # `from ..ranker import x`
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "trustfeed" and len(parts) > 1:
                    found.add(parts[1])
                elif parts[0] in PACKAGES:
                    found.add(f"top-level:{parts[0]}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package: str) -> None:
    offending = []
    for path in _modules(package):
        for imported in _imported_packages(path, package) - {package}:
            if imported not in ALLOWED[package]:
                offending.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not offending, "layering violated:\n" + "\n".join(offending)


@pytest.mark.parametrize("package", ("features", "ranker", "serving"))
def test_no_pickle_on_the_serving_path(package: str) -> None:
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
    offending = []
    for path in _modules(package):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            offending += [f"{path.relative_to(REPO)}: {n}" for n in names if n in banned]
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    offending.append(f"{path.relative_to(REPO)}: allow_pickle not False")
    assert not offending, offending


def test_every_subpackage_is_listed_in_pyproject() -> None:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    expected = set()
    for folder in PACKAGES:
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            expected.add(".".join(("trustfeed", folder, *rel)))
        assert mapping[f"trustfeed.{folder}"] == folder
        assert (REPO / folder / "py.typed").is_file(), f"{folder}/py.typed missing"
    assert expected <= listed, f"not in pyproject packages: {sorted(expected - listed)}"
    assert not (REPO / "__init__.py").exists(), "trustfeed must stay a namespace package"


def test_package_init_does_no_heavy_imports() -> None:
    """Importing the serving package must not drag in training or MLflow's tracking stack."""
    code = (
        "import sys, trustfeed.serving, trustfeed.features, trustfeed.ranker;"
        "bad = sorted(m for m in sys.modules if m.startswith('trustfeed.training'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.strip() == "", f"serving import pulled in: {out.stdout.strip()}"


@pytest.mark.parametrize("package", [f"trustfeed.{p}" for p in PACKAGES])
def test_public_names_resolve(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names that do not resolve: {missing}"


def test_training_submodules_stay_modules() -> None:
    """Package attributes named like a submodule must stay the submodule, in any import order."""
    import importlib
    import types

    package = importlib.import_module("trustfeed.training")
    for name in ("simulate", "train", "evaluation", "dataset", "registry", "demo"):
        importlib.import_module(f"trustfeed.training.{name}")
        assert isinstance(getattr(package, name), types.ModuleType), name
