"""Checks that need a CUDA GPU (skipped elsewhere; select with `pytest -m gpu`).

- DeepSpeed ZeRO-2 with bf16 trains the tiny GPT-2 pair through `kdbench train` on cuda.
- ZeRO-3 with bf16 (every student parameter partitioned, the teacher a ZeRO-3 inference engine
  offloaded to pinned CPU memory) trains it too and saves the full student (the CPU counterpart,
  fp32: tests/smoke/test_zero3.py).
- Gradient accumulation does not change the step under ZeRO-2 on cuda: micro-batch 8 × accumulation
  1 and micro-batch 1 × accumulation 8 give the same weights (fp32). As in
  tests/smoke/test_accumulation.py (the CPU / ZeRO 0 counterpart, which explains the design), once
  with SGD swapped in for AdamW (the update is the gradient itself: catches scale and token
  weighting errors) and once with the real AdamW (compared where its first step is not eps-dominated).
- The chunked hidden-state loss on cuda equals the full-logits loss, values and gradients, at a
  32k vocabulary with padded head rows.
- A run with dropout on, killed (SIGKILL) mid-training on cuda and rerun, resumes from its last
  checkpoint with the CUDA generator restored and ends where the uninterrupted run ends (the CPU
  counterpart: tests/smoke/test_resume.py; there dropout draws from the CPU generator).
- bf16 with the fused chunked loss: from bf16 hidden states and heads on cuda, the chunked loss is
  computed in fp32 and agrees with the fp32 full-logits loss within bf16 rounding, values and
  gradients; a bf16 run with small loss chunks starts at the fp32 run's loss.
- The teacher's stored states on cuda (`teacher_cache`): `kdbench teacher-states` claims the GPU and
  runs the bf16 teacher there; a run reading them hits every micro-batch, passes the live check
  within the bf16 tolerance and starts at the live run's loss; a stored micro-batch scaled by 1.05
  stops the run naming the file (the CPU counterpart: tests/smoke/test_teacher_states.py).
- Two GPUs (where two are visible): `kdbench train` with training.gpus 2 claims both and runs two
  ranks through the DeepSpeed launcher (NCCL); rank 0 alone writes metrics.jsonl, whose token count
  is both ranks' (the CPU counterpart with gloo: tests/smoke/test_multirank.py).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import (
    assert_same_adamw_step,
    assert_same_sgd_step,
    max_abs,
    prepare_run,
    run_cli,
    workflow_copy,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")  # tier: tests/conftest.py

PAIR = "gpt2-gpu-s_from_gpt2-gpu-t"
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# Deterministic kernels (cuBLAS workspace, embedding backward without atomics), so that a resumed run
# can be compared with an uninterrupted one exactly.
DETERMINISTIC_TRAIN = ("import sys, torch, yaml; torch.use_deterministic_algorithms(True, warn_only=True); "
                       "from kdbench.train import train; train(yaml.safe_load(open(sys.argv[1])))")
SGD_TRAIN = ("import sys, torch, yaml; torch.optim.AdamW = torch.optim.SGD; "
             "from kdbench.train import train; train(yaml.safe_load(open(sys.argv[1])))")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Data, tokenizer and both init models of the tiny pair (dropout off), and its resolved fkl run
    on ZeRO-2 (fp32; the tests switch bf16 on where they need it)."""
    root = workflow_copy(tmp_path_factory.mktemp("gpu"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        for role in ("teacher", "student"):
            pair[role]["config"].update(NO_DROPOUT)
        pair["training"].update(steps=1, checkpoint_every=0, log_every=1, deepspeed="config/deepspeed/zero2.json")
    run = prepare_run(root, PAIR, "fkl", edit, n_train=32)
    assert run["method"]["divergence"]["key"] == "fkl" and run["deepspeed"]["zero_optimization"]["stage"] == 2
    start = load_file(root / run["student"] / "model.safetensors")
    return root, run, start


def train_variant(root, run: dict, name: str, *, sgd: bool = False, deepspeed: dict | None = None, **training):
    """Train a copy of `run` under results/gpu/<name>; (completed process, run dir)."""
    run = copy.deepcopy(run)
    run["run"]["dir"] = f"results/gpu/{name}"
    run["training"].update(training)
    run["deepspeed"].update(deepspeed or {})
    if sgd:  # DeepSpeed's ZeRO refuses optimizers it has not tested unless told otherwise
        run["deepspeed"]["zero_allow_untested_optimizer"] = True
    path = root / f"results/gpu/{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run))
    rel = str(path.relative_to(root))
    done = run_cli(*([sys.executable, "-c", SGD_TRAIN, rel] if sgd else ["kdbench", "train", rel]), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, root / run["run"]["dir"]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def test_zero2_bf16_trains_on_cuda(prepared):
    root, run, start = prepared
    # `training.bf16` is what train.py passes to DeepSpeed (it overrides a `bf16` key of the DeepSpeed
    # config); set both, as a hand-written run.yaml would.
    _, run_dir = train_variant(root, run, "zero2-bf16", steps=2, micro_batch_size=4, bf16=True,
                               deepspeed={"bf16": {"enabled": True}})
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [0, 1]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["tokens"] > 0 for r in recs)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["device"]["device"].startswith("cuda")
    weights = load_file(run_dir / "model/model.safetensors")
    assert weights.keys() == start.keys()
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    _, moved = max_abs(weights, {k: w.to(weights[k].dtype) for k, w in start.items()})  # bf16 student: rounded start
    assert moved > 1e-4


def test_zero3_bf16_with_an_offloaded_zero3_teacher_trains_on_cuda(prepared):
    root, run, start = prepared
    zero3 = json.loads((root / "config/deepspeed/zero3.json").read_text())
    zero3["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even the tiny weights
    run = {**run, "teacher_zero3": {"offload": "cpu"}}
    _, run_dir = train_variant(root, run, "zero3-bf16", steps=2, micro_batch_size=4, bf16=True,
                               deepspeed={**zero3, "bf16": {"enabled": True}})
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [0, 1]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["tokens"] > 0 for r in recs)
    weights = load_file(run_dir / "model/model.safetensors")
    assert weights.keys() == start.keys() and all(weights[k].shape == start[k].shape for k in start)
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    _, moved = max_abs(weights, {k: w.to(weights[k].dtype) for k, w in start.items()})
    assert moved > 1e-4


def test_accumulation_gives_the_same_gradient_step_on_cuda(prepared):
    root, run, start = prepared
    sgd = {"sgd": True, "lr": 1.0, "weight_decay": 0.0, "bf16": False}
    _, whole = train_variant(root, run, "sgd-mb8xga1", micro_batch_size=8, gradient_accumulation_steps=1, **sgd)
    _, accumulated = train_variant(root, run, "sgd-mb1xga8", micro_batch_size=1, gradient_accumulation_steps=8, **sgd)
    assert records(whole)[0]["tokens"] == records(accumulated)[0]["tokens"]
    whole, accumulated = (load_file(d / "model/model.safetensors") for d in (whole, accumulated))
    assert_same_sgd_step(start, whole, accumulated)


def test_accumulation_gives_the_same_adamw_step_on_cuda(prepared):
    root, run, start = prepared
    tr = run["training"]
    assert tr["grad_clip"] > 0 and int(tr["warmup_ratio"] * tr["steps"]) == 0  # the step runs at the full lr
    _, whole = train_variant(root, run, "adamw-mb8xga1", micro_batch_size=8, gradient_accumulation_steps=1, bf16=False)
    _, accumulated = train_variant(root, run, "adamw-mb1xga8", micro_batch_size=1, gradient_accumulation_steps=8,
                                   bf16=False)
    whole, accumulated = (load_file(d / "model/model.safetensors") for d in (whole, accumulated))
    assert_same_adamw_step(start, whole, accumulated, tr["lr"], tr["weight_decay"])


@pytest.mark.parametrize("policy_key", [None, "adakd"])
def test_chunked_hidden_state_loss_equals_full_logits_on_cuda(plugins, policy_key):
    """`objective` from hidden states + heads, chunked (the training path) vs from full logits, on cuda;
    the full-logits loss on cuda also matches the same computation on the CPU."""
    from kdbench.losses import IGNORE, count_valid, objective
    from kdbench.policies import Composed

    torch.backends.cuda.matmul.allow_tf32 = False
    vocab, rows, d_s, d_t, batch, length = 32_000, 32_064, 256, 384, 2, 640  # head rows padded past the vocab
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(batch, length, d_s, generator=g)
    h_t = torch.randn(batch, length, d_t, generator=g)
    w_s = torch.randn(rows, d_s, generator=g) / d_s**0.5
    w_t = torch.randn(rows, d_t, generator=g) / d_t**0.5
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, :100] = IGNORE  # prompt
    labels[1, 500:] = IGNORE  # right padding
    n = count_valid(labels)
    fkl = plugins["fkl"].obj

    def run(device, chunked):
        policy = None
        if policy_key:
            policy = Composed([plugins[policy_key].instantiate({}, total_steps=10, student_dim=d_s, teacher_dim=d_t)])
            for module in policy.modules():
                module.to(device)
        hs = h_s.to(device).requires_grad_(True)
        ws = w_s.to(device).requires_grad_(True)
        ht, wt, y = h_t.to(device), w_t.to(device), labels.to(device)
        common = {"vocab_size": vocab, "kd_ratio": 0.7, "n_global": n, "divergence": fkl, "policy": policy,
                  "progress": 0.3}
        if chunked:
            parts = objective(hs, ht, y, student_head=lambda h: h @ ws.T, teacher_head=lambda h: h @ wt.T,
                              chunk_size=256, **common)
        else:
            parts = objective(hs @ ws.T, ht @ wt.T, y, **common)
        parts.loss.backward()
        return parts, hs.grad.cpu(), ws.grad.cpu()

    chunked, full, cpu = run("cuda", True), run("cuda", False), run("cpu", False)
    for other in (full, cpu):
        assert chunked[0].loss.item() == pytest.approx(other[0].loss.item(), rel=1e-5)
        assert chunked[0].ce_sum == pytest.approx(other[0].ce_sum, rel=1e-5)
        assert chunked[0].kd_mean == pytest.approx(other[0].kd_mean, rel=1e-5)
        assert chunked[0].n_selected == other[0].n_selected
        for mine, theirs in zip(chunked[1:], other[1:]):  # grads of h_s, W_s
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


def test_killed_run_resumes_with_the_cuda_generator_on_cuda(tmp_path_factory, monkeypatch):
    """Dropout (p 0.1, the GPT-2 default) draws its masks from the CUDA generator of the rank's
    device; without that generator in the checkpoint the resumed steps would drop other units and
    end elsewhere (by ~1e-3 in the loss at this size, far above the 1e-6 allowed here)."""
    root = workflow_copy(tmp_path_factory.mktemp("gpu-resume"))
    pair = "gpt2-gpu-resume-s_from_gpt2-gpu-resume-t"

    def edit(spec):
        del spec["teacher"]["sft"]  # the random teacher is enough to distil from
        spec["training"].update(steps=12, micro_batch_size=4, checkpoint_every=5, keep_checkpoints=2, log_every=1)
    prepare_run(root, pair, "fkl", edit, n_train=48)
    run_dir = f"results/runs/{pair}/fkl/seed1"
    straight, killed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("killed")
    for copy_root in (straight, killed):
        shutil.copytree(root, copy_root, dirs_exist_ok=True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def train(where):
        return run_cli(sys.executable, "-c", DETERMINISTIC_TRAIN, f"{run_dir}/run.yaml", cwd=where)

    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("KDBENCH_FAULT_KILL_AT_STEP", "8")
    assert train(killed).returncode == -9
    monkeypatch.delenv("KDBENCH_FAULT_KILL_AT_STEP")
    rng_files = sorted((killed / run_dir / "checkpoints").glob("*/step00000005/kdbench_rng_rank0.pt"))
    assert rng_files and "cuda" in torch.load(rng_files[0], weights_only=True)
    resumed = train(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 5" in resumed.stderr
    a, b = records(straight / run_dir), records(killed / run_dir)
    assert [r["step"] for r in b] == list(range(12))
    assert abs(a[-1]["loss"] - b[-1]["loss"]) < 1e-6, (a[-1]["loss"], b[-1]["loss"])
    wa, wb = (load_file(r / run_dir / "model/model.safetensors") for r in (straight, killed))
    worst, diff = max_abs(wa, wb)
    assert diff < 1e-6, f"{worst}: max |Δ| {diff:.3g} between the uninterrupted and the resumed run"


def test_bf16_chunked_loss_upcasts_and_matches_fp32_full_logits_on_cuda(plugins):
    from kdbench.losses import IGNORE, count_valid, objective
    from kdbench.policies import Composed

    vocab, d, batch, length = 32_000, 512, 2, 600
    g = torch.Generator().manual_seed(0)
    h_s, h_t = torch.randn(batch, length, d, generator=g), torch.randn(batch, length, d, generator=g)
    w_s, w_t = (torch.randn(vocab, d, generator=g) / d**0.5 for _ in range(2))
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, :80] = IGNORE
    n = count_valid(labels)

    def run(device, dtype, chunked):
        policy = Composed([plugins["adakd"].instantiate({}, total_steps=10, student_dim=d, teacher_dim=d)])
        for module in policy.modules():
            module.to(device)
        hs, ws = (x.to(device, dtype).requires_grad_(True) for x in (h_s, w_s))
        ht, wt, y = h_t.to(device, dtype), w_t.to(device, dtype), labels.to(device)
        common = {"vocab_size": vocab, "kd_ratio": 0.5, "n_global": n, "divergence": plugins["fkl"].obj,
                  "policy": policy, "progress": 0.3}
        if chunked:
            parts = objective(hs, ht, y, student_head=lambda h: h @ ws.T, teacher_head=lambda h: h @ wt.T,
                              chunk_size=128, **common)
        else:
            parts = objective(hs @ ws.T, ht @ wt.T, y, **common)
        parts.loss.backward()
        return parts, hs.grad.float().cpu(), ws.grad.float().cpu()

    (bf16, g_h, g_w), (ref, r_h, r_w) = run("cuda", torch.bfloat16, True), run("cuda", torch.float32, False)
    assert bf16.loss.dtype == torch.float32  # the chunk's logits are upcast before the softmax
    assert bf16.loss.item() == pytest.approx(ref.loss.item(), rel=2e-2)
    for mine, theirs in ((g_h, r_h), (g_w, r_w)):
        assert torch.isfinite(mine).all()
        assert float((mine - theirs).norm() / theirs.norm()) < 5e-2


def test_bf16_run_with_small_loss_chunks_starts_at_the_fp32_loss_on_cuda(prepared):
    root, run, start = prepared
    _, bf16 = train_variant(root, run, "bf16-chunks", steps=3, micro_batch_size=4, bf16=True, loss_chunk_size=16)
    _, fp32 = train_variant(root, run, "fp32-chunks", steps=3, micro_batch_size=4, bf16=False, loss_chunk_size=16)
    a, b = records(bf16), records(fp32)
    assert all(math.isfinite(r["loss"]) for r in a) and [r["step"] for r in a] == [0, 1, 2]
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=2e-2)  # step 0: the same weights, rounded to bf16
    assert a[0]["tokens"] == b[0]["tokens"]


def test_teacher_states_are_computed_and_read_on_cuda(prepared):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from kdbench.teacher_states import states_path

    root, run, _ = prepared
    run = copy.deepcopy(run)
    run["teacher_dtype"] = "bf16"
    run["training"].update(steps=4, micro_batch_size=4, log_every=1, gpus=1)
    run_yaml = root / run["run"]["dir"] / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(run))
    rel = str(run_yaml.relative_to(root))

    def train():
        done = run_cli("kdbench", "train", rel, cwd=root)
        out = root / run["run"]["dir"]
        result = (done, records(out) if done.returncode == 0 else None,
                  json.loads((out / "provenance.json").read_text()) if done.returncode == 0 else None)
        for name in ("model", "checkpoints", "metrics.jsonl", "provenance.json"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return result

    done, live, _ = train()
    assert done.returncode == 0, done.stderr[-3000:]
    path = root / states_path(run)
    made = run_cli("kdbench", "teacher-states", rel, str(path), cwd=root)
    assert made.returncode == 0 and "on cuda" in made.stderr, made.stderr[-3000:]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["device"] == "cuda" and f.get_slice("states").get_dtype() == "BF16"
    done, cached, provenance = train()
    assert done.returncode == 0, done.stderr[-3000:]
    assert provenance["teacher_states"] | {"file": None} == {"file": None, "used": True, "hits": 4, "misses": 0,
                                                              "checked": 1}
    assert cached[0]["loss"] == pytest.approx(live[0]["loss"], rel=1e-3)

    tables = load_file(path)
    offsets = tables["offsets"].tolist()
    tables["states"][offsets[1]:offsets[2]] *= 1.05
    save_file(tables, path, metadata={"device": "cuda", "threads": "1"})
    done, _, _ = train()
    assert done.returncode == 1 and "are damaged" in done.stderr and "micro-batch 1 " in done.stderr, done.stderr[-3000:]
    assert not path.exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_data_parallel_with_one_metrics_writer(prepared):
    root, run, start = prepared
    two = copy.deepcopy(run)
    two["run"]["dir"] = "results/gpu/two-gpus"
    two["training"].update(gpus=2, steps=3, micro_batch_size=4, log_every=1)
    _, one_dir = train_variant(root, run, "one-gpu", steps=3, micro_batch_size=4, log_every=1)
    path = root / "results/gpu/two-gpus.yaml"
    path.write_text(yaml.safe_dump(two))
    done = run_cli("kdbench", "train", str(path.relative_to(root)), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    recs, one = records(root / two["run"]["dir"]), records(one_dir)
    assert [r["step"] for r in recs] == [0, 1, 2]  # one writer
    assert recs[0]["tokens"] > one[0]["tokens"]  # two ranks' micro-batches: twice the examples per step
    assert recs[0]["selected"] == recs[0]["tokens"]  # fkl keeps every token, summed over both ranks
    weights = load_file(root / two["run"]["dir"] / "model/model.safetensors")
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert max_abs(weights, start)[1] > 1e-4
