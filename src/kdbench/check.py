"""`kdbench check <config>` and `kdbench resolve <config> <pair> <method> <seed>`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from kdbench.config import load_grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench check", description="Validate a grid config.")
    ap.add_argument("config", type=Path, nargs="+", help="config files, merged in order (as --configfile)")
    args = ap.parse_args(argv)
    grid = load_grid(*args.config)
    print(f"{', '.join(map(str, args.config))}: ok — {len(grid.runs())} runs, {len(grid.evals())} evaluations, "
          f"tables {', '.join(grid.tables)}; pairs {grid.axes['pairs']}")
    missing = grid.missing_releases()
    if missing:  # not an error: the DAG plans without them; a real run stops before any job
        print(f"{len(missing)} data release(s) still to fetch (data/README.md):\n  " + "\n  ".join(missing))
    return 0


def resolve_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench resolve", description="Print one run's resolved run.yaml.")
    ap.add_argument("config", type=Path, help="grid config (config/variants.yaml is merged in when present)")
    ap.add_argument("pair")
    ap.add_argument("method")
    ap.add_argument("seed", type=int)
    args = ap.parse_args(argv)
    files = [p for p in (args.config, Path("config/variants.yaml")) if p.is_file()]
    grid = load_grid(*files)
    print(yaml.safe_dump(grid.resolve_run(args.pair, args.method, args.seed), sort_keys=False))
    return 0
