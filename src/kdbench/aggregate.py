"""Turn evaluation result JSONs into paper tables: mean ± std of ROUGE-L per method and eval set,
the published numbers beside ours, paired-bootstrap significance and the paper's claims.

Result files live at ``.../evals/{pair}/{method}/seed{train_seed}/{set}.json`` (written by
``kdbench evaluate``); pair, method and training seed come from the path, decoding seeds and
scores from the file. A table cell pools every (training seed × decoding seed) score of its
method and set; the Avg column first averages the sets within each (training seed, decoding
seed) and then takes mean ± std of those averages. Std is the sample std (ddof=1), 0 for one score.

Published numbers (``evaluation/reference/*.csv``) are matched to our run labels through
``evaluation/reference/labels.yaml`` (:func:`load_labels`). Significance uses the per-example
scores of the ``{set}.predictions.jsonl`` beside each result: a paired bootstrap over examples
(:func:`paired_bootstrap`), pairing by (training seed, decoding seed, example idx).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from kdbench import testhooks
from kdbench.atomic import write_text
from kdbench.errors import KDBenchError
from kdbench.jsonl import json_lines

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


def _cells(rows: pd.DataFrame, methods: list[str], columns: list[str], *, column: str = "set",
           value: str = "rougeL", avg: bool = True) -> pd.DataFrame:
    """``method, set, mean, std, n`` for every method × ``columns`` (the values of ``rows[column]``),
    plus Avg when ``avg``: the columns averaged within each (train seed, decoding seed) first, only
    when every column has the same seed grid. n = 0 marks a missing cell."""
    stats = []
    for method in methods:
        mine = rows[rows["method"] == method]
        for name in columns:
            stats.append(_stats(method, name, mine.loc[mine[column] == name, value].to_numpy()))
        if avg:
            grid = mine.pivot(index=["train_seed", "decoding_seed"], columns=column, values=value)
            complete = set(columns) <= set(grid.columns) and not grid[columns].isna().any().any()
            stats.append(_stats(method, AVG, grid[columns].mean(axis=1).to_numpy() if complete else np.array([])))
    return pd.DataFrame(stats, columns=["method", "set", "mean", "std", "n"])


def cell_stats(df: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """Numeric long table ``method, set, mean, std, n`` for every method × (sets + Avg); n = 0 marks
    a missing cell. Avg is computed only when every set has the same (train seed, decoding seed) grid."""
    return _cells(_select(df, methods, sets), methods, sets)


def _display(stats: pd.DataFrame, methods: list[str], columns: list[str]) -> pd.DataFrame:
    """Rows = ``methods`` in order, ``columns`` as given, cells ``"25.31 ± 0.42"`` (``"–"`` when missing)."""
    cells = {
        (row.method, row.set): f"{row.mean:.2f} ± {row.std:.2f}" if row.n else MISSING
        for row in stats.itertuples()
    }
    return pd.DataFrame(
        [[cells[method, c] for c in columns] for method in methods],
        index=pd.Index(methods, name="method"),
        columns=columns,
    )


def main_table(df: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """Display table: rows = ``methods`` in order, columns = ``sets`` + Avg, cells ``"25.31 ± 0.42"``
    (``"–"`` when missing). The numbers behind it are :func:`cell_stats`."""
    return _display(cell_stats(df, methods, sets), methods, [*sets, AVG])


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


def _latex_escape(text: str) -> str:
    """``text`` as LaTeX source: special characters escaped, the few symbols we print as math."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    symbols = {"±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$", "≤": r"$\le$", "≥": r"$\ge$",
               "–": "--", "−": "$-$", "→": r"$\to$", "≈": r"$\approx$"}
    return "".join(special.get(ch, symbols.get(ch, ch)) for ch in str(text))


def to_latex(table: pd.DataFrame, caption: str, label: str = "tab:kdbench") -> str:
    """A display table (strings) as a booktabs LaTeX table; every cell, header and the caption escaped."""
    escaped = table.map(_latex_escape)
    escaped.columns = [_latex_escape(c) for c in table.columns]
    escaped.index = pd.Index([_latex_escape(i) for i in table.index])
    escaped.columns.name = _latex_escape(table.index.name or "")  # one header row: "method & dolly & ..."
    return escaped.to_latex(escape=False, caption=_latex_escape(caption), label=label,
                            column_format="l" + "r" * len(table.columns))


# --- published numbers beside ours -------------------------------------------------------------------

REFERENCE_COLUMNS = ["table", "family", "teacher", "student", "method", "adakd", "variant", "dataset", "rouge_l", "std"]
DEFAULT_LABELS = Path("evaluation/reference/labels.yaml")


