"""One grid cell → its fully resolved single-run config, what `kdbench train` reads
(results/runs/{pair}/{label}/seed{seed}/run.yaml), and what the workflow names beside it: the
teacher's model, the teacher-states file a run reads, what a pair's jobs ask a cluster for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdbench import pairs
from kdbench.errors import KDBenchError
from kdbench.schemas import load_yaml
from kdbench.spec import Method, accumulation_steps
from kdbench.teacher_states import spec as stream_spec
from kdbench.teacher_states import states_path, unservable


def teacher_path(grid: Any, pair: str) -> str:
    """The teacher's model: its SFT run's, or its initial weights when the pair has no SFT stage."""
    spec = grid.pairs[pair]["teacher"]
    if "sft" in spec:
        return f"{grid.results}/runs/{pair}/teacher/seed{spec['seed']}/model"
    return f"{grid.results}/models/{pair}/teacher-init"


def resolve(grid: Any, pair: str, label: str, seed: int) -> dict:
    """The fully resolved single-run config of one cell of `grid` (a kdbench.config.Grid)."""
    res, spec = grid.results, grid.pairs[pair]
    training = pairs.training(spec, teacher_sft=label == "teacher")
    if label == "teacher":
        method = Method(label="teacher", kd_ratio=0.0).as_dict()
        start, teacher = f"{res}/models/{pair}/teacher-init", None
    else:
        method = grid.method(label)
        start = f"{res}/runs/{pair}/{method['init_from']}/seed{seed}/model" if method["init_from"] \
            else f"{res}/models/{pair}/student-init"
        teacher = teacher_path(grid, pair) if method["kd_ratio"] > 0 else None
    role = "teacher" if label == "teacher" else "student"  # the model this run trains
    # With global_batch_size: the accumulation for training.gpus (the job derives it again for its own ranks).
    training["gradient_accumulation_steps"] = accumulation_steps(training, training["gpus"], f"config/pairs/{pair}.yaml")
    # A loaded model brings its own tokenizer (init-model saves it beside the weights); a random-init
    # one reads a generated tokenizer or the directory its pair file names.
    tokenizer = grid.tokenizer_dir(pair, role)
    # A cross-tokenizer pair's distillation run: the teacher reads its own tokens, the vocab_map pairs the vocabularies.
    cross = {"teacher_tokenizer": grid.tokenizer_dir(pair, "teacher"), "vocab_map": vocab_map_path(res, pair)} \
        if teacher and grid.cross_tokenizer(pair) else {}
    ds_file = grid.workdir / training["deepspeed"]
    return {
        "run": {"pair": pair, "method": label, "seed": seed, "dir": f"{res}/runs/{pair}/{label}/seed{seed}"},
        "student": start,
        "teacher": teacher,
        "teacher_dtype": spec["teacher"]["dtype"],
        **({"teacher_zero3": {"offload": spec["teacher"]["offload"]}}  # a ZeRO-3 inference engine
           if spec["teacher"]["zero3"] and teacher else {}),
        "lora": spec[role].get("lora"),
        "pair_file": f"config/pairs/{pair}.yaml",  # named in error messages
        "tokenizer": tokenizer,
        **cross,
        "prompt_format": grid.config["evaluation"]["prompt_format"],  # training prompts as evaluation's
        "data": {"train": method["train_data"].format(results=res, pair=pair) if method["train_data"]
                 else grid.data_files["train"], "valid": grid.data_files["valid"]},
        "method": method,
        "training": training,
        "deepspeed": load_yaml(ds_file) if ds_file.suffix in {".yaml", ".yml"} else _load_json(ds_file),
    }


def vocab_map_path(results: str, pair: str) -> str:
    """The pair's vocabulary artifact (rule vocab_map, kdbench.crosstok.vocab); its report is beside it (.json)."""
    return f"{results}/vocab_maps/{pair}/vocab_map.safetensors"


def teacher_states(grid: Any, pair: str, label: str, seed: int) -> str | None:
    """With `teacher_cache`: the teacher-states file a run reads (kdbench.teacher_states), or None
    (no `teacher_cache`, or a run they cannot serve). It depends on the run alone, not on which
    other runs the selection holds, so growing a partial grid retrains nothing."""
    if not grid.config["teacher_cache"]:
        return None
    path = states_path(grid.resolve_run(pair, label, seed))
    return str(path) if path else None


def check_teacher_cache(grid: Any) -> None:
    """`teacher_cache: true` needs a run that stored teacher states can serve, among the full cells of
    the grid's tables (a top-level selection narrowing them to SFT alone plans no states, silently);
    otherwise it is refused, naming the key and why each kind of run cannot use the states."""
    if not grid.config["teacher_cache"]:
        return
    why: dict[str, tuple[dict, dict]] = {}  # reason → the labels and pairs of its runs, in order
    for table in grid.tables.values():
        cells = table["all"]
        for pair in (p for p in cells["pairs"] if p in grid.pairs):
            for label in cells["methods"]:
                reason = unservable(resolve(grid, pair, label, cells["seeds"][0]))
                if reason is None:
                    return
                labels, pairs = why.setdefault(reason, ({}, {}))
                labels[label], pairs[pair] = None, None
    said = "; ".join(f"{', '.join(labels)} (on {', '.join(pairs)}): {reason}" for reason, (labels, pairs) in why.items())
    raise KDBenchError(f"{grid.where}: key 'teacher_cache': true, but no run of the grid can read stored teacher "
                       f"states ({said}); they serve dataset-source students with a teacher (fkl, rkl, … ± a token "
                       "policy). Set teacher_cache: false, or add such a method to a table.")


def teacher_states_spec(grid: Any, pair: str, seed: int, key: str) -> dict:
    """The spec the states file `key` is computed from: that of any run of the grid that reads
    it (they share one spec: it holds no method setting)."""
    for p, label, s in grid.runs(pair=pair):
        path = teacher_states(grid, p, label, s) if s == seed else None
        if path and Path(path).stem == key:
            return stream_spec(grid.resolve_run(p, label, s))
    raise KDBenchError(f"no run of the grid on pair {pair}, seed {seed} reads the teacher states {key}.")


def reference(grid: Any, pair: str, table: str) -> dict | None:
    """The published table and model family shown beside this pair's rows of `table`, or None.
    Only the paper's pair on the paper's data gets published numbers: the pair names them
    (`reference:`, refused for random-init models) and the grid trains and evaluates on given
    files or the public releases the workflow prepares (`data.source: files` or `releases`, the
    sets of `kdbench prepare-eval`); on generated data a Δ against the paper would mean nothing.
    The table's own `reference` picks which paper table."""
    ref = grid.pairs[pair].get("reference")
    if not ref or grid.config["data"]["source"] not in ("files", "releases"):
        return None
    return {"table": grid.tables[table]["reference"] or ref["table"], "family": ref["family"]}


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KDBenchError(f"{path}: not valid JSON: {exc}") from exc
