"""The lm-eval tasks under evaluation/tasks: loaded offline through lm-eval's TaskManager with
include_path, on jsonl fixtures at the tasks' relative data paths (the paths the shipped grids
write). The prompt lm-eval sends is kdbench's, its ROUGE-L equals kdbench's, and a full
`lm_eval.simple_evaluate` on a tiny local GPT-2 generates what `kdbench.evaluate.generate` generates
(greedy) and reports the same score. `kdbench lm-eval` runs kdbench's tasks under the grid's
protocol over every decoding seed, a stock multiple-choice task on a local dataset once, and
`kdbench lm-eval-table` tabulates the results."""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
import yaml
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdbench.aggregate import lm_eval_main as lm_eval_table_main
from kdbench.errors import KDBenchError
from kdbench.evalsets import SETS
from kdbench.evalsets import main as prepare_eval
from kdbench.evaluate import DEFAULT_PROTOCOL, generate, rouge_l
from kdbench.lmeval import main as lm_eval_main
from kdbench.lmeval import resolve_tasks, task_inputs
from kdbench.prompts import build_prompt
from tests.conftest import local_arc_task

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
    """A folder laid out as the tasks expect (results/data/eval/<set>.jsonl and results/data/real/<set>.jsonl),
    made the working directory; the datasets cache goes there too."""
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
        folder = "results/data/eval" if kind == "gen" else "results/data/real"
        assert task.config.dataset_path == "json"
        assert task.config.dataset_kwargs["data_files"] == {"test": f"{folder}/{set_name}.jsonl"}
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


