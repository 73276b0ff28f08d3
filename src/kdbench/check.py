"""`kdbench check <config>` and `kdbench resolve <config> <pair> <method> <seed>`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from kdbench.config import BASE_CONFIGS, workflow_grid
from kdbench.models import describe_shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kdbench check", description=f"Validate a grid config as `snakemake --configfile <config>` reads it: "
        f"{', '.join(BASE_CONFIGS)}, then the given files merged over them in order.")
    ap.add_argument("config", type=Path, nargs="+", help="config files, merged in order (as --configfile)")
    args = ap.parse_args(argv)
    grid = workflow_grid(*args.config, require_data=False)
    print(f"{', '.join(map(str, args.config))}: ok — {len(grid.runs())} runs, {len(grid.evals())} evaluations, "
          f"tables {', '.join(grid.tables)}; pairs {grid.axes['pairs']}")
    for pair in grid.axes["pairs"]:  # what init-model will build: a misread config shows here
        for role in ("teacher", "student"):
            spec, shape = grid.pairs[pair][role], grid.shape(pair, role)
            built = describe_shape(shape) if shape else (f"{spec['path']} (a hub id: only init-model reads it; each "
                                                          "run's provenance.json records its shape)")
            print(f"  {pair} {role}: {built}")
    if grid.absent_data:  # the config is valid; the workflow refuses to start until these exist
        print(f"data not made yet (the workflow needs them before it starts; data/README.md gives the "
              f"`kdbench prepare-eval` command for each): {', '.join(grid.absent_data)}")
    return 0


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
