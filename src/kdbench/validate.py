"""Checks of a grid before any job, beyond its schema: values that are each valid but wrong together,
and the files a pair points at, read directly (JSON, YAML, a file's first bytes; never torch or
transformers). Each function takes the loaded config or pair and `where` (the file, for messages)
and raises KDBenchError naming the file, the key and what is allowed; kdbench.config calls them.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import KDBenchError
from kdbench.jsonl import count_records
from kdbench.spec import Training

# Folders of the checkout that hold its sources: a results directory inside one (or holding one)
# would mix outputs into the code, and a cleanup of results would delete the code.
SOURCE_DIRS = ("src", "workflows", "methods", "config", "evaluation", "tests")
WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
ZERO_STAGES = (0, 1, 2, 3)
# The linear layers of each family's decoder (names as peft matches them: the last part of a module's
# path), for LoRA target_modules; a family not listed is checked at job start by peft itself.
LINEAR_LAYERS = {
    "gpt2": ("c_attn", "c_proj", "c_fc", "lm_head"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
}
LAYER_KEYS = ("num_hidden_layers", "n_layer")  # a config's decoder depth (GPT-2 calls it n_layer)


def _nearest(name: str, known: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _nearest_label(label: str, bases: set[str], policies: set[str]) -> str:
    base, plus, policy = label.partition("+")
    near = [difflib.get_close_matches(part, sorted(known), n=1) or [part]
            for part, known in ((base, bases), (policy, policies)) if part or known is bases]
    guess = "+".join(n[0] for n in near) if plus else near[0][0]
    return f" Did you mean '{guess}'?" if guess != label else ""


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's where PyYAML has it) refusing a key given twice in one mapping,
    which YAML would otherwise settle silently by keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (lines {seen[key]} and {line}); YAML would keep only "
                    "the last, so remove one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


# --- the grid config -----------------------------------------------------------------------------

def check_grid(config: dict, where: str, workdir: Path, plugins: dict) -> None:
    """The grid config's cross-key checks: results directory, decoding seeds, plugin names."""
    check_results(config["results"], where, workdir)
    methods = {Path(workdir, "methods"), Path(workdir, config["methods_dir"])}  # the Snakefile includes methods/*.smk
    for rules_file in sorted(f for folder in methods for f in folder.glob("*.smk")):
        check_rules_file(rules_file)
    seeds = config["evaluation"]["decoding_seeds"]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise KDBenchError(f"{where}: key 'evaluation.decoding_seeds': seed {twice[0]} is listed twice; each decoding "
                           "seed is one sample of every response, so a repeat would count one sample twice in the "
                           "mean ± std. List distinct seeds.")
    # a label that names another method than the plugin of its name (one that configures the plugin
    # itself, `halfkl: {divergence: halfkl, hp: ...}`, is how its hyper-parameters are set)
    methods, policies = config["method_defs"], config["policy_defs"]
    labels = {"sft": "kdbench's built-in label",
              **{k: "method_defs" for k, d in methods.items() if k not in (d.get("divergence"), d.get("policy"))},
              **{k: "policy_defs" for k, d in policies.items() if k != d.get("policy")}}
    for key, plugin in sorted(plugins.items()):
        if key in labels:
            raise KDBenchError(f"{plugin.path}: the plugin's key '{key}' (its file name) is already the label '{key}' "
                               f"of {labels[key] if key == 'sft' else f'{where}: key {labels[key]!r}'}, which would "
                               "shadow it; rename the file (a plugin's key is its file stem).")


def check_overrides(overrides: dict, pairs: list[str], where: str) -> None:
    """`pair_overrides` may only name pairs the grid's tables use (a misspelt name would change nothing)."""
    for name in overrides:
        if name not in pairs:
            raise KDBenchError(f"{where}: key 'pair_overrides.{name}': no table of this grid uses pair '{name}'."
                               f"{_nearest(name, pairs)} The grid's pairs: {', '.join(pairs)}.")


def check_results(results: str, where: str, workdir: Path) -> None:
    """`results` must be a directory of its own: not empty, not `/`, not the checkout or a folder
    above it, not inside the checkout's sources."""
    at = f"{where}: key 'results'"
    if not str(results).strip():
        raise KDBenchError(f"{at}: empty; give the output directory (default: results).")
    root, path = Path(workdir).resolve(), (Path(workdir) / results).resolve()
    if path == root or path in root.parents:
        raise KDBenchError(f"{at}: '{results}' is {'the checkout itself' if path == root else 'a folder above the checkout'}"
                           f" ({path}); outputs would mix with the sources. Give a folder of its own (default: results).")
    for name in SOURCE_DIRS:
        if path == root / name or root / name in path.parents:
            raise KDBenchError(f"{at}: '{results}' lies inside the checkout's {name}/ folder, which holds sources; "
                               "give a folder of its own (default: results).")


