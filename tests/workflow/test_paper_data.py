"""The paper grid's data as workflow rules: with small stand-ins for every public release, each in its
real layout at the path config/config.yaml names, `snakemake` prepares the seven data files and
the grid's first training job runs on them (a local tiny pair stands in for the hub models, which
this machine cannot reach); with a release missing, a real run that needs it stops before any job
and names it."""

import json
from pathlib import Path

import pytest
import yaml

from kdbench.jsonl import read_jsonl
from tests.conftest import run_cli, workflow_copy

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"
LONG = "the answer is a sentence of more than eleven tokens, as S-NI and UnNI need"


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_releases(root: Path) -> None:
    """Each release as its upstream repository lays it out, at config/config.yaml's paths."""
    raw = root / "data" / "raw"
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    write_jsonl(raw / "databricks-dolly-15k.jsonl", [  # 1,540: test 500, valid 1,000, train 40
        {"instruction": f"Name colour number {i}.", "context": "" if i % 3 else f"The list has {colours[i % 6]}.",
         "response": f"Colour {i} is {colours[i % 6]}.", "category": "open_qa"} for i in range(1540)])
    write_jsonl(raw / "user_oriented_instructions.jsonl", [
        {"id": f"user_oriented_task_{i}", "motivation_app": "Gmail", "instruction": f"Write greeting {i}.",
         "instances": [{"input": "", "output": f"Hello {i}!"}]} for i in range(3)])
    write_jsonl(raw / "vicuna" / "question.jsonl", [
        {"question_id": q, "text": f"Question {q}?", "category": "generic"} for q in (1, 2, 3)])
    write_jsonl(raw / "vicuna" / "answer_gpt35.jsonl", [
        {"answer_id": f"a{q}", "model_id": "gpt-3.5-turbo:20230327", "question_id": q, "text": f"Answer {q}.",
         "metadata": {}} for q in (3, 1, 2)])
    ni = raw / "natural-instructions"
    for name, outputs in (("task036_topic", [LONG, "short", LONG]), ("task102_gen", [LONG, LONG]),
                          ("task001_train", [LONG])):
        task = {"Definition": [f"Definition of {name}."], "Instances": [
            {"id": f"{name}-{k}", "input": f"input {k}", "output": [out]} for k, out in enumerate(outputs)]}
        (ni / "tasks").mkdir(parents=True, exist_ok=True)
        (ni / "tasks" / f"{name}.json").write_text(json.dumps(task, indent=4))
    (ni / "splits" / "default").mkdir(parents=True)
    (ni / "splits" / "default" / "test_tasks.txt").write_text("task036_topic\ntask102_gen\n")
    write_jsonl(raw / "core_data.jsonl", [
        {"instruction": f"Explain thing {i}.", "instances": [
            {"instruction_with_input": "...", "input": f"Thing {i}", "constraints": "None.",
             "output": LONG if i else "Too short."}]} for i in range(4)])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """config/config.yaml with its tables replaced by one tiny-pair table (2 training steps); its
    data section, the releases, is the paper grid's own."""
    root = workflow_copy(tmp_path_factory.mktemp("paper_data"))
    spec = yaml.safe_load((root / f"config/pairs/{PAIR}.yaml").read_text())
    spec["teacher"]["sft"]["steps"] = spec["training"]["steps"] = 2
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(spec))
    (root / "tiny-pair.yaml").write_text(yaml.safe_dump({"tables": [{"name": "main", "pairs": [PAIR],
                                                                     "methods": ["fkl"]}]}))
    return root


def test_the_preparation_rules_run_and_training_starts_on_their_output(checkout: Path) -> None:
    write_releases(checkout)
    first_run = f"results/runs/{PAIR}/teacher/seed0/metrics.jsonl"  # the teacher's SFT: the first training job
    prepared = [f"results/data/real/{name}.jsonl" for name in ("train", "valid", "dolly", "selfinst", "vicuna",
                                                                "sni", "unni")]
    done = run_cli("snakemake", "--cores", "1", *prepared, first_run,
                   "--configfile", "config/config.yaml", "tiny-pair.yaml", cwd=checkout)
    assert done.returncode == 0, done.stderr[-4000:]
    data = {Path(p).stem: read_jsonl(checkout / p) for p in prepared}
    assert {name: len(rows) for name, rows in data.items()} == {
        "train": 40, "valid": 1000, "dolly": 500, "selfinst": 3, "vicuna": 3, "sni": 4, "unni": 3}
    assert {r["id"] for r in data["train"]}.isdisjoint(r["id"] for r in data["dolly"])
    assert [r["id"] for r in data["vicuna"]] == ["vicuna-1", "vicuna-2", "vicuna-3"]
    assert data["vicuna"][0]["output"] == ["Answer 1."]
    assert [r["id"] for r in data["sni"]] == ["task036_topic-0", "task036_topic-2", "task102_gen-0", "task102_gen-1"]
    assert [r["id"] for r in data["unni"]] == ["unni-2", "unni-3", "unni-4"]
    metrics = read_jsonl_lines(checkout / first_run)
    assert [m["step"] for m in metrics] == [0, 1]  # both steps trained on the prepared train.jsonl
    again = run_cli("snakemake", "-n", *prepared, first_run, "--configfile", "config/config.yaml", "tiny-pair.yaml",
                    cwd=checkout)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def read_jsonl_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_missing_release_stops_a_real_run_before_any_job(tmp_path: Path) -> None:
    root = workflow_copy(tmp_path)
    write_releases(root)
    (root / "data/raw/core_data.jsonl").unlink()
    done = run_cli("snakemake", "--cores", "1", "--configfile", "config/config.yaml", cwd=root)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    line = ("data.releases.raw.unni: data/raw/core_data.jsonl not found; expected `core_data.jsonl` (68,478 "
            "instances). Get it from github.com/orhonovich/unnatural-instructions, file `data/core_data.jsonl`.")
    assert out.count(line) == 1 and "1 data release(s)" in out and "nothing was run" in out
    assert not (root / "results").exists()  # no job started, not even the preparation of the releases present
    # a target that prepares no data runs: only the releases its jobs need are asked for
    run_yaml = "results/runs/qwen2-1.5b_from_qwen2-7b/rkl/seed1/run.yaml"
    done = run_cli("snakemake", "--cores", "1", run_yaml, "--configfile", "config/config.yaml", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((root / run_yaml).read_text())["data"]["train"] == "results/data/real/train.jsonl"
