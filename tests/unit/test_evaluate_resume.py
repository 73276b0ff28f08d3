"""`kdbench evaluate` resumes per decoding seed: killed (SIGKILL) after seed 20 of 10 20 30, a rerun
reuses seeds 10 and 20, generates only 30, and writes exactly what an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdbench import evaluate
from kdbench.engines import row_seed
from kdbench.evaluate import main

EXAMPLES = [
    {"instruction": "Sort 3 1 2.", "input": "", "output": "1 2 3"},
    {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
    {"instruction": "Name a colour.", "input": "", "output": ["red", "green", "blue"]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 1-layer random GPT-2 with a byte-level BPE trained on the examples, saved as a directory."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([json.dumps(e) for e in EXAMPLES], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("model")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _argv(model_dir: Path, data: Path, out_dir: Path) -> list[str]:
    return ["--model", str(model_dir), "--data", str(data), "--set", "toy", "--seeds", "10", "20", "30",
            "--max-new-tokens", "6", "--batch-size", "2", "--threads", "1",
            "--out", str(out_dir / "toy.json"), "--predictions", str(out_dir / "toy.predictions.jsonl")]


def _result(out_dir: Path) -> tuple[dict, str]:
    result = json.loads((out_dir / "toy.json").read_text())
    result.pop("elapsed_s")  # wall time: the one field that differs between two runs
    return result, (out_dir / "toy.predictions.jsonl").read_text()


def test_killed_evaluation_resumes_from_its_finished_seeds(model_dir, tmp_path, capsys):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(_argv(model_dir, data, whole)) == 0
    assert not (whole / "toy.json.partial").exists()  # removed once the final outputs are written

    killed = subprocess.run(
        [sys.executable, "-m", "kdbench.cli", "evaluate", *_argv(model_dir, data, resumed)],
        env={**os.environ, "KDBENCH_FAULT_KILL_AFTER_SEED": "20"}, capture_output=True, text=True, timeout=300,
        check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = resumed / "toy.json.partial"
    assert sorted(p.name for p in partial.glob("seed*.json")) == ["seed10.json", "seed20.json"]
    assert not (resumed / "toy.json").exists() and not (resumed / "toy.predictions.jsonl").exists()

    kept = {p.name: p.stat().st_mtime_ns for p in partial.glob("seed*.json")}
    generated: list[int] = []
    real_generate_rows = evaluate.generate_rows

    def counting(model, tokenizer, rows, *args, **kwargs):  # which decoding seed each row is sampled under
        generated.extend(next(s for s in (10, 20, 30) if row_seed(s, i % len(EXAMPLES), p) == seed)
                         for i, (p, seed) in enumerate(rows))
        return real_generate_rows(model, tokenizer, rows, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "generate_rows", counting)
        mp.setattr(evaluate, "shutil", _KeepPartial(partial, kept))  # look before the folder is removed
        assert main(_argv(model_dir, data, resumed)) == 0
    assert generated == [30] * len(EXAMPLES)
    assert "toy: reusing seeds 10, 20" in capsys.readouterr().err
    assert not partial.exists()
    assert _result(resumed) == _result(whole)


def test_partial_results_of_another_model_are_not_reused(model_dir, tmp_path, capsys):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    partial = tmp_path / "out" / "toy.json.partial"
    partial.mkdir(parents=True)
    (partial / "seed10.json").write_text(json.dumps({"seed": 10, "fingerprint": "from another model",
                                                     "scores": {"rougeL": 99.0, "exact_match": 99.0},
                                                     "predictions": []}))
    assert main(_argv(model_dir, data, tmp_path / "out")) == 0
    assert "reusing" not in capsys.readouterr().err
    assert json.loads((tmp_path / "out/toy.json").read_text())["per_seed"]["10"]["rougeL"] != 99.0


class _KeepPartial:
    """Stands in for `shutil` in kdbench.evaluate: checks, just before the partial folder is removed,
    that the kept seeds were not rewritten (same mtimes) and seed 30 was added; then removes it."""

    def __init__(self, partial: Path, kept: dict[str, int]):
        self.partial, self.kept = partial, kept

    def rmtree(self, path, ignore_errors=False):
        import shutil

        assert Path(path) == self.partial
        now = {p.name: p.stat().st_mtime_ns for p in self.partial.glob("seed*.json")}
        assert {k: now[k] for k in self.kept} == self.kept and "seed30.json" in now
        shutil.rmtree(path, ignore_errors=ignore_errors)