def check_claims(path: Path, parse_label, bases: set[str], policies: set[str]) -> None:
    """Every run label a claims file names (`runs:`) must be a label the grid could run: `parse_label`
    (Grid.method) raises for one that is not; the nearest `base[+policy]` is suggested."""
    if not path.is_file():
        return
    claims = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}  # noqa: S506 (a safe loader)
    for name, labels in (claims.get("runs") or {}).items():
        for label in labels if isinstance(labels, list) else [labels]:
            try:
                parse_label(str(label))
            except KDBenchError:
                raise KDBenchError(f"{path}: key 'runs.{name}': '{label}' is not a method label of this grid (a "
                                   f"plugin in methods/, a method_defs label, or either +a token policy)."
                                   f"{_nearest_label(str(label), bases, policies)}") from None


# --- a pair file ----------------------------------------------------------------------------------

def check_pair(pair: dict, where: str, workdir: Path, config: dict, n_train: int | None) -> None:
    """A pair file's cross-key checks and the files it points at."""
    check_deepspeed(Path(workdir) / pair["training"]["deepspeed"], where)
    for role in ("teacher", "student"):
        spec = pair[role]
        if spec["init"] == "pretrained" and Path(spec["path"]).is_dir():
            _check_weights(Path(spec["path"]), where, role)
        if spec["init"] == "gguf":  # a local file, or one among an installed package's files
            check_gguf(spec, role, where)
        _check_lora(pair, role, where)
    _check_layers(pair, where)
    _check_positions(pair, where, config["evaluation"])
    _check_micro_batch(pair, where, n_train, config)
    if config["evaluation"]["prompt_format"] == "chat":
        _check_chat_template(pair, where)
    else:
        _check_prompt_room(pair, where)


def check_deepspeed(path: Path, where: str) -> dict | None:
    """A DeepSpeed JSON config that parses and names a ZeRO stage DeepSpeed has (0-3)."""
    if not path.is_file() or path.suffix not in (".json", ""):
        return None
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KDBenchError(f"{where}: key 'training.deepspeed': {path} is not valid JSON ({exc}).") from None
    stage = (ds.get("zero_optimization") or {}).get("stage", 0) if isinstance(ds, dict) else None
    if stage not in ZERO_STAGES:
        raise KDBenchError(f"{where}: key 'training.deepspeed': {path}: zero_optimization.stage is {stage!r}; "
                           f"DeepSpeed's ZeRO stages are {', '.join(map(str, ZERO_STAGES))}.")
    return ds


def check_gguf(spec: dict, role: str, where: str) -> None:
    """The GGUF file a spec names starts with the GGUF magic: a local `gguf.file`, or `gguf.file`
    among the files of the installed `gguf.package` (found through its metadata; 4 bytes read)."""
    from kdbench.modelspec import gguf_path

    path = gguf_path(spec, f"{where}: key '{role}.gguf'")
    package = spec["gguf"].get("package")
    if path.is_file():
        check_gguf_magic(path, f"{where}: key '{role}.gguf.file'" + (f" (in package {package})" if package else ""))


def check_gguf_magic(path: Path, where: str) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise KDBenchError(f"{where}: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); give the "
                           ".gguf file itself.")


def _check_weights(path: Path, where: str, role: str) -> None:
    if not any(next(path.glob(pattern), None) for pattern in WEIGHTS):
        raise KDBenchError(f"{where}: key '{role}.path': {path} holds no model weights (no model.safetensors, "
                           "pytorch_model.bin or sharded index); give a directory written by save_pretrained.")


def _local_config(spec: dict) -> dict | None:
    """A role's model config where it is known without loading anything: `config` of a random-init
    model, config.json of a local pretrained directory."""
    if spec["init"] == "random":
        return spec.get("config", {})
    if spec["init"] == "pretrained" and (Path(spec["path"]) / "config.json").is_file():
        return json.loads((Path(spec["path"]) / "config.json").read_text(encoding="utf-8"))
    return None


