"""How long `snakemake -n` takes on the paper grid (config/config.yaml), beside Snakemake's floor.

The paper grid's bar is ≤ 5 s for its hundreds of jobs, on a fresh clone. This script copies the
workflow into a temporary directory, with no data at all (the DAG never loads models or reads the
data releases: their preparation jobs are part of the plan), and times, side by side in one run:

- `floor`: `snakemake -n` of the same workflow asked for nothing but its tokenizer of the default
  grid (Snakemake and kdbench start-up, config validation: what every invocation pays);
- `paper grid`: `snakemake -n --configfile config/config.yaml` (all tables);
- `default grid`: `snakemake -n` of config/tiny.yaml;
- `import torch`: `python -c "import torch, transformers"`, what the DAG no longer pays (the checks
  that need them run before the first job of a real run, kdbench.preflight).

Each is run `--repeat` times; the median wall time is printed with the job count, the ratio to the
floor and the median CPU seconds (user + system of the process and its children), beside the load
average: on a shared machine wall time alone overstates the cost.

    python benchmarks/dry_run.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
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


def timed(cmd: list[str], root: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system, children included) of one command."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done


def dry_run(root: Path, *args: str) -> tuple[float, float, int]:
    if args and args[0] == "import":
        seconds, cpu, _ = timed([sys.executable, "-c", "import torch, transformers"], root)
        return seconds, cpu, 0
    seconds, cpu, done = timed(["snakemake", "-n", *args], root)
    total = re.search(r"^total\s+(\d+)$", done.stdout, re.M)
    return seconds, cpu, int(total[1]) if total else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cases = {"floor": ["results/tokenizer"], "paper grid": ["--configfile", "config/config.yaml"], "default grid": [],
             "import torch": ["import"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_workflow(root)
        rows = {}
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every case alike
            for name, cli in cases.items():
                seconds, cpu, jobs = dry_run(root, *cli)
                row = rows.setdefault(name, {"jobs": jobs, "seconds": [], "cpu": []})
                row["seconds"].append(seconds)
                row["cpu"].append(cpu)
    floor = statistics.median(rows["floor"]["seconds"])
    print(f"snakemake -n, median of {args.repeat} (snakemake {_version()}); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'case':<14}{'jobs':>6}{'seconds':>10}{'× floor':>9}{'CPU-s':>8}")
    for name, row in rows.items():
        median = statistics.median(row["seconds"])
        print(f"{name:<14}{row['jobs']:>6}{median:>10.2f}{median / floor:>9.2f}{statistics.median(row['cpu']):>8.2f}")
    paper = statistics.median(rows["paper grid"]["seconds"])
    print(f"paper grid: {rows['paper grid']['jobs']} jobs in {paper:.2f} s (bar: ≤ 5 s) -> "
          f"{'meets' if paper <= 5 else 'misses'} the bar")


def _version() -> str:
    done = subprocess.run(["snakemake", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
