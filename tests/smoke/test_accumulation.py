"""Gradient accumulation does not change the optimizer step (CPU, DeepSpeed ZeRO 0, fp32, fkl).

One optimizer step of `kdbench train` with micro-batch 4 × accumulation 1 and with micro-batch 1 ×
accumulation 4 must give the same student weights. Both consume the same four examples in the same
order: `train.Stream` draws epoch 0 as one permutation seeded by (seed, 0) and micro-batch i takes
positions [i·b, (i+1)·b) of it, so one micro-batch of 4 and four micro-batches of 1 both read
positions 0..3. The objective divides every micro-batch's summed loss by the step's global token
count and the loop backpropagates without DeepSpeed's 1/gas scaling, so the accumulated gradient is
the same token mean either way. Dropout is off in both models, so no RNG draw can differ; right
padding plus causal attention leaves the real positions of the padded batch unchanged.

Why two tests. AdamW's first step is lr·g/(|g| + eps): invariant to any uniform scale of the
gradient (a 1/gas bug would not show) and, where |g| is near eps = 1e-8, an amplifier of fp32
rounding noise (an entry with g ≈ 4e-9 moves 1.6e-5 further in one run than in the other). So:

- with SGD swapped in for AdamW (lr 1, no weight decay: the update is the gradient itself), the
  weights must agree within 1e-5 while the step moves them by > 1e-3: catches any scale or token
  weighting error in the accumulation;
- with the pair's real AdamW, the weights must agree within 1e-5 wherever the step is not
  eps-dominated (|g| > 9·eps in either run, read back from the update), and the few eps-dominated
  entries where they differ must stay a tiny fraction of the weights.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import (
    assert_same_adamw_step,
    assert_same_sgd_step,
    prepare_run,
    run_cli,
    workflow_copy,
)

PAIR = "gpt2-accum-s_from_gpt2-accum-t"
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# `kdbench train` with torch.optim.SGD in place of AdamW (same keyword arguments: lr, weight_decay).
SGD_TRAIN = ("import sys, torch, yaml; torch.optim.AdamW = torch.optim.SGD; torch.set_num_threads(1); "
             "from kdbench.train import train; train(yaml.safe_load(open(sys.argv[1])))")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A workflow copy with data, tokenizer, both init models, and the resolved fkl run (1 step)."""
    root = workflow_copy(tmp_path_factory.mktemp("accum"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        for role in ("teacher", "student"):
            pair[role]["config"].update(NO_DROPOUT)
        pair["training"].update(steps=1, checkpoint_every=0, log_every=1)
    run = prepare_run(root, PAIR, "fkl", edit, n_train=16)
    assert run["method"]["divergence"]["key"] == "fkl" and run["deepspeed"]["zero_optimization"]["stage"] == 0
    start = load_file(root / run["student"] / "model.safetensors")
    return root, run, start


def train_variant(root, run: dict, name: str, micro_batch_size: int, accumulation: int, sgd: bool = False,
                  **training) -> dict[str, torch.Tensor]:
    """Train `run` (1 step) with the given micro-batching under results/accum/<name>; the saved weights."""
    run = copy.deepcopy(run)
    run["run"]["dir"] = f"results/accum/{name}"
    run["training"].update(micro_batch_size=micro_batch_size, gradient_accumulation_steps=accumulation, **training)
    path = root / f"results/accum/{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run))
    rel = str(path.relative_to(root))
    cmd = [sys.executable, "-c", SGD_TRAIN, rel] if sgd else ["kdbench", "train", rel, "--threads", "1"]
    done = run_cli(*cmd, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    record = yaml.safe_load((root / run["run"]["dir"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 0 and record["tokens"] > 0
    return load_file(root / run["run"]["dir"] / "model/model.safetensors")


def test_accumulation_gives_the_same_gradient_step(prepared):
    root, run, start = prepared
    whole = train_variant(root, run, "sgd-mb4xga1", 4, 1, sgd=True, lr=1.0, weight_decay=0.0)
    accumulated = train_variant(root, run, "sgd-mb1xga4", 1, 4, sgd=True, lr=1.0, weight_decay=0.0)
    assert_same_sgd_step(start, whole, accumulated)


def test_accumulation_gives_the_same_adamw_step(prepared):
    root, run, start = prepared
    tr = run["training"]
    assert tr["grad_clip"] > 0 and int(tr["warmup_ratio"] * tr["steps"]) == 0  # the step runs at the full lr
    whole = train_variant(root, run, "adamw-mb4xga1", 4, 1)
    accumulated = train_variant(root, run, "adamw-mb1xga4", 1, 4)
    moved = assert_same_adamw_step(start, whole, accumulated, tr["lr"], tr["weight_decay"])
    assert moved > 0.5 * tr["lr"]
