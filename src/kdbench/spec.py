"""The run spec, typed: every training, generation and evaluation setting once, with its type,
default, range and meaning.

Each setting is a dataclass field declared with `setting(default, doc, **json_schema)`. From these
classes come the pair schema's `training` properties and the grid schema's `evaluation` properties
(`schema_properties`, merged into workflows/schemas/*.schema.yaml when kdbench reads them), the
`training` section of every run.yaml (`Training.resolve`), the evaluation protocol's defaults
(`Protocol`, read by `kdbench evaluate` and `kdbench lm-eval`) and how a job reads a run.yaml back
(`read_run`: checked and complete, once; then typed as `Training`). No other file states these
defaults (tests/unit/test_spec.py checks the schemas and the code for copies).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from kdbench.errors import KDBenchError

SETS = ("dolly", "selfinst", "vicuna", "sni", "unni")  # the five evaluation sets, in table column order


def setting(default: Any = MISSING, doc: str = "", **schema: Any) -> Any:
    """A spec field: its default (none: required), one line of meaning, and JSON-schema constraints
    beyond the type (minimum, maximum, ...)."""
    meta = {"doc": doc, "schema": schema}
    if isinstance(default, (list, dict)):  # a fresh one per instance
        return field(default_factory=functools.partial(type(default), default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _json_type(hint: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):  # `int | None`: optional, absent when unset
        return _json_type(next(a for a in args if a is not type(None)))
    if origin is list:
        return {"type": "array", "items": _json_type(args[0])}
    return {"type": _JSON_TYPES[hint]}


def schema_properties(cls: type) -> dict[str, dict[str, Any]]:
    """The JSON-schema `properties` of a spec class: type, constraints, default and description."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in fields(cls):
        prop = _json_type(hints[f.name])
        for key, value in f.metadata["schema"].items():  # constraints; `items` merges into the list's
            prop[key] = {**prop.get(key, {}), **value} if key == "items" else value
        default = default_of(f)
        if default is not MISSING and default is not None:
            prop["default"] = default
        prop["description"] = f.metadata["doc"]
        props[f.name] = prop
    return props


def required(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if default_of(f) is MISSING]


def defaults(cls: type) -> dict[str, Any]:
    """Every field that has a default, with it (an optional field without a value is left out)."""
    return {f.name: d for f in fields(cls) if (d := default_of(f)) is not MISSING and d is not None}