def _family_key(name: Any) -> str:
    """``"GPT-2"``, ``"gpt2"`` and ``"GPT2"`` compare equal."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def read_reference(reference_csvs: Iterable[Path]) -> pd.DataFrame:
    """Every row of the published-number CSVs, with the columns of ``REFERENCE_COLUMNS``. A CSV may
    leave out ``family`` (taken from ``student`` without its size, e.g. ``GPT-2 (120M)`` → ``GPT-2``),
    ``adakd`` (False), ``variant`` ("") and ``std`` (NaN)."""
    frames = []
    for path in map(Path, reference_csvs):
        try:
            frame = pd.read_csv(path, dtype={"variant": str}, keep_default_na=False, na_values={"std": [""]})
        except FileNotFoundError as err:
            raise KDBenchError(f"{path}: no such published-numbers CSV (see evaluation/reference/)") from err
        missing = {"table", "method", "dataset", "rouge_l"} - set(frame.columns)
        if missing:
            raise KDBenchError(f"{path}: a published-numbers CSV needs the columns {sorted(missing)}")
        if "family" not in frame.columns:
            source = frame["student"] if "student" in frame.columns else pd.Series("", index=frame.index)
            frame["family"] = source.astype(str).str.replace(r"\s*\(.*\)\s*$", "", regex=True)
        frame["adakd"] = frame["adakd"].map(_as_bool) if "adakd" in frame.columns else False
        for column, default in (("teacher", ""), ("student", ""), ("variant", ""), ("std", np.nan)):
            if column not in frame.columns:
                frame[column] = default
        frame["rouge_l"] = pd.to_numeric(frame["rouge_l"], errors="raise")
        frame["std"] = pd.to_numeric(frame["std"], errors="coerce")
        frames.append(frame[REFERENCE_COLUMNS])
    if not frames:
        raise KDBenchError("no published-numbers CSV given; pass --reference evaluation/reference/*.csv")
    return pd.concat(frames, ignore_index=True)


def _as_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"true", "1", "yes"}:
        return True
    if text in {"false", "0", "no", ""}:
        return False
    raise KDBenchError(f"published numbers: adakd = {value!r} is not true/false")


def published(reference_csvs: Iterable[Path], table: str, family: str) -> pd.DataFrame:
    """The published rows of one paper table for one model family (``family`` compared without case
    or punctuation: ``qwen2`` finds ``Qwen2``), columns ``REFERENCE_COLUMNS``; unknown table or
    family raise, naming the ones that exist."""
    ref = read_reference(reference_csvs)
    tables = sorted(ref["table"].unique())
    if table not in tables:
        raise KDBenchError(f"published table {table!r} is not in the reference CSVs; they hold {tables}")
    rows = ref[ref["table"] == table]
    families = sorted(rows["family"].unique())
    mine = rows[rows["family"].map(_family_key) == _family_key(family)]
    if mine.empty:
        raise KDBenchError(f"published {table} has no family {family!r}; it has {families}")
    return mine.reset_index(drop=True)


@dataclass(frozen=True)
class PaperLabel:
    """Where a run label of ours appears in the published tables (one entry of labels.yaml)."""

    method: str
    adakd: bool
    variant: str | dict[str, str] | None = None

    def variant_for(self, table: str) -> tuple[bool, str | None]:
        """``(applies, variant)``: a mapping that does not name ``table`` does not apply there."""
        if isinstance(self.variant, dict):
            return (table in self.variant, self.variant.get(table))
        return True, self.variant


def load_labels(path: Path) -> dict[str, PaperLabel]:
    """Read labels.yaml (``labels: {<our label>: {method, adakd, variant?}}``); bad entries raise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise KDBenchError(f"{path}: no such labels file; see evaluation/reference/labels.yaml") from err
    except yaml.YAMLError as err:
        raise KDBenchError(f"{path}: not valid YAML ({err})") from err
    entries = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise KDBenchError(f"{path}: expected a top-level 'labels:' mapping of run label → {{method, adakd}}")
    labels = {}
    for label, entry in entries.items():
        where = f"{path}: labels.{label}"
        if not isinstance(entry, dict) or not {"method", "adakd"} <= set(entry):
            raise KDBenchError(f"{where} must be a mapping with 'method' and 'adakd' (and optional 'variant')")
        unknown = set(entry) - {"method", "adakd", "variant"}
        if unknown:
            raise KDBenchError(f"{where}: unknown keys {sorted(unknown)}; allowed: method, adakd, variant")
        if not isinstance(entry["adakd"], bool):
            raise KDBenchError(f"{where}.adakd = {entry['adakd']!r} must be true or false")
        variant = entry.get("variant")
        if variant is not None and not isinstance(variant, (str, dict)):
            raise KDBenchError(f"{where}.variant must be a string or a {{table: variant}} mapping")
        if isinstance(variant, dict):
            variant = {str(k): "" if v is None else str(v) for k, v in variant.items()}
        labels[str(label)] = PaperLabel(str(entry["method"]), entry["adakd"], variant)
    return labels


PUBLISHED_COLUMNS = ["method", "set", "published", "published_std", "paper_method", "paper_adakd", "paper_variant"]


def match_published(pub: pd.DataFrame, labels: dict[str, PaperLabel], methods: list[str]) -> pd.DataFrame:
    """The published number of each of our ``methods`` per set, from the rows of one table (see
    :func:`published`); columns ``PUBLISHED_COLUMNS``. Methods without a label or a row are absent."""
    found = []
    tables = pub["table"].unique()
    for method in methods:
        label = labels.get(method)
        if label is None:
            continue
        for table in tables:
            applies, variant = label.variant_for(table)
            if not applies:
                continue
            rows = pub[(pub["table"] == table) & (pub["method"] == label.method) & (pub["adakd"] == label.adakd)]
            if variant is not None:
                rows = rows[rows["variant"] == variant]
            for dataset, group in rows.groupby("dataset", sort=False):
                if len(group) > 1:
                    raise KDBenchError(
                        f"label {method!r} matches several published rows of {table} {dataset} (variants "
                        f"{sorted(group['variant'])}); give it a 'variant' in the labels file"
                    )
                row = group.iloc[0]
                found.append([method, dataset, row["rouge_l"], row["std"], row["method"], row["adakd"], row["variant"]])
    return pd.DataFrame(found, columns=PUBLISHED_COLUMNS).drop_duplicates(["method", "set"])


