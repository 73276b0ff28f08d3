"""`kdbench lm-eval`: lm-eval tasks on one model, over the decoding seeds of the evaluation protocol.

A task is anything lm-eval can name: a task, a tag or a group in the ``--include-path`` folders
(evaluation/tasks: kdbench's own) or in lm-eval's own tasks, or a task YAML given by path. A stock task with a local
dataset is a YAML that includes the stock one and sets ``dataset_path`` / ``dataset_kwargs``
(evaluation/tasks/README.md). :func:`task_inputs` lists the local files each task reads (its data,
its YAMLs and their ``!function`` modules), which the workflow declares as the rule's inputs.

Decoding seeds: a task whose output depends on the seed (``generate_until`` with ``do_sample``) runs
once per seed; one that does not runs with the first seed only and its result says why (greedy
generation; log-likelihood scoring: ``multiple_choice``, ``loglikelihood``, ``loglikelihood_rolling``).
kdbench's tasks (``metadata.protocol: kdbench``, from evaluation/tasks/_default_template_yaml) follow
the grid's decoding protocol as ``kdbench evaluate`` does: new tokens, prompt budget (lm-eval keeps
the last ``max_length - max_gen_toks`` prompt tokens), greedy or sampled, n-gram blocking, prompt
format; every other task keeps its own settings. The model is loaded once for every seed and task.
kdbench's tasks generate through kdbench's own engine (:func:`kdbench.evaluate.generate_rows`: each
response from its own stream, seeded by the decoding seed, the document's position and its prompt,
stopping at eos), so `kdbench lm-eval` and `kdbench evaluate` sample the same responses and report
the same scores for every seed; lm-eval's HF model scores and decodes every other task.

The result JSON holds, per task, its decoding, the seeds run, the primary metric (the first lm-eval
reports) and every metric per seed; ``kdbench lm-eval-table`` turns these files into tables.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench import atomic
from kdbench.errors import KDBenchError
from kdbench.gpus import pinned

KDBENCH_PROTOCOL = "kdbench"  # metadata.protocol of the tasks that follow the grid's decoding protocol
SCORED = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")  # no decoding: the seed is irrelevant
BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder"}


@dataclass
class TaskSpec:
    """What the workflow needs to know of one lm-eval task before running it."""

    name: str
    config: dict[str, Any]  # the task's YAML with its includes merged (functions unresolved)
    files: list[str] = field(default_factory=list)  # the YAMLs and !function modules it is defined by
    data: list[str] = field(default_factory=list)  # the local data files it reads


def task_manager(names: list[str], include: list[Path]):
    """lm-eval's TaskManager over ``include``, and over lm-eval's own tasks only when a name is not
    found there (indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include] or None
    manager = TaskManager(include_path=paths, include_defaults=False)
    if all(n in manager.task_index or n.endswith((".yaml", ".yml")) for n in names):
        return manager
    return TaskManager(include_path=paths, include_defaults=True)


