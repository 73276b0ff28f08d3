"""Pair files (config/pairs/<student>_from_<teacher>.yaml): read, validated against the pair schema,
their defaults filled in (teacher.dtype, seed, resources, ...), and checked for what the schema
cannot say, without loading a model: which key an `init` needs, local model directories, the GGUF
package, batch sizes against the GPU count, the DeepSpeed file. What needs transformers (model
config keys and values, shared vocabularies, model shapes) is kdbench.preflight's."""

from __future__ import annotations

import copy
from pathlib import Path

from kdbench.errors import KDBenchError
from kdbench.modelspec import DEFAULT_TOKENIZER, gguf_path, is_local_path, tokenizer_source
from kdbench.schemas import check_schema, fill_defaults, load_schema, load_yaml
from kdbench.spec import Training, accumulation_steps

TRAINING_REF = "#/$defs/training"  # filled by Training.resolve (teacher.sft over training), not on load
# The workflow's generated tokenizers (rules tokenizer, tokenizer_unigram): kind → folder under results/.
GENERATED_TOKENIZERS = {"bpe": "tokenizer", "unigram": "tokenizer-unigram"}


def pair_file(workdir: Path, name: str) -> Path:
    return Path(workdir) / "config" / "pairs" / f"{name}.yaml"


def known_pairs(workdir: Path) -> list[str]:
    return sorted(p.stem for p in pair_file(workdir, "x").parent.glob("*.yaml"))


def read_pair(path: Path, workdir: Path | None = None) -> dict:
    """The pair file at `path` with its schema's defaults filled in, as a job reads it (the grid
    checked the file before any job)."""
    return fill_defaults(load_yaml(path), load_schema(Path(workdir or Path.cwd()), "pair"),
                         skip=frozenset({TRAINING_REF}))


def load_pair(path: Path, workdir: Path | None = None, overrides: dict | None = None) -> dict:
    """The pair file at `path`, validated, with its schema's defaults filled in and its models checked;
    `overrides` (a grid's `pair_overrides.<pair>`: training settings) are merged in first."""
    workdir = Path(workdir or Path.cwd())
    pair = _merged(load_yaml(path), overrides or {})
    schema = load_schema(workdir, "pair")
    check_schema(pair, schema, f"{path}, with the grid's pair_overrides.{Path(path).stem}" if overrides else str(path))
    fill_defaults(pair, schema, skip=frozenset({TRAINING_REF}))
    for role in ("teacher", "student"):
        _check_model(pair[role], role, path)
        _check_tokenizer(pair[role], role, path)
    if pair["cross_tokenizer"] and not {pair["teacher"]["init"], pair["student"]["init"]} <= {"pretrained", "gguf"}:
        raise KDBenchError(f"{path}: key 'cross_tokenizer': it declares two loaded models (init pretrained or gguf) "
                           "with tokenizers of their own; a random-init role chooses its tokenizer with "
                           "<role>.tokenizer, and a copy of the teacher reads the teacher's. Remove cross_tokenizer.")
    if "reference" in pair and "random" in (pair["teacher"]["init"], pair["student"]["init"]):
        raise KDBenchError(f"{path}: key 'reference': published numbers belong beside the paper's own pretrained "
                           "teacher and student; beside a random-init model the difference would mean nothing, "
                           "so remove reference from this pair.")
    check_batch_sizes(pair, str(path))
    if pair["teacher"]["offload"] != "none" and not pair["teacher"]["zero3"]:
        raise KDBenchError(f"{path}: key 'teacher.offload': offloading the teacher to the CPU moves its ZeRO-3 "
                           "partitions, so it needs teacher.zero3: true; set that, or remove offload.")
    ds = workdir / pair["training"]["deepspeed"]
    if not ds.is_file():
        raise KDBenchError(f"{path}: key 'training.deepspeed': file {ds} not found.")
    return pair


def _merged(base: dict, override: dict) -> dict:
    """`base` with `override`'s keys set, nested mappings merged key by key."""
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        base[key] = _merged(base[key], value) if both else copy.deepcopy(value)
    return base


def _check_model(spec: dict, role: str, path: Path) -> None:
    """What a model spec's `init` needs, and that a local directory or GGUF package it names exists."""
    need = {"random": "config", "pretrained": "path", "gguf": "gguf"}.get(spec["init"])
    if need and need not in spec:
        raise KDBenchError(f"{path}: key '{role}.{need}' is required when {role}.init is {spec['init']}.")
    if spec["init"] == "random" and "layers" in spec:
        raise KDBenchError(f"{path}: key '{role}.layers': layers prunes a loaded model; a random-init "
                           f"model is sized by {role}.config (num_hidden_layers / n_layer).")
    if spec["init"] == "gguf":  # the package must be installed (its metadata only is read)
        gguf_path(spec, f"{path}: key '{role}.gguf'")
    if spec["init"] == "pretrained" and is_local_path(spec["path"]) and not Path(spec["path"]).is_dir():
        raise KDBenchError(f"{path}: key '{role}.path': no local model directory {spec['path']} "
                           "(a hub id is written 'org/name'); give a directory written by save_pretrained.")
    if spec["init"] == "pretrained" and "config" in spec:
        raise KDBenchError(f"{path}: key '{role}.config': a pretrained model is built as its checkpoint's "
                           "config.json says, so these settings would be ignored; remove them (config "
                           "is for init: random).")


