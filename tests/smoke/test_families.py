"""Each family's tiny pair (GPT-2, Qwen2, Llama with a LoRA student) trains through `kdbench train`
on the DeepSpeed engine (accelerator cpu): same code path as the real pairs."""

import json

import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from kdbench.models import planned_shape
from kdbench.pairs import read_pair

from tests.conftest import grid_config, run_cli, workflow_copy

FAMILIES = ["gpt2-tiny-s_from_gpt2-tiny-t", "qwen2-tiny-s_from_qwen2-tiny-t", "llama-tiny-s_from_llama-tiny-t"]
LORA_PAIR = "openllama2-3b_from_openllama2-7b"  # its LoRA settings, on the tiny LLaMA student


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("families"))
    for cmd in (["data", "--out", "results/data", "--n-train", "64", "--n-valid", "5", "--n-eval", "5"],
                ["tokenizer", "--data", "results/data/train.jsonl", "--vocab-size", "400", "--out", "results/tokenizer"]):
        assert run_cli("kdbench", *cmd, cwd=root).returncode == 0
    return root


@pytest.mark.parametrize("pair", [*FAMILIES, "llama-lora-s_from_llama-tiny-t"])
def test_tiny_pair_trains(root, pair):
    """Each family's tiny pair trains; the LoRA case is the tiny LLaMA student with the real pair's adapters."""
    if pair.startswith("llama-lora"):
        spec = yaml.safe_load((root / f"config/pairs/{FAMILIES[2]}.yaml").read_text())
        spec["student"]["lora"] = yaml.safe_load((root / f"config/pairs/{LORA_PAIR}.yaml").read_text())["student"]["lora"]
    else:
        spec = yaml.safe_load((root / f"config/pairs/{pair}.yaml").read_text())
    spec["teacher"].pop("sft", None)
    spec["training"].update(steps=12, micro_batch_size=4, log_every=1, checkpoint_every=0)
    (root / f"config/pairs/{pair}.yaml").write_text(yaml.safe_dump(spec))
    (root / "grid.yaml").write_text(yaml.safe_dump(
        grid_config(root, pairs=[pair], methods=["fkl+adakd"])))
    for role in ("teacher", "student"):
        done = run_cli("kdbench", "init-model", "--pair", f"config/pairs/{pair}.yaml", "--role", role,
                       "--tokenizer", "results/tokenizer", "--out", f"results/models/{pair}/{role}-init", cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
    resolved = run_cli("kdbench", "resolve", "grid.yaml", pair, "fkl+adakd", "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    run_dir = root / f"results/runs/{pair}/fkl+adakd/seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(resolved.stdout)
    done = run_cli("kdbench", "train", str(run_dir / "run.yaml"), "--threads", "1", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 12 and all(m["kd_loss"] < 1e3 for m in metrics)
    vocab = len(AutoTokenizer.from_pretrained(root / "results/tokenizer"))
    shapes = json.loads((run_dir / "provenance.json").read_text())["shapes"]  # what was built, as check plans it
    spec = read_pair(root / f"config/pairs/{pair}.yaml", root)  # with its defaults, as the grid's check reads it
    assert shapes == {role: planned_shape(spec["family"], spec[role], vocab, "p.yaml", role) for role in shapes}
    merged = load_file(run_dir / "model/model.safetensors")
    init = load_file(root / f"results/models/{pair}/student-init/model.safetensors")
    changed = {k for k in init if not (merged[k] == init[k]).all()}
    if "lora" in spec["student"]:  # only the adapted projections move; the adapter is saved beside
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
        assert (run_dir / "model/adapter/adapter_config.json").is_file()
    else:
        assert len(changed) > len(init) // 2


def test_selection_by_validation_rouge_keeps_the_best_step(root):
    pair = FAMILIES[0]
    spec = yaml.safe_load((root / f"config/pairs/{pair}.yaml").read_text())
    spec["teacher"].pop("sft", None)
    spec["training"].update(steps=9, micro_batch_size=4, log_every=100, checkpoint_every=0, select="valid_rougeL",
                            select_every=3, select_examples=4, sample_max_new_tokens=8)
    (root / f"config/pairs/{pair}.yaml").write_text(yaml.safe_dump(spec))
    (root / "grid.yaml").write_text(yaml.safe_dump(
        {**grid_config(root, pairs=[pair], methods=["sft"]), "teacher_cache": False}))
    for role in ("teacher", "student"):
        init = root / f"results/models/{pair}/{role}-init"
        if not init.exists():
            assert run_cli("kdbench", "init-model", "--pair", f"config/pairs/{pair}.yaml", "--role", role,
                           "--tokenizer", "results/tokenizer", "--out", str(init), cwd=root).returncode == 0
    run_dir = root / f"results/runs/{pair}/sft/seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(run_cli("kdbench", "resolve", "grid.yaml", pair, "sft", "1", cwd=root).stdout)
    done = run_cli("kdbench", "train", str(run_dir / "run.yaml"), "--threads", "1", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "valid_rougeL" in m]
    assert [m["step"] for m in scored] == [2, 5, 8]
    best = max(scored, key=lambda m: m["valid_rougeL"])
    selected = json.loads((run_dir / "provenance.json").read_text())["selected"]
    assert selected["rule"] == "valid_rougeL" and selected["step"] == best["step"] + 1
    assert selected["valid_rougeL"] == best["valid_rougeL"]
    kept = load_file(run_dir / "best_trainable.safetensors")
    saved = load_file(run_dir / "model/model.safetensors")
    assert all((saved[k] == kept[k]).all() for k in saved if k in kept)
