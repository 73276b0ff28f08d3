"""The generated instruction data: determinism, format, split separation, correct answers; and the jsonl reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdbench.datagen import (
    ANIMALS,
    CATEGORIES,
    EVAL_SETS,
    FRUITS,
    NUMBER_WORDS,
    PEOPLE,
    generate,
    main,
)
from kdbench.errors import KDBenchError
from kdbench.jsonl import read_jsonl, write_jsonl_atomic

SINGLE_REF_SETS = ("train", "valid", "dolly", "selfinst", "vicuna")
MULTI_REF_SETS = ("sni", "unni")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    paths = generate(tmp_path_factory.mktemp("data"), seed=0)
    return {name: read_jsonl(path) for name, path in paths.items()}


def canonical(record: dict) -> str:
    return record["output"] if isinstance(record["output"], str) else record["output"][0]


def split_list(text: str) -> list[str]:
    return text.split(", ") if ", " in text else text.split(" ")


def number(token: str) -> int:
    return int(token) if token.isdigit() else NUMBER_WORDS.index(token.lower())


def expected_answer(record: dict) -> str | None:
    """Recompute the canonical answer from the instruction and input alone; None for unchecked families."""
    instruction, text = record["instruction"], record["input"]
    if m := re.search(r"(\w+) (plus|minus|times) (\w+)", instruction):
        a, b = number(m[1]), number(m[3])
        c = {"plus": a + b, "minus": a - b, "times": a * b}[m[2]]
        answer = str(c) if m[1].isdigit() else NUMBER_WORDS[c]
        return f"{m[1]} {m[2]} {m[3]} is {answer}.".capitalize()
    if not text and (m := re.search(r"from (\w+) (?:up |down )?to (\w+)\.", instruction)):
        start, end = number(m[1]), number(m[2])
        step = 1 if start <= end else -1
        return " ".join(str(n) if m[1].isdigit() else NUMBER_WORDS[n] for n in range(start, end + step, step))
    if not text:
        return None
    if m := re.search(r"favorite (\w+) of (\w+)|Which (\w+) does (\w+) like", instruction):
        noun, person = (m[1], m[2]) if m[1] else (m[3], m[4])
        table = dict(re.split(r": | = ", row) for row in text.split("\n"))
        return f"The favorite {noun} of {person} is {table[person]}."
    words = split_list(text)
    if "alphabetical" in instruction or "A to Z" in instruction:
        return " ".join(sorted(words))
    if "reverse" in instruction.lower() or "backwards" in instruction:
        return " ".join(reversed(words))
    if "Repeat" in instruction or "Copy the list" in instruction or "same words" in instruction:
        return " ".join(words)
    if "first and last" in instruction or "first word and the last" in instruction:
        return f"The first word is {words[0]} and the last word is {words[-1]}."
    if m := re.search(r"(first|last) (\w+) words", instruction):
        k = number(m[2])
        return " ".join(words[:k] if m[1] == "first" else words[-k:])
    if m := re.search(r"(colors|animals|fruits|objects)", instruction):
        members = [w for w in words if w in CATEGORIES[m[1]]]
        if "many" in instruction or "Count" in instruction:
            noun = m[1] if len(members) != 1 else m[1][:-1]
            return f"There {'are' if len(members) != 1 else 'is'} {NUMBER_WORDS[len(members)]} {noun} in the list."
        return " ".join(members)
    if "words" in instruction and ("many" in instruction or "Count" in instruction):
        return f"There are {NUMBER_WORDS[len(words)]} words in the list."
    return None


def test_writes_every_split_with_requested_sizes(tmp_path: Path) -> None:
    paths = generate(tmp_path, seed=3, n_train=50, n_valid=7, n_eval={"dolly": 5, "vicuna": 500})
    assert set(paths) == {"train", "valid", *EVAL_SETS}
    assert paths["train"] == tmp_path / "train.jsonl"
    assert paths["sni"] == tmp_path / "eval" / "sni.jsonl"
    sizes = {name: len(read_jsonl(path)) for name, path in paths.items()}
    assert sizes == {"train": 50, "valid": 7, "dolly": 5, "selfinst": 100, "vicuna": 80, "sni": 100, "unni": 100}
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in paths.values())


def test_int_n_eval_applies_to_every_set_and_vicuna_is_capped(tmp_path: Path) -> None:
    paths = generate(tmp_path, n_train=20, n_valid=5, n_eval=90)
    assert [len(read_jsonl(paths[name])) for name in EVAL_SETS] == [90, 90, 80, 90, 90]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=7, n_train=300, n_valid=20, n_eval=30)
    b = generate(tmp_path / "b", seed=7, n_train=300, n_valid=20, n_eval=30)
    c = generate(tmp_path / "c", seed=8, n_train=300, n_valid=20, n_eval=30)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
        assert a[name].read_bytes() != c[name].read_bytes(), name


def test_records_have_the_minillm_fields(data: dict[str, list[dict]]) -> None:
    for name, records in data.items():
        for record in records:
            assert list(record) == ["instruction", "input", "output"], name
            assert isinstance(record["instruction"], str) and record["instruction"], name
            assert isinstance(record["input"], str), name
            if name in SINGLE_REF_SETS:
                assert isinstance(record["output"], str) and record["output"], name
            else:
                refs = record["output"]
                assert isinstance(refs, list) and 2 <= len(refs) <= 3, name
                assert len(set(refs)) == len(refs) and all(isinstance(r, str) and r for r in refs), name


def test_splits_do_not_overlap(data: dict[str, list[dict]]) -> None:
    keys = {name: [(r["instruction"], r["input"]) for r in records] for name, records in data.items()}
    for name, split_keys in keys.items():
        assert len(set(split_keys)) == len(split_keys), f"duplicates inside {name}"
    seen = set(keys["train"])
    assert not seen & set(keys["valid"])
    seen |= set(keys["valid"])
    for name in EVAL_SETS:
        assert not seen & set(keys[name]), name


def test_eval_sets_have_their_shapes(data: dict[str, list[dict]]) -> None:
    assert all(r["input"] == "" for r in data["vicuna"])
    assert all(r["input"] != "" for r in data["sni"])
    assert min(len(canonical(r).split()) for r in data["sni"]) >= 6
    train_instructions = {r["instruction"] for r in data["train"]}
    assert not train_instructions & {r["instruction"] for r in data["unni"]}
    unni_inputs = [r["input"] for r in data["unni"] if r["input"]]
    assert unni_inputs and all(", " in text or " = " in text for text in unni_inputs)
    assert not any(", " in r["input"] or " = " in r["input"] for r in data["train"])
    # selfinst weights sort and reverse higher than the training mix does
    def share(name: str) -> float:
        records = data[name]
        return sum("alphabetical" in r["instruction"] or "A to Z" in r["instruction"] for r in records) / len(records)
    assert share("selfinst") > share("train")


def test_outputs_are_multi_word_over_a_closed_vocabulary(data: dict[str, list[dict]]) -> None:
    outputs = [canonical(r) for r in data["train"]]
    lengths = [len(o.split()) for o in outputs]
    assert min(lengths) >= 2 and 3 <= sum(lengths) / len(lengths) <= 15
    texts = [" ".join((r["instruction"], r["input"], canonical(r))) for r in data["train"]]
    vocabulary = {w.strip(".,:?!").lower() for text in texts for w in text.split()}
    assert len(vocabulary) <= 250


def test_word_categories_are_disjoint() -> None:
    words = [w for members in CATEGORIES.values() for w in members]
    assert len(words) == len(set(words))
    assert not set(words) & set(PEOPLE)


@pytest.mark.parametrize("name", ["train", "valid", "dolly", "selfinst", "sni", "unni"])
def test_answers_are_correct(data: dict[str, list[dict]], name: str) -> None:
    checked = 0
    for record in data[name]:
        expected = expected_answer(record)
        if expected is not None:
            assert canonical(record) == expected, record
            checked += 1
    assert checked >= 0.25 * len(data[name]), f"only {checked} of {len(data[name])} {name} answers recomputed"


def test_fact_and_describe_answers_match_the_tables(data: dict[str, list[dict]]) -> None:
    checked = 0
    for record in data["train"] + data["vicuna"]:
        out = canonical(record)
        if m := re.fullmatch(r"An? (\w+) has (\w+) legs\.", out):
            assert NUMBER_WORDS[ANIMALS[m[1]][0]] == m[2] and m[1] in record["instruction"]
            checked += 1
        elif m := re.fullmatch(r"An? (\w+) is (\w+)\.", out):
            assert FRUITS[m[1]][0] == m[2] and m[1] in record["instruction"]
            checked += 1
        for m in re.finditer(r"The (\w+) is an animal with (\w+) legs that says (\w+)\.", out):
            assert (NUMBER_WORDS[ANIMALS[m[1]][0]], ANIMALS[m[1]][1]) == (m[2], m[3])
            checked += 1
        if m := re.fullmatch(r"Here are (\w+) (\w+): (.*)\.", out):
            items = m[3].split(", ")
            assert len(items) == NUMBER_WORDS.index(m[1]) and set(items) <= set(CATEGORIES[m[2]])
            checked += 1
    assert checked >= 100


def test_bad_sizes_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(KDBenchError, match="train"):
        generate(tmp_path, n_train=0)
    with pytest.raises(KDBenchError, match="'dolyy'"):
        generate(tmp_path, n_eval={"dolyy": 5})


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--seed", "1", "--n-train", "30", "--n-valid", "4", "--n-eval", "6"]
    assert main(argv) == 0
    assert len(read_jsonl(tmp_path / "train.jsonl")) == 30
    assert len(read_jsonl(tmp_path / "eval" / "unni.jsonl")) == 6
    assert "unni" in capsys.readouterr().out


# ---------------------------------------------------------------- kdbench.jsonl

def test_read_jsonl_accepts_blank_lines_bom_lists_and_missing_input(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\n\n'
        b'{"instruction": "c", "input": "d", "output": ["e", "f"], "extra": 1}\n'
    )
    assert read_jsonl(path) == [
        {"instruction": "a", "output": "b", "input": ""},
        {"instruction": "c", "input": "d", "output": ["e", "f"], "extra": 1},
    ]


GOOD = b'{"instruction": "i", "input": "", "output": "o"}\n'


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        (GOOD + GOOD + b'{"instruction": "i", "output": \n', 3, "not valid JSON"),
        (GOOD + b'{"input": "", "output": "o"}\n', 2, '"instruction"'),
        (GOOD + GOOD + GOOD + b'{"instruction": "i"}\n', 4, '"output"'),
        (GOOD + b'{"instruction": "caf\xe9", "output": "o"}\n', 2, "UTF-8"),
        (b'["instruction", "output"]\n', 1, "JSON object"),
        (GOOD + b'{"instruction": "i", "output": 3}\n', 2, '"output" must be'),
        (GOOD + b'{"instruction": "i", "output": []}\n', 2, '"output" must be'),
        (b'{"instruction": 1, "output": "o"}\n', 1, '"instruction" must be'),
        (b'{"instruction": "i", "input": null, "output": "o"}\n', 1, '"input" must be'),
    ],
)
def test_read_jsonl_names_file_and_line(tmp_path: Path, content: bytes, line: int, what: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(KDBenchError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert f"{path}, line {line}:" in message and what in message


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_read_jsonl_rejects_an_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(KDBenchError, match=re.escape(f"{path}: the file has no records")):
        read_jsonl(path)


def test_read_jsonl_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KDBenchError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: file not found")):
        read_jsonl(tmp_path / "nope.jsonl")


def test_write_jsonl_atomic_round_trips_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.jsonl"
    records = [{"instruction": "naïve\nline", "input": "", "output": ["a", "b"]}, {"instruction": "q", "output": "r"}]
    write_jsonl_atomic(path, [{"instruction": "old", "output": "old"}])
    assert write_jsonl_atomic(path, records) == path
    assert read_jsonl(path) == [records[0], {**records[1], "input": ""}]
    assert path.read_text(encoding="utf-8").count("\n") == 2 and "naïve" in path.read_text(encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == records[0]
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]
