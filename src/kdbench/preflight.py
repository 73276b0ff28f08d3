"""The checks of a grid that need torch and transformers, run before the first job (the workflow's
`onstart`) and by `kdbench check`, never while Snakemake builds its DAG:

- each random-init model's `config` keys and values against its family's transformers config class
  (a misspelt key would be kept as an unused attribute and the model built with the default);
- the shared vocabulary of a pair of local model directories (or that a pair of two loaded models
  does not hide two tokenizers), and that each `max_length` holds the prompt template as their
  tokenizer counts it;
- every plugin the grid's labels name imported (a broken file names itself), each token policy's
  protocol members, and its own range checks on the bound hyper-parameters (a cross-tokenizer
  plugin's, by one call on a toy pair of vocabularies);
- the shape init-model will build for each model (built on the meta device), which `kdbench check`
  prints.

They run in a child process (`python -m kdbench.preflight`), so the process that plans the grid
never imports torch; its verdict is cached under the user's cache directory, keyed by everything it
read (the pairs' model specs, the plugin files and hyper-parameters, the kdbench and library
versions), so a grid checked once costs nothing the next time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError

ROLES = ("teacher", "student")
# kdbench's own files whose code decides the verdict: a change to one invalidates the cache.
CODE = ("preflight.py", "models.py", "modelspec.py", "registry.py", "policies.py", "losses.py", "prompts.py",
        "validate.py")


def request(grid: Any) -> dict:
    """What the child checks, as JSON: each pair's models and every plugin instance the grid's labels bind."""
    from kdbench.validate import max_lengths

    vocab = grid.config["tokenizer"]["vocab_size"]
    pairs = {name: {"file": str(grid.pair_file(name)), "family": p["family"], "cross_tokenizer": p["cross_tokenizer"],
                    **{role: p[role] for role in ROLES}, "local": _local_files(p),
                    "max_lengths": {role: max_lengths(p, role) for role in ROLES}} for name, p in grid.pairs.items()}
    plugins: dict[str, dict] = {}
    cross = set(grid.labels.crosstok_methods())
    for label, method in grid.labels.resolved.items():
        for entry in (method["divergence"], *method["policies"]):
            if entry:
                key = json.dumps([entry["path"], entry["hp"]], sort_keys=True)
                where = f"{grid.where}: key 'methods', label '{label}'"
                plugins.setdefault(key, {**entry, "where": where})
                if method["divergence"]["key"] in cross and entry is not method["divergence"]:  # reads no labels
                    plugins[key]["without_labels"] = where
    return {"vocab_size": vocab, "pairs": pairs, "plugins": list(plugins.values()),
            "prompt_format": grid.config["evaluation"]["prompt_format"]}


def run(grid: Any) -> dict:
    """The checks of `grid`'s `request`, in a child process, or their cached verdict: the planned
    shapes {pair: {role: shape or None}}. Raises KDBenchError with the first problem found."""
    req = request(grid)
    cached = _cache_file(req)
    if cached.is_file():
        return json.loads(cached.read_text())
    done = subprocess.run([sys.executable, "-m", "kdbench.preflight"], input=json.dumps(req), text=True,
                          capture_output=True, cwd=grid.workdir, check=False)
    if done.returncode != 0:
        raise KDBenchError(f"the pre-flight check of {grid.where} failed:\n{done.stderr[-3000:]}")
    verdict = json.loads(done.stdout.strip().splitlines()[-1])  # the last line: a library may print before it
    if "error" in verdict:
        raise KDBenchError(verdict["error"])
    try:
        from kdbench.atomic import write_json

        write_json(cached, verdict)
    except OSError:  # a read-only cache directory: check again next time
        pass
    return verdict


def check(req: dict) -> dict:
    """The checks themselves (imports torch and transformers): the verdict, or KDBenchError."""
    from kdbench.models import check_model_config, check_pair_vocab, planned_shape
    from kdbench.pairs import cross_tokenizer

    shapes = {}
    for name, pair in req["pairs"].items():
        where = pair["file"]
        for role in ROLES:
            if pair[role]["init"] == "random":
                check_model_config(pair["family"], pair[role]["config"], where, f"{role}.config",
                                   vocab_size=req["vocab_size"])
        case = check_pair_vocab(pair, where)
        if case and case["cross_tokenizer"] != cross_tokenizer(pair):
            _refuse_tokenizer_case(case, where)
        _check_prompt_room(pair, req["prompt_format"])
        shapes[name] = {role: planned_shape(pair["family"], pair[role], req["vocab_size"], where, role)
                        for role in ROLES}
    for entry in req["plugins"]:
        _check_plugin(entry)
    return {"shapes": shapes}


def _refuse_tokenizer_case(case: dict, where: str) -> None:
    """The files of two local model directories contradict the pair's `cross_tokenizer`."""
    if case["cross_tokenizer"]:
        raise KDBenchError(
            f"{where}: the teacher and student tokenizers differ: the teacher's vocabulary has "
            f"{case['teacher_vocab']:,} tokens, the student's {case['student_vocab']:,}. Same-vocabulary methods "
            "compare the two distributions id by id, so pick a teacher and a student with one tokenizer; or "
            "declare the pair cross_tokenizer: true and distil it with cross-tokenizer methods (docs/METHODS.md §6).")
    raise KDBenchError(f"{where}: key 'cross_tokenizer': true, but the teacher and the student read one tokenizer "
                       f"({case['vocab']:,} ids); remove cross_tokenizer (same-vocabulary methods distil this pair).")


