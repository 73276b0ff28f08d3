# Config validation (before any job), the run table, and input functions.
import os
import shlex
import sys
from pathlib import Path

from kdbench import preflight, resultslock
from kdbench.config import Grid, portable
from kdbench.errors import KDBenchError
from kdbench.releases import PREPARED

CLAIMS = "evaluation/reference/claims.yaml"  # the paper's claims, read by the claims rule; their run labels are checked too
try:
    CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
    GRID = Grid(config, CONFIG_SOURCE, workflow.basedir)
    GRID.check_claims(Path(workflow.basedir, CLAIMS))
except KDBenchError as exc:
    sys.exit(f"kdbench: config error: {exc}")

RES = GRID.results


onstart:
    # Before any job of a real run (a dry run plans without either): the checks that need torch and
    # transformers (kdbench.preflight: model configs, plugins and their ranges, cached once passed),
    # then, where its jobs prepare data, each release they need and this machine lacks.
    try:
        preflight.run(GRID)
    except KDBenchError as exc:
        sys.exit(f"kdbench: config error: {exc}")
    missing = GRID.missing_releases(
        [job.wildcards.name for job in workflow.dag.needrun_jobs() if job.rule.name == "prepare_data"]
    )
    if missing:
        sys.exit(
            f"kdbench: {len(missing)} data release(s) of {CONFIG_SOURCE} are missing; nothing was run.\n  "
            + "\n  ".join(missing)
            + "\n(data/README.md lists every release and where to get it; data.releases in the config says where "
            "each is looked for.)"
        )
    try:  # one workflow at a time on a results directory, whatever its working directory
        resultslock.acquire(RES)
    except KDBenchError as exc:
        sys.exit(f"kdbench: {exc}")


onsuccess:
    resultslock.release(RES)


onerror:
    resultslock.release(RES)

CFG = GRID.config
# absolute: plugin rules in methods/ use it too (Snakemake's rerun triggers read its content, not its path)
ENV = str(Path(workflow.basedir, "workflows/envs/kdbench.yaml"))
# What ENV installs under --sdm conda: pip expands ${KDBENCH_ROOT} in its pip lines (set here, read by no rule).
os.environ.update(KDBENCH_ROOT=str(workflow.basedir))
# Paths inside the checkout are relative (kdbench.config.portable): a copied or renamed checkout with its
# results finds every input, param and checkpoint fingerprint unchanged and re-plans nothing.
REFERENCE_CSVS = sorted(portable(p) for p in Path(workflow.basedir, "evaluation/reference").glob("*.csv"))


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
# lm-eval (evaluation.lm_eval_tasks): per pair a table; the task files and data are each job's inputs.
LM_EVAL_TASKS = CFG["evaluation"]["lm_eval_tasks"]
LM_EVAL_INCLUDE = portable(Path(workflow.basedir, "evaluation/tasks"))
LM_EVAL_TABLES = [f"{RES}/tables/lm_eval/{pair}.md" for pair in GRID.axes["pairs"]] if LM_EVAL_TASKS else []
try:
    from kdbench.lmeval import grid_task_inputs

    LM_EVAL_INPUTS = [portable(p) for p in grid_task_inputs(GRID, Path(LM_EVAL_INCLUDE))]
except KDBenchError as exc:
    sys.exit(f"kdbench: config error: {exc}")
TABLES = [target for table in GRID.tables for target in table_targets(table)] + PAIR_TARGETS + LM_EVAL_TABLES


wildcard_constraints:
    pair=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    seed=r"\d+",
    set=r"[a-z0-9_]+",
    role=r"teacher|student",
    name="|".join(PREPARED),
    table="|".join(GRID.tables),
    key=r"mb\d+_len\d+_[0-9a-f]{10}",


def run_dir(w):
    return f"{RES}/runs/{w.pair}/{w.method}/seed{w.seed}"


def resolved_run(w):
    return GRID.resolve_run(w.pair, w.method, int(w.seed))


def pair_resource(job, key):
    """A job's `runtime` (minutes), `mem_mb` or `cpus` on a cluster, from its pair file's
    `resources.<job>` (Grid.job_resources)."""
    return lambda w: GRID.job_resources(w.pair, job)[key]


