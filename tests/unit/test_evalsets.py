"""kdbench.evalsets: each real set read from a fixture in its upstream or MiniLLM format, malformed
records reported with file and line, the >= 11-word filter, the deterministic Dolly split, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdbench import evalsets
from kdbench.errors import KDBenchError
from kdbench.evalsets import (
    MIN_RESPONSE_WORDS,
    load_examples,
    main,
    prepare,
    split_dolly,
)
from kdbench.jsonl import read_jsonl
from kdbench.prompts import build_prompt

LONG = "one two three four five six seven eight nine ten eleven"  # exactly 11 words
TEN = "one two three four five six seven eight nine ten"


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prompts_and_refs(examples: list[dict]) -> list[tuple[str, list[str]]]:
    return [(build_prompt(ex["instruction"], ex["input"]), ex["output"]) for ex in examples]


# ---------------------------------------------------------------- each set, each format


def test_dolly_raw(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", [
        {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
    ])
    assert prompts_and_refs(load_examples("dolly", "raw", src)) == [
        (build_prompt("Who wrote Hamlet?"), ["Shakespeare."]),
        (build_prompt("Summarise.", "A long text."), ["Short."]),
    ]


def test_minillm_format_any_set(tmp_path: Path) -> None:
    prompt = build_prompt("Name a colour.")
    src = write_jsonl(tmp_path / "valid.jsonl", [
        {"instruction": "Name a colour.", "prompt": prompt, "input": "", "output": "Red."},
        {"instruction": "Copy.", "input": "a b", "output": ["a b", "a, b"]},
        {"instruction": "No input key.", "output": "x"},
    ])
    for set_name in ("dolly", "selfinst", "vicuna"):
        assert prompts_and_refs(load_examples(set_name, "minillm", src)) == [
            (prompt, ["Red."]),
            (build_prompt("Copy.", "a b"), ["a b", "a, b"]),
            (build_prompt("No input key."), ["x"]),
        ]


def test_selfinst_raw_one_example_per_instance(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "user_oriented_instructions.jsonl", [
        {"id": "user_oriented_task_0", "motivation_app": "Grammarly", "instruction": "Fix the grammar.",
         "instances": [{"input": "he go home", "output": "He goes home."}, {"input": "", "output": "Nothing."}]},
        {"id": "user_oriented_task_1", "motivation_app": "Gmail", "instruction": "Write a greeting.",
         "instances": [{"input": "", "output": "Hello!"}]},
    ])
    assert prompts_and_refs(load_examples("selfinst", "raw", src)) == [
        (build_prompt("Fix the grammar.", "he go home"), ["He goes home."]),
        (build_prompt("Fix the grammar."), ["Nothing."]),
        (build_prompt("Write a greeting."), ["Hello!"]),
    ]


def test_vicuna_raw_with_references(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "text": "How can I sleep better?", "category": "generic", "output": "Keep a schedule."},
        {"question_id": 2, "category": "math", "turns": ["What is 2+2?"], "reference": ["4", "four"]},
    ])
    assert prompts_and_refs(load_examples("vicuna", "raw", src)) == [
        (build_prompt("How can I sleep better?"), ["Keep a schedule."]),
        (build_prompt("What is 2+2?"), ["4", "four"]),
    ]


@pytest.mark.parametrize("fmt", ["raw", "minillm"])
def test_vicuna_without_references_says_why(tmp_path: Path, fmt: str) -> None:
    record = {"question_id": 1, "text": "Hi?", "category": "generic"} if fmt == "raw" else {"instruction": "Hi?"}
    src = write_jsonl(tmp_path / "question.jsonl", [record])
    with pytest.raises(KDBenchError, match=r"question\.jsonl, line 1: ROUGE-L needs a reference.*--format minillm"):
        load_examples("vicuna", fmt, src)


def sni_task(definition: list[str], instances: list[tuple[str, list[str]]]) -> dict:
    return {
        "Contributors": ["x"], "Source": ["y"], "Categories": ["Text Completion"],
        "Definition": definition, "Positive Examples": [], "Negative Examples": [],
        "Instances": [{"id": f"i{k}", "input": inp, "output": out} for k, (inp, out) in enumerate(instances)],
    }


def test_sni_raw_task_file_and_directory(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "task002_b.json").write_text(json.dumps(sni_task(["Second task."], [("q3", [LONG])])))
    first_task = sni_task(["Do it.", "Carefully."], [("q1", [LONG, "short"]), ("q2", ["x"])])
    (tasks / "task001_a.json").write_text(json.dumps(first_task))
    (tasks / "README.md").write_text("not a task")
    first = [
        (build_prompt("Do it.\n\nCarefully.", "q1"), [LONG, "short"]),
        (build_prompt("Do it.\n\nCarefully.", "q2"), ["x"]),
    ]
    assert prompts_and_refs(load_examples("sni", "raw", tasks / "task001_a.json")) == first
    second = [(build_prompt("Second task.", "q3"), [LONG])]
    assert prompts_and_refs(load_examples("sni", "raw", tasks)) == first + second


def test_unni_raw_instances_constraints_and_reformulations(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "core_data.jsonl", [{
        "instruction": "Is the statement true?",
        "instances": [
            {"instruction_with_input": "Is the statement true? Sky is blue.", "input": "Sky is blue.",
             "constraints": "The output should be 'True' or 'False'.", "output": "True"},
            {"instruction_with_input": "...", "input": "Fire is cold.", "constraints": "None.", "output": "False"},
        ],
        "reformulations": [{"instruction": "Tell me if this holds: {INPUT}", "instruction_with_input": "...",
                            "input": "Sky is blue.", "output": "True"}],
    }])
    assert prompts_and_refs(load_examples("unni", "raw", src)) == [
        (build_prompt("Is the statement true?\n\nThe output should be 'True' or 'False'.", "Sky is blue."), ["True"]),
        (build_prompt("Is the statement true?", "Fire is cold."), ["False"]),
    ]


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
    with pytest.raises(KDBenchError, match="no such file"):
        load_examples("dolly", "raw", tmp_path / "missing.jsonl")
    task = tmp_path / "task1.json"
    task.write_text('{"Definition": ["d"],\n "Instances": [}')
    with pytest.raises(KDBenchError, match=r"task1\.json, line 2: not valid JSON"):
        load_examples("sni", "raw", task)
    task.write_text(json.dumps(sni_task(["d"], [("q", [])])))
    with pytest.raises(KDBenchError, match=r"task1\.json, Instances\[0\].*output"):
        load_examples("sni", "raw", task)


# ---------------------------------------------------------------- the >= 11-word filter


def test_short_filter_uses_the_first_reference(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "valid.jsonl", [
        {"instruction": "a", "input": "", "output": [LONG, "short"]},        # kept: first has 11 words
        {"instruction": "b", "input": "", "output": [TEN, LONG + " more"]},  # dropped: first has 10
        {"instruction": "c", "input": "", "output": LONG},                   # kept
        {"instruction": "d", "input": "", "output": "tiny"},                 # dropped
    ])
    for set_name in ("sni", "unni"):
        prepared = prepare(set_name, "minillm", load_examples(set_name, "minillm", src))
        assert [ex["instruction"] for ex in prepared.examples] == ["a", "c"]
        assert prepared.n_read == 4
        assert prepared.dropped == {f"first reference under {MIN_RESPONSE_WORDS} words": 2}
    # the other sets keep short references
    assert len(prepare("selfinst", "minillm", load_examples("selfinst", "minillm", src)).examples) == 4


def test_cli_reports_kept_and_filtered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = sni_task(["Explain."], [("q1", [LONG]), ("q2", ["no"]), ("q3", [TEN])])
    (tasks / "task1.json").write_text(json.dumps(task))
    out = tmp_path / "out" / "sni.jsonl"
    assert main(["--set", "sni", "--format", "raw", "--source", str(tasks), "--out", str(out)]) == 0
    assert "read 3 examples, dropped 2 (first reference under 11 words); kept 1" in capsys.readouterr().out
    assert read_jsonl(out) == [{"instruction": "Explain.", "input": "q1", "output": [LONG]}]


# ---------------------------------------------------------------- the Dolly split


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
    ids = {name: [ex["instruction"] for ex in part] for name, part in parts.items()}
    assert set(ids["test"]).isdisjoint(ids["valid"]) and set(ids["valid"]).isdisjoint(ids["train"])
    assert set(ids["test"]).isdisjoint(ids["train"])
    assert sorted(ids["test"] + ids["valid"] + ids["train"]) == sorted(ex["instruction"] for ex in examples)
    order = [ex["instruction"] for ex in examples]
    assert ids["test"] == sorted(ids["test"], key=order.index)  # written in file order
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
    assert {r["instruction"] for r in test}.isdisjoint(r["instruction"] for r in train)
    assert all(isinstance(r["output"], list) for r in test)

    main(["--set", "dolly", "--format", "raw", "--source", str(raw_dolly), "--out", str(train_out),
          "--split", "train", "--max-response-words", "40"])
    # each response length 1..50 words occurs 40 times: lengths 41..50 make 400 examples
    assert "dropped 400 (response over 40 words); split test 500 / valid 1000 / train 100" in capsys.readouterr().out
    assert all(evalsets.word_count(r["output"][0]) <= 40 for r in read_jsonl(train_out))


def test_dolly_only_options_are_rejected_elsewhere(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "valid.jsonl", [GOOD["sni", "minillm"]])
    with pytest.raises(KDBenchError, match="--split apply to raw Dolly only"):
        main(["--set", "dolly", "--format", "minillm", "--source", str(src), "--out", str(tmp_path / "o.jsonl"),
              "--split", "test"])
    with pytest.raises(KDBenchError, match="--seed apply to raw Dolly only"):
        main(["--set", "sni", "--format", "minillm", "--source", str(src), "--out", str(tmp_path / "o.jsonl"),
              "--seed", "1"])
