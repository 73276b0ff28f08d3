"""A run killed (SIGKILL) mid-training and rerun resumes from its last checkpoint and ends exactly
where an uninterrupted run ends: same final loss (within 1e-6 on CPU), same weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import prepare_run, run_cli, workflow_copy

PAIR = "gpt2-resume-s_from_gpt2-resume-t"
RUN = f"results/runs/{PAIR}/fkl+adakd/seed1"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("resume"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        pair["training"].update(steps=24, micro_batch_size=4, checkpoint_every=5, keep_checkpoints=2, log_every=1)
    prepare_run(root, PAIR, "fkl+adakd", edit)
    return root


def train(root, **env):
    import os
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_cli("kdbench", "train", f"{RUN}/run.yaml", "--threads", "1", cwd=root)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_killed_run_resumes_to_the_same_result(prepared, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(prepared, straight)
    shutil.copytree(prepared, killed)
    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    crash = train(killed, KDBENCH_FAULT_KILL_AT_STEP="13")
    assert crash.returncode == -9  # SIGKILL: no cleanup ran
    ckpts = sorted(p.name for p in (killed / RUN / "checkpoints").glob("*/step*"))
    assert ckpts == ["step00000005", "step00000010"]  # pruned to keep_checkpoints
    resumed = train(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "at step 10" in resumed.stderr

    def records(root):
        return [json.loads(line) for line in (root / RUN / "metrics.jsonl").read_text().splitlines()]
    a, b = records(straight), records(killed)
    assert [r["step"] for r in b] == list(range(24))  # no duplicated or missing steps
    assert abs(a[-1]["loss"] - b[-1]["loss"]) < 1e-6
    assert a[-1]["latf_ratio"] == b[-1]["latf_ratio"]
    wa = load_file(straight / RUN / "model/model.safetensors")
    wb = load_file(killed / RUN / "model/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(prepared, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(prepared, root)
    assert train(root, KDBENCH_FAULT_KILL_AT_STEP="13").returncode == -9
    newest = sorted((root / RUN / "checkpoints").glob("*/step00000010"))[0]
    for f in newest.glob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])  # truncated
    resumed = train(root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step00000010 is unreadable" in resumed.stderr and "at step 5" in resumed.stderr


def test_a_resumed_run_keeps_the_metrics_snakemake_deleted(prepared, tmp_path):
    """Snakemake deletes a failed job's outputs, metrics.jsonl among them: the rerun restores the
    records before its resume step from the checkpoint, so none are missing."""
    root = tmp_path / "deleted"
    shutil.copytree(prepared, root)
    assert train(root, KDBENCH_FAULT_KILL_AT_STEP="13").returncode == -9
    (root / RUN / "metrics.jsonl").unlink()
    resumed = train(root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 10" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (root / RUN / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(24))
