"""kdbench.evaluate: metrics against rouge-score itself, generation on a tiny random GPT-2, the CLI end to end."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdbench import evaluate
from kdbench.engines import row_seed
from kdbench.errors import KDBenchError
from kdbench.evaluate import evaluate_set, exact_match, generate, main, rouge_l
from kdbench.prompts import build_prompt

CORPUS = [
    "Sort the numbers 3 1 2 in increasing order.",
    "Reverse the word cat. The answer is tac.",
    "The quick brown fox jumps over the lazy dog.",
    "Name three colours: red, green and blue.",
    build_prompt("Add 2 and 3.") + "5",
    build_prompt("Copy the input.", "hello world") + "hello world",
]
PROMPTS = [
    build_prompt("Sort 3 1 2."),
    build_prompt("Reverse the word dog, then say what the quick brown fox did to the lazy dog.", "dog"),
    build_prompt("Name a colour."),
    build_prompt("Copy the input.", "red green blue red green blue"),
]
FEW = dict(max_new_tokens=6, max_prompt_tokens=256)


def _tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences; it has an eos token and no pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _model(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_positions=512, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    return _model(tokenizer)


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("prediction", "references"),
    [
        ("the dog runs in the park", ["the dog is running in the park"]),
        ("Running dogs jumped happily", ["a dog jumps", "dogs run and jump happily"]),
        ("completely unrelated", ["nothing in common here", "zero overlap"]),
        ("The cats are sleeping.", ["cat sleeps"]),
        ("", ["a reference"]),
        ("1 2 3 4", ["4 3 2 1", "1 2 3"]),
    ],
)
def test_rouge_l_matches_rouge_score(prediction: str, references: list[str]) -> None:
    """Exactly rouge-score's default scorer with its stemmer, also when the stems come from the memo."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references) * 100
    assert rouge_l(prediction, references) == expected
    assert rouge_l(prediction, references) == expected


