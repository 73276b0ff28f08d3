"""Published numbers beside ours: ``evaluation/reference/*.csv`` matched to our run labels through
``evaluation/reference/labels.yaml`` (:func:`load_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.aggregate.results import AVG, MISSING, read_document
from kdbench.aggregate.tables import cell_stats
from kdbench.errors import KDBenchError

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
    data = read_document(path, "no such labels file; see evaluation/reference/labels.yaml")
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
