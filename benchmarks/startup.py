"""Start-up of each job kind of the workflow, side by side with a bare `python -c "import torch"`.

A job's start-up is what it costs before (and around) its work: the interpreter, the imports, the
plugin discovery, the model and tokenizer loads. Each job kind runs here as the workflow runs it
(`kdbench <command> ...` in a fresh process), on the tiny GPT-2 pair of the embedded default and
with as little work as it accepts (one training step, one example, one new token, one seed), so
its time is almost all start-up. Everything is built in a temporary copy of the workflow, so the
script runs from a fresh clone.

For each job kind: wall seconds, CPU seconds (user + system of the process and its children) and
the load average while it ran, the median of ``--repeats`` runs after one untimed warm-up run (the
first run of `kdbench train` may JIT-build DeepSpeed's CPU op into TORCH_EXTENSIONS_DIR). With
``--imports``, the five slowest top-level imports of each job (`python -X importtime`, cumulative).

    python benchmarks/startup.py                # every job kind, 3 runs each
    python benchmarks/startup.py --jobs evaluate lm-eval --imports
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"
RUN = f"results/runs/{PAIR}/fkl/seed1"
EVAL = f"results/evals/{PAIR}/fkl/seed1"
MODEL = f"results/models/{PAIR}/student-init"
JOBS = {  # job kind -> its command line, as the workflow's rule runs it (minimal work)
    "import torch": [sys.executable, "-c", "import torch"],
    "data": ["kdbench", "data", "--out", "scratch/data", "--n-train", "20", "--n-valid", "2", "--n-eval", "2"],
    "tokenizer": ["kdbench", "tokenizer", "--data", "results/data/valid.jsonl", "--vocab-size", "300",
                  "--out", "scratch/tokenizer"],
    "init-model": ["kdbench", "init-model", "--pair", f"config/pairs/{PAIR}.yaml", "--role", "student",
                   "--tokenizer", "results/tokenizer", "--out", "scratch/student"],
    "train": ["kdbench", "train", f"{RUN}/run.yaml", "--threads", "1"],
    "teacher-states": ["kdbench", "teacher-states", f"{RUN}/run.yaml", "scratch/states.safetensors",
                       "--threads", "1"],
    "evaluate": ["kdbench", "evaluate", "--model", MODEL, "--data", "results/data/eval/dolly.jsonl",
                 "--set", "dolly", "--protocol", "scratch/protocol.yaml", "--limit", "1", "--threads", "1",
                 "--out", f"{EVAL}/dolly.json", "--predictions", f"{EVAL}/dolly.predictions.jsonl"],
    "lm-eval": ["kdbench", "lm-eval", "--model", MODEL, "--tasks", "kdbench_gen_dolly", "--include-path",
                "evaluation/tasks", "--protocol", "scratch/protocol.yaml", "--limit", "1", "--threads", "1",
                "--out", "scratch/lm_eval.json"],
    "aggregate": ["kdbench", "aggregate", "--results", f"{EVAL}/dolly.json", "--pair", PAIR, "--methods", "fkl",
                  "--sets", "dolly", "--out-md", "scratch/main.md", "--out-csv", "scratch/main.csv"],
}
PROTOCOL = {"decoding_seeds": [10], "max_new_tokens": 1}  # one seed, one token: the evaluation is start-up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), help="job kinds (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per job kind (default 3)")
    parser.add_argument("--imports", action="store_true", help="also list each job's slowest imports")
    return parser.parse_args(argv)


def kdbench(root: Path, *args: str) -> None:
    done = subprocess.run(["kdbench", *args], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"kdbench {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def prepare(root: Path) -> None:
    """The workflow's files, data, tokenizer, both initial models, a one-step run.yaml and an
    evaluation protocol file, under ``root`` (what the tiny default's jobs read)."""
    for name in ("Snakefile", "workflows", "config", "methods", "evaluation"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, root / name)
    pair = yaml.safe_load((root / f"config/pairs/{PAIR}.yaml").read_text())
    del pair["teacher"]["sft"]  # the random teacher: a job's start-up does not depend on it
    pair["training"].update(steps=1, micro_batch_size=2, log_every=1, checkpoint_every=0)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    grid = yaml.safe_load((root / "config/tiny.yaml").read_text())
    grid["tables"] = [{"name": "main", "pairs": [PAIR], "methods": ["fkl"]}]
    grid["teacher_cache"] = False
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    kdbench(root, "data", "--out", "results/data", "--n-train", "40", "--n-valid", "4", "--n-eval", "4")
    kdbench(root, "tokenizer", "--data", "results/data/train.jsonl", "--vocab-size", "400", "--out", "results/tokenizer")
    for role in ("teacher", "student"):
        kdbench(root, "init-model", "--pair", f"config/pairs/{PAIR}.yaml", "--role", role, "--tokenizer",
                "results/tokenizer", "--out", f"results/models/{PAIR}/{role}-init")
    resolved = subprocess.run(["kdbench", "resolve", "grid.yaml", PAIR, "fkl", "1"], cwd=root, capture_output=True,
                              text=True, check=True).stdout
    (root / RUN).mkdir(parents=True)
    (root / RUN / "run.yaml").write_text(resolved)
    (root / "scratch").mkdir()
    (root / "scratch/protocol.yaml").write_text(yaml.safe_dump(PROTOCOL))


def timed(root: Path, command: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, 1-minute load average at the end) of one run of ``command`` in ``root``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    for path in ("scratch/student", "scratch/tokenizer", "scratch/data", f"{RUN}/model", f"{RUN}/checkpoints"):
        shutil.rmtree(root / path, ignore_errors=True)  # every run starts as the workflow's first one does
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, os.getloadavg()[0]


def slowest_imports(root: Path, command: list[str], n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` top-level imports with the largest cumulative time under `python -X importtime`."""
    argv = command if command[0] != "kdbench" else [sys.executable, "-m", "kdbench.cli", *command[1:]]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, env=env)
    rows = [re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line) for line in done.stderr.splitlines()]
    top = [(m.group(3), int(m.group(1)) / 1e6) for m in rows if m and len(m.group(2)) == 1]
    return sorted(top, key=lambda item: -item[1])[:n]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, TORCH_EXTENSIONS_DIR="
              f"{os.environ.get('TORCH_EXTENSIONS_DIR', '(unset)')}")
        print(f"{'job':<16} {'wall s':>7} {'CPU s':>7} {'load':>5}   (median of {args.repeats}, after one warm-up)")
        for job in args.jobs:
            timed(root, JOBS[job])  # warm-up: page cache, DeepSpeed's JIT op, Python's bytecode caches
            runs = [timed(root, JOBS[job]) for _ in range(args.repeats)]
            wall, cpu, load = (statistics.median(column) for column in zip(*runs))
            print(f"{job:<16} {wall:7.2f} {cpu:7.2f} {load:5.2f}", flush=True)
            if args.imports:
                for name, seconds in slowest_imports(root, JOBS[job]):
                    print(f"{'':<18}{name:<28} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
