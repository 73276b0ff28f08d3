"""Cross-tokenizer distillation on a CUDA GPU (skipped elsewhere; select with `pytest -m gpu`).

- Every cross-tokenizer plugin (alone, and under AdaKD where it names a space) gives on cuda the
  loss and the gradients it gives on the CPU, from the same tiny models and aligned batch (fp32,
  TF32 off): the alignment's row indices, the vocab_map arrays and DSKD's projectors all move to
  the device with the batch (the CPU counterpart: tests/smoke/test_crosstok_train.py).
- `kdbench train` runs `dskd` and `xtoken` on the tiny BPE/Unigram pair with bf16 under ZeRO-2 on
  cuda: finite losses that fall, DSKD's projectors saved beside the student.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.smoke.test_crosstok_train import CASES, PluginStep, _kdbench_train, _prepare, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")  # tier: tests/conftest.py


@pytest.mark.parametrize("key, policy_key", CASES, ids=lambda x: x or "alone")
def test_each_cross_tokenizer_plugin_gives_the_cpu_loss_on_cuda(tiny, key, policy_key):
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    for device in ("cpu", "cuda"):
        run = PluginStep(tiny, key, policy_key, device)
        parts = run.loss(step=3)
        parts.loss.backward()
        results[device] = parts, [p.grad.cpu() for p in run.parameters() if p.grad is not None]
    (cpu, cpu_grads), (cuda, cuda_grads) = results["cpu"], results["cuda"]
    assert cuda.loss.item() == pytest.approx(cpu.loss.item(), rel=1e-5)
    assert cuda.kd_mean == pytest.approx(cpu.kd_mean, rel=1e-5) and cuda.n_selected == cpu.n_selected
    assert len(cuda_grads) == len(cpu_grads) > 0
    for mine, theirs in zip(cuda_grads, cpu_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5 * max(theirs.abs().max().item(), 1e-12))


@pytest.mark.parametrize("label", ["dskd", "xtoken"])
def test_a_cross_tokenizer_run_trains_with_bf16_under_zero2_on_cuda(repo, tmp_path, label):
    run_dir = _prepare(repo, tmp_path, label, 12, bf16=True, deepspeed="config/deepspeed/zero2.json")
    done = _kdbench_train(tmp_path, run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    run = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert run["training"]["bf16"] and run["deepspeed"]["zero_optimization"]["stage"] == 2
    assert json.loads((run_dir / "provenance.json").read_text())["device"]["device"].startswith("cuda")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(math.isfinite(r["loss"]) and r["kd_loss"] > 0 for r in records)
    assert sum(r["loss"] for r in records[-3:]) < sum(r["loss"] for r in records[:3])
    if label == "dskd":
        saved = load_file(run_dir / "model/kdbench_policy_modules.safetensors")
        assert all(torch.isfinite(w.float()).all() for w in saved.values())
        assert all(r["modules_lr"] == pytest.approx(1e-3 / run["training"]["lr"] * r["lr"]) for r in records)
