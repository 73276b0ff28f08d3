# Config validation (before any job), the run table, and input functions.
import os
import sys
from pathlib import Path

from kdbench.config import Grid
from kdbench.errors import KDBenchError
from kdbench.gpus import gpu_count

try:
    CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
    GRID = Grid(config, CONFIG_SOURCE, workflow.basedir)
except KDBenchError as exc:
    sys.exit(f"kdbench: config error: {exc}")

RES = GRID.results
GPU_NODE = gpu_count() > 0  # jobs then declare `gpu` resources: run with --resources gpu=<GPUs on the node>
CFG = GRID.config
ENV = str(Path(workflow.basedir, "workflows/envs/kdbench.yaml"))  # absolute: plugin rules in methods/ use it too
REFERENCE_CSVS = sorted(str(p) for p in Path(workflow.basedir, "evaluation/reference").glob("*.csv"))
TABLES = [f"{RES}/tables/main.md", f"{RES}/tables/main.csv"] + [
    f"{RES}/{kind}/{pair}/{name}"
    for pair in CFG["pairs"]
    for kind, name in (("tables", "significance.md"), ("tables", "claims.md"), ("plots", "latf_ratio.png"))
]


wildcard_constraints:
    pair=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    seed=r"\d+",
    set=r"[a-z0-9_]+",
    role=r"teacher|student",


def run_dir(w):
    return f"{RES}/runs/{w.pair}/{w.method}/seed{w.seed}"


def resolved_run(w):
    return GRID.resolve_run(w.pair, w.method, int(w.seed))


def train_inputs(w):
    """What a run reads: its run.yaml, start weights, teacher, tokenizer, data and method files."""
    run = resolved_run(w)
    inputs = {
        "run": f"{run_dir(w)}/run.yaml",
        "student": run["student"],
        "tokenizer": run["tokenizer"],
        "data": run["data"]["train"],
        "methods": [m["path"] for m in (run["method"]["divergence"], *run["method"]["policies"]) if m],
    }
    if run["teacher"]:
        inputs["teacher"] = run["teacher"]
    return inputs


def eval_model(w):
    if w.method == "teacher":
        return GRID.teacher_path(w.pair)
    return f"{run_dir(w)}/model"


def eval_results(w=None, pair=None, predictions=False):
    """Every evaluation result the tables need (of one pair, or all): the teacher row and each grid
    cell, on each set; or the per-sample predictions beside them."""
    cells = [(p, "teacher", GRID.teacher_seed(p)) for p in CFG["pairs"]] + GRID.runs()
    suffix = "predictions.jsonl" if predictions else "json"
    return [
        f"{RES}/evals/{p}/{m}/seed{s}/{name}.{suffix}"
        for p, m, s in cells
        if pair is None or p == pair
        for name in CFG["sets"]
    ]


def reference_args(w):
    """`--reference ... --reference-table T --family F` when the pair names a published table."""
    ref = GRID.pairs[w.pair].get("reference")
    if not ref:
        return ""
    return f"--reference {' '.join(REFERENCE_CSVS)} --reference-table {ref['table']} --family {ref['family']}"


def lm_eval_results(w=None):
    """lm-eval results of every grid cell (empty when no lm_eval_tasks are configured)."""
    if not CFG["evaluation"]["lm_eval_tasks"]:
        return []
    return [f"{RES}/lm_eval/{p}/{m}/seed{s}.json" for p, m, s in GRID.runs()]
