"""A LoRA student's checkpoints hold its adapters, not the frozen base (kdbench.checkpoints), and a
run killed mid-training resumes from one to the weights of an uninterrupted run."""

import json
import shutil

import torch
from safetensors.torch import load_file

from tests.conftest import prepare_run, run_cli, workflow_copy

PAIR = "gpt2-lora-s_from_gpt2-lora-t"
RUN = f"results/runs/{PAIR}/fkl/seed1"


def test_lora_checkpoints_leave_out_the_base_and_resume(tmp_path, monkeypatch):
    (tmp_path / "lora").mkdir()
    root = workflow_copy(tmp_path / "lora")

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        pair["student"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]}
        pair["training"].update(steps=8, micro_batch_size=4, checkpoint_every=3, keep_checkpoints=2, log_every=1)
    prepare_run(root, PAIR, "fkl", edit, n_train=40)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(root, straight)
    shutil.copytree(root, killed)

    def train(where):
        return run_cli("kdbench", "train", f"{RUN}/run.yaml", "--threads", "1", cwd=where)

    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("KDBENCH_FAULT_KILL_AT_STEP", "5")
    assert train(killed).returncode == -9
    monkeypatch.delenv("KDBENCH_FAULT_KILL_AT_STEP")
    states = sorted((killed / RUN / "checkpoints").glob("*/step00000003/mp_rank_00_model_states.pt"))
    assert len(states) == 1
    module = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    # No base weight, but GPT-2's output head: tied to the input embeddings, it is no parameter of its own
    # (named_parameters lists the tied weight once), and DeepSpeed's filter goes by parameters.
    assert any("lora_" in name for name in module)
    assert {name for name in module if "lora_" not in name} == {"lm.base_model.model.lm_head.weight"}
    resumed = train(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 3" in resumed.stderr
    a, b = ([json.loads(line) for line in (r / RUN / "metrics.jsonl").read_text().splitlines()] for r in (straight, killed))
    assert [r["step"] for r in b] == list(range(8)) and abs(a[-1]["loss"] - b[-1]["loss"]) < 1e-6
    wa, wb = (load_file(r / RUN / "model/model.safetensors") for r in (straight, killed))
    start = load_file(root / f"results/models/{PAIR}/student-init/model.safetensors")
    assert any(not torch.equal(wa[k], start[k]) for k in wa)  # the adapters moved the merged weights
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