class _Spec:
    @classmethod
    def resolve(cls, given: dict[str, Any]) -> dict[str, Any]:
        """`given` over the defaults, as the plain mapping a run.yaml holds."""
        return {**defaults(cls), **given}

    @classmethod
    def checked(cls, given: dict[str, Any], where: str = "run.yaml") -> dict[str, Any]:
        """A resolved section as a job reads it back: complete (a run.yaml written by an older kdbench
        gets the defaults of settings it predates); an unknown or missing key is an error naming `where`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - names)
        missing = sorted(set(required(cls)) - set(given))
        if unknown or missing:
            raise KDBenchError(f"{where}: {cls.__name__.lower()} settings " + "; ".join(
                part for part in (f"unknown {unknown} (known: {sorted(names)})" if unknown else "",
                                  f"missing {missing}" if missing else "") if part))
        return cls.resolve(given)

    @classmethod
    def of(cls, given: dict[str, Any], where: str = "run.yaml"):
        """The typed view of a resolved section (`checked`)."""
        return cls(**cls.checked(given, where))


@dataclass(frozen=True, kw_only=True)
class Training(_Spec):
    """A run's `training` section (pair file `training:`, the teacher's `teacher.sft:` over it)."""

    steps: int = setting(doc="optimizer steps", minimum=1)
    micro_batch_size: int = setting(doc="examples per micro-batch and GPU", minimum=1)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", minimum=1)
    lr: float = setting(doc="peak learning rate (AdamW)", exclusiveMinimum=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    warmup_ratio: float = setting(0.0, "fraction of the steps spent in linear warm-up", minimum=0, maximum=1)
    schedule: Literal["cosine", "linear", "constant"] = setting("cosine", "learning-rate schedule after warm-up")
    max_length: int = setting(doc="tokens per example, prompt and response (longer ones are cut)", minimum=8)
    grad_clip: float = setting(1.0, "gradient-norm clipping (0 = none)", minimum=0)
    deepspeed: str = setting(doc="DeepSpeed JSON/YAML config, relative to the workflow directory")
    bf16: bool = setting(False, "DeepSpeed bf16 mixed precision (fp32 master weights)")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward")
    log_every: int = setting(10, "steps between metrics.jsonl records", minimum=1)
    loss_chunk_size: int = setting(1024, "tokens per chunk of the KD loss (memory bound)", minimum=1)
    checkpoint_every: int = setting(100, "steps between checkpoints (0 = none)", minimum=0)
    keep_checkpoints: int = setting(2, "how many recent checkpoints to keep", minimum=1)
    sample_max_new_tokens: int = setting(
        256, "response length cap when sampling from the student or teacher (on-policy sources, validation "
        "selection, seqkd's teacher responses)", minimum=1)
    gpus: int = setting(1, "GPUs per training job (data parallel under the DeepSpeed launcher; ignored on CPU)",
                        minimum=1)
    select: Literal["final", "valid_rougeL"] = setting(
        "final", "the saved model: the last step's, or the best by validation ROUGE-L")
    select_every: int = setting(100, "steps between validation ROUGE-L measurements (select valid_rougeL)",
                                minimum=1)
    select_examples: int = setting(100, "validation examples scored (greedy) for selection", minimum=1)
    nonfinite: Literal["stop", "skip"] = setting(
        "stop", "a NaN/inf loss stops the run, or its micro-batch is skipped (no gradient)")
    max_nonfinite: int = setting(10, "with nonfinite skip: this many non-finite micro-batches in a row stop the run",
                                 minimum=1)
    global_batch_size: int | None = setting(
        None, "examples per optimizer step over all GPUs; when given, each job sets gradient_accumulation_steps "
        "= global_batch_size / (micro_batch_size × its GPUs) (checked against training.gpus before any job)",
        minimum=1)
    tensorboard: bool = setting(False, "also log metrics.jsonl's scalars to <run dir>/tensorboard/ (DeepSpeed's "
                                "monitor; pip install -e \".[tensorboard]\")")


@dataclass(frozen=True, kw_only=True)
class Generation(_Spec):
    """The generation settings the grid's `evaluation` section and the decoding protocol share."""

    max_new_tokens: int = setting(256, "response length cap in tokens", minimum=1)
    max_prompt_tokens: int = setting(256, "prompt length cap in tokens (longer prompts keep their end)", minimum=1)
    batch_size: int = setting(32, "prompts decoded together", minimum=1)
    no_repeat_ngram_size: int = setting(0, "n-grams generation may not repeat (0 = off)", minimum=0)
    prompt_format: Literal["minillm", "chat"] = setting(
        "minillm", "minillm template, or the tokenizer's chat template (Qwen chat variant)")


@dataclass(frozen=True, kw_only=True)
class Protocol(Generation):
    """One evaluation's decoding protocol (`kdbench evaluate`): the paper's sampling by default."""

    do_sample: bool = setting(True, "sample (false: greedy)")
    top_k: int = setting(0, "top-k sampling (0 = off)", minimum=0)
    top_p: float = setting(1.0, "nucleus sampling mass", exclusiveMinimum=0, maximum=1)
    temperature: float = setting(1.0, "sampling temperature", exclusiveMinimum=0)


