"""The vLLM engine on a GPU (`evaluation.engine: vllm`, needs `pip install -e ".[vllm]"`): on one set
under the five decoding seeds it samples responses whose ROUGE-L and length distributions match the
hf engine's (same prompts, settings and per-response seeds; a different sampler, so a two-sided
Mann-Whitney test, not equality), and it writes the files the hf engine writes."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")  # tier: tests/conftest.py


def test_vllm_samples_the_distribution_hf_samples(tmp_path) -> None:
    pytest.importorskip("vllm", reason="the vllm extra is not installed: pip install -e \".[vllm]\"")
    from scipy.stats import mannwhitneyu

    from kdbench.datagen import generate as generate_data
    from kdbench.evaluate import main as evaluate_main
    from kdbench.models import build_random
    from kdbench.tokenizer import train_tokenizer
    from transformers import AutoTokenizer

    paths = generate_data(tmp_path / "data", seed=0, n_train=400, n_valid=10, n_eval=80)
    train_tokenizer([paths["train"]], tmp_path / "tokenizer", vocab_size=600)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    model = build_random("gpt2", {"n_layer": 2, "n_embd": 128, "n_head": 2, "n_positions": 512}, tokenizer, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    records = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine / "dolly.json"
        assert evaluate_main(["--model", str(tmp_path / "model"), "--data", str(paths["dolly"]), "--set", "dolly",
                              "--engine", engine, "--max-new-tokens", "32", "--out", str(out),
                              "--predictions", str(out.with_suffix(".predictions.jsonl"))]) == 0
        assert json.loads(out.read_text())["protocol"]["engine"] == engine
        records[engine] = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert len(records["hf"]) == len(records["vllm"]) == 5 * 80
    for measure in (lambda r: r["rougeL"], lambda r: len(tokenizer(r["prediction"])["input_ids"])):
        hf, vllm = ([measure(r) for r in records[e]] for e in ("hf", "vllm"))
        assert mannwhitneyu(hf, vllm).pvalue > 0.01, (sum(hf) / len(hf), sum(vllm) / len(vllm))
