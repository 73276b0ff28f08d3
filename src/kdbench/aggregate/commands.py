"""The console commands: ``kdbench aggregate`` (:func:`main`), ``kdbench lm-eval-table``
(:func:`lm_eval_main`) and ``kdbench combine-tables`` (:func:`combine_main`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from kdbench import testhooks
from kdbench.aggregate.claims import DEFAULT_CLAIMS, claims_header, claims_stats, claims_table, load_claims
from kdbench.aggregate.reference import (
    DEFAULT_LABELS,
    beside_header,
    beside_stats,
    beside_table,
    load_labels,
    match_published,
    published,
)
from kdbench.aggregate.results import collect, collect_lm_eval, load_predictions, verify_results
from kdbench.aggregate.statistics import BOOTSTRAP_N, default_comparisons, significance_stats
from kdbench.aggregate.tables import (
    _display,
    bootstrap_header,
    cell_stats,
    lm_eval_header,
    lm_eval_stats,
    main_table,
    significance_table,
    table_header,
    to_latex,
)
from kdbench.atomic import write_text
from kdbench.errors import KDBenchError


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
    sig.add_argument("--claims", type=Path, default=DEFAULT_CLAIMS,
                     help=f"the claims and the runs they compare (default {DEFAULT_CLAIMS})")
    sig.add_argument("--claim-run", action="append", default=[], metavar="NAME=LABEL[,LABEL...]",
                     help="replace a run of the claims file for this table, e.g. bases=fkl,rkl (repeatable)")
    return parser


def _selection(args: argparse.Namespace) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The scores of ``--pair`` (all when not given), the table's methods and sets."""
    df = collect(args.results)
    if args.pair is not None:
        if args.pair not in set(df["pair"]):
            raise KDBenchError(f"--pair {args.pair}: not among the results' pairs {sorted(df['pair'].unique())}")
        df = df[df["pair"] == args.pair]
    return df, args.methods or sorted(df["method"].unique()), args.sets or sorted(df["set"].unique())


def _write_tables(args: argparse.Namespace, df: pd.DataFrame, methods: list[str], sets: list[str]) -> None:
    """The markdown table, the numeric CSV and the LaTeX table, with the published numbers when asked."""
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


def _write_significance(args: argparse.Namespace, pair: str, results: list[Path], methods: list[str],
                        sets: list[str], boot: dict[str, int]) -> None:
    """Every 'X+policy' row against its base 'X', per set and on Avg."""
    comparisons = default_comparisons(methods)
    needed = {m for pair in comparisons for m in pair}
    sig = significance_stats(load_predictions(results, needed), comparisons, sets, **boot)
    if args.significance_md:
        body = (
            significance_table(sig, sets).to_markdown(disable_numparse=True)
            if comparisons
            else "(no 'X+policy' row with its base 'X' row among --methods)"
        )
        write_text(args.significance_md, f"{pair}: {bootstrap_header(**boot)}\n\n{body}\n")
    if args.significance_csv:
        write_text(args.significance_csv, sig.to_csv(index=False))


def _claim_runs(specs: list[str]) -> dict[str, list[str]]:
    """``--claim-run NAME=LABEL[,LABEL...]`` → {name: labels}."""
    runs = {}
    for spec in specs:
        name, sep, labels = spec.partition("=")
        if not sep or not name or not labels:
            raise KDBenchError(f"--claim-run {spec!r}: expected NAME=LABEL or NAME=LABEL,LABEL,...")
        runs[name] = labels.split(",")
    return runs


def _write_claims(args: argparse.Namespace, pair: str, results: list[Path], sets: list[str],
                  boot: dict[str, int]) -> None:
    """The claims of ``--claims``, measured."""
    claim_set = load_claims(args.claims)
    runs = _claim_runs(args.claim_run)
    labels = claim_set.labels(claim_set.with_runs(runs))
    claims = claims_stats(load_predictions(results, labels), args.claim_sets or sets, claim_set, **runs, **boot)
    if args.claims_md:
        body = claims_table(claims).to_markdown(disable_numparse=True)
        write_text(args.claims_md, f"{pair}: {claims_header(claim_set.paper, **boot)}\n\n{body}\n")
    if args.claims_csv:
        write_text(args.claims_csv, claims.to_csv(index=False))


def main(argv: list[str] | None = None) -> int:
    """``kdbench aggregate``: write the markdown table and the numeric CSV (and, when asked, the LaTeX
    table, the published numbers beside ours, the significance and claims tables); raises
    KDBenchError for user errors."""
    args = _parser().parse_args(argv)
    if args.bootstrap_n < 1:
        raise KDBenchError(f"--bootstrap-n must be ≥ 1, got {args.bootstrap_n}")
    df, methods, sets = _selection(args)
    verify_results(args.results)  # each score is its predictions' mean: an edited result never reaches a table
    _write_tables(args, df, methods, sets)
    significance = args.significance_md or args.significance_csv
    claims = args.claims_md or args.claims_csv
    if significance or claims:
        pairs = sorted(df["pair"].unique())
        if len(pairs) > 1:
            raise KDBenchError(f"results of several pairs {pairs} would be compared; select one with --pair")
        pair_results = [p for p in args.results if len(Path(p).parts) >= 4 and Path(p).parts[-4] == pairs[0]]
        boot = {"n": args.bootstrap_n, "seed": args.bootstrap_seed}
    if significance:
        _write_significance(args, pairs[0], pair_results, methods, sets, boot)
    if claims:
        _write_claims(args, pairs[0], pair_results, sets, boot)
    return 0


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
