"""Display tables: rows = methods, columns = sets + Avg, cells ``"25.31 ± 0.42"``; the line saying
what their numbers are; LaTeX; the significance and lm-eval tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from kdbench.aggregate.results import AVG, MISSING
from kdbench.aggregate.statistics import _cells
from kdbench.errors import KDBenchError

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
