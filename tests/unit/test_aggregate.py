"""kdbench.aggregate: collecting result JSONs, mean ± std tables against numpy, the CLI's files, bad inputs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.aggregate import cell_stats, collect, main, main_table
from kdbench.errors import KDBenchError

PROTOCOL = {
    "max_new_tokens": 256, "batch_size": 32, "max_prompt_tokens": 256, "do_sample": True, "top_k": 0,
    "top_p": 1.0, "temperature": 1.0, "no_repeat_ngram_size": 0,
    "metric": "rougeL-F x100, porter stemmer, max over refs", "protocol_version": 1,
}
PAIR = "gpt2-tiny_from_gpt2-small"
DECODING_SEEDS = [10, 20, 30]


def _score(method: str, train_seed: int, set_name: str, decoding_seed: int) -> float:
    """A deterministic, irregular score so means and stds are not trivial."""
    rng = np.random.default_rng(zlib.crc32(f"{method}/{train_seed}/{set_name}/{decoding_seed}".encode()))
    return float(20 + 5 * rng.random())


def _write_result(root: Path, method: str, train_seed: int, set_name: str, *, pair: str = PAIR,
                  protocol: dict | None = None, seeds: list[int] = DECODING_SEEDS) -> Path:
    path = root / "evals" / pair / method / f"seed{train_seed}" / f"{set_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    per_seed = {str(s): {"rougeL": _score(method, train_seed, set_name, s), "exact_match": 0.0} for s in seeds}
    result = {"set": set_name, "n_examples": 5, "protocol": protocol or PROTOCOL, "per_seed": per_seed}
    path.write_text(json.dumps(result))
    # the predictions kdbench evaluate writes beside it: 5 examples per seed whose mean is the seed's score
    offsets = [-2.0, -1.0, 0.0, 1.0, 2.0]
    lines = [json.dumps({"seed": s, "idx": i, "rougeL": per_seed[str(s)]["rougeL"] + d}) for s in seeds
             for i, d in enumerate(offsets)]
    path.with_name(f"{set_name}.predictions.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def results(tmp_path: Path) -> list[Path]:
    """fkl and fkl+adakd on dolly and vicuna with training seeds 1, 2; rkl on dolly only."""
    paths = [
        _write_result(tmp_path, method, train_seed, set_name)
        for method in ("fkl", "fkl+adakd")
        for train_seed in (1, 2)
        for set_name in ("dolly", "vicuna")
    ]
    return paths + [_write_result(tmp_path, "rkl", 1, "dolly")]


def test_collect_reads_pair_method_seed_from_the_path(results: list[Path]) -> None:
    df = collect(results)
    assert len(df) == (2 * 2 * 2 + 1) * len(DECODING_SEEDS)
    assert set(df["pair"]) == {PAIR}
    assert set(df["method"]) == {"fkl", "fkl+adakd", "rkl"}
    row = df.query("method == 'fkl+adakd' and train_seed == 2 and set == 'vicuna' and decoding_seed == 20")
    assert row["rougeL"].item() == _score("fkl+adakd", 2, "vicuna", 20)


def test_cells_equal_numpy(results: list[Path]) -> None:
    df = collect(results)
    stats = cell_stats(df, ["fkl+adakd", "fkl", "rkl"], ["dolly", "vicuna"]).set_index(["method", "set"])
    for method in ("fkl", "fkl+adakd"):
        for set_name in ("dolly", "vicuna"):
            scores = [_score(method, t, set_name, d) for t in (1, 2) for d in DECODING_SEEDS]
            cell = stats.loc[(method, set_name)]
            assert cell["mean"] == pytest.approx(np.mean(scores))
            assert cell["std"] == pytest.approx(np.std(scores, ddof=1))
            assert cell["n"] == 6
        averages = [
            np.mean([_score(method, t, s, d) for s in ("dolly", "vicuna")]) for t in (1, 2) for d in DECODING_SEEDS
        ]
        assert stats.loc[(method, "Avg"), "mean"] == pytest.approx(np.mean(averages))
        assert stats.loc[(method, "Avg"), "std"] == pytest.approx(np.std(averages, ddof=1))
    assert stats.loc[("rkl", "vicuna"), "n"] == 0 and np.isnan(stats.loc[("rkl", "vicuna"), "mean"])
    assert stats.loc[("rkl", "Avg"), "n"] == 0


def test_main_table_order_format_and_missing_cells(results: list[Path]) -> None:
    df = collect(results)
    table = main_table(df, ["rkl", "fkl+adakd", "fkl", "egad"], ["vicuna", "dolly"])
    assert list(table.index) == ["rkl", "fkl+adakd", "fkl", "egad"]
    assert list(table.columns) == ["vicuna", "dolly", "Avg"]
    scores = [_score("fkl", t, "dolly", d) for t in (1, 2) for d in DECODING_SEEDS]
    assert table.loc["fkl", "dolly"] == f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1):.2f}"
    assert table.loc["rkl", "vicuna"] == "–" and table.loc["rkl", "Avg"] == "–"
    assert table.loc["rkl", "dolly"] != "–"
    assert (table.loc["egad"] == "–").all()


def test_single_score_has_zero_std(tmp_path: Path) -> None:
    df = collect([_write_result(tmp_path, "fkl", 1, "dolly", seeds=[10])])
    assert main_table(df, ["fkl"], ["dolly"]).loc["fkl", "dolly"] == f"{_score('fkl', 1, 'dolly', 10):.2f} ± 0.00"


def test_avg_needs_the_same_seed_grid_in_every_set(tmp_path: Path) -> None:
    df = collect([
        _write_result(tmp_path, "fkl", 1, "dolly", seeds=[10, 20]),
        _write_result(tmp_path, "fkl", 1, "vicuna", seeds=[10]),
    ])
    table = main_table(df, ["fkl"], ["dolly", "vicuna"])
    assert table.loc["fkl", "dolly"] != "–" and table.loc["fkl", "Avg"] == "–"


def test_main_writes_markdown_and_csv(results: list[Path], tmp_path: Path) -> None:
    md, csv = tmp_path / "tables" / "main.md", tmp_path / "tables" / "main.csv"
    argv = ["--results", *map(str, results), "--methods", "fkl", "fkl+adakd", "rkl", "--sets", "dolly", "vicuna",
            "--out-md", str(md), "--out-csv", str(csv)]
    assert main(argv) == 0
    text = md.read_text()
    header = text.splitlines()[0]
    assert "ROUGE-L F ×100" in header and "3 decoding seeds × 1–2 training seeds" in header
    assert "sampling top-k 0 top-p 1.0 T 1.0" in header and PAIR in header
    assert "fkl+adakd" in text and "–" in text and "| method" in text
    long = pd.read_csv(csv)
    assert list(long.columns) == ["method", "set", "mean", "std", "n"]
    assert list(long["method"].unique()) == ["fkl", "fkl+adakd", "rkl"]
    assert len(long) == 3 * 3
    scores = [_score("fkl+adakd", t, "vicuna", d) for t in (1, 2) for d in DECODING_SEEDS]
    row = long[(long["method"] == "fkl+adakd") & (long["set"] == "vicuna")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(scores)) and row["std"] == pytest.approx(np.std(scores, ddof=1))
    assert row["n"] == 6


def test_malformed_results_raise(tmp_path: Path) -> None:
    flat = tmp_path / "dolly.json"
    flat.write_text("{}")
    with pytest.raises(KDBenchError, match="seed\\{n\\}"):
        collect([flat])
    broken = _write_result(tmp_path, "fkl", 1, "dolly")
    broken.write_text("{not json")
    with pytest.raises(KDBenchError, match="not valid JSON"):
        collect([broken])
    mislabelled = _write_result(tmp_path, "fkl", 2, "dolly")
    mislabelled.write_text(json.dumps({"set": "vicuna", "protocol": PROTOCOL, "per_seed": {"10": {"rougeL": 1}}}))
    with pytest.raises(KDBenchError, match="records set 'vicuna'"):
        collect([mislabelled])
    bad_score = _write_result(tmp_path, "fkl", 3, "dolly")
    bad_score.write_text(json.dumps({"set": "dolly", "protocol": PROTOCOL, "per_seed": {"10": {"rouge": 1}}}))
    with pytest.raises(KDBenchError, match="per_seed"):
        collect([bad_score])
    with pytest.raises(KDBenchError, match="no such result file"):
        collect([tmp_path / "evals" / PAIR / "fkl" / "seed9" / "dolly.json"])
    with pytest.raises(KDBenchError, match="no result files"):
        collect([])


def test_pooling_what_must_not_be_pooled_raises(tmp_path: Path) -> None:
    good = _write_result(tmp_path, "fkl", 1, "dolly")
    with pytest.raises(KDBenchError, match="several result files"):
        collect([good, good])
    other_pair = _write_result(tmp_path, "fkl", 1, "dolly", pair="other_from_teacher")
    df = collect([good, other_pair])
    with pytest.raises(KDBenchError, match="several pairs"):
        main_table(df, ["fkl"], ["dolly"])
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    outputs = ["--out-md", str(md), "--out-csv", str(csv)]
    assert main(["--results", str(good), str(other_pair), "--pair", PAIR, *outputs]) == 0
    with pytest.raises(KDBenchError, match="--pair nope"):
        main(["--results", str(good), "--pair", "nope", *outputs])
    greedy = _write_result(tmp_path, "rkl", 1, "dolly", protocol={**PROTOCOL, "do_sample": False})
    with pytest.raises(KDBenchError, match="different protocols"):
        main_table(collect([good, greedy]), ["fkl", "rkl"], ["dolly"])


def test_an_edited_result_never_reaches_the_tables(results: list[Path], tmp_path: Path) -> None:
    """A result JSON edited after evaluation (valid, one score 20 higher: 25.14 for 5.14) stops
    `kdbench aggregate` before any table, naming the file and both values; untouched, the same
    files give the table."""
    md = tmp_path / "tables" / "main.md"
    argv = ["--results", *map(str, results), "--out-md", str(md)]
    assert main(argv) == 0
    md.unlink()
    edited = results[-1]  # rkl on dolly
    result = json.loads(edited.read_text())
    true_score = result["per_seed"]["20"]["rougeL"]
    result["per_seed"]["20"]["rougeL"] = true_score + 20
    edited.write_text(json.dumps(result))
    with pytest.raises(KDBenchError) as err:
        main(argv)
    assert str(err.value).startswith(f"{edited}: the ROUGE-L of decoding seed 20 is {true_score + 20:.4f}, but its "
                                     f"predictions (dolly.predictions.jsonl, 5 examples) average {true_score:.4f}")
    assert not md.exists()
    result["per_seed"]["20"]["rougeL"] = true_score
    result["rougeL_mean"] = 25.14  # the summary edited instead: no table reads it, but the file is refused
    edited.write_text(json.dumps(result))
    with pytest.raises(KDBenchError, match=r"dolly.json: rougeL_mean is 25.1400, but its per_seed scores average 2"):
        main(argv)
    (edited.with_name("dolly.predictions.jsonl")).unlink()
    result.pop("rougeL_mean")
    edited.write_text(json.dumps(result))
    with pytest.raises(KDBenchError, match="no per-example predictions beside dolly.json; the tables check each score"):
        main(argv)