def _yaml_chain(path: Path) -> list[Path]:
    """``path`` and every YAML it includes, recursively (an include is relative to its file)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    chain, todo = [], [path.resolve()]
    while todo:
        current = todo.pop()
        if current in chain:
            continue
        chain.append(current)
        cfg = yaml.load(current.read_text(encoding="utf-8"), Loader=Loader) or {}  # noqa: S506 (SafeLoader)
        includes = cfg.get("include") or []
        for inc in includes if isinstance(includes, list) else [includes]:
            todo.append(Path(inc) if Path(inc).is_absolute() else current.parent / inc)
    return chain


def _function_modules(value: Any, found: set[Path]) -> None:
    """The ``.py`` files of every ``!function`` reference in an unresolved task config (lm-eval
    leaves them as ``<yaml dir>/<module>.<function>``)."""
    if isinstance(value, dict):
        for v in value.values():
            _function_modules(v, found)
    elif isinstance(value, list):
        for v in value:
            _function_modules(v, found)
    elif isinstance(value, str) and value.startswith("/"):
        module = Path(value.rpartition(".")[0] + ".py")
        if module.is_file():
            found.add(module)


def _data_files(cfg: dict[str, Any]) -> list[str]:
    """The local files a task's dataset is loaded from: ``dataset_kwargs.data_files`` (relative to a
    local ``dataset_path`` directory, else to the working directory) and a local ``dataset_path``
    (a file, or every file under a directory). A hub id or a builder name (json, csv...) is no file."""
    path = cfg.get("dataset_path")
    local = path is not None and path not in BUILDERS and Path(path).exists()
    base = Path(path) if local and Path(path).is_dir() else None
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    listed = files.values() if isinstance(files, dict) else [files]
    out = [str(base / f) if base else str(f) for v in listed for f in (v if isinstance(v, list) else [v]) if f]
    if local and not out:
        p = Path(path)
        out = [str(p)] if p.is_file() else sorted(str(f) for f in p.rglob("*") if f.is_file()
                                                 and not any(part.startswith(".") for part in f.parts))
    return out


def resolve_tasks(names: list[str], include: list[Path] = (), manager=None) -> list[TaskSpec]:
    """Every leaf task of ``names`` (tasks, tags, groups or YAML paths), in order, with the files
    that define it (a group's YAMLs included) and the data it reads; lm-eval's own tasks are indexed
    only when a name is not found in ``include`` (``manager``: a :func:`task_manager` already made
    for these names, whose index is reused). An unknown name raises."""
    import lm_eval
    from lm_eval.tasks._index import Entry, Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = (manager or task_manager(names, list(include))).task_index
    stock = Path(lm_eval.__file__).parent  # the library's own task files belong to the environment
    specs: dict[str, TaskSpec] = {}

    def lookup(name: str, via: str) -> Entry:
        if name.endswith((".yaml", ".yml")):
            path = Path(name)
            if not path.is_file():
                raise KDBenchError(f"lm-eval task file {name}{via}: no such file")
            cfg = load_yaml(path, resolve_func=False)
            kind = Kind.GROUP if "group" in cfg else Kind.TASK
            return Entry(name=cfg.get("group") or cfg.get("task"), kind=kind, yaml_path=path, cfg=cfg)
        if name not in index:
            raise KDBenchError(f"unknown lm-eval task {name!r}{via}: not a task, tag or group of lm-eval or of "
                               f"{', '.join(map(str, include))}, nor a task YAML file; see `lm_eval --tasks list`")
        return index[name]

    def visit(entry: Entry, overrides: dict, parents: list[Path]) -> None:
        chain = [*parents, *(_yaml_chain(entry.yaml_path) if entry.yaml_path else [])]
        if entry.kind == Kind.TAG:
            for task in sorted(entry.tags):
                visit(lookup(task, f" (tag {entry.name})"), overrides, parents)
        elif entry.kind == Kind.GROUP:
            for member in entry.cfg.get("task") or []:
                name, extra = (member, {}) if isinstance(member, str) else (member.get("task", ""), member)
                visit(lookup(name, f" (group {entry.name})"), {**overrides, **extra}, chain)
        else:
            cfg = {**entry.cfg, **overrides}
            found: set[Path] = set()
            _function_modules(cfg, found)
            files = [str(f) for f in dict.fromkeys([*chain, *sorted(found)]) if stock not in f.parents]
            specs.setdefault(cfg["task"], TaskSpec(cfg["task"], cfg, files, _data_files(cfg)))

    for name in names:
        visit(lookup(name, ""), {}, [])
    return list(specs.values())


def task_inputs(names: list[str], include: list[Path] = (), made: list[str] = ()) -> list[str]:
    """The local files the lm-eval tasks ``names`` are defined by and read, for the workflow's
    inputs; a data file that neither exists nor is in ``made`` (what the workflow writes) raises."""
    specs = resolve_tasks(names, include)
    for spec in specs:
        for data in spec.data:
            if not Path(data).exists() and data not in made:
                raise KDBenchError(
                    f"lm-eval task {spec.name} reads {data}, which does not exist and which this grid does not "
                    f"write (its data: {', '.join(made) or 'none'}); make the file (data/README.md), or give a "
                    "task YAML that includes this one and sets dataset_kwargs.data_files (evaluation/tasks/README.md)")
    return list(dict.fromkeys(f for spec in specs for f in (*spec.files, *spec.data)))


def grid_task_inputs(grid: Any, include: Path) -> list[str]:
    """The inputs of the grid's `lm_eval` jobs (`task_inputs` of `evaluation.lm_eval_tasks`, the
    files the grid writes counted as made); a bad task list raises naming the config and the key.
    The workflow and `kdbench check` both ask this, so they refuse the same lists."""
    names = grid.config["evaluation"]["lm_eval_tasks"]
    if not names:
        return []
    try:
        return task_inputs(names, [include], made=list(grid.data_files.values()))
    except KDBenchError as exc:
        raise KDBenchError(f"{grid.where}: key 'evaluation.lm_eval_tasks': {exc}") from None


def decoding(task: Any) -> tuple[str, str | None]:
    """``(decoding, why)``: ``"sampled"`` when the task's output depends on the decoding seed, else
    ``"greedy"`` or ``"scored"`` with the reason it runs with one seed."""
    output_type = task.get_config("output_type")
    if output_type in SCORED:
        return "scored", f"{output_type}: log-likelihood scoring, no decoding, so the seed changes nothing"
    if output_type == "generate_until" and (task.get_config("generation_kwargs") or {}).get("do_sample") is True:
        return "sampled", None
    return "greedy", "greedy generation (do_sample is not true), so the seed changes nothing"


def _is_kdbench(task: Any) -> bool:
    return (task.get_config("metadata") or {}).get("protocol") == KDBENCH_PROTOCOL


def _apply_protocol(task: Any, protocol: dict[str, Any], tokenizer: Any) -> None:
    """Give a kdbench task the grid's decoding protocol (the YAML holds the paper's)."""
    gen = {"max_gen_toks": protocol["max_new_tokens"], "do_sample": protocol["do_sample"],
           "no_repeat_ngram_size": protocol["no_repeat_ngram_size"]}
    if not protocol["do_sample"]:
        gen["temperature"] = 0.0  # lm-eval then drops the sampling settings
    task.set_config("generation_kwargs", gen, update=True)
    if protocol["prompt_format"] == "chat":
        from kdbench.prompts import build_chat_prompt

        task.set_config("doc_to_text",
                        lambda doc: build_chat_prompt(tokenizer, doc["instruction"], doc.get("input") or ""))


def _metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``{"rougeL,none": x, "rougeL_stderr,none": s, "alias": ..}`` as ``{"rougeL": x}``
    (a filter other than ``none`` stays in the name: ``exact_match,strict-match``)."""
    out = {}
    for key, value in results.items():
        metric, _, filt = key.partition(",")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and filt and "_stderr" not in metric:
            out[metric if filt == "none" else key] = float(value)
    return out


