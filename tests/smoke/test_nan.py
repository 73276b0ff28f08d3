"""A loss that becomes NaN/inf: by default the run stops with a message naming the run, the step and
the last good checkpoint (no traceback, no model saved); with `training.nonfinite: skip` a bad
micro-batch adds no gradient and the run goes on, until `max_nonfinite` come in a row. Forced with
an absurd learning rate (1e30) or the fault-injection variable KDBENCH_FAULT_NAN_AT_STEP."""

import json
import math
import re

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import grid_config, run_cli, workflow_copy

PAIR = "gpt2-nan-s_from_gpt2-nan-t"
RUN = f"results/runs/{PAIR}/fkl/seed1"


def prepare(root, **training):
    """The tiny GPT-2 pair (no teacher SFT) as PAIR with `training` edits, its models and run.yaml."""
    pair = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    del pair["teacher"]["sft"]
    pair["training"].update(steps=20, micro_batch_size=4, checkpoint_every=2, log_every=1, warmup_ratio=0, **training)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    (root / "grid.yaml").write_text(yaml.safe_dump(grid_config(root, pairs=[PAIR], methods=["fkl"])))
    for cmd in (["data", "--out", "results/data", "--n-train", "40", "--n-valid", "5", "--n-eval", "5"],
                ["tokenizer", "--data", "results/data/train.jsonl", "--vocab-size", "400", "--out", "results/tokenizer"],
                *[["init-model", "--pair", f"config/pairs/{PAIR}.yaml", "--role", role, "--tokenizer",
                   "results/tokenizer", "--out", f"results/models/{PAIR}/{role}-init"] for role in ("teacher", "student")]):
        done = run_cli("kdbench", *cmd, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
    resolved = run_cli("kdbench", "resolve", "grid.yaml", PAIR, "fkl", "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    (root / RUN).mkdir(parents=True)
    (root / RUN / "run.yaml").write_text(resolved.stdout)


def train(root, **env):
    """`kdbench train` on the prepared run, with fault-injection variables `env`."""
    return run_cli("env", *[f"{k}={v}" for k, v in env.items()], "kdbench", "train", f"{RUN}/run.yaml",
                   "--threads", "1", cwd=root)


def test_a_diverging_loss_stops_the_run_naming_step_and_checkpoint(tmp_path):
    root = workflow_copy(tmp_path)
    prepare(root, lr=1e30)
    run = train(root)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    found = re.search(r"kdbench train: error: run (\S+): the loss became (nan|inf|-inf) at step (\d+); "
                      r"last good checkpoint: (\S+)\. Lower the learning rate", run.stderr)
    assert found, run.stderr[-3000:]
    assert found[1].endswith(RUN)
    assert not (root / RUN / "model").exists()


def test_skip_policy_drops_one_bad_micro_batch_and_finishes(tmp_path):
    root = workflow_copy(tmp_path)
    prepare(root, lr=0.002, nonfinite="skip")
    run = train(root, KDBENCH_FAULT_NAN_AT_STEP="5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"the loss became nan at step 5; .*Skipping that micro-batch", run.stderr)
    metrics = [json.loads(line) for line in (root / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("skipped_tokens", 0) > 0 for m in metrics] == [m["step"] >= 5 for m in metrics]
    assert all(math.isfinite(m["loss"]) for m in metrics) and metrics[-1]["loss"] < metrics[0]["loss"]
    weights = load_file(root / RUN / "model/model.safetensors")
    assert all(t.isfinite().all() for t in weights.values())


@pytest.mark.parametrize("max_nonfinite", [3])
def test_skip_policy_still_stops_a_run_that_diverged(tmp_path, max_nonfinite):
    root = workflow_copy(tmp_path)
    prepare(root, lr=1e30, nonfinite="skip", max_nonfinite=max_nonfinite)
    run = train(root)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.count("Skipping that micro-batch") == max_nonfinite - 1
    assert f"{max_nonfinite} micro-batches in a row were non-finite (training.max_nonfinite {max_nonfinite})" in run.stderr
    assert not (root / RUN / "model").exists()
