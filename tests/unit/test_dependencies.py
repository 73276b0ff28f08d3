"""pyproject.toml declares every package the code imports, and .ci/constraints.txt (the versions CI
tests) pins every declared package at a version its lower bound admits."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

SOURCES = ["src", "methods", "workflows", "evaluation", "benchmarks", "tests", ".ci"]
LOCAL = {"kdbench", "tests", "benchmarks", "methods"}
GPU_EXTRAS = ("vllm",)  # as .ci/freeze.py: extras CI never installs (a GPU's), so neither frozen nor imported in CI


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project.get("optional-dependencies", {}).items() if name not in GPU_EXTRAS
              for r in reqs]
    return [Requirement(r) for r in project["dependencies"] + extras]


def imported_modules() -> dict[str, str]:
    """Top-level module name -> the first file that imports it, over every import the code makes
    (in functions too). Snakefiles and rule files: their import lines."""
    found: dict[str, str] = {}
    files = [p for d in SOURCES for p in (REPO / d).rglob("*") if p.suffix in (".py", ".smk")] + [REPO / "Snakefile"]
    for path in files:
        text = path.read_text()
        if path.suffix != ".py":
            text = "\n".join(m.group(0).strip() for m in re.finditer(r"^\s*(import|from)\s.*$", text, re.M))
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared():
    declared = {canonicalize_name(r.name) for r in requirements()}
    local = LOCAL | {p.stem for d in SOURCES for p in (REPO / d).rglob("*.py")}
    providers = md.packages_distributions()
    undeclared = []
    for module, where in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        dists = providers.get(module, [])
        assert dists, f"{where} imports {module}, which no installed distribution provides"
        if not any(canonicalize_name(d) in declared for d in dists):
            undeclared.append(f"{module} ({'/'.join(dists)}, imported by {where})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {', '.join(undeclared)}"


def test_the_constraints_pin_every_declared_package_within_its_bounds():
    pins = {}
    for line in (REPO / ".ci/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    assert "kdbench" not in pins
    for req in requirements():
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned, f"{req.name} is declared in pyproject.toml but not pinned in .ci/constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), (
            f".ci/constraints.txt pins {req.name}=={pinned}, outside pyproject.toml's {req}")
