"""kdbench.evalsets: each real set read from a fixture in its upstream or MiniLLM layout (counts and
ids checked), malformed records reported with file and line, the >= 11 GPT-2-token filter, the S-NI
per-task cap, the Dolly splits (seeded for the raw release, MiniLLM's first-1,000 rule), the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdbench import evalsets
from kdbench.errors import KDBenchError
from kdbench.evalsets import (
    MIN_RESPONSE_TOKENS,
    Options,
    gpt2_lengths,
    load_examples,
    main,
    prepare,
    split_dolly,
)
from kdbench.jsonl import read_jsonl
from kdbench.prompts import build_prompt

LONG = "one two three four five six seven eight nine ten eleven"  # exactly 11 GPT-2 tokens
TEN = "one two three four five six seven eight nine ten"  # 10


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prompts_and_refs(examples: list[dict]) -> list[tuple[str, list[str]]]:
    return [(build_prompt(ex["instruction"], ex["input"]), ex["output"]) for ex in examples]


def ids(examples: list[dict]) -> list[str]:
    return [ex["id"] for ex in examples]


# ---------------------------------------------------------------- each set, each format


def test_dolly_raw(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", [
        {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
    ])
    examples = load_examples("dolly", "raw", src)
    assert prompts_and_refs(examples) == [
        (build_prompt("Who wrote Hamlet?"), ["Shakespeare."]),
        (build_prompt("Summarise.", "A long text."), ["Short."]),
    ]
    assert ids(examples) == ["dolly-1", "dolly-2"]


def test_minillm_format_any_set(tmp_path: Path) -> None:
    prompt = build_prompt("Name a colour.")
    src = write_jsonl(tmp_path / "valid.jsonl", [
        {"instruction": "Name a colour.", "prompt": prompt, "input": "", "output": "Red."},
        {"topic": "task1", "instruction": "Copy.", "input": "a b", "output": ["a b", "a, b"]},
        {"instruction": "No input key.", "output": "x"},
    ])
    for set_name in ("dolly", "selfinst", "vicuna"):
        examples = load_examples(set_name, "minillm", src)
        assert prompts_and_refs(examples) == [
            (prompt, ["Red."]),
            (build_prompt("Copy.", "a b"), ["a b", "a, b"]),
            (build_prompt("No input key."), ["x"]),
        ]
        assert ids(examples) == [f"{set_name}-1", f"{set_name}-2", f"{set_name}-3"]


def test_selfinst_raw_one_example_per_instance(tmp_path: Path) -> None:
    # the real file: 252 records of one instance each, ids user_oriented_task_0..251
    src = write_jsonl(tmp_path / "user_oriented_instructions.jsonl", [
        {"id": f"user_oriented_task_{i}", "motivation_app": "Grammarly", "instruction": f"Task {i}.",
         "instances": [{"input": "" if i % 2 else f"input {i}", "output": f"Answer {i}."}]}
        for i in range(252)
    ])
    prepared = prepare("selfinst", "raw", load_examples("selfinst", "raw", src))
    assert len(prepared.examples) == 252 and prepared.dropped == {}
    assert ids(prepared.examples) == [f"user_oriented_task_{i}" for i in range(252)]
    assert prompts_and_refs(prepared.examples[:2]) == [
        (build_prompt("Task 0.", "input 0"), ["Answer 0."]), (build_prompt("Task 1."), ["Answer 1."])]
    two = write_jsonl(tmp_path / "two.jsonl", [
        {"id": "user_oriented_task_0", "instruction": "Fix the grammar.",
         "instances": [{"input": "he go home", "output": "He goes home."}, {"input": "", "output": "Nothing."}]}])
    examples = load_examples("selfinst", "raw", two)
    assert ids(examples) == ["user_oriented_task_0", "user_oriented_task_0#1"]
    assert prompts_and_refs(examples) == [(build_prompt("Fix the grammar.", "he go home"), ["He goes home."]),
                                          (build_prompt("Fix the grammar."), ["Nothing."])]


@pytest.fixture
def vicuna_release(tmp_path: Path) -> tuple[Path, Path]:
    """question.jsonl and answer_gpt35.jsonl of lm-sys/vicuna-blog-eval, 80 of each (answers in
    another order, as the real file may have them)."""
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": q, "text": f"Question {q}?", "category": "generic"} for q in range(1, 81)])
    answers = write_jsonl(tmp_path / "answer_gpt35.jsonl", [
        {"answer_id": f"a{q}", "model_id": "gpt-3.5-turbo:20230327", "question_id": q, "text": f"Answer {q}.",
         "metadata": {}} for q in range(80, 0, -1)])
    return questions, answers


def test_vicuna_raw_joins_the_gpt35_references(vicuna_release: tuple[Path, Path]) -> None:
    questions, answers = vicuna_release
    examples = load_examples("vicuna", "raw", questions, references=answers)
    assert len(examples) == 80
    assert ids(examples) == [f"vicuna-{q}" for q in range(1, 81)]
    assert prompts_and_refs(examples[:1]) == [(build_prompt("Question 1?"), ["Answer 1."])]
    assert examples[79]["output"] == ["Answer 80."]


def test_vicuna_references_in_llm_judge_layout_and_in_the_record(tmp_path: Path) -> None:
    questions = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 61, "category": "coding", "turns": ["Write a program."]},
        {"question_id": 62, "category": "coding", "turns": ["Write another."]},
    ])
    answers = write_jsonl(tmp_path / "gpt-4.jsonl", [
        {"question_id": q, "answer_id": "x", "model_id": "gpt-4", "choices": [{"index": 0, "turns": [f"Code {q}."]}]}
        for q in (62, 61)])
    assert prompts_and_refs(load_examples("vicuna", "raw", questions, references=answers)) == [
        (build_prompt("Write a program."), ["Code 61."]), (build_prompt("Write another."), ["Code 62."])]
    inline = write_jsonl(tmp_path / "inline.jsonl", [
        {"question_id": 1, "text": "How can I sleep better?", "output": "Keep a schedule."},
        {"question_id": 2, "turns": ["What is 2+2?"], "reference": ["4", "four"]},
    ])
    assert prompts_and_refs(load_examples("vicuna", "raw", inline)) == [
        (build_prompt("How can I sleep better?"), ["Keep a schedule."]), (build_prompt("What is 2+2?"), ["4", "four"])]


def test_vicuna_reference_missing_for_a_question(vicuna_release: tuple[Path, Path], tmp_path: Path) -> None:
    questions, answers = vicuna_release
    short = write_jsonl(tmp_path / "some.jsonl", [json.loads(line) for line in answers.read_text().splitlines()[:79]])
    with pytest.raises(KDBenchError, match=r"question\.jsonl, line 1: question 1 has no answer in .*some\.jsonl"):
        load_examples("vicuna", "raw", questions, references=short)


@pytest.mark.parametrize("fmt", ["raw", "minillm"])
def test_vicuna_without_references_says_where_to_get_them(tmp_path: Path, fmt: str) -> None:
    record = {"question_id": 1, "text": "Hi?", "category": "generic"} if fmt == "raw" else {"instruction": "Hi?"}
    src = write_jsonl(tmp_path / "question.jsonl", [record])
    with pytest.raises(KDBenchError, match=r"question\.jsonl, line 1: ROUGE-L needs a reference") as err:
        load_examples("vicuna", fmt, src)
    message = str(err.value)
    assert "eval/table/answer/answer_gpt35.jsonl" in message and "--references" in message
    assert "MiniLLM/Vicuna" in message and "--format minillm" in message


def sni_task(definition: list[str], instances: list[tuple[str, list[str]]], prefix: str = "i") -> dict:
    return {
        "Contributors": ["x"], "Source": ["y"], "Categories": ["Text Completion"],
        "Definition": definition, "Positive Examples": [], "Negative Examples": [],
        "Instances": [{"id": f"{prefix}{k}", "input": inp, "output": out} for k, (inp, out) in enumerate(instances)],
    }


def natural_instructions(root: Path, tasks: dict[str, dict], test_tasks: list[str]) -> Path:
    """A natural-instructions clone: tasks/<name>.json and splits/default/test_tasks.txt."""
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    for name, task in tasks.items():
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task, indent=4))
    (root / "splits" / "default" / "test_tasks.txt").write_text("".join(f"{name}\n" for name in test_tasks))
    (root / "splits" / "default" / "train_tasks.txt").write_text("task001_train\n")
    return root


def test_sni_raw_the_official_test_tasks_capped_and_filtered(tmp_path: Path) -> None:
    # task620: 120 instances, every 3rd one short -> the first 100 are used, of which 67 are long enough
    many = [(f"q{k}", ["short" if k % 3 == 2 else LONG, "alt"]) for k in range(120)]
    clone = natural_instructions(tmp_path / "natural-instructions", {
        "task001_train": sni_task(["A training task."], [("t", [LONG])], prefix="task001-"),
        "task620_b": sni_task(["Second.", "Carefully."], many, prefix="task620-"),
        "task102_a": sni_task(["First."], [("x", [LONG]), ("y", [TEN])], prefix="task102-"),
    }, test_tasks=["task620_b", "task102_a"])
    examples = load_examples("sni", "raw", clone)
    assert len(examples) == 122 and {ex["task"] for ex in examples} == {"task620_b", "task102_a"}  # no train task
    prepared = prepare("sni", "raw", examples)
    assert prepared.dropped == {"past the first 100 instances of a task": 20,
                                f"first reference under {MIN_RESPONSE_TOKENS} GPT-2 tokens": 33 + 1}
    kept = prepared.examples
    assert len(kept) == 67 + 1
    assert ids(kept)[:3] == ["task620-0", "task620-1", "task620-3"] and ids(kept)[-1] == "task102-0"
    assert kept[0]["instruction"] == "Second.\n\nCarefully." and kept[0]["output"] == [LONG, "alt"]
    assert kept[-1] == {"id": "task102-0", "instruction": "First.", "input": "x", "output": [LONG], "task": "task102_a"}
    assert len(prepare("sni", "raw", examples, Options(per_task=0)).examples) == 80 + 1


def test_sni_raw_task_file_and_folder(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "task002_b.json").write_text(json.dumps(sni_task(["Second task."], [("q3", [LONG])])))
    (tasks / "task001_a.json").write_text(json.dumps(sni_task(["Do it."], [("q1", [LONG, "short"]), ("q2", ["x"])])))
    (tasks / "README.md").write_text("not a task")
    first = [(build_prompt("Do it.", "q1"), [LONG, "short"]), (build_prompt("Do it.", "q2"), ["x"])]
    assert prompts_and_refs(load_examples("sni", "raw", tasks / "task001_a.json")) == first
    assert prompts_and_refs(load_examples("sni", "raw", tasks)) == first + [(build_prompt("Second task.", "q3"), [LONG])]
    (tmp_path / "splits" / "default").mkdir(parents=True)
    (tmp_path / "splits" / "default" / "test_tasks.txt").write_text("task001_a\ntask999_gone\n")
    with pytest.raises(KDBenchError, match=r"test_tasks\.txt names 1 task\(s\) missing .*task999_gone\.json"):
        load_examples("sni", "raw", tmp_path)


def test_unni_raw_instances_without_constraints(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "core_data.jsonl", [
        {"instruction": "Is the statement true?", "instances": [
            {"instruction_with_input": "Is the statement true? Sky is blue.", "input": "Sky is blue.",
             "constraints": "The output should be 'True' or 'False'.", "output": "True"},
            {"instruction_with_input": "...", "input": "Fire is cold.", "constraints": "None.", "output": "False"},
        ], "reformulations": [{"instruction": "Tell me if this holds: {INPUT}", "instruction_with_input": "...",
                               "input": "Sky is blue.", "output": "True"}]},
        {"instruction": "Explain.", "instances": [{"input": "", "constraints": "None.", "output": LONG}]},
    ])
    examples = load_examples("unni", "raw", src)
    assert prompts_and_refs(examples) == [
        (build_prompt("Is the statement true?", "Sky is blue."), ["True"]),
        (build_prompt("Is the statement true?", "Fire is cold."), ["False"]),
        (build_prompt("Explain."), [LONG]),
    ]
    assert ids(examples) == ["unni-1", "unni-1#1", "unni-2"]
    assert ids(prepare("unni", "raw", examples).examples) == ["unni-2"]


def test_unni_sample_raw_and_first_ten_thousand_minillm(tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "core_data.jsonl", [
        {"instruction": f"Task {i}.", "instances": [{"input": "", "constraints": "None.", "output": LONG}]}
        for i in range(300)])
    examples = load_examples("unni", "raw", raw)
    picked = prepare("unni", "raw", examples, Options(sample=100)).examples
    assert len(picked) == 100 and picked == prepare("unni", "raw", examples, Options(sample=100)).examples
    assert ids(picked) == sorted(ids(picked), key=ids(examples).index)  # kept in file order
    assert picked != prepare("unni", "raw", examples, Options(sample=100, seed=1)).examples
    minillm = write_jsonl(tmp_path / "valid.jsonl", [
        {"instruction": f"Task {i}.", "input": "", "output": LONG} for i in range(10_050)])
    prepared = prepare("unni", "minillm", load_examples("unni", "minillm", minillm))
    assert len(prepared.examples) == 10_000 and ids(prepared.examples)[-1] == "unni-10000"
    assert prepared.dropped == {f"first reference under {MIN_RESPONSE_TOKENS} GPT-2 tokens": 0, "past the first 10000": 50}


# ---------------------------------------------------------------- malformed records


GOOD = {
    ("dolly", "raw"): {"instruction": "i", "context": "", "response": "r", "category": "c"},
    ("selfinst", "raw"): {"instruction": "i", "instances": [{"input": "", "output": "o"}]},
    ("vicuna", "raw"): {"question_id": 1, "text": "q", "category": "c", "output": "o"},
    ("unni", "raw"): {"instruction": "i", "instances": [{"input": "x", "output": "o", "constraints": ""}]},
    ("sni", "minillm"): {"instruction": "i", "input": "", "output": ["o"]},
}


@pytest.mark.parametrize(
    ("set_name", "fmt", "bad", "field"),
    [
        ("dolly", "raw", {"instruction": "i", "context": "", "category": "c"}, "response"),
        ("dolly", "raw", {"instruction": "i", "response": "r"}, "context"),
        ("dolly", "raw", {"instruction": "  ", "context": "", "response": "r"}, "instruction"),
        ("dolly", "raw", {"instruction": "i", "context": None, "response": "r"}, "context"),
        ("selfinst", "raw", {"instruction": "i", "instances": []}, "instances"),
        ("selfinst", "raw", {"instruction": "i", "instances": [{"input": ""}]}, r"instances\[0\].*output"),
        ("vicuna", "raw", {"question_id": 2, "category": "c", "output": "o"}, "text"),
        ("unni", "raw", {"instruction": "i", "instances": [{"input": "x", "output": ""}]}, "output"),
        ("sni", "minillm", {"instruction": "i", "input": "", "output": []}, "output"),
        ("sni", "minillm", {"instruction": "i", "input": 3, "output": "o"}, "input"),
        ("sni", "minillm", {"input": "", "output": "o"}, "instruction"),
    ],
)
def test_malformed_record_names_file_line_and_field(
    tmp_path: Path, set_name: str, fmt: str, bad: dict, field: str
) -> None:
    src = write_jsonl(tmp_path / "set.jsonl", [GOOD[set_name, fmt], bad])
    with pytest.raises(KDBenchError, match=rf"set\.jsonl, line 2.*{field}"):
        load_examples(set_name, fmt, src)


def test_broken_json_lines_and_files(tmp_path: Path) -> None:
    src = tmp_path / "set.jsonl"
    src.write_text(json.dumps(GOOD["dolly", "raw"]) + "\n\n{not json\n")
    with pytest.raises(KDBenchError, match=r"set\.jsonl, line 3: not valid JSON"):
        load_examples("dolly", "raw", src)
    src.write_text("[1, 2]\n")
    with pytest.raises(KDBenchError, match=r"line 1: expected one JSON object"):
        load_examples("dolly", "raw", src)
    src.write_text("\n\n")
    with pytest.raises(KDBenchError, match="no records"):
        load_examples("dolly", "raw", src)
    with pytest.raises(KDBenchError, match=r"no such file.*databricks-dolly-15k\.jsonl.*huggingface\.co"):
        load_examples("dolly", "raw", tmp_path / "missing.jsonl")
    task = tmp_path / "task1.json"
    task.write_text('{"Definition": ["d"],\n "Instances": [}')
    with pytest.raises(KDBenchError, match=r"task1\.json, line 2: not valid JSON"):
        load_examples("sni", "raw", task)
    task.write_text(json.dumps(sni_task(["d"], [("q", [])])))
    with pytest.raises(KDBenchError, match=r"task1\.json, Instances\[0\].*output"):
        load_examples("sni", "raw", task)


# ---------------------------------------------------------------- the >= 11-token filter


def test_length_is_counted_in_gpt2_tokens() -> None:
    # MiniLLM's sinst buckets: "B_contradicts_A" (one word, 7 tokens) is in 6_10, and
    # "Cuts fear for 'most vulnerable' students in East Sussex" (9 words, 12 tokens) in 11_
    assert gpt2_lengths(["B_contradicts_A", "Cuts fear for 'most vulnerable' students in East Sussex", LONG, TEN]) == [
        7, 12, 11, 10]


def test_short_filter_uses_the_first_reference(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "valid.jsonl", [
        {"instruction": "a", "input": "", "output": [LONG, "short"]},        # kept: first has 11 tokens
        {"instruction": "b", "input": "", "output": [TEN, LONG + " more"]},  # dropped: first has 10
        {"instruction": "c", "input": "", "output": "Cuts fear for 'most vulnerable' students in East Sussex"},
        {"instruction": "d", "input": "", "output": "B_contradicts_A"},     # dropped
    ])
    for set_name in ("sni", "unni"):
        prepared = prepare(set_name, "minillm", load_examples(set_name, "minillm", src))
        assert [ex["instruction"] for ex in prepared.examples] == ["a", "c"]
        assert prepared.n_read == 4
        assert prepared.dropped[f"first reference under {MIN_RESPONSE_TOKENS} GPT-2 tokens"] == 2
    # the other sets keep short references
    assert len(prepare("selfinst", "minillm", load_examples("selfinst", "minillm", src)).examples) == 4


def test_cli_reports_kept_and_filtered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = sni_task(["Explain."], [("q1", [LONG]), ("q2", ["no"]), ("q3", [TEN])])
    (tasks / "task1.json").write_text(json.dumps(task))
    out = tmp_path / "out" / "sni.jsonl"
    assert main(["--set", "sni", "--format", "raw", "--source", str(tasks), "--out", str(out)]) == 0
    assert ("read 3 examples, dropped 0 (past the first 100 instances of a task), dropped 2 (first reference "
            "under 11 GPT-2 tokens); kept 1") in capsys.readouterr().out
    assert read_jsonl(out) == [{"id": "i0", "instruction": "Explain.", "input": "q1", "output": [LONG], "task": "task1"}]


def test_cli_vicuna_references(vicuna_release: tuple[Path, Path], tmp_path: Path) -> None:
    questions, answers = vicuna_release
    out = tmp_path / "vicuna.jsonl"
    main(["--set", "vicuna", "--format", "raw", "--source", str(questions), "--references", str(answers),
          "--out", str(out)])
    written = read_jsonl(out)
    assert len(written) == 80 and written[0] == {"id": "vicuna-1", "instruction": "Question 1?", "input": "",
                                                 "output": ["Answer 1."]}
    with pytest.raises(KDBenchError, match="--references applies to raw Vicuna only"):
        main(["--set", "dolly", "--format", "raw", "--source", str(questions), "--references", str(answers),
              "--out", str(out)])


# ---------------------------------------------------------------- the Dolly splits


@pytest.fixture
def raw_dolly(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", [
        {"instruction": f"Question {i}?", "context": "", "response": " ".join(["word"] * (1 + i % 50)),
         "category": "qa"}
        for i in range(2000)
    ])


def test_dolly_split_is_deterministic_disjoint_and_sized(raw_dolly: Path) -> None:
    examples = load_examples("dolly", "raw", raw_dolly)
    parts = split_dolly(examples)
    assert {name: len(part) for name, part in parts.items()} == {"test": 500, "valid": 1000, "train": 500}
    names = {name: ids(part) for name, part in parts.items()}
    assert set(names["test"]).isdisjoint(names["valid"]) and set(names["valid"]).isdisjoint(names["train"])
    assert set(names["test"]).isdisjoint(names["train"])
    assert sorted(names["test"] + names["valid"] + names["train"]) == sorted(ids(examples))
    order = ids(examples)
    assert names["test"] == sorted(names["test"], key=order.index)  # written in file order
    assert split_dolly(load_examples("dolly", "raw", raw_dolly)) == parts
    assert split_dolly(examples, seed=7)["test"] != parts["test"]
    with pytest.raises(KDBenchError, match="too few"):
        split_dolly(examples[:1500])


def test_dolly_cli_split_seed_and_length_filter(
    raw_dolly: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_out, train_out = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    main(["--set", "dolly", "--format", "raw", "--source", str(raw_dolly), "--out", str(test_out)])
    assert "split test 500 / valid 1000 / train 500; wrote test; kept 500" in capsys.readouterr().out
    main(["--set", "dolly", "--format", "raw", "--source", str(raw_dolly), "--out", str(train_out),
          "--split", "train", "--seed", "42"])
    test, train = read_jsonl(test_out), read_jsonl(train_out)
    assert len(test) == 500 and len(train) == 500
    assert {r["id"] for r in test}.isdisjoint(r["id"] for r in train)
    assert all(isinstance(r["output"], list) for r in test)

    main(["--set", "dolly", "--format", "raw", "--source", str(raw_dolly), "--out", str(train_out),
          "--split", "train", "--max-response-words", "40"])
    # each response length 1..50 words occurs 40 times: lengths 41..50 make 400 examples
    assert "dropped 400 (response over 40 words); split test 500 / valid 1000 / train 100" in capsys.readouterr().out
    assert all(evalsets.word_count(r["output"][0]) <= 40 for r in read_jsonl(train_out))


@pytest.fixture
def minillm_dolly(tmp_path: Path) -> Path:
    """MiniLLM/dolly as downloaded: raw.jsonl (train and valid) and valid.jsonl (the 500 test examples)."""
    root = tmp_path / "minillm" / "dolly"
    root.mkdir(parents=True)
    long_input = " ".join(["context"] * 300)
    write_jsonl(root / "raw.jsonl", [
        {"instruction": f"Train {i}?", "input": long_input if i % 100 == 7 else "", "output": f"Answer {i}."}
        for i in range(1400)])
    write_jsonl(root / "valid.jsonl", [
        {"instruction": f"Test {i}?", "prompt": build_prompt(f"Test {i}?"), "input": "", "output": f"Answer {i}."}
        for i in range(500)])
    return root


def test_minillm_dolly_splits_are_the_lineage_s(minillm_dolly: Path, tmp_path: Path) -> None:
    sizes = {}
    for split in ("train", "valid", "test"):
        examples = load_examples("dolly", "minillm", minillm_dolly, split=split)
        prepared = prepare("dolly", "minillm", examples, Options(split=split))
        sizes[split] = ids(prepared.examples)
    assert len(sizes["test"]) == 500 and sizes["test"][0] == "dolly-1"
    assert sizes["valid"] == [f"dolly-{n}" for n in range(1, 1001)]  # the first 1,000 lines of raw.jsonl
    assert sizes["train"] == [f"dolly-{n}" for n in range(1001, 1401)]
    out = tmp_path / "test.jsonl"
    main(["--set", "dolly", "--format", "minillm", "--source", str(minillm_dolly), "--split", "test", "--out", str(out)])
    assert read_jsonl(out)[0]["instruction"] == "Test 0?" and len(read_jsonl(out)) == 500
    with pytest.raises(KDBenchError, match=r"no raw\.jsonl in this folder.*MiniLLM/dolly"):
        (minillm_dolly / "raw.jsonl").unlink()
        load_examples("dolly", "minillm", minillm_dolly, split="train")


def test_minillm_dolly_prompt_length_filter(minillm_dolly: Path, tmp_path: Path) -> None:
    """process_data_dolly.py drops prompts over 256 tokens: here counted with GPT-2's tokenizer."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=evalsets._gpt2()).save_pretrained(tmp_path / "gpt2")
    examples = load_examples("dolly", "minillm", minillm_dolly, split="valid")
    prepared = prepare("dolly", "minillm", examples,
                       Options(split="valid", max_prompt_tokens=256, tokenizer=str(tmp_path / "gpt2")))
    assert prepared.dropped == {"prompt over 256 tokens": 10}  # lines 8, 108, ..., 908 carry a 300-word input
    assert len(prepared.examples) == 990 and "dolly-8" not in ids(prepared.examples)


def test_options_are_rejected_where_they_do_not_apply(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "valid.jsonl", [GOOD["sni", "minillm"]])
    out = str(tmp_path / "o.jsonl")
    with pytest.raises(KDBenchError, match="--split do\\(es\\) not apply to the minillm sni source"):
        main(["--set", "sni", "--format", "minillm", "--source", str(src), "--out", out, "--split", "test"])
    with pytest.raises(KDBenchError, match="--seed do\\(es\\) not apply"):
        main(["--set", "sni", "--format", "minillm", "--source", str(src), "--out", out, "--seed", "1"])
    with pytest.raises(KDBenchError, match="--per-task do\\(es\\) not apply"):
        main(["--set", "unni", "--format", "minillm", "--source", str(src), "--out", out, "--per-task", "5"])
    with pytest.raises(KDBenchError, match="--max-prompt-tokens and --tokenizer go together"):
        main(["--set", "dolly", "--format", "minillm", "--source", str(src), "--out", out, "--split", "valid",
              "--max-prompt-tokens", "256"])