def _check_layers(pair: dict, where: str) -> None:
    """`student.layers` of a student cut from the teacher must name layers the teacher has."""
    layers, student, teacher = pair["student"].get("layers"), pair["student"], _local_config(pair["teacher"])
    source = teacher if student["init"] == "teacher" else _local_config(student)
    depth = next((source[k] for k in LAYER_KEYS if source and k in source), None)
    if layers and depth is not None and max(layers) >= depth:
        of = "the teacher" if student["init"] == "teacher" else "the student's checkpoint"
        raise KDBenchError(f"{where}: key 'student.layers': {max(layers)} is beyond {of}'s {depth} decoder layers; "
                           f"give indices in 0..{depth - 1}.")


POSITION_KEYS = ("n_positions", "max_position_embeddings")  # a config's longest sequence (GPT-2: n_positions)


def _check_positions(pair: dict, where: str, evaluation: dict) -> None:
    """Training sequences (`max_length`) and generated ones (`max_new_tokens`) must fit each model's
    positions, where the config gives them (a random-init `config`, a local config.json)."""
    for role in ("teacher", "student"):
        cfg = _local_config(pair["teacher"] if pair[role]["init"] == "teacher" else pair[role]) or {}
        positions = next((cfg[k] for k in POSITION_KEYS if k in cfg), None)
        if positions is None:
            continue
        sections = [("training", pair["training"]), *([("teacher.sft", {**pair["training"], **pair["teacher"]["sft"]})]
                                                       if "sft" in pair["teacher"] else [])]
        for key, training in sections:
            length = Training.resolve(training)["max_length"]
            if length > positions:
                raise KDBenchError(f"{where}: key '{key}.max_length': {length} is beyond the {role}'s {positions} "
                                   f"positions; give at most {positions}.")
        if evaluation["max_new_tokens"] >= positions:
            raise KDBenchError(f"{where}: the grid's evaluation.max_new_tokens {evaluation['max_new_tokens']} leaves no "
                               f"room for a prompt within the {role}'s {positions} positions; give fewer new tokens.")


def max_lengths(pair: dict, role: str) -> dict[str, int]:
    """The resolved `max_length` of the runs that train `role`, by key: the student's `training`, the
    teacher's `teacher.sft` (over training) where it has an SFT stage."""
    if role == "student":
        return {"training.max_length": Training.resolve(pair["training"])["max_length"]}
    sft = pair["teacher"].get("sft")
    if sft is None:
        return {}
    key = "teacher.sft.max_length" if "max_length" in sft else "training.max_length"  # where its value is given
    return {key: Training.resolve({**pair["training"], **sft})["max_length"]}


def tokenizer_spec(pair: dict, role: str) -> dict:
    """The model spec whose tokenizer `role`'s runs use: the teacher's for a student cut from it."""
    return pair["teacher"] if pair[role]["init"] == "teacher" else pair[role]


@functools.lru_cache(maxsize=None)
def generated_template_tokens(kind: str) -> int:
    """A lower bound on the tokens a generated tokenizer of `kind` (kdbench.tokenizer: byte-level BPE
    or Unigram) gives the minillm prompt template with an empty instruction: its pre-tokenizer's
    pieces, since no token spans two of them (whatever the training data). Reads no tokenizer:
    `tokenizers` alone, not transformers."""
    from kdbench.prompts import build_prompt
    from kdbench.tokenizer import pre_tokenizer

    return len(pre_tokenizer(kind).pre_tokenize_str(build_prompt("")))


def _check_prompt_room(pair: dict, where: str) -> None:
    """`max_length` must hold the minillm prompt template and a response token: for a random-init
    role on a generated tokenizer, which a job trains, from `generated_template_tokens`; a local model
    directory's own tokenizer is counted by kdbench.preflight, any other (a hub id's, a GGUF file's,
    a random-init role's `tokenizer.path`) at job start."""
    from kdbench.modelspec import tokenizer_source
    from kdbench.prompts import check_prompt_room

    for role in ("teacher", "student"):
        source = tokenizer_source(pair, role)
        if source.startswith("generated:"):
            kind = source.removeprefix("generated:")
            check_prompt_room(generated_template_tokens(kind), max_lengths(pair, role), where,
                              f"the generated tokenizer ({kind}; at least: its pre-tokenizer's pieces)")


