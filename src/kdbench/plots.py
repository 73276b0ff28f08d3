"""Figures of a grid: LATF kept ratio, training curves, IDTS temperature range, ours vs published.

Inputs are files other steps write: each run's ``metrics.jsonl`` (``kdbench train``; records with
``step, loss, ce, kd_loss, lr, tokens, selected, tokens_per_s`` and, for token-policy runs,
``latf_ratio, tau_mean, tau_min, tau_max``), found at ``.../runs/{pair}/{method}/seed{n}/metrics.jsonl``,
and the long CSV of ``kdbench aggregate --reference ...`` (``method, set, mean, std, n, published, ...``).
Every PNG is rendered with matplotlib's Agg backend and written atomically (temp file in the same
folder, then ``os.replace``); a figure with nothing to show still gets written, saying so, so a
workflow's outputs always exist.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.errors import KDBenchError
from kdbench.jsonl import json_lines

DPI = 120


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); a clear error when it is missing."""
    try:
        import matplotlib
    except ImportError as err:
        raise KDBenchError(
            "kdbench plots needs matplotlib, which is not installed; install it (pip install matplotlib) "
            "into the environment that runs kdbench"
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _distinct_colors(ax: Any, n: int) -> None:
    """One colour per run: matplotlib's 10-colour cycle repeats from the 11th line, so more runs take tab20."""
    if n > 10:
        ax.set_prop_cycle(color=[_pyplot().get_cmap("tab20")(i % 20) for i in range(n)])


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (temp name in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(fig)
    return path


def run_label(path: Path, several_pairs: bool = False) -> str:
    """``fkl+adakd seed1`` (with ``pair:`` in front when several pairs are plotted) from
    ``.../{pair}/{method}/seed{n}/metrics.jsonl``; the path itself when it does not look like that."""
    parts = Path(path).parts
    if len(parts) >= 4 and re.fullmatch(r"seed\d+", parts[-2]):
        label = f"{parts[-3]} {parts[-2]}"
        return f"{parts[-4]}: {label}" if several_pairs else label
    return str(path)


def read_metrics(paths: Iterable[Path]) -> pd.DataFrame:
    """All records of the given metrics.jsonl files, one row per (run, step), with a ``run`` label
    column (see :func:`run_label`); missing keys are NaN; a step logged twice (a resumed run) keeps
    its last record. A bad line raises, naming the file and line."""
    paths = [Path(p) for p in paths]
    pairs = {p.parts[-4] for p in paths if len(p.parts) >= 4}
    frames = []
    for path in paths:
        if not path.is_file():
            raise KDBenchError(f"{path}: no such metrics file; train the run first (kdbench train)")
        records = []
        for where, record in json_lines(path):
            if not isinstance(record, dict) or "step" not in record:
                raise KDBenchError(f"{where}: a metrics record needs a 'step'")
            records.append(record)
        frame = pd.DataFrame.from_records(records)
        frame.insert(0, "run", run_label(path, several_pairs=len(pairs) > 1))
        frames.append(frame)
    if not frames:
        raise KDBenchError("no metrics files given; pass --metrics results/runs/.../metrics.jsonl")
    df = pd.concat(frames, ignore_index=True).drop_duplicates(["run", "step"], keep="last")
    for column in df.columns.drop("run"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    return df


def _runs_with(df: pd.DataFrame, *columns: str) -> list[tuple[str, pd.DataFrame]]:
    """(run, its records sorted by step) for each run that logged every one of ``columns``."""
    out = []
    for run, group in df.groupby("run", sort=False):
        present = all(c in group.columns and group[c].notna().any() for c in columns)
        if present:
            out.append((run, group.dropna(subset=list(columns)).sort_values("step")))
    return out


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def plot_latf_ratio(df: pd.DataFrame, path: Path) -> Path:
    """LATF kept-token ratio r over training steps, one line per run that logs ``latf_ratio``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    runs = _runs_with(df, "latf_ratio")
    if not runs:
        _empty(ax, "no run logged latf_ratio (only token-policy runs such as X+adakd do)")
    _distinct_colors(ax, len(runs))
    for run, group in runs:
        ax.plot(group["step"], group["latf_ratio"], label=run)
    if runs:
        ax.set(xlabel="step", ylabel="kept-token ratio r", title="LATF ratio over training", ylim=(0, 1.05))
        ax.axhline(0.75, color="grey", linestyle=":", linewidth=1, label="0.75 (expected plateau)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_training_curves(df: pd.DataFrame, path: Path) -> Path:
    """Training loss (left) and cross-entropy against the labels (right) over steps, per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, column, title in ((axes[0], "loss", "training loss"), (axes[1], "ce", "cross-entropy vs labels")):
        runs = _runs_with(df, column)
        if not runs:
            _empty(ax, f"no run logged {column}")
            continue
        _distinct_colors(ax, len(runs))
        for run, group in runs:
            ax.plot(group["step"], group[column], label=run)
        ax.set(xlabel="step", ylabel=column, title=title)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_temperature(df: pd.DataFrame, path: Path) -> Path:
    """Per-token temperature over training: mean line and a min–max band per run (IDTS spreads τ
    around τ_base; a run with a fixed temperature is a flat line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    runs = _runs_with(df, "tau_mean", "tau_min", "tau_max")
    if not runs:
        _empty(ax, "no run logged tau_mean/tau_min/tau_max")
    _distinct_colors(ax, len(runs))
    for run, group in runs:
        (line,) = ax.plot(group["step"], group["tau_mean"], label=f"{run} (mean)")
        ax.fill_between(group["step"], group["tau_min"], group["tau_max"], color=line.get_color(), alpha=0.2,
                        label=f"{run} (min–max)")
    if runs:
        ax.set(xlabel="step", ylabel="temperature τ", title="Token temperature over training")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def read_beside(path: Path) -> pd.DataFrame:
    """The long CSV of ``kdbench aggregate`` (``method, set, mean, std, n`` and, with --reference,
    ``published``); a CSV without ``published`` plots ours only."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError as err:
        raise KDBenchError(f"{path}: no such table CSV; run kdbench aggregate first") from err
    missing = {"method", "set", "mean", "std", "n"} - set(df.columns)
    if missing:
        raise KDBenchError(f"{path}: not a kdbench aggregate CSV (lacks {sorted(missing)})")
    if "published" not in df.columns:
        df["published"] = np.nan
    return df


def plot_published(df: pd.DataFrame, path: Path) -> Path:
    """One panel per set (in the CSV's order, Avg included): per method, our mean ± std bar beside
    the published bar (hatched; absent when nothing is published)."""
    plt = _pyplot()
    sets = list(dict.fromkeys(df["set"]))
    methods = list(dict.fromkeys(df["method"]))
    if not sets:
        fig, ax = plt.subplots(figsize=(6, 3))
        _empty(ax, "no rows in the table CSV")
        return save_png(fig, path)
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 0.5 * len(methods) + 3 * rows), squeeze=False)
    x = np.arange(len(methods))
    width = 0.4
    for ax, set_name in zip(axes.flat, sets):
        cells = df[df["set"] == set_name].set_index("method").reindex(methods)
        ours = cells["mean"].where(cells["n"] > 0).to_numpy(dtype=float)
        err = cells["std"].where(cells["n"] > 0).fillna(0).to_numpy(dtype=float)
        pub = cells["published"].to_numpy(dtype=float)
        ax.bar(x - width / 2, np.nan_to_num(ours), width, yerr=err, capsize=2, label="ours (mean ± std)")
        ax.bar(x + width / 2, np.nan_to_num(pub), width, hatch="//", fill=False, label="published")
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize="small")
        ax.set(title=set_name, ylabel="ROUGE-L")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(sets):]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Ours vs published (missing bars: not run / not published)")
    fig.tight_layout()
    return save_png(fig, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench plots",
        description="Figures from training metrics and the aggregate table: LATF ratio, training curves, "
        "temperature range, ours vs published. Each output is written only when its option is given.",
    )
    parser.add_argument("--metrics", type=Path, nargs="+", help="metrics.jsonl files of the runs to plot")
    parser.add_argument("--latf-png", type=Path, help="LATF kept ratio over steps (runs logging latf_ratio)")
    parser.add_argument("--curves-png", type=Path, help="training loss and CE over steps, per run")
    parser.add_argument("--tau-png", type=Path, help="temperature mean and min–max band over steps")
    parser.add_argument("--table-csv", type=Path, nargs="+",
                        help="long CSVs of kdbench aggregate (with --reference for published); a (method, set) "
                        "cell in several is taken from the first")
    parser.add_argument("--published-png", type=Path, help="ours vs published bars, one panel per set")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``kdbench plots``: write the requested PNGs; raises KDBenchError for user errors."""
    args = _parser().parse_args(argv)
    wanted = [args.latf_png, args.curves_png, args.tau_png]
    if not any(wanted) and not args.published_png:
        raise KDBenchError("nothing to plot: give at least one of --latf-png, --curves-png, --tau-png, --published-png")
    if any(wanted):
        if not args.metrics:
            raise KDBenchError("--latf-png, --curves-png and --tau-png need --metrics results/runs/.../metrics.jsonl")
        df = read_metrics(args.metrics)
        if args.latf_png:
            plot_latf_ratio(df, args.latf_png)
        if args.curves_png:
            plot_training_curves(df, args.curves_png)
        if args.tau_png:
            plot_temperature(df, args.tau_png)
    if args.published_png:
        if not args.table_csv:
            raise KDBenchError("--published-png needs --table-csv (the CSV of kdbench aggregate --reference ...)")
        tables = pd.concat([read_beside(path) for path in args.table_csv], ignore_index=True)
        plot_published(tables.drop_duplicates(["method", "set"]), args.published_png)
    return 0