def beside_stats(df: pd.DataFrame, methods: list[str], sets: list[str], matched: pd.DataFrame) -> pd.DataFrame:
    """:func:`cell_stats` with ``published``, ``published_std`` and ``delta`` (ours − published) and the
    paper row each method was matched to. The published Avg is the mean over ``sets`` when every set
    has a published number (the paper prints no Avg)."""
    stats = cell_stats(df, methods, sets)
    avg = (
        matched[matched["set"].isin(sets)]
        .groupby("method")
        .agg(published=("published", "mean"), n_sets=("set", "nunique"), paper_method=("paper_method", "first"),
             paper_adakd=("paper_adakd", "first"), paper_variant=("paper_variant", "first"))
        .reset_index()
    )
    avg = avg[avg["n_sets"] == len(sets)].drop(columns="n_sets").assign(set=AVG, published_std=np.nan)
    both = pd.concat([matched, avg[PUBLISHED_COLUMNS]], ignore_index=True)
    out = stats.merge(both, on=["method", "set"], how="left")
    out["delta"] = out["mean"] - out["published"]
    return out[["method", "set", "mean", "std", "n", "published", "published_std", "delta",
                "paper_method", "paper_adakd", "paper_variant"]]


def beside_table(stats: pd.DataFrame, methods: list[str], sets: list[str]) -> pd.DataFrame:
    """Display table from :func:`beside_stats`: cells ``"31.20 ± 0.95 (29.52, +1.68)"`` = ours
    (published, Δ = ours − published); ours only when nothing is published; ``"–"`` when ours is missing."""

    def cell(row: Any) -> str:
        if not row.n:
            return MISSING if pd.isna(row.published) else f"{MISSING} ({row.published:.2f})"
        ours = f"{row.mean:.2f} ± {row.std:.2f}"
        return ours if pd.isna(row.published) else f"{ours} ({row.published:.2f}, {row.delta:+.2f})"

    cells = {(row.method, row.set): cell(row) for row in stats.itertuples()}
    return pd.DataFrame(
        [[cells[method, column] for column in [*sets, AVG]] for method in methods],
        index=pd.Index(methods, name="method"),
        columns=[*sets, AVG],
    )


def beside_header(table: str, family: str, reference_csvs: Iterable[Path]) -> str:
    names = ", ".join(Path(p).name for p in reference_csvs)
    return (
        f"Cells: ours (published, Δ = ours − published); published = {table} of {names}, family {family}; "
        f"published Avg = mean of the published sets shown; no parenthesis = nothing published for that row."
    )


# --- paired bootstrap --------------------------------------------------------------------------------

BOOTSTRAP_N = 10_000
_CHUNK = 2_000_000  # resampled scores held at a time (scipy's batch; bounds memory for large sets)