def eval_runtime(w, input):
    """An evaluation job's minutes from the sizes of its sets (Grid.evaluation_runtime)."""
    return GRID.evaluation_runtime(w.pair, [input.data] if isinstance(input.data, str) else list(input.data))


def train_inputs(w):
    """What a run reads: its run.yaml, start weights, teacher, tokenizer, data (training and
    validation) and method files; a cross-tokenizer run also the teacher's tokenizer and the vocab_map."""
    run = resolved_run(w)
    inputs = {
        "run": f"{run_dir(w)}/run.yaml",
        "student": run["student"],
        "tokenizer": run["tokenizer"],
        "data": run["data"]["train"],
        "valid": run["data"]["valid"],
        "methods": [m["path"] for m in (run["method"]["divergence"], *run["method"]["policies"]) if m],
    }
    if run["teacher"]:
        inputs["teacher"] = run["teacher"]
    if "vocab_map" in run:  # a cross-tokenizer method: the teacher's own tokenizer and the pair's vocab_map
        inputs.update(teacher_tokenizer=run["teacher_tokenizer"], vocab_map=run["vocab_map"])
    states = GRID.teacher_states(w.pair, w.method, int(w.seed))
    if states:  # teacher_cache: the teacher's hidden states, shared with the runs that read the same batches
        inputs["teacher_states"] = states
    return inputs


def teacher_states_spec(w):
    return GRID.teacher_states_spec(w.pair, int(w.seed), w.key)


def teacher_states_inputs(w):
    """The stream's spec, and the teacher, tokenizer and training data it names."""
    spec = teacher_states_spec(w)
    return {
        "spec": f"{RES}/teacher_states/{w.pair}/seed{w.seed}/{w.key}.yaml",
        "teacher": spec["teacher"],
        "tokenizer": spec["tokenizer"],
        "data": spec["data"],
    }


def prepare_inputs(w):
    """The releases a prepared data file is made from (those on disk: a missing one stops a real run
    in onstart, with what to fetch, and never breaks a dry run's DAG)."""
    return GRID.prepare_job(w.name)[0]


def prepare_args(w):
    """`kdbench prepare-eval`'s arguments, one list item each (the shell line quotes every one)."""
    return shlex.split(GRID.prepare_job(w.name)[1])


def init_model_inputs(w):
    """The pair file, and the tokenizer of a random-init model (a generated one or the directory its
    pair file names; a loaded one brings its own), or the teacher's initial model for a student
    copied (and pruned) from it."""
    inputs = {"pair": portable(GRID.pair_file(w.pair))}
    init = GRID.pairs[w.pair][w.role]["init"]
    if init == "random":
        inputs["tokenizer"] = GRID.tokenizer_dir(w.pair, w.role)
    elif init == "teacher":
        inputs["teacher"] = f"{RES}/models/{w.pair}/teacher-init"
    return inputs


def vocab_map_inputs(w):
    """The two tokenizer directories of a cross-tokenizer pair: generated ones, a pair file's, or
    a loaded model's initial directory (init-model saves its tokenizer there)."""
    return {role: GRID.tokenizer_dir(w.pair, role) for role in ("student", "teacher")}


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
    """`--reference ... --reference-table T --family F` for the paper's pair on the paper's data
    (`Grid.reference`), one list item per argument (the shell line quotes every one); nothing otherwise."""
    ref = GRID.reference(w.pair, w.table)
    if not ref:
        return []
    return ["--reference", *REFERENCE_CSVS, "--reference-table", ref["table"], "--family", ref["family"]]


def lm_eval_runs(pair):
    """The rows of a pair's lm-eval table: the teacher, then every run of the grid, in table order."""
    return [(pair, "teacher", GRID.teacher_seed(pair)), *GRID.runs(pair=pair)]


def lm_eval_results(w=None, pair=None):
    """lm-eval results of every run of one pair (or of the grid), the teacher's included."""
    pairs = [pair] if pair else GRID.axes["pairs"]
    return [f"{RES}/lm_eval/{p}/{m}/seed{s}.json" for q in pairs for p, m, s in lm_eval_runs(q)]