def _check_tokenizer(spec: dict, role: str, path: Path) -> None:
    """A role's `tokenizer` key: only a random-init model takes one, and a directory it names holds one."""
    given = spec.get("tokenizer")
    if given is None:
        return
    if spec["init"] != "random":
        own = "the teacher's (it is a copy)" if spec["init"] == "teacher" else "its own, saved beside its weights"
        raise KDBenchError(f"{path}: key '{role}.tokenizer': a {spec['init']} model reads {own}; a tokenizer is "
                           f"chosen only for init: random. Remove {role}.tokenizer.")
    folder = Path(given.get("path", ""))
    if "path" in given and not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        raise KDBenchError(f"{path}: key '{role}.tokenizer.path': no tokenizer in {given['path']} (a directory with "
                           "tokenizer.json, as save_pretrained writes it); give that directory, or "
                           "{generated: bpe | unigram} for one the workflow trains.")


def cross_tokenizer(pair: dict) -> bool:
    """Teacher and student read different tokenizers (a cross-tokenizer pair, docs/METHODS.md §6)."""
    return tokenizer_source(pair, "teacher") != tokenizer_source(pair, "student")


def tokenizer_dir(results: str, name: str, pair: dict, role: str) -> str:
    """The directory of a role's tokenizer: a generated one, the directory a pair file names, or the
    role's initial model directory (init-model saves the tokenizer beside the weights)."""
    spec = pair[role]
    if spec["init"] != "random":
        return f"{results}/models/{name}/{role}-init"
    given = spec.get("tokenizer", DEFAULT_TOKENIZER)
    return given["path"] if "path" in given else f"{results}/{GENERATED_TOKENIZERS[given['generated']]}"


def _describe(pair: dict, role: str) -> str:
    source = tokenizer_source(pair, role)
    if source.startswith("own"):
        return "its model's own"
    return source.replace("generated:", "generated ").replace("path:", "")


def check_method(where: str, pair: dict, label: str, method: dict, crosstok: list[str]) -> None:
    """Before any job: a same-vocabulary method distils only a pair with one tokenizer, and a
    cross-tokenizer method (a key in `crosstok`) only a pair with two. `where` is the pair file."""
    div = method["divergence"]
    if div is None:
        return
    cross_method, cross_pair = div["key"] in crosstok, cross_tokenizer(pair)
    tokenizers = f"teacher: {_describe(pair, 'teacher')}, student: {_describe(pair, 'student')}"
    if cross_pair and not cross_method:
        raise KDBenchError(
            f"{where}: teacher and student read different tokenizers ({tokenizers}), so method '{label}' "
            f"cannot distil this pair: '{div['key']}' compares the two distributions token id by token id. "
            f"The cross-tokenizer methods that would run: {', '.join(crosstok) or 'none'} (docs/METHODS.md §6).")
    if cross_method and not cross_pair:
        raise KDBenchError(
            f"{where}: teacher and student read one tokenizer ({tokenizers}), so cross-tokenizer method "
            f"'{label}' has nothing to align here and cannot run; use a same-vocabulary method (fkl, rkl, ...), "
            "or give a role another tokenizer (teacher.tokenizer / student.tokenizer, config/README.md).")


def training(pair: dict, teacher_sft: bool = False) -> dict:
    """A pair's training settings over kdbench.spec.Training's defaults (with `teacher_sft`: the
    teacher's SFT stage, `teacher.sft` over those)."""
    return Training.resolve({**pair["training"], **(pair["teacher"]["sft"] if teacher_sft else {})})


def check_batch_sizes(pair: dict, where: str) -> None:
    """training and teacher.sft: a global batch size must divide into whole accumulation steps for
    training.gpus, and a section that has one (given or inherited) must not also fix the accumulation."""
    sections = [("training", pair["training"], pair["training"])]
    if "sft" in pair["teacher"]:
        sections.append(("teacher.sft", pair["teacher"]["sft"], {**pair["training"], **pair["teacher"]["sft"]}))
    for key, own, merged in sections:
        if "global_batch_size" in merged and "gradient_accumulation_steps" in own:
            source = key if "global_batch_size" in own else "training"
            raise KDBenchError(f"{where}: key '{key}.gradient_accumulation_steps': {source}.global_batch_size is "
                               f"given{'' if source == key else ' and applies to the teacher SFT run too'}, and it "
                               "sets the accumulation from the job's GPU count; give only one of the two"
                               f"{'' if source == key else ' (teacher.sft.global_batch_size for the SFT run)'}.")
        resolved = Training.resolve(merged)
        accumulation_steps(resolved, resolved["gpus"], where, key)
