"""The paper's claims, measured: each claim of ``evaluation/reference/claims.yaml`` (:func:`load_claims`)
says run ``better`` beats run ``than`` on average over the sets, and is checked by a paired bootstrap
of the Avg difference (:func:`kdbench.aggregate.statistics.compare`); docs/METHODS.md §3."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.aggregate.results import read_document
from kdbench.aggregate.statistics import BOOTSTRAP_N, compare
from kdbench.aggregate.tables import bootstrap_header
from kdbench.errors import KDBenchError

DEFAULT_CLAIMS = Path("evaluation/reference/claims.yaml")
CLAIM_COLUMNS = ["claim", "comparison", "sets", "diff", "ci_low", "ci_high", "p_value", "verdict"]
SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"
_CLAIM_KEYS = {"claim", "better", "than", "for_each", "all_of"}


@dataclass(frozen=True)
class Claim:
    """One entry of claims.yaml: ``better`` beats ``than``, once or for each label of a list run."""

    claim: str
    better: str
    than: str
    for_each: tuple[str, str] | None = None  # (placeholder, list run)
    all_of: str | None = None

    def comparisons(self, runs: Mapping[str, str | list[str]]) -> list[tuple[str, str, str]]:
        """``(claim text, a, b)`` of each row, the placeholders filled from ``runs``."""
        scalars = {k: v for k, v in runs.items() if isinstance(v, str)}
        fills = [scalars]
        if self.for_each is not None:
            var, listed = self.for_each
            fills = [{**scalars, var: label} for label in runs[listed]]
        return [(self.claim.format(**v), self.better.format(**v), self.than.format(**v)) for v in fills]


@dataclass(frozen=True)
class ClaimSet:
    """A claims file: the paper, its named runs and its claims in table order."""

    path: Path
    paper: str
    runs: dict[str, str | list[str]]
    claims: tuple[Claim, ...]

    def with_runs(self, overrides: Mapping[str, str | list[str]]) -> dict[str, str | list[str]]:
        """The runs with ``overrides`` (run name → label or labels) in place; unknown names raise."""
        runs = dict(self.runs)
        for name, value in overrides.items():
            if name not in runs:
                raise KDBenchError(f"claim run {name!r}: {self.path} names no such run; it has {sorted(runs)}")
            labels = [value] if isinstance(value, str) else list(value)
            if isinstance(runs[name], str) and len(labels) != 1:
                raise KDBenchError(f"claim run {name!r} is one run label in {self.path}, got {labels}")
            runs[name] = labels[0] if isinstance(runs[name], str) else labels
        return runs

    def labels(self, runs: Mapping[str, str | list[str]]) -> set[str]:
        """Every run label the claims compare."""
        return {label for claim in self.claims for _, a, b in claim.comparisons(runs) for label in (a, b)}


def _fields(text: Any, where: str) -> set[str]:
    if not isinstance(text, str) or not text:
        raise KDBenchError(f"{where} must be a non-empty string, got {text!r}")
    try:
        return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as err:
        raise KDBenchError(f"{where} = {text!r}: {err} (placeholders are {{run name}})") from err


def _claim(entry: Any, runs: dict[str, str | list[str]], where: str) -> Claim:
    """One validated entry of ``claims:``."""
    if not isinstance(entry, dict) or not {"claim", "better", "than"} <= set(entry):
        raise KDBenchError(f"{where} must be a mapping with 'claim', 'better' and 'than'")
    if unknown := set(entry) - _CLAIM_KEYS:
        raise KDBenchError(f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(_CLAIM_KEYS))}")
    for_each = entry.get("for_each")
    if for_each is not None:
        if not isinstance(for_each, dict) or len(for_each) != 1:
            raise KDBenchError(f"{where}.for_each must be one {{placeholder: <list run>}}, got {for_each!r}")
        ((var, listed),) = for_each.items()
        if not isinstance(runs.get(listed), list):
            raise KDBenchError(f"{where}.for_each: {listed!r} is not a list run (lists: "
                               f"{sorted(k for k, v in runs.items() if isinstance(v, list))})")
        for_each = (str(var), listed)
    allowed = {k for k, v in runs.items() if isinstance(v, str)} | ({for_each[0]} if for_each else set())
    for key in ("claim", "better", "than"):
        if unknown := _fields(entry[key], f"{where}.{key}") - allowed:
            raise KDBenchError(f"{where}.{key}: unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed)}")
    if entry.get("all_of") is not None and (for_each is None or not isinstance(entry["all_of"], str)):
        raise KDBenchError(f"{where}.all_of must be a claim text, and needs for_each")
    return Claim(entry["claim"], entry["better"], entry["than"], for_each, entry.get("all_of"))


def _runs(data: Any, path: Path) -> dict[str, str | list[str]]:
    runs = data.get("runs")
    if not isinstance(runs, dict):
        raise KDBenchError(f"{path}: expected a 'runs:' mapping of run name → run label or list of labels")
    for name, value in runs.items():
        if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise KDBenchError(f"{path}: runs.{name} = {value!r} must be a run label or a list of run labels")
    return {str(k): v for k, v in runs.items()}


def load_claims(path: Path) -> ClaimSet:
    """Read claims.yaml (``paper``, ``runs``, ``claims``: see the file's header); bad entries raise,
    naming the file and the entry."""
    path = Path(path)
    data = read_document(path, "no such claims file; see evaluation/reference/claims.yaml")
    if not isinstance(data, dict) or set(data) != {"paper", "runs", "claims"}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise KDBenchError(f"{path}: expected the top-level keys claims, paper, runs; found {found}")
    if not isinstance(data["paper"], str) or not isinstance(data["claims"], list):
        raise KDBenchError(f"{path}: 'paper' must be a name and 'claims' a list of claims")
    runs = _runs(data, path)
    claims = []
    for i, entry in enumerate(data["claims"]):
        text = entry.get("claim") if isinstance(entry, dict) else None
        claims.append(_claim(entry, runs, f"{path}: claims[{i}]" + (f" ({text})" if text else "")))
    return ClaimSet(path, data["paper"], runs, tuple(claims))


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


def claims_stats(pred: pd.DataFrame, sets: list[str], claims: ClaimSet, *, n: int = BOOTSTRAP_N, seed: int = 0,
                 **runs: str | list[str]) -> pd.DataFrame:
    """The claims of ``claims``, each measured by a paired bootstrap of the Avg over ``sets`` (columns
    ``CLAIM_COLUMNS``), in the file's order: a row per comparison and, for an ``all_of`` claim, an
    all-of row after its repeated rows. ``runs`` replace the file's runs (e.g. ``bases=["rkl"]``);
    runs that are missing from ``pred`` give ``not measured``."""
    resolved = claims.with_runs(runs)
    rows = []
    for claim in claims.claims:
        mine = [_claim_row(pred, text, a, b, sets, n, seed) for text, a, b in claim.comparisons(resolved)]
        rows += mine
        if claim.all_of is not None:
            rows.append(_overall(claim.all_of, mine, claim.for_each[1]))
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


def claims_header(paper: str, n: int, seed: int) -> str:
    return (
        f"The {paper} paper's claims, measured: a claim 'a beats b' is supported when the 95% CI of the "
        "Avg difference (a − b) lies above 0, not supported otherwise, not measured when a run is missing. "
        + bootstrap_header(n, seed)
    )