def _check_prompt_room(pair: dict, prompt_format: str) -> None:
    """Each `max_length` holds the prompt template and a response token, counted by the tokenizer of
    a local model directory (random-init models: kdbench.validate, from the pre-tokenizer; hub ids
    and GGUF files: the training job, once its tokenizer is saved)."""
    from transformers import AutoTokenizer

    from kdbench.prompts import check_prompt_room, template_tokens
    from kdbench.validate import tokenizer_spec

    for role in ROLES:
        spec = tokenizer_spec(pair, role)
        if spec["init"] != "pretrained" or not Path(spec["path"]).is_dir() or not pair["max_lengths"][role]:
            continue
        tokenizer = AutoTokenizer.from_pretrained(spec["path"], trust_remote_code=spec["trust_remote_code"],
                                                  local_files_only=True)
        check_prompt_room(template_tokens(tokenizer, prompt_format), pair["max_lengths"][role], pair["file"],
                          f"the {role}'s tokenizer ({spec['path']})")


def _check_plugin(entry: dict) -> None:
    """Import a plugin (its protocol checked on import); a token policy is built with its
    hyper-parameters, so its own range checks run now rather than when its job starts."""
    from kdbench.registry import load_method_file

    method = load_method_file(Path(entry["path"]))
    try:
        if method.kind == "token_policy":
            policy = method.instantiate(entry["hp"], total_steps=1, student_dim=1, teacher_dim=1)
            if "without_labels" in entry:  # over a cross-tokenizer method: its statistics come without labels
                _try_without_labels(policy, entry["without_labels"])
        elif method.kind == "crosstok":  # its range checks run in the function: call it on 2 tokens of 4
            _try_crosstok(method, entry["hp"])
    except (ValueError, TypeError) as exc:
        raise KDBenchError(f"{entry['where']}: {exc}") from exc


def _try_without_labels(policy: Any, where: str) -> None:
    """A token policy over a cross-tokenizer method reads a unit's two distributions in the method's
    space, where the student's token has no id: its statistics must not need labels."""
    import torch

    logp = torch.log_softmax(torch.zeros(2, 4), -1)
    try:
        policy.token_stats(logp, logp, None)
    except (ValueError, TypeError) as exc:
        raise KDBenchError(f"{where}: over a cross-tokenizer method the token policy gets no labels (the "
                           f"student's token has no id in the method's space), and it refuses: {exc}") from exc


def _try_crosstok(method: Any, hp: dict) -> None:
    """The harness's own hyper-parameters of a cross-tokenizer plugin checked (registry.HARNESS_HP),
    then the plugin called once with the rest on a toy pair of vocabularies (4 ids each, the first
    two common, the projection and the MinED map the identity; a cross-model attention method on toy
    sequences, with its modules built)."""
    import torch

    from kdbench.registry import KD_TO_CE, MODULES_LR, loss_hp

    lr = hp.get(MODULES_LR)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ValueError(f"{MODULES_LR} = {lr!r} must be a number > 0 (or null: the run's learning rate)")
    if not isinstance(hp.get(KD_TO_CE, False), bool):
        raise ValueError(f"{KD_TO_CE} = {hp[KD_TO_CE]!r} must be true or false")
    hp = loss_hp(hp)
    logp = torch.log_softmax(torch.zeros(2, 4), -1)
    toy = {"common_student": torch.arange(2), "common_teacher": torch.arange(2), "relaxed_student": torch.arange(2),
           "relaxed_teacher": torch.arange(2), "projection_indices": torch.arange(4)[:, None],
           "projection_weights": torch.ones(4, 1), "mined_teacher": torch.arange(4), "mined_student": torch.arange(4)}
    if method.crosstok["alignment"] == "attention":  # 2 student rows (d 3), 3 teacher rows (d 5), one example
        from kdbench.crosstok.data import build_modules

        toy = {"student_hidden": torch.ones(2, 3), "teacher_hidden": torch.ones(3, 5), "student_targets": torch.arange(2),
               "student_input_embeds": torch.ones(2, 3), "student_target_embeds": torch.ones(2, 3),
               "teacher_input_embeds": torch.ones(3, 5), "teacher_target_embeds": torch.ones(3, 5),
               "student_head": torch.ones(4, 3), "teacher_head": torch.ones(4, 5), "modules": build_modules(method, 3, 5)}
        method.obj(logp, torch.log_softmax(torch.zeros(3, 4), -1), **toy, **hp)
        return
    method.obj(logp, logp, **{name: toy[name] for name in method.crosstok["needs"]}, **hp)


def _local_files(pair: dict) -> list:
    """The files of a pair's local model directories, with size and time: their change is a new check."""
    dirs = [Path(pair[r]["path"]) for r in ROLES if pair[r]["init"] == "pretrained" and Path(pair[r]["path"]).is_dir()]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for d in dirs for f in sorted(d.iterdir()) if f.is_file()]


def _cache_file(req: dict) -> Path:
    here = Path(__file__).parent
    h = hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode())
    for name in ("torch", "transformers", "huggingface-hub"):
        h.update(f"{name}={_version(name)};".encode())
    for name in CODE:
        h.update((here / name).read_bytes())
    for entry in req["plugins"]:
        h.update(Path(entry["path"]).read_bytes())
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "kdbench" / "preflight" / f"{h.hexdigest()[:32]}.json"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def main() -> int:
    """The child: the request on stdin, the verdict (or {"error": message}) on stdout."""
    try:
        verdict = check(json.load(sys.stdin))
    except KDBenchError as exc:
        verdict = {"error": str(exc)}
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
