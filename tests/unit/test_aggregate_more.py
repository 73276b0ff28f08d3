"""kdbench.aggregate beyond mean ± std: published numbers beside ours, the paired bootstrap against a
normal approximation, significance and claim tables from predictions files, LaTeX/CSV outputs."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kdbench.aggregate import (
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    beside_stats,
    beside_table,
    claims_stats,
    collect,
    compare,
    load_claims,
    load_labels,
    load_predictions,
    main,
    match_published,
    paired_bootstrap,
    published,
    stratified_bootstrap,
)
from kdbench.errors import KDBenchError

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "evaluation" / "reference"
CLAIMS = load_claims(REFERENCE / "claims.yaml")
PROTOCOL = {
    "max_new_tokens": 48, "batch_size": 8, "max_prompt_tokens": 256, "do_sample": True, "top_k": 0,
    "top_p": 1.0, "temperature": 1.0, "no_repeat_ngram_size": 0,
    "metric": "rougeL-F x100, porter stemmer, max over refs", "protocol_version": 1,
}
PAIR = "qwen2-s_from_qwen2-t"
SEEDS = [10, 20]
N_EX = 40


def _normal_ci(d: np.ndarray) -> tuple[float, float, float]:
    """Independent reference: mean, standard error and one-sided normal p of a mean difference."""
    from math import erf, sqrt

    mean, se = d.mean(), d.std(ddof=0) / np.sqrt(len(d))
    p = 0.5 * (1 + erf((0 - mean) / se / sqrt(2)))
    return mean, se, p


# --- the bootstrap ----------------------------------------------------------------------------------

def test_bootstrap_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    b = rng.uniform(10, 60, size=400)
    a = b + rng.normal(0.8, 5.0, size=400)  # a small effect: p is neither 0 nor 1
    res = paired_bootstrap(a, b, n=10_000, seed=0)
    mean, se, p = _normal_ci(a - b)
    assert res["diff"] == pytest.approx(mean, abs=1e-12)
    assert res["ci_low"] == pytest.approx(mean - 1.96 * se, abs=0.1 * se + 0.05)
    assert res["ci_high"] == pytest.approx(mean + 1.96 * se, abs=0.1 * se + 0.05)
    assert res["p_value"] == pytest.approx(p, abs=0.02)
    assert res["n_examples"] == 400 and res["n_resamples"] == 10_000
    assert paired_bootstrap(a, b, n=10_000, seed=0) == res  # seeded
    assert paired_bootstrap(a, b, n=10_000, seed=1)["ci_low"] != res["ci_low"]


def test_bootstrap_clear_effect_and_identical_arrays() -> None:
    rng = np.random.default_rng(2)
    b = rng.uniform(0, 50, size=60)
    clear = paired_bootstrap(b + 5 + rng.normal(0, 1, size=60), b)
    assert clear["ci_low"] > 0 and clear["p_value"] < 0.01
    worse = paired_bootstrap(b - 5, b)
    assert worse["ci_high"] < 0 and worse["p_value"] == 1.0
    same = paired_bootstrap(b, b.copy())
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0 and same["p_value"] == 1.0


def test_bootstrap_2d_averages_runs_per_example_and_strata_weigh_sets_equally() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 50, size=(30, 5)), rng.uniform(0, 50, size=(30, 5))
    assert paired_bootstrap(a, b, n=500) == pytest.approx(paired_bootstrap(a.mean(1), b.mean(1), n=500))
    small = (rng.normal(3, 4, size=20), np.zeros(20))
    large = (rng.normal(0, 4, size=500), np.zeros(500))
    res = stratified_bootstrap([small, large], n=10_000)
    assert res["diff"] == pytest.approx((small[0].mean() + large[0].mean()) / 2)
    se = np.sqrt(small[0].var() / 20 + large[0].var() / 500) / 2
    assert res["ci_high"] - res["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    with pytest.raises(KDBenchError, match="shapes"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def _numpy_bootstrap(diffs: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """The hand-written resampling kdbench used before scipy: each stratum in turn draws its n × size
    indices from one default_rng(seed); the replicates are the per-stratum means averaged."""
    rng = np.random.default_rng(seed)
    return np.mean([d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1) for d in diffs], axis=0)


def test_the_scipy_bootstrap_gives_exactly_what_the_numpy_one_gave(monkeypatch) -> None:
    """scipy.stats.bootstrap draws the same resamples from the same generator, also when it batches a
    large set (here 1,500 examples: 2 batches under a 1.5M-score budget) and with a one-example set
    (which draws nothing), so every interval and p-value is unchanged."""
    from scipy import stats

    from kdbench.aggregate import statistics

    calls, original = [], stats.bootstrap
    monkeypatch.setattr(stats, "bootstrap", lambda *a, **k: calls.append(k["batch"]) or original(*a, **k))
    monkeypatch.setattr(statistics, "_CHUNK", 1_500_000)
    rng = np.random.default_rng(4)
    strata = [(rng.normal(0.3, 5, size=k), rng.normal(0, 5, size=k)) for k in (60, 1, 1500, 7)]
    strata[1] = (np.array([40.0]), np.array([40.0]))  # the one-example set: a difference of 0
    n, seed = 2000, 11
    boot = _numpy_bootstrap([a - b for a, b in strata], n, seed)
    res = stratified_bootstrap(strata, n=n, seed=seed)
    assert calls == [25_000, 1000, 214_285]  # three sets resampled by scipy; the 1,500 one in 2 batches
    assert (res["ci_low"], res["ci_high"]) == tuple(np.percentile(boot, [2.5, 97.5]))
    assert res["p_value"] == np.mean(boot <= 0) and 0 < res["p_value"] < 1
    one, alone = paired_bootstrap(*strata[2], n=n, seed=seed), _numpy_bootstrap([strata[2][0] - strata[2][1]], n, seed)
    assert (one["ci_low"], one["ci_high"]) == tuple(np.percentile(alone, [2.5, 97.5]))


# --- synthetic results with predictions -------------------------------------------------------------

def _scores(method: str, set_name: str, train_seed: int, effect: float) -> dict[int, np.ndarray]:
    """Per decoding seed, per-example scores: a shared per-example difficulty plus ``effect`` plus noise."""
    base = np.random.default_rng(zlib.crc32(set_name.encode())).uniform(10, 60, size=N_EX)
    rng = np.random.default_rng(zlib.crc32(f"{method}/{set_name}/{train_seed}".encode()))
    return {s: np.clip(base + effect + rng.normal(0, 2, size=N_EX), 0, 100) for s in SEEDS}


def _write(root: Path, method: str, set_name: str, effect: float = 0.0, train_seed: int = 1) -> Path:
    folder = root / "evals" / PAIR / method / f"seed{train_seed}"
    folder.mkdir(parents=True, exist_ok=True)
    scores = _scores(method, set_name, train_seed, effect)
    per_seed = {str(s): {"rougeL": float(v.mean()), "exact_match": 0.0} for s, v in scores.items()}
    path = folder / f"{set_name}.json"
    path.write_text(json.dumps({"set": set_name, "n_examples": N_EX, "protocol": PROTOCOL, "per_seed": per_seed}))
    lines = [json.dumps({"seed": s, "idx": i, "prompt": "p", "prediction": "x", "references": ["x"],
                         "rougeL": float(v[i]), "exact_match": 0.0}) for s, v in scores.items() for i in range(N_EX)]
    (folder / f"{set_name}.predictions.jsonl").write_text("\n".join(lines) + "\n")
    return path


SETS = ["dolly", "sni"]
EFFECTS = {"fkl": 0.0, "fkl+adakd": 0.5, "rkl": 0.0, "rkl+adakd": 6.0, "sft": -3.0}


@pytest.fixture
def results(tmp_path: Path) -> list[Path]:
    return [_write(tmp_path, m, s, e) for m, e in EFFECTS.items() for s in SETS]


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, Path]:
    rows = [
        ("table1", "Qwen2", "FKD", False, "", "dolly", 25.0, 0.5),
        ("table1", "Qwen2", "FKD", False, "", "sni", 35.0, 0.4),
        ("table1", "Qwen2", "FKD", True, "", "dolly", 26.0, 0.3),
        ("table1", "Qwen2", "RKD", True, "", "dolly", 30.0, 0.3),
        ("table1", "Qwen2", "RKD", True, "", "sni", 44.0, 0.3),
        ("table1", "OpenLLaMA2", "FKD", False, "", "dolly", 99.0, 0.1),
        ("table2", "Qwen2", "RKD", True, "+ IDTS", "dolly", 31.0, ""),
        ("table2", "Qwen2", "RKD", True, "AdaKD (full)", "dolly", 32.0, ""),
    ]
    csv = tmp_path / "ref.csv"
    pd.DataFrame(rows, columns=["table", "family", "method", "adakd", "variant", "dataset", "rouge_l", "std"]).assign(
        teacher="T", student="S"
    ).to_csv(csv, index=False)
    labels = tmp_path / "labels.yaml"
    labels.write_text(yaml.safe_dump({"labels": {
        "fkl": {"method": "FKD", "adakd": False},
        "fkl+adakd": {"method": "FKD", "adakd": True},
        "rkl+adakd": {"method": "RKD", "adakd": True, "variant": {"table1": "", "table2": "AdaKD (full)"}},
        "rkl+adakd-idts-only": {"method": "RKD", "adakd": True, "variant": {"table2": "+ IDTS"}},
        "rkl-loose": {"method": "RKD", "adakd": True},
    }}))
    return csv, labels


def _mean(method: str, set_name: str) -> float:
    return float(np.mean([v.mean() for v in _scores(method, set_name, 1, EFFECTS[method]).values()]))


# --- published numbers beside ours --------------------------------------------------------------------

def test_published_beside_ours_equals_a_hand_computation(results: list[Path], reference: tuple[Path, Path]) -> None:
    csv, labels_path = reference
    df, labels = collect(results), load_labels(labels_path)
    methods = ["fkl", "fkl+adakd", "rkl+adakd", "sft"]
    pub = published([csv], "table1", "qwen2")
    assert set(pub["family"]) == {"Qwen2"} and len(pub) == 5
    stats = beside_stats(df, methods, SETS, match_published(pub, labels, methods)).set_index(["method", "set"])
    assert stats.loc[("fkl", "dolly"), "published"] == 25.0
    assert stats.loc[("fkl", "dolly"), "delta"] == pytest.approx(_mean("fkl", "dolly") - 25.0)
    assert stats.loc[("fkl", "Avg"), "published"] == pytest.approx(30.0)
    assert stats.loc[("fkl", "Avg"), "delta"] == pytest.approx(stats.loc[("fkl", "Avg"), "mean"] - 30.0)
    assert stats.loc[("fkl+adakd", "dolly"), "published"] == 26.0
    assert np.isnan(stats.loc[("fkl+adakd", "sni"), "published"])  # not published
    assert np.isnan(stats.loc[("fkl+adakd", "Avg"), "published"])  # the published Avg needs every set
    assert stats.loc[("rkl+adakd", "sni"), "published"] == 44.0  # variant "" = the Table 1 row
    assert stats["published"].loc["sft"].isna().all()  # no label
    table = beside_table(stats.reset_index(), methods, SETS)
    ours = f"{_mean('fkl', 'dolly'):.2f} ± "
    assert table.loc["fkl", "dolly"].startswith(ours)
    assert table.loc["fkl", "dolly"].endswith(f"(25.00, {_mean('fkl', 'dolly') - 25.0:+.2f})")
    assert "(" not in table.loc["sft", "dolly"] and "(" not in table.loc["fkl+adakd", "sni"]

    table2 = match_published(published([csv], "table2", "Qwen2"), labels, ["rkl+adakd", "rkl+adakd-idts-only", "fkl"])
    assert dict(zip(table2["method"], table2["published"])) == {"rkl+adakd": 32.0, "rkl+adakd-idts-only": 31.0}
    with pytest.raises(KDBenchError, match="several published rows"):
        match_published(published([csv], "table2", "Qwen2"), labels, ["rkl-loose"])
    with pytest.raises(KDBenchError, match="table9"):
        published([csv], "table9", "Qwen2")
    with pytest.raises(KDBenchError, match="OpenLLaMA2"):
        published([csv], "table1", "llama")


def test_shipped_reference_files_and_labels() -> None:
    csvs = sorted(REFERENCE.glob("*.csv"))
    labels = load_labels(REFERENCE / "labels.yaml")
    gpt2 = published(csvs, "minillm_table1", "gpt2")  # this CSV has no family column
    assert set(gpt2["method"]) == {"sft", "minillm"} and not gpt2["adakd"].any()
    qwen = published(csvs, "table1", "Qwen2")
    ours = ["fkl", "fkl+adakd", "rkl", "rkl+adakd", "abkd", "abkd+adakd", "gkd", "gkd+adakd", "sft", "teacher"]
    matched = match_published(qwen, labels, ours)
    assert set(matched["method"]) == set(ours) and len(matched) == 5 * len(ours)
    row = matched[(matched["method"] == "rkl+adakd") & (matched["set"] == "sni")].iloc[0]
    assert row["published"] == 43.82 and row["paper_method"] == "RKD" and row["paper_adakd"]
    # every ablation row of Tables 2-5 is reached by exactly one label
    for table in ("table2", "table3", "table4", "table5"):
        pub = published(csvs, table, "Qwen2")
        found = match_published(pub, labels, list(labels))
        expected = pub.drop_duplicates(["method", "adakd", "variant"])
        assert len(found.drop_duplicates(["paper_method", "paper_adakd", "paper_variant"])) == len(expected), table
        assert len(found) == len(pub), table


def test_bad_labels_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "labels.yaml"
    bad.write_text("labels:\n  fkl: {method: FKD}\n")
    with pytest.raises(KDBenchError, match="'method' and 'adakd'"):
        load_labels(bad)
    bad.write_text("labels:\n  fkl: {method: FKD, adakd: yes-ish, colour: red}\n")
    with pytest.raises(KDBenchError, match="unknown keys"):
        load_labels(bad)
    with pytest.raises(KDBenchError, match="no such labels file"):
        load_labels(tmp_path / "none.yaml")


# --- significance and claims ------------------------------------------------------------------------

def test_predictions_pair_by_seed_and_example(results: list[Path]) -> None:
    pred = load_predictions(results, {"rkl", "rkl+adakd"})
    assert set(pred["method"]) == {"rkl", "rkl+adakd"} and len(pred) == 2 * len(SETS) * len(SEEDS) * N_EX
    rows = compare(pred, "rkl+adakd", "rkl", [*SETS, "vicuna"], n=2000)
    by_set = {r["set"]: r for r in rows}
    a = np.stack([_scores("rkl+adakd", "dolly", 1, 6.0)[s] for s in SEEDS], axis=1)
    b = np.stack([_scores("rkl", "dolly", 1, 0.0)[s] for s in SEEDS], axis=1)
    assert by_set["dolly"]["diff"] == pytest.approx((a - b).mean())
    assert by_set["dolly"]["n_runs"] == 2 and by_set["dolly"]["n_examples"] == N_EX
    assert by_set["dolly"]["ci_low"] > 0 and by_set["dolly"]["p_value"] < 0.01
    assert by_set["vicuna"]["n_examples"] == 0 and np.isnan(by_set["vicuna"]["diff"])
    assert by_set["Avg"]["sets"] == "dolly sni" and by_set["Avg"]["n_examples"] == 2 * N_EX


def test_stale_or_missing_predictions_raise(results: list[Path]) -> None:
    path = results[0].with_name("dolly.predictions.jsonl")
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["rougeL"] += 10
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(KDBenchError, match=r"the ROUGE-L of decoding seed \d+ is .*, but its predictions .* average"):
        load_predictions([results[0]])
    path.unlink()
    with pytest.raises(KDBenchError, match="no per-example predictions"):
        load_predictions([results[0]])


def test_claims_verdicts_and_not_measured(results: list[Path], tmp_path: Path) -> None:
    pred = load_predictions(results)
    claims = claims_stats(pred, SETS, CLAIMS, bases=["fkl", "rkl", "abkd"], n=2000).set_index("claim")
    assert claims.loc["(a) AdaKD improves rkl", "verdict"] == SUPPORTED
    assert claims.loc["(a) AdaKD improves rkl", "ci_low"] > 0
    assert claims.loc["(a) AdaKD improves abkd", "verdict"] == NOT_MEASURED
    assert claims.loc["(a) AdaKD improves every base", "verdict"] == NOT_MEASURED  # abkd missing, none failed
    for claim in ("(b) IDTS helps more than LATF alone", "(c) the inverse temperature direction hurts",
                  "(d) Hellinger is the best indicator"):
        assert claims.loc[claim, "verdict"] == NOT_MEASURED
    # the ablation runs appear: IDTS-only clearly better than LATF-only; the inverse temperature better
    extra = [_write(tmp_path, "rkl+adakd-idts-only", s, 4.0) for s in SETS]
    extra += [_write(tmp_path, "rkl+adakd-latf-only", s, 0.0) for s in SETS]
    extra += [_write(tmp_path, "rkl+adakd-t-inverse", s, 9.0) for s in SETS]
    extra += [_write(tmp_path, "rkl+adakd-ind-js", s, 0.0) for s in SETS]
    pred = load_predictions(results + extra)
    claims = claims_stats(pred, SETS, CLAIMS, bases=["rkl"], indicators=["rkl+adakd-ind-js", "rkl+adakd-ind-ce"],
                          n=2000).set_index("claim")
    assert claims.loc["(b) IDTS helps more than LATF alone", "verdict"] == SUPPORTED
    assert claims.loc["(c) the inverse temperature direction hurts", "verdict"] == NOT_SUPPORTED
    assert claims.loc["(d) Hellinger beats rkl+adakd-ind-js", "verdict"] == SUPPORTED
    assert claims.loc["(d) Hellinger beats rkl+adakd-ind-ce", "verdict"] == NOT_MEASURED
    assert claims.loc["(d) Hellinger is the best indicator", "verdict"] == NOT_MEASURED
    assert claims.loc["(a) AdaKD improves every base", "verdict"] == SUPPORTED
    assert claims.loc["(b) IDTS helps more than LATF alone", "sets"] == "dolly sni"


def test_cli_writes_beside_latex_significance_and_claims(results: list[Path], reference: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    csv, labels = reference
    out = tmp_path / "tables"
    argv = ["--results", *map(str, results), "--methods", "sft", "fkl", "fkl+adakd", "rkl", "rkl+adakd",
            "--sets", *SETS, "--out-md", str(out / "main.md"), "--out-csv", str(out / "main.csv"),
            "--out-tex", str(out / "main.tex"), "--reference", str(csv), "--labels", str(labels),
            "--family", "Qwen2", "--significance-md", str(out / "sig.md"), "--significance-csv", str(out / "sig.csv"),
            "--claims-md", str(out / "claims.md"), "--claims-csv", str(out / "claims.csv"), "--bootstrap-n", "2000"]
    assert main(argv) == 0
    md = (out / "main.md").read_text()
    assert "ours (published, Δ = ours − published)" in md and "(25.00, " in md
    tex = (out / "main.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "$\\pm$" in tex
    assert "qwen2-s\\_from\\_qwen2-t" in tex and "±" not in tex
    long = pd.read_csv(out / "main.csv")
    assert {"published", "delta", "paper_method"} <= set(long.columns) and len(long) == 5 * 3
    assert long.query("method == 'fkl' and set == 'dolly'")["published"].item() == 25.0
    sig = pd.read_csv(out / "sig.csv")
    assert sorted(set(zip(sig["method"], sig["base"]))) == [("fkl+adakd", "fkl"), ("rkl+adakd", "rkl")]
    assert len(sig) == 2 * 3 and (sig["n_resamples"] == 2000).all()
    sig_md = (out / "sig.md").read_text()
    assert "Paired bootstrap" in sig_md and "2,000 times" in sig_md and "rkl+adakd − rkl" in sig_md
    claims_md = (out / "claims.md").read_text()
    assert "not measured" in claims_md and "| (a) AdaKD improves rkl" in claims_md
    claims = pd.read_csv(out / "claims.csv")
    assert claims.set_index("claim").loc["(a) AdaKD improves rkl", "verdict"] == SUPPORTED

    # without --reference the outputs are the plain table; --reference needs --family
    assert main(["--results", *map(str, results), "--out-md", str(out / "p.md"), "--out-csv", str(out / "p.csv"),
                 "--out-tex", str(out / "p.tex")]) == 0
    assert list(pd.read_csv(out / "p.csv").columns) == ["method", "set", "mean", "std", "n"]
    assert "\\begin{tabular}" in (out / "p.tex").read_text()
    with pytest.raises(KDBenchError, match="--family"):
        main(["--results", *map(str, results), "--out-md", str(out / "p.md"), "--out-csv", str(out / "p.csv"),
              "--reference", str(csv)])


# --- the claims file --------------------------------------------------------------------------------

def test_the_claims_file_names_the_papers_runs() -> None:
    """evaluation/reference/claims.yaml: (a) X+adakd vs X for the five bases, (b) IDTS vs LATF only,
    (c) full vs inverse temperature, (d) Hellinger vs the five other indicators; each run has a label."""
    comparisons = [(text, a, b) for claim in CLAIMS.claims for text, a, b in claim.comparisons(CLAIMS.runs)]
    bases = ["fkl", "rkl", "abkd", "gkd", "distillm"]
    indicators = ["fkl", "rkl", "ce", "js", "nmt-top5"]
    assert [(a, b) for _, a, b in comparisons] == [
        *((f"{b}+adakd", b) for b in bases), ("rkl+adakd-idts-only", "rkl+adakd-latf-only"),
        ("rkl+adakd", "rkl+adakd-t-inverse"), *(("rkl+adakd", f"rkl+adakd-ind-{i}") for i in indicators)]
    assert comparisons[0][0] == "(a) AdaKD improves fkl" and CLAIMS.paper == "AdaKD"
    labels = yaml.safe_load((REFERENCE / "labels.yaml").read_text())["labels"]
    assert CLAIMS.labels(CLAIMS.runs) <= set(labels)


GOOD_CLAIMS = {"paper": "P", "runs": {"full": "a", "bases": ["x", "y"]},
               "claims": [{"claim": "{base} helps", "better": "{base}+p", "than": "{base}",
                           "for_each": {"base": "bases"}, "all_of": "it always helps"},
                          {"claim": "full", "better": "{full}", "than": "x"}]}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("runs"), "expected the top-level keys claims, paper, runs; found"),
    (lambda c: c["runs"].update(full=3), "runs.full = 3 must be a run label"),
    (lambda c: c["claims"][1].pop("than"), r"claims\[1\] \(full\) must be a mapping with 'claim', 'better' and 'than'"),
    (lambda c: c["claims"][1].update(verdict="yes"), r"claims\[1\] \(full\): unknown keys \['verdict'\]"),
    (lambda c: c["claims"][1].update(better="{fulll}"),
     r"claims\[1\] \(full\)\.better: unknown placeholders \['fulll'\]"),
    (lambda c: c["claims"][1].update(better="{bases}"),  # a list run needs for_each
     r"claims\[1\] \(full\)\.better: unknown placeholders \['bases'\]"),
    (lambda c: c["claims"][0].update(for_each={"base": "full"}),
     r"claims\[0\] \(\{base\} helps\)\.for_each: 'full' is not a list"),
    (lambda c: c["claims"][1].update(all_of="always"), r"claims\[1\] \(full\)\.all_of .* needs for_each"),
    (lambda c: c["claims"][1].update(claim="{"), r"claims\[1\] \(\{\)\.claim = '\{'"),
])
def test_a_malformed_claims_file_names_the_file_and_the_entry(tmp_path: Path, edit, message) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(GOOD_CLAIMS))
    good = load_claims(path)
    assert [t for c in good.claims for t, _, _ in c.comparisons(good.runs)] == ["x helps", "y helps", "full"]
    config = json.loads(json.dumps(GOOD_CLAIMS))
    edit(config)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(KDBenchError, match=f"{re.escape(str(path))}: {message}"):
        load_claims(path)


def test_claim_runs_replaced_on_the_command_line(results: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "claims.csv"
    argv = ["--results", *map(str, results), "--claims-csv", str(out), "--bootstrap-n", "200",
            "--claims", str(REFERENCE / "claims.yaml"), "--claim-run", "bases=rkl,fkl", "--claim-run", "indicators=fkl"]
    assert main(argv) == 0
    claims = pd.read_csv(out)["claim"].tolist()
    assert claims[:3] == ["(a) AdaKD improves rkl", "(a) AdaKD improves fkl", "(a) AdaKD improves every base"]
    assert "(d) Hellinger beats fkl" in claims
    for bad, message in (("bogus=x", "names no such run"), ("full=a,b", "is one run label"), ("full", "NAME=LABEL")):
        with pytest.raises(KDBenchError, match=message):
            main([*argv[:-2], "--claim-run", bad])
