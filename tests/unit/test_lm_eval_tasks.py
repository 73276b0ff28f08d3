"""The lm-eval tasks under evaluation/tasks: loaded offline through lm-eval's TaskManager with
include_path, on jsonl fixtures at the tasks' relative data paths. The prompt lm-eval sends is
kdbench's, its ROUGE-L equals kdbench's, and a full `lm_eval.simple_evaluate` on a tiny local GPT-2
generates what `kdbench.evaluate.generate` generates (greedy) and reports the same score."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import torch
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdbench.evalsets import SETS
from kdbench.evalsets import main as prepare_eval
from kdbench.evaluate import DEFAULT_PROTOCOL, generate, rouge_l
from kdbench.prompts import build_prompt

TASKS_DIR = Path(__file__).resolve().parents[2] / "evaluation" / "tasks"
GEN_TASKS = [f"kdbench_gen_{name}" for name in SETS]
REAL_TASKS = [f"kdbench_real_{name}" for name in SETS]
LONG = "the quick brown fox jumps over the lazy dog and runs far away"

# (doc, prediction): single and multiple references, with and without input, partial overlaps where
# "max over references" and lm-eval's default "any reference scores" rule would differ.
CASES = [
    ({"instruction": "Describe the dog.", "input": "", "output": "the dog is running in the park"},
     "the dog runs in the park"),
    ({"instruction": "Say what the dogs did.", "input": "two dogs",
      "output": ["a dog jumps", "dogs run and jump happily"]},
     " \nRunning dogs jumped happily\n"),
    ({"instruction": "Name colours.", "input": "", "output": ["red", "red blue green yellow"]}, "red blue"),
    ({"instruction": "Copy.", "input": "cat sat", "output": ["nothing in common", "zero overlap"]}, "cat sat"),
]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder laid out as the tasks expect (results/data/{eval,real}/<set>.jsonl), made the working
    directory; the datasets cache goes there too."""
    root = tmp_path_factory.mktemp("lm_eval")
    docs = [doc for doc, _ in CASES]
    for name in SETS:
        write_jsonl(root / "results" / "data" / "eval" / f"{name}.jsonl", docs)
        write_jsonl(root / "results" / "data" / "real" / f"{name}.jsonl", docs)
    # the real S-NI task reads what `kdbench prepare-eval` writes from a raw S-NI task file
    task = {"Definition": ["Continue the story."], "Instances": [
        {"id": "a", "input": "Once upon a time", "output": [LONG, "short"]},
        {"id": "b", "input": "The end", "output": ["too short"]},
    ]}
    (root / "task001_story.json").write_text(json.dumps(task), encoding="utf-8")
    prepare_eval(["--set", "sni", "--format", "raw", "--source", str(root / "task001_story.json"),
                  "--out", str(root / "results" / "data" / "real" / "sni.jsonl")])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_cache")
        yield root


@pytest.fixture(scope="module")
def manager(workdir: Path) -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def tasks(manager: TaskManager) -> dict:
    return manager.load(GEN_TASKS + REAL_TASKS)["tasks"]


def test_ten_tasks_and_two_tags_are_indexed(manager: TaskManager) -> None:
    assert set(GEN_TASKS + REAL_TASKS) <= set(manager.all_subtasks)
    assert {"kdbench_gen", "kdbench_real"} <= set(manager.all_tags)
    assert sorted(manager.load("kdbench_real")["tasks"]) == sorted(REAL_TASKS)


def test_tasks_follow_the_protocol_and_read_the_documented_files(tasks: dict) -> None:
    for name, task in tasks.items():
        kind, set_name = name.removeprefix("kdbench_").split("_")
        folder = "eval" if kind == "gen" else "real"
        assert task.config.dataset_path == "json"
        assert task.config.dataset_kwargs["data_files"] == {"test": f"results/data/{folder}/{set_name}.jsonl"}
        assert task.config.output_type == "generate_until"
        gen = task.config.generation_kwargs
        assert gen["max_gen_toks"] == DEFAULT_PROTOCOL["max_new_tokens"]
        for key in ("do_sample", "top_k", "top_p", "temperature", "no_repeat_ngram_size"):
            assert gen[key] == DEFAULT_PROTOCOL[key], (name, key)
        assert gen["until"] == ["<|endoftext|>"]


