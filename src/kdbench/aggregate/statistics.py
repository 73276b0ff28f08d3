"""The numbers behind the tables: mean ± std over seeds, the Avg over sets, the paired and
stratified bootstrap over examples.

A table cell pools every (training seed × decoding seed) score of its method and set; the Avg
column first averages the sets within each (training seed, decoding seed) and then takes mean ± std
of those averages. Std is the sample std (ddof=1), 0 for one score. Significance is a paired
bootstrap over examples (:func:`paired_bootstrap`), pairing by (training seed, decoding seed,
example idx); the Avg is stratified by set (:func:`stratified_bootstrap`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdbench.aggregate.results import AVG
from kdbench.errors import KDBenchError

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