def test_importing_evaluate_skips_nltks_optional_scikit_learn_and_scipy_stats() -> None:
    """The evaluation job's start-up cut: nltk loads without them; both import normally afterwards."""
    code = ("import sys, kdbench.evaluate as e; assert 'sklearn' not in sys.modules and 'scipy.stats' not in "
            "sys.modules, 'imported'; import sklearn.feature_extraction, scipy.stats; print(e.rouge_l('cats ran', ['cat ran']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "100.0", done.stderr[-2000:]


def test_rouge_l_stems_and_takes_the_best_reference() -> None:
    assert rouge_l("cats running", ["cat run"]) == pytest.approx(100.0)
    assert rouge_l("red blue", ["green", "red blue", "red"]) == pytest.approx(100.0)
    assert 0 < rouge_l("red blue green", ["red"]) < 100


@pytest.mark.parametrize(
    ("prediction", "references", "lineage", "squad"),  # rouge_metric.py keeps the articles; SQuAD drops them
    [
        ("The Cat!", ["cat"], 0.0, 100.0),
        ("The Cat!", ["the cat"], 100.0, 100.0),
        ("  a   cat. ", ["Cat"], 0.0, 100.0),
        ("an apple, the pear", ["apple pear"], 0.0, 100.0),
        ("cats", ["cat"], 0.0, 0.0),
        ("blue", ["red", "Blue."], 100.0, 100.0),
        ("theatre", ["atre"], 0.0, 0.0),
    ],
)
def test_exact_match_normalisation(prediction: str, references: list[str], lineage: float, squad: float) -> None:
    assert exact_match(prediction, references) == lineage
    assert exact_match(prediction, references, keep_articles=False) == squad


# ---------------------------------------------------------------- generation


def test_sampling_is_reproducible_per_seed_and_differs_across_seeds(model, tokenizer) -> None:
    first = generate(model, tokenizer, PROMPTS, seed=10, batch_size=4, **FEW)
    again = generate(model, tokenizer, PROMPTS, seed=10, batch_size=4, **FEW)
    other = generate(model, tokenizer, PROMPTS, seed=20, batch_size=4, **FEW)
    assert first == again
    assert first != other
    assert len(first) == len(PROMPTS) and all(isinstance(text, str) for text in first)


def test_a_sampled_response_does_not_depend_on_its_batch(model, tokenizer) -> None:
    """Each response draws from its own stream (decoding seed, position, prompt): the batch size,
    the prompts beside it and the order of the file change nothing; the same prompt at another
    position, or under another seed, samples anew."""
    same_length = ["Say A.", "Say B.", "Say C.", "Say D."]
    prompts = same_length + PROMPTS
    alone = [generate(model, tokenizer, [p], seed=10, batch_size=1, **FEW)[0] for p in prompts[:1]]
    batched = generate(model, tokenizer, prompts, seed=10, batch_size=3, **FEW)
    wide = generate(model, tokenizer, prompts, seed=10, batch_size=len(prompts), **FEW)
    assert batched == wide and batched[0] == alone[0]
    assert len(set(batched[:4])) > 1  # sampled: the equal-length prompts' responses differ
    rows = [(p, row_seed(seed, i, p)) for seed in (10, 20) for i, p in enumerate(prompts)]
    mixed = evaluate.generate_rows(model, tokenizer, rows, evaluate.resolve_protocol({"batch_size": 5, **FEW}))
    assert mixed[:len(prompts)] == batched  # two seeds in shared batches: each as if decoded alone
    assert mixed[len(prompts):] == generate(model, tokenizer, prompts, seed=20, batch_size=2, **FEW)
    repeated = generate(model, tokenizer, ["Say A."] * 6, seed=10, batch_size=6, **FEW)
    assert len(set(repeated)) > 1  # a prompt repeated in a set is sampled anew at each position


def test_sets_decoded_together_score_as_each_alone(model, tokenizer) -> None:
    """`evaluate_sets` decodes every set and seed in shared batches; each set scores as it does alone."""
    sets = {"a": [{"instruction": p, "output": "a b c"} for p in PROMPTS[:3]],
            "b": [{"instruction": p, "output": "b c d"} for p in PROMPTS[1:]]}
    protocol = {"batch_size": 4, **FEW}
    together = evaluate.evaluate_sets(model, tokenizer, sets, seeds=[10, 20], protocol=protocol)
    for name, examples in sets.items():
        alone = evaluate_set(model, tokenizer, examples, set_name=name, seeds=[10, 20], protocol=protocol)
        assert together[name] == alone


# ---------------------------------------------------------------- evaluate_set


def test_evaluate_set_scores_per_seed(model, tokenizer, monkeypatch) -> None:
    examples = [
        {"instruction": "Name a colour.", "input": "", "output": ["red", "blue"]},
        {"instruction": "Sort 3 1 2.", "input": "", "output": "1 2 3"},
        {"instruction": "Copy.", "input": "the cats run", "output": "the cat runs"},
    ]
    canned = {10: ["blue", "1 2 3", "dog"], 20: ["green", "3 2 1", "cats running"]}
    calls = []

    def fake_generate_rows(model_, tokenizer_, rows, settings, *, groups, synced_gpus, on_rows):
        calls.append((rows, settings, groups))
        responses = canned[10] + canned[20]
        on_rows(list(range(len(rows))), responses)
        return responses

    monkeypatch.setattr(evaluate, "generate_rows", fake_generate_rows)
    summary, predictions = evaluate_set(
        model, tokenizer, examples, set_name="toy", seeds=[10, 20], protocol={"max_new_tokens": 7}
    )

    [(rows, settings, groups)] = calls  # both seeds in one call, seed 10's rows first
    assert groups == [0, 0, 0, 1, 1, 1]
    assert rows[2] == (build_prompt("Copy.", "the cats run"), row_seed(10, 2, build_prompt("Copy.", "the cats run")))
    assert rows[3][1] == row_seed(20, 0, rows[3][0]) != rows[0][1]
    assert settings["max_new_tokens"] == 7 and settings["top_k"] == 0 and settings["do_sample"] is True
    refs = [["red", "blue"], ["1 2 3"], ["the cat runs"]]
    rouge = {s: [rouge_l(p, r) for p, r in zip(canned[s], refs)] for s in canned}
    em = {s: [exact_match(p, r) for p, r in zip(canned[s], refs)] for s in canned}
    assert summary["set"] == "toy" and summary["n_examples"] == 3
    assert summary["protocol"]["protocol_version"] == 2
    assert summary["protocol"]["metric"] == "rougeL-F x100, porter stemmer, max over refs"
    for seed in canned:
        assert summary["per_seed"][str(seed)]["rougeL"] == pytest.approx(np.mean(rouge[seed]))
        assert summary["per_seed"][str(seed)]["exact_match"] == pytest.approx(np.mean(em[seed]))
    seed_means = [np.mean(rouge[10]), np.mean(rouge[20])]
    assert summary["rougeL_mean"] == pytest.approx(np.mean(seed_means))
    assert summary["rougeL_std"] == pytest.approx(np.std(seed_means, ddof=1))
    assert summary["exact_match_mean"] == pytest.approx(np.mean([np.mean(em[10]), np.mean(em[20])]))
    assert len(predictions) == 6
    assert predictions[5] == {
        "seed": 20, "idx": 2, "prompt": build_prompt("Copy.", "the cats run"), "prediction": "cats running",
        "references": ["the cat runs"], "rougeL": rouge[20][2], "exact_match": em[20][2],
    }


def test_evaluate_set_rejects_bad_input(model, tokenizer) -> None:
    good = [{"instruction": "x", "input": "", "output": "y"}]
    with pytest.raises(KDBenchError, match="unknown evaluation protocol settings.*top_kk"):
        evaluate_set(model, tokenizer, good, set_name="s", seeds=[1], protocol={"top_kk": 5})
    with pytest.raises(KDBenchError, match="s example 1: 'output'"):
        bad = [*good, {"instruction": "x", "output": []}]
        evaluate_set(model, tokenizer, bad, set_name="s", seeds=[1], protocol={})
    with pytest.raises(KDBenchError, match="no decoding seeds"):
        evaluate_set(model, tokenizer, good, set_name="s", seeds=[], protocol={})


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _write_set(path: Path) -> Path:
    examples = [
        {"instruction": "Sort 3 1 2.", "input": "", "output": "1 2 3"},
        {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
        {"instruction": "Name a colour.", "input": "", "output": ["red", "green", "blue"]},
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Copy the input.", "input": "hello world", "output": "hello world"},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def test_main_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    data = _write_set(tmp_path / "toy.jsonl")
    out, preds = tmp_path / "evals" / "toy.json", tmp_path / "evals" / "toy.preds.jsonl"
    argv = [
        "--model", str(model_dir), "--data", str(data), "--set", "toy", "--run", "gpt2 tiny / fkl seed1",
        "--seeds", "10", "20", "30", "--max-new-tokens", "5", "--batch-size", "2", "--threads", "1",
        "--out", str(out), "--predictions", str(preds),
    ]
    assert main(argv) == 0

    result = json.loads(out.read_text())
    assert result["run"] == "gpt2 tiny / fkl seed1" and result["model"] == str(model_dir)
    assert result["set"] == "toy" and result["n_examples"] == 5
    assert set(result["per_seed"]) == {"10", "20", "30"}
    assert result["protocol"]["max_new_tokens"] == 5 and result["protocol"]["batch_size"] == 2
    assert set(result["versions"]) == {"kdbench", "torch", "transformers"} and result["elapsed_s"] >= 0
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 3 * 5
    assert {(p["seed"], p["idx"]) for p in lines} == {(s, i) for s in (10, 20, 30) for i in range(5)}
    assert lines[2]["references"] == ["red", "green", "blue"]
    for seed in ("10", "20", "30"):
        scores = [p["rougeL"] for p in lines if str(p["seed"]) == seed]
        assert result["per_seed"][seed]["rougeL"] == pytest.approx(statistics.fmean(scores))

    # --greedy runs one seed; --limit takes the first examples
    assert main([*argv, "--greedy", "--limit", "2"]) == 0
    result = json.loads(out.read_text())
    assert list(result["per_seed"]) == ["10"] and result["n_examples"] == 2
    assert result["protocol"]["do_sample"] is False
    assert len(preds.read_text().splitlines()) == 2


def test_main_reports_missing_or_bad_inputs(model_dir: Path, tmp_path: Path) -> None:
    data = _write_set(tmp_path / "toy.jsonl")
    outputs = ["--set", "toy", "--out", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.jsonl")]
    with pytest.raises(KDBenchError, match="no-such-model"):
        main(["--model", str(tmp_path / "no-such-model"), "--data", str(data), *outputs])
    with pytest.raises(KDBenchError, match="missing.jsonl"):
        main(["--model", str(model_dir), "--data", str(tmp_path / "missing.jsonl"), *outputs])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": 3, "output": "y"}\n')
    with pytest.raises(KDBenchError, match="bad.jsonl, line 2"):
        main(["--model", str(model_dir), "--data", str(bad), *outputs])
    with pytest.raises(KDBenchError, match="cannot load a model"):
        main(["--model", str(tmp_path), "--data", str(data), *outputs])
    assert not (tmp_path / "r.json").exists()


def test_the_evaluation_dtype_is_explicit_and_recorded(model_dir: Path, tmp_path: Path) -> None:
    """The model is loaded in the protocol's evaluation.dtype, whatever the library's default, and
    the result says which; another dtype is another fingerprint (a kept seed is not reused)."""
    import torch

    from kdbench.evaluate import fingerprint, fingerprint_inputs, load_model

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        loaded, _ = load_model(model_dir, dtype=name)
        assert {p.dtype for p in loaded.parameters()} == {dtype}
    data = _write_set(tmp_path / "toy.jsonl")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("dtype: bf16\ndecoding_seeds: [10]\nmax_new_tokens: 3\n")
    out = tmp_path / "toy.json"
    assert main(["--model", str(model_dir), "--data", str(data), "--set", "toy", "--protocol", str(protocol),
                 "--out", str(out), "--predictions", str(tmp_path / "p.jsonl")]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["dtype"] == "bf16" and result["provenance"]["protocol"] is not None
    keys = {d: fingerprint(fingerprint_inputs(model_dir, data, "toy", {"max_new_tokens": 3}, None, "hf", d))
            for d in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    protocol.write_text("dtype: fp64\n")
    with pytest.raises(KDBenchError, match="dtype"):
        main(["--model", str(model_dir), "--data", str(data), "--set", "toy", "--protocol", str(protocol),
              "--out", str(out), "--predictions", str(tmp_path / "p.jsonl")])