def test_the_prompt_lm_eval_sends_is_build_prompt(tasks: dict) -> None:
    for name, task in tasks.items():
        docs = list(task.eval_docs)
        assert docs, name
        for doc in docs:
            expected = build_prompt(doc["instruction"], doc["input"])
            assert task.doc_to_text(doc) == expected
            assert task.fewshot_context(doc, 0) == expected  # the full context, as lm-eval builds it
    sni = [(d["input"], d["output"]) for d in tasks["kdbench_real_sni"].eval_docs]
    assert sni == [("Once upon a time", [LONG, "short"])]  # prepare-eval kept the >= 11-GPT-2-token instance only


def test_lm_eval_rouge_l_equals_kdbench(tasks: dict) -> None:
    task = tasks["kdbench_gen_sni"]
    docs = list(task.eval_docs)
    assert len(docs) == len(CASES)
    per_doc = [task.process_results(doc, [prediction]) for doc, (_, prediction) in zip(docs, CASES, strict=True)]
    lm_eval_mean = task.aggregation()["rougeL"]([r["rougeL"] for r in per_doc])
    kdbench = [rouge_l(prediction.strip(), _references(doc)) for doc, prediction in CASES]
    assert 0 < statistics.fmean(kdbench) < 100
    assert kdbench[2] < 100  # partial overlap with every reference: "any reference scores" would give 1.0
    assert round(lm_eval_mean, 4) == round(statistics.fmean(kdbench), 4)


def _references(doc: dict) -> list[str]:
    return [doc["output"]] if isinstance(doc["output"], str) else doc["output"]


def _trained_tiny_model(path: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A byte-level BPE and a 1-layer GPT-2 fitted for 40 steps to the fixture examples (prompt +
    first reference + eos), so greedy responses are words rather than noise; saved to `path`."""
    docs = [doc for doc, _ in CASES]
    texts = [build_prompt(d["instruction"], d["input"]) + _references(d)[0] + "<|endoftext|>" for d in docs]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=512, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return model, tokenizer


def test_simple_evaluate_matches_kdbench_generation(workdir: Path, manager: TaskManager) -> None:
    import lm_eval

    new_tokens = 8
    model, tokenizer = _trained_tiny_model(workdir / "model")
    docs = [doc for doc, _ in CASES]
    prompts = [build_prompt(d["instruction"], d["input"]) for d in docs]
    ours = generate(model, tokenizer, prompts, seed=0, max_new_tokens=new_tokens, batch_size=1, do_sample=False)

    out = lm_eval.simple_evaluate(
        model="hf",
        # max_length = 256 prompt tokens + the new tokens: lm-eval keeps the last 256 prompt tokens
        model_args={"pretrained": str(workdir / "model"), "device": "cpu", "max_length": 256 + new_tokens},
        tasks=["kdbench_gen_vicuna"],
        task_manager=manager,
        gen_kwargs={"do_sample": False, "max_gen_toks": new_tokens},
        batch_size=1,
        log_samples=True,
    )
    samples = sorted(out["samples"]["kdbench_gen_vicuna"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == prompts
    assert [s["filtered_resps"][0].strip() for s in samples] == ours
    expected = statistics.fmean(rouge_l(text, _references(d)) for text, d in zip(ours, docs, strict=True))
    assert expected > 20  # the fitted model answers with words, so the comparison is not 0 == 0
    assert round(out["results"]["kdbench_gen_vicuna"]["rougeL,none"], 4) == round(expected, 4)