@pytest.fixture(scope="module")
def tiny_model(workdir: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """The fitted tiny GPT-2, saved to ``workdir/model``."""
    return _trained_tiny_model(workdir / "model")


def test_simple_evaluate_matches_kdbench_generation(workdir: Path, manager: TaskManager, tiny_model) -> None:
    import lm_eval

    new_tokens = 8
    model, tokenizer = tiny_model
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


# --- the tasks read what the shipped grids write ------------------------------------------------------

def test_every_task_reads_the_file_its_grid_writes(manager: TaskManager) -> None:
    """kdbench_gen_<set> reads what config/tiny.yaml generates and evaluates; kdbench_real_<set> what
    config/config.yaml's prepare_data jobs write and it evaluates."""
    from kdbench.config import workflow_grid

    repo = TASKS_DIR.parents[1]
    tiny = workflow_grid(workdir=repo)
    paper = workflow_grid(repo / "config/config.yaml", workdir=repo, require_data=False).data_files
    for spec in resolve_tasks(GEN_TASKS + REAL_TASKS, [TASKS_DIR]):
        kind, set_name = spec.name.removeprefix("kdbench_").split("_")
        assert spec.data == [tiny.data_files[set_name] if kind == "gen" else paper[set_name]], spec.name


# --- the files a task is made of: the workflow's inputs -----------------------------------------------

def test_task_inputs_are_the_yamls_their_functions_and_the_data(workdir: Path) -> None:
    specs = {s.name: s for s in resolve_tasks(["kdbench_gen", "kdbench_real_sni"], [TASKS_DIR])}
    assert list(specs) == [*sorted(GEN_TASKS), "kdbench_real_sni"]  # a tag's tasks, sorted as lm-eval does
    assert specs["kdbench_gen_dolly"].files == [str(TASKS_DIR / f) for f in
                                                ("kdbench_gen_dolly.yaml", "_default_template_yaml", "utils.py")]
    arc = local_arc_task(workdir)
    (spec,) = resolve_tasks([str(arc)], [TASKS_DIR])
    assert spec.name == "arc_local" and spec.files == [str(arc.resolve())]  # the stock YAML is the environment's
    assert spec.data == ["mc/arc_local.jsonl"]
    inputs = task_inputs(["kdbench_gen_vicuna", str(arc)], [TASKS_DIR])
    assert inputs == [*specs["kdbench_gen_vicuna"].files, "results/data/eval/vicuna.jsonl", str(arc.resolve()),
                      "mc/arc_local.jsonl"]


def test_unknown_tasks_and_missing_data_are_config_errors(workdir: Path) -> None:
    with pytest.raises(KDBenchError, match=r"unknown lm-eval task 'kdbench_gen_dolyl'.*lm_eval --tasks list"):
        resolve_tasks(["kdbench_gen_dolyl"], [TASKS_DIR])
    missing = workdir / "results" / "data" / "eval" / "dolly.jsonl"
    text = missing.read_text()
    missing.unlink()
    try:
        made = ["results/data/eval/dolly.jsonl"]  # the grid writes it: not an error
        assert task_inputs(["kdbench_gen_dolly"], [TASKS_DIR], made=made)
        with pytest.raises(KDBenchError, match=r"kdbench_gen_dolly reads results/data/eval/dolly.jsonl, which does not "
                                               r"exist and which this grid does not write \(its data: data/x.jsonl\)"):
            task_inputs(["kdbench_gen_dolly"], [TASKS_DIR], made=["data/x.jsonl"])
    finally:
        missing.write_text(text)


# --- kdbench lm-eval: every decoding seed, the grid's protocol, any task -------------------------------

@pytest.fixture(scope="module")
def lm_eval_run(workdir: Path, tiny_model) -> dict:
    """`kdbench lm-eval` on the fitted tiny model: a kdbench task sampled over two seeds, the stock
    multiple-choice task on its local file, under the tiny grid's short protocol."""
    model, out = workdir / "model", workdir / "lm_eval" / "fkl.json"
    assert lm_eval_main(["--model", str(model), "--tasks", "kdbench_gen_dolly", str(local_arc_task(workdir)),
                         "--include-path", str(TASKS_DIR), "--seeds", "10", "20", "--max-new-tokens", "12",
                         "--max-prompt-tokens", "256", "--batch-size", "2", "--run", "p/fkl/seed1",
                         "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_sampled_tasks_run_every_seed_under_the_grid_protocol(lm_eval_run: dict) -> None:
    dolly = lm_eval_run["tasks"]["kdbench_gen_dolly"]
    assert dolly["decoding"] == "sampled" and dolly["metric"] == "rougeL" and dolly["n_docs"] == len(CASES)
    assert list(dolly["per_seed"]) == ["10", "20"]
    assert {"rougeL", "exact_match"} <= set(dolly["per_seed"]["10"])
    assert dolly["per_seed"]["10"]["rougeL"] != dolly["per_seed"]["20"]["rougeL"]  # the seed changes the samples
    gen = dolly["generation_kwargs"]
    assert gen["max_gen_toks"] == 12 and gen["do_sample"] is True and gen["top_k"] == 0  # grid's length, paper's top-k
    assert lm_eval_run["protocol"]["max_new_tokens"] == 12 and lm_eval_run["run"] == "p/fkl/seed1"


def test_a_stock_multiple_choice_task_on_local_data_runs_once(lm_eval_run: dict) -> None:
    arc = lm_eval_run["tasks"]["arc_local"]
    assert arc["decoding"] == "scored" and "log-likelihood" in arc["why"]
    assert list(arc["per_seed"]) == ["10"] and arc["metric"] == "acc" and arc["n_docs"] == 3
    assert arc["per_seed"]["10"]["acc"] in {0.0, 1 / 3, 2 / 3, 1.0} and "acc_norm" in arc["per_seed"]["10"]


@pytest.mark.parametrize("prompt_format, decoding", [("minillm", "greedy"), ("chat", "greedy"), ("minillm", "sampled")])
def test_lm_eval_scores_what_kdbench_evaluate_scores(workdir: Path, tiny_model, prompt_format: str,
                                                     decoding: str) -> None:
    """Under the grid's protocol `kdbench lm-eval` reports, per task and seed, the score `kdbench
    evaluate` gives the same model on the same set: greedy (evaluation.greedy: one seed), with
    --prompt-format chat too (the tokenizer's chat template around the instruction, kdbench's
    rendering), and sampled over two seeds on two sets in batches of 2 (kdbench's engine in both:
    each response seeded by the decoding seed, its position and its prompt, so the same samples)."""
    from kdbench.evaluate import main as evaluate_main

    model = workdir / "model"
    if prompt_format == "chat":
        chat = workdir / "chat_model"
        shutil.copytree(model, chat, dirs_exist_ok=True)
        config = json.loads((chat / "tokenizer_config.json").read_text())
        # the MiniLLM no-input prompt around the user turn: the fitted model answers it with words
        config["chat_template"] = build_prompt("{{ messages[0].content }}")
        (chat / "tokenizer_config.json").write_text(json.dumps(config))
        model = chat
    sets = ["vicuna"] if decoding == "greedy" else ["dolly", "vicuna"]
    out = workdir / "lm_eval" / f"{decoding}_{prompt_format}.json"
    protocol = ["--max-new-tokens", "8", "--max-prompt-tokens", "256", "--prompt-format", prompt_format,
                *(["--batch-size", "1", "--greedy"] if decoding == "greedy" else ["--batch-size", "2"])]
    assert lm_eval_main(["--model", str(model), "--tasks", *[f"kdbench_gen_{x}" for x in sets],
                         "--include-path", str(TASKS_DIR), "--seeds", "10", "20", *protocol, "--out", str(out)]) == 0
    tasks = json.loads(out.read_text())["tasks"]
    seeds = ["10"] if decoding == "greedy" else ["10", "20"]
    for set_name in sets:
        theirs = tasks[f"kdbench_gen_{set_name}"]
        assert theirs["decoding"] == decoding and list(theirs["per_seed"]) == seeds
        ours = workdir / "evals" / f"{set_name}_{decoding}_{prompt_format}.json"
        assert evaluate_main(["--model", str(model), "--data", f"results/data/eval/{set_name}.jsonl", "--set", set_name,
                              "--seeds", "10", "20", *protocol, "--out", str(ours),
                              "--predictions", str(ours.with_suffix(".predictions.jsonl"))]) == 0
        expected = {seed: score["rougeL"] for seed, score in json.loads(ours.read_text())["per_seed"].items()}
        assert all(expected[seed] > 0 for seed in seeds)
        assert {seed: theirs["per_seed"][seed]["rougeL"] for seed in seeds} == pytest.approx(
            {seed: expected[seed] for seed in seeds}, abs=1e-9)
        if decoding == "sampled":
            assert expected["10"] != expected["20"]  # the seeds sample different responses: not a greedy tie
    if decoding == "greedy":
        assert "greedy" in tasks["kdbench_gen_vicuna"]["why"]
        records = [json.loads(line) for line in ours.with_suffix(".predictions.jsonl").read_text().splitlines()]
        plain = [build_prompt(d["instruction"], d["input"]) for d, _ in CASES]
        assert ([r["prompt"] for r in records] == plain) == (prompt_format == "minillm")  # chat: inputs in the user turn


def test_lm_eval_table_is_mean_and_std_over_seeds(workdir: Path, lm_eval_run: dict) -> None:
    """Two runs' results → one row per method, one column per task; each cell mean ± std over the
    run's seeds; the scored task is said to have run once; no Avg over different metrics."""
    folder = workdir / "lm_eval" / "p"
    for method, shift in (("teacher", 10.0), ("fkl", 0.0)):
        result = json.loads(json.dumps(lm_eval_run))
        for seed, scores in result["tasks"]["kdbench_gen_dolly"]["per_seed"].items():
            scores["rougeL"] += shift
        (folder / method).mkdir(parents=True, exist_ok=True)
        (folder / method / "seed1.json").write_text(json.dumps(result))
    md, csv = workdir / "tables" / "p.md", workdir / "tables" / "p.csv"
    files = [str(folder / m / "seed1.json") for m in ("fkl", "teacher")]
    assert lm_eval_table_main(["--results", *files, "--pair", "p", "--methods", "teacher", "fkl",
                               "--out-md", str(md), "--out-csv", str(csv)]) == 0
    stats = pd.read_csv(csv).set_index(["method", "task"])
    rouge = [s["rougeL"] for s in lm_eval_run["tasks"]["kdbench_gen_dolly"]["per_seed"].values()]
    assert stats.loc[("fkl", "kdbench_gen_dolly"), "mean"] == pytest.approx(statistics.fmean(rouge))
    assert stats.loc[("fkl", "kdbench_gen_dolly"), "std"] == pytest.approx(statistics.stdev(rouge))
    assert stats.loc[("teacher", "kdbench_gen_dolly"), "mean"] == pytest.approx(statistics.fmean(rouge) + 10)
    assert stats.loc[("fkl", "arc_local"), "n"] == 1 and stats.loc[("fkl", "arc_local"), "metric"] == "acc"
    text = md.read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == ["teacher", "fkl"] and "Avg" not in text
    assert "rougeL: kdbench_gen_dolly; acc: arc_local" in text and "arc_local (scored)" in text
    assert "≤12 new tokens" in text and "over 1–2 decoding seeds" in text


def test_lm_eval_table_refuses_to_pool_different_metrics(workdir: Path, lm_eval_run: dict) -> None:
    folder = workdir / "lm_eval" / "q"
    for method, metric in (("a", "rougeL"), ("b", "exact_match")):
        result = json.loads(json.dumps(lm_eval_run))
        result["tasks"]["kdbench_gen_dolly"]["metric"] = metric
        (folder / method).mkdir(parents=True, exist_ok=True)
        (folder / method / "seed1.json").write_text(json.dumps(result))
    with pytest.raises(KDBenchError, match="kdbench_gen_dolly: results with different metrics"):
        lm_eval_table_main(["--results", str(folder / "a/seed1.json"), str(folder / "b/seed1.json"), "--pair", "q",
                            "--out-md", str(workdir / "x.md"), "--out-csv", str(workdir / "x.csv")])


def test_a_group_of_tasks_resolves_to_its_members_and_its_file(workdir: Path) -> None:
    group = workdir / "groups" / "two.yaml"
    group.parent.mkdir(exist_ok=True)
    group.write_text(yaml.safe_dump({"group": "kdbench_two", "task": ["kdbench_gen_vicuna", "kdbench_real_sni"]}))
    for names, include in (([str(group)], [TASKS_DIR]), (["kdbench_two"], [TASKS_DIR, group.parent])):
        specs = resolve_tasks(names, include)
        assert [s.name for s in specs] == ["kdbench_gen_vicuna", "kdbench_real_sni"]
        assert specs[1].files[0] == str(group.resolve()) and specs[1].data == ["results/data/real/sni.jsonl"]
