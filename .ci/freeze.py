"""Write the constraints file of the versions CI tests: every package that installing kdbench with
all its extras brings in, pinned at the version installed in the running environment.

Run it in the virtualenv whose test run passed: `python .ci/freeze.py > .ci/constraints.txt`.
.ci/run installs with these pins (PIP_CONSTRAINT), so CI keeps testing exactly these versions until
the file is regenerated. Unlike `pip freeze`, it lists only kdbench's dependency tree (not whatever
else the environment holds) and never kdbench itself; pip, setuptools and wheel stay unpinned, as in
`pip freeze`, so that building a package is not held to the environment's own tools."""

from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"pip", "setuptools", "wheel"}


GPU_EXTRAS = ("vllm",)  # extras for a GPU only: CI never installs them, so they are not frozen


def wanted(req: Requirement, extras: frozenset[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def closure(roots: list[Requirement]) -> dict[str, md.Distribution]:
    """Installed distributions reachable from `roots`, by canonical name."""
    found: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, frozenset()) for req in roots]
    missing = []
    while todo:
        req, parent_extras = todo.pop()
        if not wanted(req, parent_extras):
            continue
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = found.setdefault(name, md.distribution(name))
        except md.PackageNotFoundError:
            missing.append(str(req))
            continue
        todo += [(Requirement(r), extras) for r in dist.requires or []]
    if missing:
        sys.exit(f"freeze: not installed here, though kdbench needs them: {', '.join(sorted(missing))}; "
                 'run this in the virtualenv of a finished `pip install -e ".[test,cluster,tensorboard]"`.')
    return found


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    roots += [Requirement(r) for name, extra in project.get("optional-dependencies", {}).items()
              if name not in GPU_EXTRAS for r in extra]
    dists = closure(roots)
    print("# The versions CI tests (.ci/run installs with PIP_CONSTRAINT pointing here); written by")
    print(f"# `python .ci/freeze.py > .ci/constraints.txt` on Python {sys.version.split()[0]}, {sys.platform}.")
    for name in sorted(set(dists) - UNPINNED):
        print(f"{dists[name].metadata['Name']}=={dists[name].version}")


if __name__ == "__main__":
    main()
