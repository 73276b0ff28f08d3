"""DeepSpeed ZeRO-3 on the CPU accelerator: the tiny GPT-2 pair (tied student head) trains through
`kdbench train` under config/deepspeed/zero3.json exactly as under ZeRO stage 0, resumes after a
kill, saves the full weights, and runs on two ranks as ZeRO-2 does. "Exactly" is within 1e-5 after
12 AdamW steps that move the weights by about 1e-2 (the reductions differ in float rounding).

Every run here sets `stage3_param_persistence_threshold: 0`: DeepSpeed otherwise keeps parameters
under 100k elements whole on every rank, which at this size would be all of them, heads included,
and nothing would be partitioned. Dropout is off, so runs under different stages take the same steps.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import BIN, max_abs, prepare_run, workflow_copy

PAIR = "gpt2-z3-s_from_gpt2-z3-t"
LABEL = "fkl+adakd"
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
PARTITION_ALL = {"stage3_param_persistence_threshold": 0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny pair's fkl+adakd run on zero3.json (12 steps, checkpoints every 5, loss chunks of 16
    tokens), and the same run on ZeRO stage 0 trained once as the reference."""
    root = workflow_copy(tmp_path_factory.mktemp("zero3"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        for role in ("teacher", "student"):
            pair[role]["config"].update(NO_DROPOUT)
        pair["training"].update(steps=12, micro_batch_size=4, checkpoint_every=5, log_every=1, loss_chunk_size=16,
                                deepspeed="config/deepspeed/zero3.json", lr=0.002)  # weights move ~1e-2 (docstring)
    run = prepare_run(root, PAIR, LABEL, edit, n_train=40)
    assert run["deepspeed"]["zero_optimization"]["stage"] == 3
    run["deepspeed"]["zero_optimization"].update(PARTITION_ALL)
    reference, _ = train(root, variant(root, run, "zero0", deepspeed={"zero_optimization": {"stage": 0}}))
    return root, run, reference


def variant(root, run: dict, name: str, deepspeed: dict | None = None, **changes) -> str:
    """A copy of `run` under results/zero3/<name> (top-level keys in `changes`); its run.yaml path."""
    run = copy.deepcopy(run)
    run["run"]["dir"] = f"results/zero3/{name}"
    run.update(changes)
    if deepspeed is not None:
        run["deepspeed"] = deepspeed
    path = root / f"results/zero3/{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run))
    return str(path.relative_to(root))


def train(root, run_yaml: str, world: int = 1, **env):
    """`kdbench train` as `world` ranks on this machine (RANK/WORLD_SIZE as a launcher sets them);
    (the run directory, rank 0's stderr)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    if world > 1:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        env.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    ranks = [subprocess.Popen(["kdbench", "train", run_yaml, "--threads", "1"], cwd=root, text=True,
                              env={**env, **({"RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else {})},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(world)]
    try:
        outputs = [p.communicate(timeout=240) for p in ranks]
    except subprocess.TimeoutExpired:
        for p in ranks:
            p.kill()
        pytest.fail(f"{run_yaml}: {world} rank(s) still running after 240 s (a single rank takes about 10 s): "
                    "mismatched collectives hang")
    if env.get("KDBENCH_FAULT_KILL_AT_STEP"):
        assert ranks[0].returncode == -9, outputs[0][1][-3000:]
    else:
        for p, (_, err) in zip(ranks, outputs):
            assert p.returncode == 0, err[-3000:]
    return root / yaml.safe_load((root / run_yaml).read_text())["run"]["dir"], outputs[0][1]


def weights(run_dir) -> dict:
    return load_file(run_dir / "model/model.safetensors")


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def test_zero3_trains_as_zero0_and_saves_the_full_student(prepared):
    from transformers import AutoModelForCausalLM

    root, run, reference = prepared
    run_dir, _ = train(root, variant(root, run, "zero3"))
    losses = [r["loss"] for r in records(run_dir)]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses
    saved = weights(run_dir)
    start = load_file(root / run["student"] / "model.safetensors")
    assert saved.keys() == start.keys() and all(saved[k].shape == start[k].shape for k in start)  # gathered, not partitions
    _, moved = max_abs(saved, start)
    assert moved > 1e-3
    worst, diff = max_abs(saved, weights(reference))
    assert diff <= 1e-5, f"{worst}: ZeRO-3 and ZeRO-0 differ by {diff:.3g} after 12 steps (moved {moved:.3g})"
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")  # loads as a plain model, head tied
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, saved["transformer.wte.weight"])


def test_killed_zero3_run_with_an_offloaded_zero3_teacher_resumes(prepared):
    """Student on zero3.json, teacher as a ZeRO-3 inference engine offloaded to the CPU: killed at
    step 7 and rerun, it resumes from the step-5 checkpoint and ends on the ZeRO-0 run's weights."""
    root, run, reference = prepared
    run_yaml = variant(root, run, "zero3-teacher", teacher_zero3={"offload": "cpu"})
    train(root, run_yaml, KDBENCH_FAULT_KILL_AT_STEP="7")
    run_dir, stderr = train(root, run_yaml)
    assert "unreadable" not in stderr and "resuming" in stderr and "at step 5" in stderr
    assert [r["step"] for r in records(run_dir)] == list(range(12))
    assert abs(records(run_dir)[-1]["loss"] - records(reference)[-1]["loss"]) < 1e-6
    worst, diff = max_abs(weights(run_dir), weights(reference))
    assert diff <= 1e-5, f"{worst}: {diff:.3g}"


def test_two_ranks_zero3_match_zero2(prepared):
    """Two ranks, micro-batches of different token counts, loss chunks of 16 tokens: each rank
    applies its heads a different number of times, so heads called as ZeRO-3 modules (one all-gather
    per call) would hang; the gathered heads give ZeRO-2's weights."""
    root, run, _ = prepared
    short = {"training": {**run["training"], "steps": 4, "checkpoint_every": 0}}
    zero2, _ = train(root, variant(root, run, "w2-zero2", deepspeed={"zero_optimization": {"stage": 2}}, **short), world=2)
    zero3, _ = train(root, variant(root, run, "w2-zero3", teacher_zero3={"offload": "none"}, **short), world=2)
    worst, diff = max_abs(weights(zero3), weights(zero2))
    assert diff <= 1e-5, f"{worst}: {diff:.3g}"
    assert [r["tokens"] for r in records(zero3)] == [r["tokens"] for r in records(zero2)]


def test_tensorboard_logs_the_metrics_by_step(prepared):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, run, _ = prepared
    run_dir, _ = train(root, variant(root, run, "tensorboard", deepspeed={"zero_optimization": {"stage": 0}},
                                  training={**run["training"], "steps": 3, "checkpoint_every": 0, "tensorboard": True}))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("loss", "ce", "kd_loss", "lr", "latf_ratio", "tau_mean", "tokens_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(f"kdbench/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records(run_dir)], key
