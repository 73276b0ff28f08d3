"""Turn evaluation result JSONs into paper tables: mean ± std of ROUGE-L per method and eval set.

Result files live at ``.../evals/{pair}/{method}/seed{train_seed}/{set}.json`` (written by
``kdbench evaluate``); pair, method and training seed come from the path, decoding seeds and
scores from the file. A table cell pools every (training seed × decoding seed) score of its
method and set; the Avg column first averages the sets within each (training seed, decoding
seed) and then takes mean ± std of those averages. Std is the sample std (ddof=1), 0 for one score.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.atomic import write_text
from kdbench.errors import KDBenchError

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
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise KDBenchError(f"{path}: no such result file; run kdbench evaluate first") from err
    except json.JSONDecodeError as err:
        raise KDBenchError(f"{path}: not valid JSON ({err}); re-run kdbench evaluate for this file") from err
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


def _select(df: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """The rows of the table; they must come from one pair and one decoding protocol."""
    rows = df[df["method"].isin(methods) & df["set"].isin(sets)]
    pairs = sorted(rows["pair"].unique())
    if len(pairs) > 1:
        raise KDBenchError(f"results of several pairs {pairs} would be pooled in one table; select one with --pair")
    protocols = sorted(rows["protocol"].unique())
    if len(protocols) > 1:
        raise KDBenchError(f"results decoded under different protocols would be pooled: {protocols}")
    return rows


def _stats(method: str, set_name: str, scores: np.ndarray) -> dict[str, Any]:
    """One CSV row: mean and sample std (0 for one score, NaN for none) of ``scores``."""
    n = len(scores)
    return {
        "method": method,
        "set": set_name,
        "mean": float(np.mean(scores)) if n else np.nan,
        "std": float(np.std(scores, ddof=1)) if n > 1 else (0.0 if n else np.nan),
        "n": n,
    }


def cell_stats(df: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """Numeric long table ``method, set, mean, std, n`` for every method × (sets + Avg); n = 0 marks
    a missing cell. Avg is computed only when every set has the same (train seed, decoding seed) grid."""
    rows = _select(df, methods, sets)
    stats = []
    for method in methods:
        mine = rows[rows["method"] == method]
        for set_name in sets:
            stats.append(_stats(method, set_name, mine.loc[mine["set"] == set_name, "rougeL"].to_numpy()))
        grid = mine.pivot(index=["train_seed", "decoding_seed"], columns="set", values="rougeL")
        complete = set(sets) <= set(grid.columns) and not grid[sets].isna().any().any()
        stats.append(_stats(method, AVG, grid[sets].mean(axis=1).to_numpy() if complete else np.array([])))
    return pd.DataFrame(stats, columns=["method", "set", "mean", "std", "n"])


def main_table(df: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """Display table: rows = ``methods`` in order, columns = ``sets`` + Avg, cells ``"25.31 ± 0.42"``
    (``"–"`` when missing). The numbers behind it are :func:`cell_stats`."""
    stats = cell_stats(df, methods, sets)
    cells = {
        (row.method, row.set): f"{row.mean:.2f} ± {row.std:.2f}" if row.n else MISSING
        for row in stats.itertuples()
    }
    return pd.DataFrame(
        [[cells[method, column] for column in [*sets, AVG]] for method in methods],
        index=pd.Index(methods, name="method"),
        columns=[*sets, AVG],
    )


def _span(counts: Iterable[int]) -> str:
    """``"5"`` or ``"3–5"``."""
    values = sorted(set(counts))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def table_header(df: pd.DataFrame, methods: list[str], sets: list[str]) -> str:
    """One line saying what the table's numbers are: metric, seeds behind each cell, protocol."""
    rows = _select(df, methods, sets)
    if rows.empty:
        return f"ROUGE-L F ×100: no results for these methods and sets ({MISSING} = missing)."
    cells = rows.groupby(["method", "set"])
    pair = rows["pair"].iloc[0]
    return (
        f"{pair}: ROUGE-L F ×100, mean ± std over {_span(cells['decoding_seed'].nunique())} decoding seeds × "
        f"{_span(cells['train_seed'].nunique())} training seeds; {rows['protocol'].iloc[0]}; "
        f"{MISSING} = missing."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench aggregate", description="Tabulate eval results: ROUGE-L mean ± std per method and set."
    )
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="result JSONs of kdbench evaluate")
    parser.add_argument("--methods", nargs="+", help="table rows, in order (default: every method found, sorted)")
    parser.add_argument("--sets", nargs="+", help="table columns, in order (default: every set found, sorted)")
    parser.add_argument("--pair", help="keep only this pair (needed when the results hold several)")
    parser.add_argument("--out-md", type=Path, required=True, help="markdown table")
    parser.add_argument("--out-csv", type=Path, required=True, help="long CSV: method, set, mean, std, n")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``kdbench aggregate``: write the markdown table and the numeric CSV; raises KDBenchError for user errors."""
    args = _parser().parse_args(argv)
    df = collect(args.results)
    if args.pair is not None:
        if args.pair not in set(df["pair"]):
            raise KDBenchError(f"--pair {args.pair}: not among the results' pairs {sorted(df['pair'].unique())}")
        df = df[df["pair"] == args.pair]
    methods = args.methods or sorted(df["method"].unique())
    sets = args.sets or sorted(df["set"].unique())
    table = main_table(df, methods, sets)
    write_text(args.out_md, f"{table_header(df, methods, sets)}\n\n{table.to_markdown()}\n")
    write_text(args.out_csv, cell_stats(df, methods, sets).to_csv(index=False))
    return 0
