"""GKD's and DistiLLM's data sources train through `kdbench train`, each with and without AdaKD: the
student's own samples are in the batches (metrics.jsonl counts them), DistiLLM starts from the SFT
run, evaluates before training and raises θ when the validation cross-entropy climbs, and the
+adakd runs distil with reverse KL under LATF."""

import json

import pytest
import yaml

from tests.conftest import prepare_run, run_cli, workflow_copy

PAIR = "gpt2-src-s_from_gpt2-src-t"
STEPS, EPOCH = 16, 8  # 32 training examples in micro-batches of 4


def train(root, label):
    """Resolve and train one label of the pair with the CLI; its run config and metrics records."""
    run_dir = root / f"results/runs/{PAIR}/{label}/seed1"
    resolved = run_cli("kdbench", "resolve", "grid.yaml", PAIR, label, "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(resolved.stdout)
    done = run_cli("kdbench", "train", str(run_dir.relative_to(root) / "run.yaml"), "--threads", "1", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return yaml.safe_load(resolved.stdout), recs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tiny pair with a random (untrained) teacher: distilling from it pulls the SFT student's
    validation cross-entropy up, which is what raises DistiLLM's θ. Every run is 16 steps, two
    epochs of 8; the SFT run that DistiLLM starts from is trained first."""
    root = workflow_copy(tmp_path_factory.mktemp("sources"))

    def edit(pair):
        del pair["teacher"]["sft"]
        pair["training"].update(steps=STEPS, micro_batch_size=4, checkpoint_every=0, log_every=1,
                                sample_max_new_tokens=12)
    prepare_run(root, PAIR, "sft", edit, n_train=32)
    train(root, "sft")
    return root


@pytest.mark.parametrize("label", ["gkd", "gkd+adakd", "distillm", "distillm+adakd"])
def test_student_samples_are_trained_on(root, label):
    run, recs = train(root, label)
    base, _, policy = label.partition("+")
    method = run["method"]
    assert method["source"] == {"gkd": "on_policy_mixed", "distillm": "adaptive_replay"}[base]
    assert method["divergence"]["key"] == ("rkl" if policy else {"gkd": "js", "distillm": "srkl"}[base])
    assert [r["step"] for r in recs] == list(range(STEPS))
    sampled = [r["sampled_batches"] for r in recs]
    assert sampled == sorted(sampled) and sampled[-1] > 0, sampled  # the student's own responses were trained on
    assert all(0 <= r["latf_ratio"] <= 1 for r in recs) if policy else all("latf_ratio" not in r for r in recs)
    if base == "distillm":
        assert run["student"] == f"results/runs/{PAIR}/sft/seed1/model"
        reference = recs[0]["theta_reference"]  # the validation cross-entropy before the first step
        assert reference is not None and reference > 0
        # θ = 0 (nothing sampled) until the first epoch end; there the cross-entropy, pulled up by the
        # random teacher, is ≥ 0.1 above the reference, so θ rises by 0.1 and the reference follows.
        assert all(r["theta"] == 0 and r["sampled_batches"] == 0 for r in recs[:EPOCH - 1])
        assert recs[EPOCH - 1]["theta"] == pytest.approx(0.1)
        assert recs[EPOCH - 1]["theta_reference"] >= reference + 0.1
        assert all(r["theta"] == pytest.approx(0.1) for r in recs[EPOCH:-1])
