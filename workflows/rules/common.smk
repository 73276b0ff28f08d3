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


def table_targets(table):
    """What `snakemake <table>` builds: the table over its pairs, and per pair the LaTeX table and
    the significance of each +policy row against its base."""
    pairs = GRID.tables[table]["pairs"]
    return [f"{RES}/tables/{table}.md", f"{RES}/tables/{table}.csv"] + [
        f"{RES}/tables/{table}/{pair}/{name}" for pair in pairs for name in ("main.tex", "significance.md")
    ]


PAIR_TARGETS = [  # per pair, over every table: the paper's claims and the plots
    f"{RES}/{kind}/{pair}/{name}"
    for pair in GRID.axes["pairs"]
    for kind, name in (("tables/claims", "claims.md"), ("plots", "latf_ratio.png"))
]
TABLES = [target for table in GRID.tables for target in table_targets(table)] + PAIR_TARGETS


wildcard_constraints:
    pair=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    seed=r"\d+",
    set=r"[a-z0-9_]+",
    role=r"teacher|student",
    table="|".join(GRID.tables),


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


def init_model_inputs(w):
    """The pair file, and the generated tokenizer for a random-init model (a loaded one brings its
    own), or the teacher's initial model for a student copied (and pruned) from it."""
    inputs = {"pair": GRID.pair_file(w.pair)}
    init = GRID.pairs[w.pair][w.role]["init"]
    if init == "random":
        inputs["tokenizer"] = f"{RES}/tokenizer"
    elif init == "teacher":
        inputs["teacher"] = f"{RES}/models/{w.pair}/teacher-init"
    return inputs


def eval_model(w):
    if w.method == "teacher":
        return GRID.teacher_path(w.pair)
    return f"{run_dir(w)}/model"


def eval_results(w=None, pair=None, table=None, predictions=False):
    """Every evaluation result a table needs (of one table, one pair, or the whole grid): the
    teacher row and each cell, on each set; or the per-sample predictions beside them."""
    suffix = "predictions.jsonl" if predictions else "json"
    return [f"{RES}/evals/{p}/{m}/seed{s}/{x}.{suffix}" for p, m, s, x in GRID.evals(table=table, pair=pair)]


def finished_elsewhere(w):
    """Results of this table's cells that the selection left out but an earlier run finished:
    the table shows them (a result file is written atomically, last, so one that exists is whole)."""
    table, wanted = GRID.tables[w.table], set(eval_results(table=w.table, pair=w.pair))
    cells = [
        f"{RES}/evals/{w.pair}/{m}/seed{s}/{x}.json"
        for m in table["all"]["methods"]
        for s in table["all"]["seeds"]
        for x in table["all"]["sets"]
    ]
    return [c for c in cells if c not in wanted and os.path.exists(c)]


def reference_args(w):
    """`--reference ... --reference-table T --family F` when the table or the pair names a
    published table (the family is always the pair's)."""
    ref = GRID.pairs[w.pair].get("reference")
    if not ref:
        return ""
    table = GRID.tables[w.table]["reference"] or ref["table"]
    return f"--reference {' '.join(REFERENCE_CSVS)} --reference-table {table} --family {ref['family']}"


def lm_eval_results(w=None):
    """lm-eval results of every grid cell (empty when no lm_eval_tasks are configured)."""
    if not CFG["evaluation"]["lm_eval_tasks"]:
        return []
    return [f"{RES}/lm_eval/{p}/{m}/seed{s}.json" for p, m, s in GRID.runs()]