def _parser() -> argparse.ArgumentParser:
    from kdbench import eval_protocol
    from kdbench.eval_protocol import int_at_least

    ap = argparse.ArgumentParser(prog="kdbench lm-eval", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model directory written by save_pretrained")
    ap.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names, tags, groups or YAML paths")
    ap.add_argument("--include-path", type=Path, nargs="+", default=[Path("evaluation/tasks")],
                    help="folders of task YAMLs indexed besides lm-eval's own (default: evaluation/tasks)")
    ap.add_argument("--run", default="", help="free-text label of the evaluated run, recorded in the result")
    eval_protocol.add_arguments(ap)  # kdbench tasks decode by it; the others keep their own settings
    ap.add_argument("--limit", type=int_at_least(1), help="first N documents per task")
    ap.add_argument("--threads", type=int_at_least(1), help="torch CPU threads")
    ap.add_argument("--out", type=Path, required=True, help="result JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.model.is_dir():
        raise KDBenchError(f"--model {args.model}: no such directory; pass a directory written by save_pretrained")
    for folder in args.include_path:
        if not folder.is_dir():
            raise KDBenchError(f"--include-path {folder}: no such directory of lm-eval task YAMLs")
    manager = task_manager(args.tasks, args.include_path)  # indexing the task folders takes seconds: once
    resolve_tasks(args.tasks, args.include_path, manager)  # an unknown name fails before the model is loaded

    import torch
    from lm_eval.models.huggingface import HFLM

    from kdbench import eval_protocol
    from kdbench.evaluate import load_model, resolve_protocol
    from kdbench.provenance import package_versions

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = eval_protocol.from_args(args)
    protocol = eval_protocol.decoding(settings)
    seeds = settings["decoding_seeds"]
    with pinned(1, "lm-eval"):  # a GPU of its own (kdbench.gpus), as evaluation jobs get
        model, tokenizer = load_model(args.model, dtype=settings["dtype"])
        # kdbench tasks: max_length = prompt budget + new tokens; the others: the model's own maximum
        lms = {True: _kdbench_lm(HFLM, resolve_protocol(protocol))(
                   pretrained=model, tokenizer=tokenizer, batch_size=protocol["batch_size"],
                   max_length=protocol["max_prompt_tokens"] + protocol["max_new_tokens"]),
               False: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=protocol["batch_size"])}
        start = time.perf_counter()
        tasks = _evaluate_seeds(args, seeds, manager, lms, tokenizer, protocol)
    atomic.write_text(args.out, json.dumps({
        "run": args.run, "model": str(args.model), "tasks": tasks, "seeds": seeds, "protocol": protocol,
        "versions": package_versions(),
        "device": str(model.device), "elapsed_s": round(time.perf_counter() - start, 3)},
        indent=2, default=str) + "\n")
    return 0


def _kdbench_lm(base: type, settings: dict[str, Any]) -> type:
    """lm-eval's HF model class ``base`` whose ``generate_until`` decodes as `kdbench evaluate`
    does, under the decoding seed in its ``decoding_seed`` attribute."""
    from kdbench.engines import row_seed
    from kdbench.evaluate import generate_rows

    class KDBenchLM(base):
        decoding_seed = 0

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            rows = [(r.args[0], row_seed(self.decoding_seed, r.doc_id, r.args[0])) for r in requests]
            texts = generate_rows(self.model, self.tokenizer, rows, settings)
            for request, text in zip(requests, texts):
                self.cache_hook.add_partial("generate_until", request.args, text)
            return texts

    return KDBenchLM


def _evaluate_seeds(args: argparse.Namespace, seeds: list[int], manager, lms: dict, tokenizer,
                    protocol: dict[str, Any]) -> dict:
    """Every task under every decoding seed (a task decoded greedily or scored runs the first seed
    only): per task its decoding, generation settings and metrics per seed."""
    import lm_eval

    tasks: dict[str, dict[str, Any]] = {}
    for i, seed in enumerate(seeds):
        loaded = manager.load(args.tasks)["tasks"]  # fresh Task objects for every seed
        for name, task in loaded.items():
            ours = _is_kdbench(task)
            if ours:
                _apply_protocol(task, protocol, tokenizer)
            mode, why = decoding(task)
            tasks.setdefault(name, {"decoding": mode, **({"why": why} if why else {}), "kdbench_protocol": ours,
                                    "output_type": task.get_config("output_type"),
                                    "generation_kwargs": task.get_config("generation_kwargs") if mode != "scored"
                                    else None, "per_seed": {}})
        todo = [task for name, task in loaded.items() if i == 0 or tasks[name]["decoding"] == "sampled"]
        lms[True].decoding_seed = seed  # kdbench's tasks: every response seeded as `kdbench evaluate` seeds it
        groups = [[task for task in todo if _is_kdbench(task) == ours] for ours in (True, False)]
        for group in filter(None, groups):
            out = lm_eval.simple_evaluate(
                model=lms[_is_kdbench(group[0])], tasks=group, task_manager=manager, limit=args.limit,
                log_samples=False, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed)
            for task in group:
                entry = tasks[task.task_name]
                entry["per_seed"][str(seed)] = _metrics(out["results"][task.task_name])
                entry.setdefault("n_docs", out.get("n-samples", {}).get(task.task_name, {}).get("effective"))
                print(f"{task.task_name} seed {seed}: {entry['per_seed'][str(seed)]}", flush=True)
    for entry in tasks.values():
        entry["metric"] = next(iter(next(iter(entry["per_seed"].values()))))  # the task's primary metric
    return tasks