def _check_micro_batch(pair: dict, where: str, n_train: int | None, config: dict) -> None:
    if n_train is None:  # data prepared by the workflow (releases): the job checks it at its start
        return
    sections = [("training", pair["training"])]
    if "sft" in pair["teacher"]:
        sections.append(("teacher.sft", {**pair["training"], **pair["teacher"]["sft"]}))
    for key, training in sections:
        micro = Training.resolve(training)["micro_batch_size"]
        if micro > n_train:
            raise KDBenchError(f"{where}: key '{key}.micro_batch_size': {micro} is larger than the training set "
                               f"({n_train} records, {config['data']['source']} data); give at most {n_train}.")


def _check_chat_template(pair: dict, where: str) -> None:
    """`prompt_format: chat` needs a chat template in each model's tokenizer: the generated tokenizer
    (random-init models) has none; a local directory has one in tokenizer_config.json or a
    chat_template file; a hub id or a GGUF file is checked at job start."""
    for role in ("teacher", "student"):
        spec = pair["teacher"] if pair[role]["init"] == "teacher" else pair[role]
        if spec["init"] == "random":
            has = False
        elif spec["init"] == "pretrained" and Path(spec["path"]).is_dir():
            tok = Path(spec["path"]) / "tokenizer_config.json"
            has = any((Path(spec["path"]) / f).is_file() for f in ("chat_template.jinja", "chat_template.json")) or (
                tok.is_file() and bool(json.loads(tok.read_text(encoding="utf-8")).get("chat_template")))
        else:
            continue
        if not has:
            raise KDBenchError(f"{where}: key '{role}': the evaluation's prompt_format is chat, but the {role}'s "
                               f"tokenizer ({'generated' if spec['init'] == 'random' else spec['path']}) has no chat "
                               "template; use prompt_format: plain, or a model whose tokenizer has one.")


def _check_lora(pair: dict, role: str, where: str) -> None:
    """LoRA target_modules must be linear layers of the model, where its family is known here."""
    lora = pair[role].get("lora")
    cfg = _local_config(pair["teacher"] if pair[role]["init"] == "teacher" else pair[role])
    family = (cfg or {}).get("model_type") or pair["family"]
    if not lora or family not in LINEAR_LAYERS or lora["target_modules"] in (["all-linear"], "all-linear"):
        return
    for name in lora["target_modules"]:
        if name not in LINEAR_LAYERS[family]:
            raise KDBenchError(f"{where}: key '{role}.lora.target_modules': a {family} model has no linear layer "
                               f"'{name}'; its linear layers are {', '.join(LINEAR_LAYERS[family])}."
                               f"{_nearest(name, LINEAR_LAYERS[family])}")


def train_size(config: dict, data_files: dict[str, str], workdir: Path) -> int | None:
    """The training set's record count where it is known before any job (None: prepared by a job)."""
    data = config["data"]
    if data["source"] == "generated":
        return data["n_train"]
    if data["source"] == "files" and (Path(workdir) / data_files["train"]).is_file():
        return count_records(Path(workdir) / data_files["train"])
    return None


def check_rules_file(path: Path) -> None:
    """A plugin's rules file (methods/<key>.smk) must at least tokenize as Python, as Snakemake's
    parser reads it: an unbalanced bracket or a bad indentation would otherwise be reported by
    Snakemake against another file (the Snakefile, `<tokenize>`) with a Python traceback."""
    import io
    import tokenize

    try:
        for _ in tokenize.generate_tokens(io.StringIO(Path(path).read_text(encoding="utf-8")).readline):
            pass
    except (tokenize.TokenError, SyntaxError) as exc:  # IndentationError is a SyntaxError
        line = exc.lineno if isinstance(exc, SyntaxError) else exc.args[1][0]
        message = exc.msg if isinstance(exc, SyntaxError) else exc.args[0]
        raise KDBenchError(f"{path}, line {line}: {message} (a plugin's rules file is Snakemake syntax: "
                           "methods/README.md).") from None
    except UnicodeDecodeError as exc:
        raise KDBenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


def check_references(path: Path) -> None:
    """An evaluation set's reference outputs must not be empty: ROUGE-L against an empty reference is 0
    for every model, so the set would silently score nothing."""
    from kdbench.jsonl import json_lines

    for at, record in json_lines(path):
        output = record.get("output") if isinstance(record, dict) else None
        for ref in [output] if isinstance(output, str) else output if isinstance(output, list) else []:
            if isinstance(ref, str) and not ref.strip():
                raise KDBenchError(f"{at}: the reference \"output\" is empty; every model would score 0 "
                                   "on it. Give the expected response, or remove the record.")
