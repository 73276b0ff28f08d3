"""A loss that becomes NaN/inf stops the run with a message naming the run, the step and the last good
checkpoint (no traceback, no model saved). Forced with an absurd learning rate (1e30)."""

import re

import yaml

from tests.conftest import grid_config, run_cli, workflow_copy

PAIR = "gpt2-nan-s_from_gpt2-nan-t"
RUN = f"results/runs/{PAIR}/fkl/seed1"


def test_a_diverging_loss_stops_the_run_naming_step_and_checkpoint(tmp_path):
    root = workflow_copy(tmp_path)
    pair = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    del pair["teacher"]["sft"]
    pair["training"].update(steps=20, micro_batch_size=4, checkpoint_every=2, log_every=1, lr=1e30, warmup_ratio=0)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    cfg = grid_config(root, pairs=[PAIR], methods=["fkl"])
    (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
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

    run = run_cli("kdbench", "train", f"{RUN}/run.yaml", "--threads", "1", cwd=root)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    found = re.search(r"kdbench train: error: run (\S+): the loss became (nan|inf|-inf) at step (\d+); "
                      r"last good checkpoint: (\S+)\. Lower the learning rate", run.stderr)
    assert found, run.stderr[-3000:]
    assert found[1].endswith(RUN)
    assert not (root / RUN / "model").exists()