@dataclass(frozen=True, kw_only=True)
class Evaluation(Generation):
    """The grid's `evaluation` section: the protocol every evaluation job of the grid runs."""

    decoding_seeds: list[int] = setting([10, 20, 30, 40, 50], "decoding seeds: each model is sampled once per seed",
                                        minItems=1, items={"minimum": 0})
    greedy: bool = setting(False, "greedy decoding instead of the protocol's sampling")
    engine: Literal["hf", "vllm"] = setting(
        "hf", "generation engine: transformers' generate, or vLLM (GPU; pip install -e \".[vllm]\"; no n-gram "
        "blocking: needs no_repeat_ngram_size 0)")
    dtype: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", "the dtype the evaluated model is loaded in, recorded with each result (bf16 or fp16 halve a GPU's "
        "memory and time; the sampled responses then differ in their bits)")
    job: Literal["set", "run"] = setting(
        "set", "one evaluation job per (run, set), or per run over every set (small models: start-up dominates)")
    lm_eval_tasks: list[str] = setting(
        [], "lm-eval tasks, tags, groups or task YAML paths run on every model over the decoding seeds (rule "
        "lm_eval) and tabulated per pair, e.g. kdbench_gen_dolly")


def read_run(run: dict[str, Any], where: str) -> dict[str, Any]:
    """A resolved run (a run.yaml, `where`) as every job reads it, once: its `training` section checked
    and complete (`Training.checked`) and its `prompt_format` given, so a run.yaml written by an older
    kdbench works; the job then types the section as it is (`Training(**run["training"])`)."""
    return {**run, "training": Training.checked(run["training"], where),
            "prompt_format": run.get("prompt_format", defaults(Generation)["prompt_format"])}


def accumulation_steps(training: dict, world: int, where: str, key: str = "training") -> int:
    """Gradient accumulation steps so that micro_batch_size × accumulation × world is
    `training.global_batch_size`; without a global batch size, the configured accumulation. `world`
    is training.gpus at config time and the job's own rank count at its start; `where` (the pair
    file) and `key` name the section in the error. `training` is resolved (`Training.resolve`)."""
    total = training.get("global_batch_size")
    if total is None:
        return training["gradient_accumulation_steps"]
    micro = training["micro_batch_size"]
    if total % (micro * world):
        raise KDBenchError(
            f"{where}: key '{key}.global_batch_size': {total} is not a multiple of micro_batch_size {micro} × "
            f"{world} GPU(s) = {micro * world}, so no whole number of accumulation steps gives it. Change "
            f"global_batch_size to a multiple of {micro * world}, or micro_batch_size or the GPU count "
            "(training.gpus) so that micro_batch_size × GPUs divides it.")
    return total // (micro * world)


KD_RATIO_DEFAULT = 1.0  # AdaKD and DistiLLM runs use pure KD (docs/METHODS.md §1)


def default_kd_ratio(divergence: Any) -> float:
    """A method's kd_ratio unless its `method_defs` entry sets one: pure KD with a divergence, else 0."""
    return KD_RATIO_DEFAULT if divergence else 0.0


@dataclass(kw_only=True)
class Method(_Spec):
    """A run's resolved `method` section (kdbench.config resolves labels into it)."""

    label: str = setting(doc="the run label, base[+policy] (or teacher)")
    kd_ratio: float = setting(doc="weight of the KD loss; 1 − kd_ratio weighs the cross-entropy", minimum=0, maximum=1)
    divergence: dict | None = setting(None, "the divergence plugin (key, path, version, bound hp); none: SFT")
    policies: list[dict] = setting([], "the token-policy plugins, applied in order")
    source: Literal["off_policy", "on_policy_mixed", "adaptive_replay"] = setting(
        "off_policy", "where training responses come from (docs/METHODS.md §1)")
    source_hp: dict = setting({}, "the data source's parameters")
    init_from: str | None = setting(None, "start from this label's trained model (DistiLLM: sft)")
    train_data: str | None = setting(None, "this method's training jsonl template ({results}, {pair}), else the grid's")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def with_spec(schema: dict, where: tuple[str, ...], cls: type, *, require: bool = False) -> dict:
    """`schema` with the object at key path `where` given `cls`'s properties (and its required keys)."""
    node = schema
    for key in where:
        node = node[key]
    node["properties"] = {**schema_properties(cls), **node.get("properties", {})}
    if require:
        node["required"] = required(cls)
    return schema
