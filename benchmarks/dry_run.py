"""How long `snakemake -n` takes on the paper grid (config/config.yaml), beside Snakemake's floor.

The paper grid's bar is ≤ 5 s for its hundreds of jobs, on a fresh clone. This script copies the
workflow into a temporary directory, with no data at all (the DAG never loads models or reads the
data releases: their preparation jobs are part of the plan), and times, side by side in one run:

- `floor`: `snakemake -n` of the same workflow asked for nothing but its tokenizer of the default
  grid (Snakemake and kdbench start-up, config validation: what every invocation pays);
- `paper grid`: `snakemake -n --configfile config/config.yaml` (all tables);
- `default grid`: `snakemake -n` of config/tiny.yaml.

Each is run `--repeat` times; the median is printed with the job count and the ratio to the floor.

    python benchmarks/dry_run.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path) -> None:
    """The workflow as a fresh clone has it: no data, no results (the paper grid plans its data)."""
    for name in ("Snakefile", "workflows", "config", "methods", "evaluation"):
        shutil.copytree(REPO / name, dest / name) if (REPO / name).is_dir() else shutil.copy2(REPO / name, dest)


def dry_run(root: Path, *args: str) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(["snakemake", "-n", *args], cwd=root, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake -n {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", done.stdout, re.M)
    return seconds, int(total[1]) if total else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cases = {"floor": ["results/tokenizer"], "paper grid": ["--configfile", "config/config.yaml"], "default grid": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_workflow(root)
        rows = {}
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every case alike
            for name, cli in cases.items():
                seconds, jobs = dry_run(root, *cli)
                rows.setdefault(name, {"jobs": jobs, "seconds": []})["seconds"].append(seconds)
    floor = statistics.median(rows["floor"]["seconds"])
    print(f"snakemake -n, median of {args.repeat} (snakemake {_version()})")
    print(f"{'case':<14}{'jobs':>6}{'seconds':>10}{'× floor':>9}")
    for name, row in rows.items():
        median = statistics.median(row["seconds"])
        print(f"{name:<14}{row['jobs']:>6}{median:>10.2f}{median / floor:>9.2f}")
    paper = statistics.median(rows["paper grid"]["seconds"])
    print(f"paper grid: {rows['paper grid']['jobs']} jobs in {paper:.2f} s (bar: ≤ 5 s) -> "
          f"{'meets' if paper <= 5 else 'misses'} the bar")


def _version() -> str:
    done = subprocess.run(["snakemake", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
