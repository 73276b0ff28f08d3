"""`kdbench check <config>`, `kdbench resolve <config> <pair> <method> <seed>` and
`kdbench run <snakemake arguments>`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from kdbench import preflight
from kdbench.config import SHARED_CONFIGS, read_config, workflow_grid
from kdbench.modelspec import describe_shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kdbench check", description=f"Validate a grid config as `snakemake --configfile <config>` reads it: "
        f"{', '.join(SHARED_CONFIGS)}, then the given files merged over them in order; then the checks that "
        "need transformers (kdbench.preflight), as the workflow runs them before its first job.")
    ap.add_argument("config", type=Path, nargs="+", help="config files, merged in order (as --configfile)")
    args = ap.parse_args(argv)
    grid = workflow_grid(*args.config, require_data=False)
    from kdbench.lmeval import grid_task_inputs

    grid_task_inputs(grid, grid.workdir / "evaluation/tasks")  # the lm-eval tasks, as the workflow checks them
    grid.check_claims(grid.workdir / "evaluation/reference/claims.yaml")  # as the workflow's claims rule reads them
    shapes = preflight.run(grid)["shapes"]
    print(f"{', '.join(map(str, args.config))}: ok — {len(grid.runs())} runs, {len(grid.evals())} evaluations, "
          f"tables {', '.join(grid.tables)}; pairs {grid.axes['pairs']}")
    for pair in grid.axes["pairs"]:  # what init-model will build: a misread config shows here
        for role in ("teacher", "student"):
            print(f"  {pair} {role}: {_built(grid.pairs[pair][role], shapes[pair][role])}")
    if grid.absent_data:  # the config is valid; the workflow refuses to start until these exist
        print(f"data not made yet (the workflow needs them before it starts; data/README.md gives the "
              f"`kdbench prepare-eval` command for each): {', '.join(grid.absent_data)}")
    missing = grid.missing_releases()
    if missing:  # not an error: the DAG plans without them; a real run stops before any job
        print(f"{len(missing)} data release(s) still to fetch (data/README.md):\n  " + "\n  ".join(missing))
    return 0


def _built(spec: dict, shape: dict | None) -> str:
    """What init-model builds for a model spec: its planned shape, or what it will read."""
    if shape:
        return describe_shape(shape)
    if spec["init"] == "pretrained":
        what = f"{spec['path']} (a hub id: "
    elif spec["init"] == "gguf":
        what = f"{spec['gguf']['file']} (a GGUF file: "
    else:
        what = f"a copy of the teacher's initial weights{', layers ' + str(spec['layers']) if 'layers' in spec else ''} ("
    return what + "only init-model reads it; each run's provenance.json records its shape)"


def resolve_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench resolve", description="Print one run's resolved run.yaml.")
    ap.add_argument("config", type=Path, help=f"grid config, read over {', '.join(SHARED_CONFIGS)} as Snakemake does")
    ap.add_argument("pair")
    ap.add_argument("method")
    ap.add_argument("seed", type=int)
    args = ap.parse_args(argv)
    grid = workflow_grid(args.config)
    print(yaml.safe_dump(grid.resolve_run(args.pair, args.method, args.seed), sort_keys=False))
    return 0


def run_main(argv: list[str] | None = None) -> int:
    """`kdbench run <snakemake arguments>`: Snakemake parses a --configfile before the Snakefile runs
    and reports a malformed one without file or line (a missing or non-UTF-8 one with a traceback).
    This reads each --configfile first, with the file-and-line messages of `kdbench check`, then
    replaces itself with `python -m snakemake <the same arguments>`, which checks the grid as always."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="kdbench run", add_help=False, allow_abbrev=False)  # what Snakemake reads first
    ap.add_argument("--configfile", "--configfiles", nargs="+", action="extend", type=Path, default=[])
    known, _ = ap.parse_known_args(argv)
    for path in known.configfile:
        read_config(path)
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *argv])
    return 0  # not reached