def _resampled_means(d: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """scipy.stats.bootstrap's ``n`` replicates of the mean of ``d`` (its examples resampled with
    replacement); one example has one possible resample (and draws nothing from ``rng``)."""
    if len(d) == 1:
        return np.full(n, float(d[0]))
    res = stats.bootstrap((d,), np.mean, n_resamples=n, batch=max(1, _CHUNK // len(d)), vectorized=True,
                          method="percentile", rng=rng)
    return res.bootstrap_distribution


def _bootstrap_summary(diffs: list[np.ndarray], n: int, seed: int) -> dict[str, Any]:
    """The bootstrap of the mean over strata of each stratum's mean difference: every stratum
    resampled on its own (scipy.stats.bootstrap, one numpy ``default_rng(seed)`` drawn stratum after
    stratum), the replicates averaged across strata, the 95% percentile interval of that average."""
    if n < 1:
        raise KDBenchError(f"bootstrap resamples must be ≥ 1, got {n}")
    if not diffs or any(len(d) == 0 for d in diffs):
        raise KDBenchError("paired bootstrap needs at least one example in every set")
    rng = np.random.default_rng(seed)
    boot = np.mean([_resampled_means(d, n, rng) for d in diffs], axis=0)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "diff": float(np.mean([d.mean() for d in diffs])),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(np.mean(boot <= 0)),
        "n_examples": int(sum(len(d) for d in diffs)),
        "n_resamples": int(n),
    }


def _per_example(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise KDBenchError(f"paired scores need equal 1-D or 2-D shapes, got {a.shape} and {b.shape}")
    d = a - b
    return d if d.ndim == 1 else d.mean(axis=1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = BOOTSTRAP_N, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of mean(a − b) over examples.

    ``a[i]`` and ``b[i]`` are the scores of example i under two systems (2-D: examples × runs, e.g.
    decoding seeds; each example's difference is first averaged over its runs, so the resampling
    unit is the example). Examples are resampled with replacement ``n`` times by
    ``scipy.stats.bootstrap`` (numpy ``default_rng(seed)``). Returns ``diff`` (observed mean
    difference), ``ci_low``/``ci_high``
    (95 % percentile interval), ``p_value`` (fraction of resamples whose mean difference is ≤ 0,
    i.e. one-sided against "a better than b"), ``n_examples`` and ``n_resamples``."""
    return _bootstrap_summary([_per_example(a, b)], n, seed)


def stratified_bootstrap(
    pairs: list[tuple[np.ndarray, np.ndarray]], n: int = BOOTSTRAP_N, seed: int = 0
) -> dict[str, Any]:
    """:func:`paired_bootstrap` of the average over sets: examples resampled within each set, the
    per-set mean differences averaged with equal weight (as the tables' Avg column)."""
    return _bootstrap_summary([_per_example(a, b) for a, b in pairs], n, seed)


PREDICTION_COLUMNS = ["pair", "method", "train_seed", "set", "decoding_seed", "idx", "rougeL", "protocol"]


def _predictions_path(result: Path) -> Path:
    return result.with_name(f"{result.stem}.predictions.jsonl")


def load_predictions(result_files: Iterable[Path], methods: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-example scores from the ``{set}.predictions.jsonl`` beside each result JSON (only of
    ``methods`` when given), one row per (pair, method, train_seed, set, decoding_seed, idx). Their
    per-seed means must equal the result file's scores (a stale predictions file raises)."""
    wanted = None if methods is None else set(methods)
    frames = []
    for result in map(Path, result_files):
        if wanted is not None and (len(result.parts) < 3 or result.parts[-3] not in wanted):
            continue
        summary = pd.DataFrame(_read_result(result))
        path = _predictions_path(result)
        if not path.is_file():
            raise KDBenchError(
                f"{path}: no per-example predictions beside {result.name}; significance needs the "
                "predictions file kdbench evaluate writes next to each result"
            )
        records = []
        for where, rec in json_lines(path):
            try:
                records.append((int(rec["seed"]), int(rec["idx"]), float(rec["rougeL"])))
            except (KeyError, TypeError, ValueError) as err:
                raise KDBenchError(
                    f"{where}: not a prediction record with seed, idx, rougeL ({err}); re-run kdbench evaluate"
                ) from err
        frame = pd.DataFrame(records, columns=["decoding_seed", "idx", "rougeL"])
        means = frame.groupby("decoding_seed")["rougeL"].mean()
        expected = summary.set_index("decoding_seed")["rougeL"]
        if set(means.index) != set(expected.index) or not np.allclose(
            means.reindex(expected.index).to_numpy(), expected.to_numpy(), rtol=0, atol=1e-6
        ):
            raise KDBenchError(f"{path}: its per-seed means differ from {result.name}; re-run kdbench evaluate")
        if frame.duplicated(["decoding_seed", "idx"]).any():
            raise KDBenchError(f"{path}: an (seed, idx) pair appears twice; re-run kdbench evaluate")
        for column in ("pair", "method", "train_seed", "set", "protocol"):
            frame[column] = summary[column].iloc[0]
        frames.append(frame[PREDICTION_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _paired_matrix(pred: pd.DataFrame, a: str, b: str, set_name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of ``a`` and ``b`` on ``set_name`` paired by (train seed, decoding seed, idx), as
    examples × runs matrices (an example's runs are the seed pairs both have); ``(.., .., n_runs)``."""
    key = ["train_seed", "decoding_seed", "idx"]
    rows = pred[pred["set"] == set_name]
    mine, base = rows[rows["method"] == a], rows[rows["method"] == b]
    if mine.empty or base.empty:
        return np.empty((0, 0)), np.empty((0, 0)), 0
    protocols = set(mine["protocol"]) | set(base["protocol"])
    if len(protocols) > 1:
        raise KDBenchError(f"{a} and {b} on {set_name} were decoded under different protocols: {sorted(protocols)}")
    both = mine[key + ["rougeL"]].merge(base[key + ["rougeL"]], on=key, suffixes=("_a", "_b"))
    if both.empty:
        return np.empty((0, 0)), np.empty((0, 0)), 0
    runs = both.groupby(["train_seed", "decoding_seed"])["idx"].apply(frozenset)
    shared = frozenset.intersection(*runs)  # examples every shared run scored
    both = both[both["idx"].isin(shared)]
    wide_a = both.pivot(index="idx", columns=["train_seed", "decoding_seed"], values="rougeL_a")
    wide_b = both.pivot(index="idx", columns=["train_seed", "decoding_seed"], values="rougeL_b")
    return wide_a.to_numpy(), wide_b[wide_a.columns].to_numpy(), wide_a.shape[1]


def compare(pred: pd.DataFrame, a: str, b: str, sets: list[str], n: int = BOOTSTRAP_N, seed: int = 0,
            *, per_set: bool = True) -> list[dict[str, Any]]:
    """Paired bootstrap of ``a − b`` on each set and on their average (``Avg``: stratified over the
    sets where both were measured); a set without paired scores gives a row with n_examples 0.
    ``per_set=False`` returns the Avg row only."""
    out, measured = [], []
    for set_name in sets:
        mat_a, mat_b, n_runs = _paired_matrix(pred, a, b, set_name)
        row = {"method": a, "base": b, "set": set_name, "sets": set_name, "n_runs": n_runs}
        if n_runs:
            if per_set:
                row |= paired_bootstrap(mat_a, mat_b, n=n, seed=seed)
            measured.append((set_name, mat_a, mat_b))
        else:
            row |= {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_examples": 0}
        out.append(row)
    avg = {"method": a, "base": b, "set": AVG, "sets": " ".join(s for s, _, _ in measured),
           "n_runs": min((m.shape[1] for _, m, _ in measured), default=0)}
    if measured:
        avg |= stratified_bootstrap([(ma, mb) for _, ma, mb in measured], n=n, seed=seed)
    else:
        avg |= {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_examples": 0}
    return [*out, avg] if per_set else [avg]


SIGNIFICANCE_COLUMNS = ["method", "base", "set", "sets", "n_runs", "n_examples", "diff", "ci_low", "ci_high",
                        "p_value", "n_resamples"]


def default_comparisons(methods: Iterable[str]) -> list[tuple[str, str]]:
    """Every ``base+policy`` label with its ``base`` among ``methods``, e.g. (fkl+adakd, fkl)."""
    methods = list(methods)
    return [(m, m.split("+", 1)[0]) for m in methods if "+" in m and m.split("+", 1)[0] in methods]


def significance_stats(pred: pd.DataFrame, comparisons: list[tuple[str, str]], sets: list[str],
                       n: int = BOOTSTRAP_N, seed: int = 0) -> pd.DataFrame:
    """Long table ``SIGNIFICANCE_COLUMNS``: one row per comparison × (sets + Avg)."""
    rows = [row for a, b in comparisons for row in compare(pred, a, b, sets, n=n, seed=seed)]
    return pd.DataFrame(rows).reindex(columns=SIGNIFICANCE_COLUMNS)


def _ci_cell(row: Any) -> str:
    if not row.n_examples:
        return MISSING
    p = "p < 0.001" if row.p_value < 0.001 else f"p = {row.p_value:.3f}"
    return f"{row.diff:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}] {p}"


def significance_table(stats: pd.DataFrame, sets: list[str]) -> pd.DataFrame:
    """Display table: one row per comparison ``"a − b"``, cells ``"+1.23 [+0.45, +2.01] p = 0.003"``."""
    names = list(dict.fromkeys(f"{r.method} − {r.base}" for r in stats.itertuples()))
    cells = {(f"{r.method} − {r.base}", r.set): _ci_cell(r) for r in stats.itertuples()}
    return pd.DataFrame(
        [[cells.get((name, s), MISSING) for s in [*sets, AVG]] for name in names],
        index=pd.Index(names, name="comparison"),
        columns=[*sets, AVG],
    )


def bootstrap_header(n: int, seed: int) -> str:
    return (
        f"Paired bootstrap over examples: ROUGE-L F ×100 difference (a − b) per example, averaged over the "
        f"(training seed, decoding seed) runs both share; examples resampled with replacement {n:,} times "
        f"(numpy seed {seed}) within each set, Avg = the set means averaged with equal weight (resampled "
        f"within every set). Cells: mean difference [95% percentile CI] and one-sided p = fraction of "
        f"resamples with difference ≤ 0; no multiple-comparison correction; – = not measured."
    )


# --- the paper's claims ------------------------------------------------------------------------------

DEFAULT_CLAIM_BASES = ["fkl", "rkl", "abkd", "gkd", "distillm"]
DEFAULT_INDICATORS = ["rkl+adakd-ind-fkl", "rkl+adakd-ind-rkl", "rkl+adakd-ind-ce", "rkl+adakd-ind-js",
                      "rkl+adakd-ind-nmt-top5"]
CLAIM_COLUMNS = ["claim", "comparison", "sets", "diff", "ci_low", "ci_high", "p_value", "verdict"]
SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"


def _claim_row(pred: pd.DataFrame, claim: str, a: str, b: str, sets: list[str], n: int, seed: int) -> dict[str, Any]:
    """``a`` is claimed better than ``b`` on average over ``sets``: supported when the 95% CI of the
    Avg difference lies above 0; not measured when either run (or every paired set) is missing."""
    row = {"claim": claim, "comparison": f"{a} − {b}", "sets": "", "diff": np.nan, "ci_low": np.nan,
           "ci_high": np.nan, "p_value": np.nan, "verdict": NOT_MEASURED}
    methods = set(pred["method"])
    if a not in methods or b not in methods:
        return row
    avg = compare(pred, a, b, sets, n=n, seed=seed, per_set=False)[-1]
    if not avg["n_examples"]:
        return row
    row |= {k: avg[k] for k in ("sets", "diff", "ci_low", "ci_high", "p_value")}
    row["verdict"] = SUPPORTED if avg["ci_low"] > 0 else NOT_SUPPORTED
    return row


def _overall(claim: str, rows: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """All-of verdict: not supported if any measured comparison is not; supported only when all are
    measured and supported; otherwise not measured."""
    verdicts = [r["verdict"] for r in rows]
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if NOT_SUPPORTED in measured:
        verdict = NOT_SUPPORTED
    elif measured and len(measured) == len(verdicts):
        verdict = SUPPORTED
    else:
        verdict = NOT_MEASURED
    return {"claim": claim, "comparison": f"{len(measured)} of {len(rows)} {what} measured, "
            f"{measured.count(SUPPORTED)} supported", "sets": "", "diff": np.nan, "ci_low": np.nan,
            "ci_high": np.nan, "p_value": np.nan, "verdict": verdict}


def claims_stats(
    pred: pd.DataFrame,
    sets: list[str],
    *,
    bases: list[str] = DEFAULT_CLAIM_BASES,
    adakd: str = "adakd",
    full: str = "rkl+adakd",
    idts_only: str = "rkl+adakd-idts-only",
    latf_only: str = "rkl+adakd-latf-only",
    inverse: str = "rkl+adakd-t-inverse",
    indicators: list[str] = DEFAULT_INDICATORS,
    n: int = BOOTSTRAP_N,
    seed: int = 0,
) -> pd.DataFrame:
    """The AdaKD paper's claims, each measured by a paired bootstrap of the Avg over ``sets``
    (columns ``CLAIM_COLUMNS``): (a) ``{base}+{adakd}`` beats ``base`` for each base (plus an all-of
    row); (b) ``idts_only`` beats ``latf_only``; (c) ``full`` beats ``inverse`` (the inverse
    temperature direction hurts); (d) ``full`` (Hellinger) beats each of ``indicators`` (plus an
    all-of row). Runs that are missing give ``not measured``."""
    rows = []
    per_base = [
        _claim_row(pred, f"(a) AdaKD improves {base}", f"{base}+{adakd}", base, sets, n, seed) for base in bases
    ]
    rows += [*per_base, _overall("(a) AdaKD improves every base", per_base, "bases")]
    rows.append(_claim_row(pred, "(b) IDTS helps more than LATF alone", idts_only, latf_only, sets, n, seed))
    rows.append(_claim_row(pred, "(c) the inverse temperature direction hurts", full, inverse, sets, n, seed))
    per_ind = [_claim_row(pred, f"(d) Hellinger beats {ind}", full, ind, sets, n, seed) for ind in indicators]
    rows += [*per_ind, _overall("(d) Hellinger is the best indicator", per_ind, "indicators")]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def claims_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Display table: claim, comparison, sets, ``Δ [95% CI]``, p, verdict."""

    def diff(row: Any) -> str:
        return "" if pd.isna(row.diff) else f"{row.diff:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"

    def p(row: Any) -> str:
        return "" if pd.isna(row.p_value) else ("< 0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")

    return pd.DataFrame(
        {"comparison": stats["comparison"].to_numpy(), "sets": stats["sets"].to_numpy(),
         "Δ Avg [95% CI]": [diff(r) for r in stats.itertuples()], "p": [p(r) for r in stats.itertuples()],
         "verdict": stats["verdict"].to_numpy()},
        index=pd.Index(stats["claim"].to_numpy(), name="claim"),
    )


def claims_header(n: int, seed: int) -> str:
    return (
        "The AdaKD paper's claims, measured: a claim 'a beats b' is supported when the 95% CI of the "
        "Avg difference (a − b) lies above 0, not supported otherwise, not measured when a run is missing. "
        + bootstrap_header(n, seed)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench aggregate",
        description="Tabulate eval results: ROUGE-L mean ± std per method and set, optionally beside the "
        "published numbers, with paired-bootstrap significance and the paper's claims.",
    )
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="result JSONs of kdbench evaluate")
    parser.add_argument("--methods", nargs="+", help="table rows, in order (default: every method found, sorted)")
    parser.add_argument("--sets", nargs="+", help="table columns, in order (default: every set found, sorted)")
    parser.add_argument("--pair", help="keep only this pair (needed when the results hold several)")
    parser.add_argument("--out-md", type=Path, help="markdown table")
    parser.add_argument("--out-csv", type=Path,
                        help="long CSV: method, set, mean, std, n (+ published, published_std, delta, paper_method, "
                        "paper_adakd, paper_variant with --reference)")
    parser.add_argument("--out-tex", type=Path, help="the markdown table as a LaTeX (booktabs) table")
    ref = parser.add_argument_group("published numbers beside ours")
    ref.add_argument("--reference", type=Path, nargs="+",
                     help="published-number CSVs (evaluation/reference/*.csv); cells become 'ours (published, Δ)'")
    ref.add_argument("--labels", type=Path, default=DEFAULT_LABELS,
                     help=f"our run label → paper method mapping (default {DEFAULT_LABELS})")
    ref.add_argument("--reference-table", default="table1", help="the published table to compare with (default table1)")
    ref.add_argument("--family",
                     help="the published model family, e.g. Qwen2, OpenLLaMA2, gpt2 (needed with --reference)")
    sig = parser.add_argument_group("paired bootstrap (needs the predictions jsonl beside each result)")
    sig.add_argument("--significance-md", type=Path, help="markdown: every 'X+policy' row vs its base 'X' row, per set")
    sig.add_argument("--significance-csv", type=Path, help="long CSV of the same comparisons")
    sig.add_argument("--claims-md", type=Path, help="markdown: the paper's claims with measured verdicts")
    sig.add_argument("--claims-csv", type=Path, help="CSV of the same claims")
    sig.add_argument("--bootstrap-n", type=int, default=BOOTSTRAP_N, help=f"resamples (default {BOOTSTRAP_N})")
    sig.add_argument("--bootstrap-seed", type=int, default=0, help="numpy seed of the resampling (default 0)")
    sig.add_argument("--claim-sets", nargs="+", help="sets the claims average over (default: --sets)")
    sig.add_argument("--claim-bases", nargs="+", default=DEFAULT_CLAIM_BASES,
                     help=f"claim (a) bases X, each compared as X+adakd vs X (default {' '.join(DEFAULT_CLAIM_BASES)})")
    sig.add_argument("--claim-full", default="rkl+adakd", help="full AdaKD run of claims (c), (d) (default rkl+adakd)")
    sig.add_argument("--claim-idts-only", default="rkl+adakd-idts-only", help="claim (b) IDTS-only run")
    sig.add_argument("--claim-latf-only", default="rkl+adakd-latf-only", help="claim (b) LATF-only run")
    sig.add_argument("--claim-inverse", default="rkl+adakd-t-inverse", help="claim (c) inverse-temperature run")
    sig.add_argument("--claim-indicators", nargs="+", default=DEFAULT_INDICATORS,
                     help="claim (d) runs with another difficulty indicator than Hellinger")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``kdbench aggregate``: write the markdown table and the numeric CSV (and, when asked, the LaTeX
    table, the published numbers beside ours, the significance and claims tables); raises
    KDBenchError for user errors."""
    args = _parser().parse_args(argv)
    if args.bootstrap_n < 1:
        raise KDBenchError(f"--bootstrap-n must be ≥ 1, got {args.bootstrap_n}")
    df = collect(args.results)
    if args.pair is not None:
        if args.pair not in set(df["pair"]):
            raise KDBenchError(f"--pair {args.pair}: not among the results' pairs {sorted(df['pair'].unique())}")
        df = df[df["pair"] == args.pair]
    methods = args.methods or sorted(df["method"].unique())
    sets = args.sets or sorted(df["set"].unique())
    header = table_header(df, methods, sets)
    if args.reference:
        if not args.family:
            raise KDBenchError("--reference needs --family (the published model family, e.g. Qwen2 or gpt2)")
        pub = published(args.reference, args.reference_table, args.family)
        stats = beside_stats(df, methods, sets, match_published(pub, load_labels(args.labels), methods))
        table = beside_table(stats, methods, sets)
        header = f"{header} {beside_header(args.reference_table, args.family, args.reference)}"
    else:
        stats = cell_stats(df, methods, sets)
        table = main_table(df, methods, sets)
    if args.out_md:
        write_text(args.out_md, f"{header}\n\n{table.to_markdown()}\n")
    testhooks.point("aggregate.table_written")  # fault-injection tests: killed half-way (kdbench.testhooks)
    if args.out_csv:
        write_text(args.out_csv, stats.to_csv(index=False))
    if args.out_tex:
        write_text(args.out_tex, to_latex(table, header, label=f"tab:{args.out_tex.stem}"))

    if args.significance_md or args.significance_csv or args.claims_md or args.claims_csv:
        pairs = sorted(df["pair"].unique())
        if len(pairs) > 1:
            raise KDBenchError(f"results of several pairs {pairs} would be compared; select one with --pair")
        pair_results = [p for p in args.results if len(Path(p).parts) >= 4 and Path(p).parts[-4] == pairs[0]]
        boot = {"n": args.bootstrap_n, "seed": args.bootstrap_seed}
    if args.significance_md or args.significance_csv:
        comparisons = default_comparisons(methods)
        needed = {m for pair in comparisons for m in pair}
        sig = significance_stats(load_predictions(pair_results, needed), comparisons, sets, **boot)
        if args.significance_md:
            body = (
                significance_table(sig, sets).to_markdown(disable_numparse=True)
                if comparisons
                else "(no 'X+policy' row with its base 'X' row among --methods)"
            )
            write_text(args.significance_md, f"{pairs[0]}: {bootstrap_header(**boot)}\n\n{body}\n")
        if args.significance_csv:
            write_text(args.significance_csv, sig.to_csv(index=False))
    if args.claims_md or args.claims_csv:
        claim_runs = {args.claim_full, args.claim_idts_only, args.claim_latf_only, args.claim_inverse,
                      *args.claim_indicators, *args.claim_bases, *(f"{b}+adakd" for b in args.claim_bases)}
        claims = claims_stats(
            load_predictions(pair_results, claim_runs), args.claim_sets or sets, bases=args.claim_bases,
            full=args.claim_full, idts_only=args.claim_idts_only, latf_only=args.claim_latf_only,
            inverse=args.claim_inverse, indicators=args.claim_indicators, **boot,
        )
        if args.claims_md:
            body = claims_table(claims).to_markdown(disable_numparse=True)
            write_text(args.claims_md, f"{pairs[0]}: {claims_header(**boot)}\n\n{body}\n")
        if args.claims_csv:
            write_text(args.claims_csv, claims.to_csv(index=False))
    return 0


# --- lm-eval results ---------------------------------------------------------------------------------

LM_EVAL_COLUMNS = ["pair", "method", "train_seed", "task", "decoding_seed", "score", "metric", "decoding"]


def _read_lm_eval(path: Path) -> list[dict[str, Any]]:
    """The rows of one ``kdbench lm-eval`` result, ``.../lm_eval/{pair}/{method}/seed{n}.json``: per
    task and decoding seed, the task's primary metric."""
    seed_dir = re.fullmatch(r"seed(\d+)", path.stem)
    if path.suffix != ".json" or seed_dir is None or len(path.parts) < 3:
        raise KDBenchError(f"{path}: lm-eval result paths must look like "
                           ".../lm_eval/{pair}/{method}/seed{n}.json")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise KDBenchError(f"{path}: no such lm-eval result; run kdbench lm-eval first") from err
    except json.JSONDecodeError as err:
        raise KDBenchError(f"{path}: not valid JSON ({err}); re-run kdbench lm-eval for this file") from err
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


def lm_eval_stats(df: pd.DataFrame, methods: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``(stats, columns)``: ``method, task, metric, decoding, mean, std, n`` per method × task (tasks in
    the order of the results), plus Avg when every task reports the same metric; mean ± std pool
    every (training seed × decoding seed) score, as the main tables do."""
    tasks = list(dict.fromkeys(df["task"]))
    info = df.drop_duplicates("task").set_index("task")
    avg = info["metric"].nunique() == 1
    stats = _cells(df, methods, tasks, column="task", value="score", avg=avg).rename(columns={"set": "task"})
    stats.insert(2, "metric", stats["task"].map(info["metric"]).fillna(info["metric"].iloc[0]))
    stats.insert(3, "decoding", stats["task"].map(info["decoding"]).fillna(""))
    return stats, [*tasks, AVG] if avg else tasks


def lm_eval_header(df: pd.DataFrame, pair: str, protocol: str) -> str:
    """What the lm-eval table's numbers are: metric per task, seeds behind each cell, decoding."""
    info = df.groupby("task", sort=False).agg(metric=("metric", "first"), decoding=("decoding", "first"))
    cells = df.groupby(["method", "task"])
    metrics = "; ".join(f"{m}: {', '.join(g.index)}" for m, g in info.groupby("metric", sort=False))
    single = info[info["decoding"] != "sampled"]
    note = (f" {', '.join(f'{t} ({d})' for t, d in single['decoding'].items())} do not depend on the decoding seed "
            "and ran with the first only." if len(single) else "")
    return (f"{pair}: lm-eval, mean ± std over {_span(cells['decoding_seed'].nunique())} decoding seeds × "
            f"{_span(cells['train_seed'].nunique())} training seeds. Metrics: {metrics}.{note} kdbench tasks: "
            f"{protocol}. {MISSING} = missing.")


def lm_eval_main(argv: list[str] | None = None) -> int:
    """`kdbench lm-eval-table`: `kdbench lm-eval` results of one pair → a markdown table and a long
    CSV (mean ± std of each task's primary metric over the decoding and training seeds)."""
    parser = argparse.ArgumentParser(prog="kdbench lm-eval-table", description=lm_eval_main.__doc__)
    parser.add_argument("--results", type=Path, nargs="+", required=True,
                        help="results/lm_eval/<pair>/<method>/seed<n>.json")
    parser.add_argument("--pair", required=True, help="the pair of the table (results of others are an error)")
    parser.add_argument("--methods", nargs="+", help="table rows, in order (default: every method found, sorted)")
    parser.add_argument("--out-md", type=Path, required=True)
    parser.add_argument("--out-csv", type=Path, required=True)
    args = parser.parse_args(argv)
    df = collect_lm_eval(args.results)
    others = sorted(set(df["pair"]) - {args.pair})
    if others:
        raise KDBenchError(f"--pair {args.pair}: the results hold other pairs too ({', '.join(others)})")
    methods = args.methods or sorted(df["method"].unique())
    protocols = {json.dumps(json.loads(Path(p).read_text(encoding="utf-8")).get("protocol"), sort_keys=True)
                 for p in args.results}
    if len(protocols) > 1:
        raise KDBenchError(f"lm-eval results decoded under different protocols would be pooled: {sorted(protocols)}")
    protocol = json.loads(protocols.pop()) or {}
    label = (f"{'sampling' if protocol.get('do_sample') else 'greedy'}, "
             f"≤{protocol.get('max_new_tokens')} new tokens, prompts ≤{protocol.get('max_prompt_tokens')} tokens, "
             f"no-repeat-ngram {protocol.get('no_repeat_ngram_size')}, {protocol.get('prompt_format')} prompt")
    stats, columns = lm_eval_stats(df, methods)
    table = _display(stats.rename(columns={"task": "set"}), methods, columns)
    write_text(args.out_md, f"{lm_eval_header(df, args.pair, label)}\n\n{table.to_markdown()}\n")
    write_text(args.out_csv, stats.to_csv(index=False))
    return 0


def combine_main(argv: list[str] | None = None) -> int:
    """`kdbench combine-tables`: per-pair tables → one Markdown file (a section per pair) and one
    CSV with a `pair` column."""
    parser = argparse.ArgumentParser(prog="kdbench combine-tables", description=combine_main.__doc__)
    parser.add_argument("--md", type=Path, nargs="+", required=True, help="per-pair tables/<pair>/main.md")
    parser.add_argument("--csv", type=Path, nargs="+", required=True, help="per-pair tables/<pair>/main.csv")
    parser.add_argument("--out-md", type=Path, required=True)
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--title", help="a first line '# <title>'")
    args = parser.parse_args(argv)
    if len(args.md) != len(args.csv):
        raise KDBenchError("combine-tables: give one --csv per --md, in the same pair order")
    sections = [f"## {md.parent.name}\n\n{md.read_text().strip()}\n" for md in args.md]
    body = "\n".join(sections) if len(sections) > 1 else args.md[0].read_text()
    write_text(args.out_md, f"# {args.title}\n\n{body}" if args.title else body)
    frames = [pd.read_csv(csv).assign(pair=csv.parent.name) for csv in args.csv]
    write_text(args.out_csv, pd.concat(frames, ignore_index=True).to_csv(index=False))
    return 0
