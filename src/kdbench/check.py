"""`kdbench check <config>`, `kdbench resolve <config> <pair> <method> <seed>` and
`kdbench run <snakemake arguments>`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from kdbench.config import BASE_CONFIGS, read_config, workflow_grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kdbench check", description=f"Validate a grid config as `snakemake --configfile <config>` reads it: "
        f"{', '.join(BASE_CONFIGS)}, then the given files merged over them in order.")
    ap.add_argument("config", type=Path, nargs="+", help="config files, merged in order (as --configfile)")
    args = ap.parse_args(argv)
    from kdbench.models import describe_shape

    grid = workflow_grid(*args.config, require_data=False)
    from kdbench.lmeval import grid_task_inputs

    grid_task_inputs(grid, grid.workdir / "evaluation/tasks")  # the lm-eval tasks, as the workflow checks them
    grid.check_claims(grid.workdir / "evaluation/reference/claims.yaml")  # as the workflow's rule claims reads them
    print(f"{', '.join(map(str, args.config))}: ok — {len(grid.runs())} runs, {len(grid.evals())} evaluations, "
          f"tables {', '.join(grid.tables)}; pairs {grid.axes['pairs']}")
    for pair in grid.axes["pairs"]:  # what init-model will build: a misread config shows here
        for role in ("teacher", "student"):
            spec, shape = grid.pairs[pair][role], grid.shape(pair, role)
            print(f"  {pair} {role}: {describe_shape(shape) if shape else _unbuilt(spec)}")
    if grid.absent_data:  # the config is valid; the workflow refuses to start until these exist
        print(f"data not made yet (the workflow needs them before it starts; data/README.md gives the "
              f"`kdbench prepare-eval` command for each): {', '.join(grid.absent_data)}")
    missing = grid.missing_releases()
    if missing:  # not an error: the DAG plans without them; a real run stops before any job
        print(f"{len(missing)} data release(s) still to fetch (data/README.md):\n  " + "\n  ".join(missing))
    return 0


def _unbuilt(spec: dict) -> str:
    """What `kdbench check` says of a model it cannot build before its init-model job."""
    if spec["init"] == "gguf":
        what = f"{spec['gguf'].get('package', '')}:{spec['gguf']['file']}".lstrip(":") + " (a GGUF file"
    elif spec["init"] == "teacher":
        layers = f", layers {spec['layers']}" if spec.get("layers") else ""
        what = f"the teacher's initial weights{layers} (a copy"
    else:
        what = f"{spec['path']} (a hub id"
    return what + ": only init-model reads it; each run's provenance.json records its shape)"


def resolve_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench resolve", description="Print one run's resolved run.yaml.")
    ap.add_argument("config", type=Path, help=f"grid config, read over {', '.join(BASE_CONFIGS)} as Snakemake does")
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
