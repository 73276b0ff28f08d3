"""The evaluation protocol file: the grid's decoding protocol, resolved once (the workflow writes
``results/eval_protocol.yaml`` from the grid's ``evaluation`` section, rule ``eval_protocol``) and read
by every `kdbench evaluate` and `kdbench lm-eval` job through ``--protocol FILE``.

Its keys are the settings of ``kdbench.spec.Evaluation`` that a job decodes by (every one but ``job``
and ``lm_eval_tasks``, which only plan jobs); a key it lacks takes the spec's default. Both commands
take their protocol options from :func:`add_arguments` (one parser): the file, and a flag per
setting for use by hand, which overrides the file.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from collections.abc import Callable
from typing import Any

from kdbench import spec
from kdbench.errors import KDBenchError

PLANNING = ("job", "lm_eval_tasks")  # Evaluation settings that plan jobs; no job decodes by them
KEYS = tuple(f.name for f in fields(spec.Evaluation) if f.name not in PLANNING)
FLAGS = {"decoding_seeds": "--seeds", "greedy": "--greedy"}  # a setting's flag: --<name with dashes> otherwise


def check(evaluation: dict[str, Any], where: str) -> None:
    """Refuse, before any job, a resolved protocol an engine cannot decode: vLLM has no n-gram blocking."""
    if evaluation["engine"] == "vllm" and evaluation["no_repeat_ngram_size"] > 0:
        raise KDBenchError(
            f"{where}: key 'evaluation.engine': vllm cannot block repeated n-grams (no sampling option does), "
            f"but evaluation.no_repeat_ngram_size is {evaluation['no_repeat_ngram_size']}; set it to 0 "
            "(AdaKD's protocol) or use engine: hf")


def of_grid(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The protocol file's content: a grid's resolved ``evaluation`` section without its planning keys."""
    return {key: evaluation[key] for key in KEYS if key in evaluation}


def read(path: Path) -> dict[str, Any]:
    """The protocol in ``path`` over the spec's defaults; a bad file names itself and the key."""
    import jsonschema
    import yaml

    try:
        given = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise KDBenchError(f"--protocol {path}: cannot read an evaluation protocol file ({err})") from None
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise KDBenchError(f"{path}: an evaluation protocol file is a mapping of settings, got {type(given).__name__}")
    properties = {key: value for key, value in spec.schema_properties(spec.Evaluation).items() if key in KEYS}
    for key, value in given.items():
        if key not in properties:
            raise KDBenchError(f"{path}: unknown key {key!r}; an evaluation protocol has {', '.join(KEYS)}")
        try:
            jsonschema.validate(value, properties[key])
        except jsonschema.ValidationError as err:
            raise KDBenchError(f"{path}: key {key!r}: {err.message} ({properties[key]['description']})") from None
    settings = {**{key: spec.defaults(spec.Evaluation)[key] for key in KEYS}, **given}
    check(settings, str(path))
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--protocol FILE`` and one flag per protocol setting (by hand: each overrides the file)."""
    from kdbench.prompts import PROMPT_FORMATS

    group = parser.add_argument_group("decoding protocol (default: the file's, else kdbench.spec's)")
    group.add_argument("--protocol", type=Path, help="evaluation protocol file (results/eval_protocol.yaml)")
    group.add_argument("--seeds", dest="decoding_seeds", type=int, nargs="+", help="decoding seeds")
    group.add_argument("--greedy", action="store_true", default=None, help="greedy decoding; the first seed only")
    for name in ("max_new_tokens", "max_prompt_tokens", "batch_size"):
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int_at_least(1))
    group.add_argument("--no-repeat-ngram-size", dest="no_repeat_ngram_size", type=int_at_least(0),
                       help="0 = off (AdaKD); 6 = MiniLLM/DistiLLM setting")
    group.add_argument("--prompt-format", dest="prompt_format", choices=PROMPT_FORMATS,
                       help="minillm: the lineage's plain template; chat: the tokenizer's chat template")
    group.add_argument("--dtype", choices=spec.schema_properties(spec.Evaluation)["dtype"]["enum"],
                       help="the dtype the model is loaded in")
    group.add_argument("--engine", choices=spec.schema_properties(spec.Evaluation)["engine"]["enum"],
                       help="generation engine (kdbench.engines)")


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved protocol: the spec's defaults, the ``--protocol`` file over them, flags over that."""
    settings = read(args.protocol) if args.protocol else {key: spec.defaults(spec.Evaluation)[key] for key in KEYS}
    settings = {**settings, **{key: value for key in KEYS if (value := getattr(args, key, None)) is not None}}
    check(settings, "the command line")
    return settings


def decoding(settings: dict[str, Any]) -> dict[str, Any]:
    """The generation settings (kdbench.spec.Protocol's names) of a resolved protocol."""
    return {"max_new_tokens": settings["max_new_tokens"], "batch_size": settings["batch_size"],
            "max_prompt_tokens": settings["max_prompt_tokens"], "do_sample": not settings["greedy"],
            "no_repeat_ngram_size": settings["no_repeat_ngram_size"], "prompt_format": settings["prompt_format"]}


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer ≥ ``minimum``."""

    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {number}")
        return number

    return parse
