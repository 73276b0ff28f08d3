"""The inputs of the tables: evaluation result JSONs, their per-example predictions and lm-eval results.

Result files live at ``.../evals/{pair}/{method}/seed{train_seed}/{set}.json`` (written by
``kdbench evaluate``); pair, method and training seed come from the path, decoding seeds and
scores from the file, the per-example scores from the ``{set}.predictions.jsonl`` beside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import yaml

from kdbench.errors import KDBenchError
from kdbench.jsonl import json_lines


def read_document(path: Path, missing: str, invalid: str = "") -> Any:
    """A JSON (``.json``) or YAML file's content; a missing or malformed file raises an error naming
    it: ``<path>: <missing>``, or ``<path>: not valid JSON/YAML (...)[; <invalid>]``."""
    loads, error, kind = ((json.loads, json.JSONDecodeError, "JSON") if path.suffix == ".json"
                          else (yaml.safe_load, yaml.YAMLError, "YAML"))
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise KDBenchError(f"{path}: {missing}") from err
    except error as err:
        raise KDBenchError(f"{path}: not valid {kind} ({err})" + (f"; {invalid}" if invalid else "")) from err

COLUMNS = ["pair", "method", "train_seed", "set", "decoding_seed", "rougeL", "protocol"]
MISSING = "–"
AVG = "Avg"


def _protocol_label(protocol: Any, where: Path) -> str:
    """A one-line description of the generation settings that change scores (batch size excluded)."""
    try:
        decoding = (
            f"sampling top-k {protocol['top_k']} top-p {protocol['top_p']} T {protocol['temperature']}"
            if protocol["do_sample"]
            else "greedy"
        )
        return (
            f"{decoding}, ≤{protocol['max_new_tokens']} new tokens, "
            f"prompts ≤{protocol['max_prompt_tokens']} tokens, "
            f"no-repeat-ngram {protocol['no_repeat_ngram_size']}, protocol v{protocol['protocol_version']}"
        )
    except (KeyError, TypeError) as err:
        raise KDBenchError(f"{where}: 'protocol' lacks {err}; re-run kdbench evaluate for this file") from err


def _read_result(path: Path) -> list[dict[str, Any]]:
    """The rows of one result file; the path must follow ``{pair}/{method}/seed{n}/{set}.json``."""
    parts = path.parts
    seed_dir = re.fullmatch(r"seed(\d+)", parts[-2]) if len(parts) >= 4 else None
    if path.suffix != ".json" or seed_dir is None:
        raise KDBenchError(
            f"{path}: result paths must look like .../evals/{{pair}}/{{method}}/seed{{n}}/{{set}}.json"
        )
    pair, method, set_name = parts[-4], parts[-3], path.stem
    result = read_document(path, "no such result file; run kdbench evaluate first",
                           "re-run kdbench evaluate for this file")
    if not isinstance(result, dict) or result.get("set") != set_name:
        found = result.get("set") if isinstance(result, dict) else None
        raise KDBenchError(f"{path}: records set {found!r} but its file name says {set_name!r}")
    per_seed = result.get("per_seed")
    if not isinstance(per_seed, dict) or not per_seed:
        raise KDBenchError(f"{path}: 'per_seed' must map decoding seeds to scores; re-run kdbench evaluate")
    protocol = _protocol_label(result.get("protocol"), path)
    rows = []
    for decoding_seed, scores in per_seed.items():
        score = scores.get("rougeL") if isinstance(scores, dict) else None
        if not decoding_seed.isdigit() or not isinstance(score, (int, float)):
            raise KDBenchError(f"{path}: per_seed[{decoding_seed!r}] = {scores!r} is not {{'rougeL': number}}")
        rows.append(
            {
                "pair": pair,
                "method": method,
                "train_seed": int(seed_dir.group(1)),
                "set": set_name,
                "decoding_seed": int(decoding_seed),
                "rougeL": float(score),
                "protocol": protocol,
            }
        )
    mean, of_seeds = result.get("rougeL_mean"), float(np.mean([row["rougeL"] for row in rows]))
    if isinstance(mean, (int, float)) and not abs(mean - of_seeds) <= 1e-6:
        raise KDBenchError(f"{path}: rougeL_mean is {mean:.4f}, but its per_seed scores average {of_seeds:.4f}; the "
                           "file was edited. Delete it and its predictions and rerun the workflow (or kdbench evaluate).")
    return rows


def collect(result_files: Iterable[Path]) -> pd.DataFrame:
    """Long table, one row per (pair, method, train_seed, set, decoding_seed), with ``rougeL``
    and a ``protocol`` label; a (pair, method, train_seed, set, decoding_seed) seen twice is an error."""
    rows = [row for path in result_files for row in _read_result(Path(path))]
    if not rows:
        raise KDBenchError("no result files given; pass the eval result JSONs with --results")
    df = pd.DataFrame(rows, columns=COLUMNS)
    key = ["pair", "method", "train_seed", "set", "decoding_seed"]
    duplicated = df[df.duplicated(key, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise KDBenchError(f"the same score appears in several result files: {dict(first[key])}")
    return df


PREDICTION_COLUMNS = ["pair", "method", "train_seed", "set", "decoding_seed", "idx", "rougeL", "protocol"]


def _predictions_path(result: Path) -> Path:
    return result.with_name(f"{result.stem}.predictions.jsonl")


def load_predictions(result_files: Iterable[Path], methods: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-example scores from the ``{set}.predictions.jsonl`` beside each result JSON (only of
    ``methods`` when given), one row per (pair, method, train_seed, set, decoding_seed, idx), each
    file checked against its result (:func:`checked_predictions`)."""
    wanted = None if methods is None else set(methods)
    frames = []
    for result in map(Path, result_files):
        if wanted is not None and (len(result.parts) < 3 or result.parts[-3] not in wanted):
            continue
        summary, frame = checked_predictions(result)
        for column in ("pair", "method", "train_seed", "set", "protocol"):
            frame[column] = summary[column].iloc[0]
        frames.append(frame[PREDICTION_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def verify_results(result_files: Iterable[Path]) -> None:
    """Every result's scores are what its predictions file says (:func:`checked_predictions`): what
    the tables show is cross-checked cell by cell, so an edited or stale result JSON stops them."""
    for result in map(Path, result_files):
        checked_predictions(result)


def checked_predictions(result: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A result's rows (one per decoding seed) and the per-example scores of the predictions file
    ``kdbench evaluate`` wrote beside it (``decoding_seed, idx, rougeL``). Each decoding seed's score
    in the result must be the mean of its examples' scores there (within 1e-6); a result edited after
    evaluation, or a predictions file of another evaluation, raises naming the file and both values."""
    summary = pd.DataFrame(_read_result(result))
    path = _predictions_path(result)
    if not path.is_file():
        raise KDBenchError(f"{path}: no per-example predictions beside {result.name}; the tables check each score "
                           "against the predictions file kdbench evaluate writes next to its result")
    records = []
    for where, rec in json_lines(path):
        try:
            records.append((int(rec["seed"]), int(rec["idx"]), float(rec["rougeL"])))
        except (KeyError, TypeError, ValueError) as err:
            raise KDBenchError(
                f"{where}: not a prediction record with seed, idx, rougeL ({err}); re-run kdbench evaluate"
            ) from err
    frame = pd.DataFrame(records, columns=["decoding_seed", "idx", "rougeL"])
    if frame.duplicated(["decoding_seed", "idx"]).any():
        raise KDBenchError(f"{path}: an (seed, idx) pair appears twice; re-run kdbench evaluate")
    means = frame.groupby("decoding_seed")["rougeL"].agg(["mean", "size"])
    for seed, score in summary.set_index("decoding_seed")["rougeL"].items():
        if seed not in means.index:
            raise KDBenchError(f"{result}: decoding seed {seed} has no predictions in {path.name}; re-run kdbench "
                               "evaluate for this result")
        mean, n = means.loc[seed, "mean"], int(means.loc[seed, "size"])
        if not abs(mean - score) <= 1e-6:
            raise KDBenchError(f"{result}: the ROUGE-L of decoding seed {seed} is {score:.4f}, but its predictions "
                               f"({path.name}, {n} examples) average {mean:.4f}; the result was edited or belongs to "
                               "another evaluation. Delete both files and rerun the workflow (or kdbench evaluate).")
    extra = sorted(set(means.index) - set(summary["decoding_seed"]))
    if extra:
        raise KDBenchError(f"{path}: predictions of decoding seed {extra[0]}, which {result.name} does not score; "
                           "re-run kdbench evaluate")
    return summary, frame


LM_EVAL_COLUMNS = ["pair", "method", "train_seed", "task", "decoding_seed", "score", "metric", "decoding"]


def _read_lm_eval(path: Path) -> list[dict[str, Any]]:
    """The rows of one ``kdbench lm-eval`` result, ``.../lm_eval/{pair}/{method}/seed{n}.json``: per
    task and decoding seed, the task's primary metric."""
    seed_dir = re.fullmatch(r"seed(\d+)", path.stem)
    if path.suffix != ".json" or seed_dir is None or len(path.parts) < 3:
        raise KDBenchError(f"{path}: lm-eval result paths must look like "
                           ".../lm_eval/{pair}/{method}/seed{n}.json")
    result = read_document(path, "no such lm-eval result; run kdbench lm-eval first",
                           "re-run kdbench lm-eval for this file")
    tasks = result.get("tasks") if isinstance(result, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise KDBenchError(f"{path}: no 'tasks' (an older kdbench lm-eval wrote it); re-run kdbench lm-eval")
    rows = []
    for task, entry in tasks.items():
        try:
            metric = entry["metric"]
            scores = {seed: float(values[metric]) for seed, values in entry["per_seed"].items()}
            decoding = entry["decoding"]
        except (KeyError, TypeError, ValueError) as err:
            raise KDBenchError(f"{path}: task {task!r} lacks {err} (metric, per_seed, decoding); re-run "
                               "kdbench lm-eval") from err
        rows += [{"pair": path.parts[-3], "method": path.parts[-2], "train_seed": int(seed_dir.group(1)),
                  "task": task, "decoding_seed": int(seed), "score": score, "metric": metric, "decoding": decoding}
                 for seed, score in scores.items()]
    return rows


def collect_lm_eval(result_files: Iterable[Path]) -> pd.DataFrame:
    """Long table ``LM_EVAL_COLUMNS``, one row per (pair, method, train seed, task, decoding seed);
    a task must have one metric and one decoding in every file."""
    rows = [row for path in result_files for row in _read_lm_eval(Path(path))]
    if not rows:
        raise KDBenchError("no lm-eval result files given; pass them with --results")
    df = pd.DataFrame(rows, columns=LM_EVAL_COLUMNS)
    for task, group in df.groupby("task", sort=False):
        for column in ("metric", "decoding"):
            if group[column].nunique() > 1:
                raise KDBenchError(f"lm-eval task {task}: results with different {column}s "
                                   f"{sorted(group[column].unique())} would be pooled; re-run kdbench lm-eval")
    return df
