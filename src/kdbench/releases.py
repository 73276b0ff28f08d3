"""The public releases behind the paper grid's data, in one table: where each lies (the config key
``data.releases.<format>.<key>``), what file or folder is expected there, where to get it, and the
`kdbench prepare-eval` arguments that turn it into each prepared file.

One table serves three readers: the workflow's preparation rules (`prepare_job`), the check that a
release is missing (`missing`, reported once before any job), and ``data/README.md``, whose table
rows are `readme_rows` (tests/unit/test_releases.py keeps the two identical).

Two formats (``data.format``):

``raw``      the upstream releases. Dolly's split and UnNI's 10,000-example sample are seeded here
             (the lineage's own split and sample were drawn without a published seed, so only
             MiniLLM's processed files reproduce them); SelfInst, Vicuna and S-NI give the lineage's
             examples exactly (kdbench.evalsets says how each is made).
``minillm``  MiniLLM's processed sets (the ``data/`` folders of microsoft/LMOps' MiniLLM, on the hub
             as ``MiniLLM/{dolly,self-inst,Vicuna,sinst,uinst}``): every split exactly as the
             lineage evaluates it.

A release value is a local path (relative to the repository) or ``hub:<dataset id>`` where the hub
is reachable (raw Dolly only: ``hub:databricks/databricks-dolly-15k``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from kdbench.spec import SETS

FORMATS = ("raw", "minillm")
PREPARED = ("train", "valid", *SETS)  # the files the runs read
HUB = "hub:"


@dataclass(frozen=True)
class Release:
    key: str  # data.releases.<format>.<key>
    fmt: str
    expected: str  # the file or folder that must be at the configured path
    where: str  # where to get it
    hub: bool = False  # may be given as hub:<id>

    @property
    def readme_row(self) -> str:
        return f"| `{self.key}` | {self.expected} | {self.where} |"


_MINILLM_CLI = "`huggingface-cli download {} --repo-type dataset --local-dir data/minillm/{}`"
RELEASES: dict[str, dict[str, Release]] = {
    "raw": {r.key: r for r in (
        Release("dolly", "raw", "`databricks-dolly-15k.jsonl` (15,011 lines)",
                "huggingface.co/datasets/databricks/databricks-dolly-15k, file `databricks-dolly-15k.jsonl` "
                "(or `hub:databricks/databricks-dolly-15k`)", hub=True),
        Release("selfinst", "raw", "`user_oriented_instructions.jsonl` (252 lines)",
                "github.com/yizhongw/self-instruct, file `human_eval/user_oriented_instructions.jsonl`"),
        Release("vicuna", "raw", "`question.jsonl` (80 questions)",
                "github.com/lm-sys/vicuna-blog-eval, file `eval/table/question.jsonl`"),
        Release("vicuna_references", "raw",
                "`answer_gpt35.jsonl` (GPT-3.5's answers to the 80 questions: the references the lineage scores "
                "Vicuna against)",
                "github.com/lm-sys/vicuna-blog-eval, file `eval/table/answer/answer_gpt35.jsonl`"),
        Release("sni", "raw", "a clone of natural-instructions: a folder with `tasks/*.json` and "
                "`splits/default/test_tasks.txt`",
                "`git clone https://github.com/allenai/natural-instructions`"),
        Release("unni", "raw", "`core_data.jsonl` (68,478 instances)",
                "github.com/orhonovich/unnatural-instructions, file `data/core_data.jsonl`"),
    )},
    "minillm": {r.key: r for r in (
        Release("dolly", "minillm", "a folder with MiniLLM's `raw.jsonl` (train and valid) and `valid.jsonl` (test, 500)",
                _MINILLM_CLI.format("MiniLLM/dolly", "dolly")),
        Release("selfinst", "minillm", "MiniLLM's `self-inst/valid.jsonl` (252 lines)",
                _MINILLM_CLI.format("MiniLLM/self-inst", "self-inst")),
        Release("vicuna", "minillm", "MiniLLM's `vicuna/valid.jsonl` (80 lines, with the references)",
                _MINILLM_CLI.format("MiniLLM/Vicuna", "vicuna")),
        Release("sni", "minillm", "MiniLLM's `sinst/11_/valid.jsonl`",
                _MINILLM_CLI.format("MiniLLM/sinst", "sinst")),
        Release("unni", "minillm", "MiniLLM's `uinst/11_/valid.jsonl` (its first 10,000 lines are evaluated)",
                _MINILLM_CLI.format("MiniLLM/uinst", "uinst")),
    )},
}

# prepared file -> (release keys it reads, prepare-eval arguments; {key} is that release's path)
_JOBS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "raw": {
        "train": (("dolly",), "--set dolly --format raw {dolly} --split train"),
        "valid": (("dolly",), "--set dolly --format raw {dolly} --split valid"),
        "dolly": (("dolly",), "--set dolly --format raw {dolly} --split test"),
        "selfinst": (("selfinst",), "--set selfinst --format raw {selfinst}"),
        "vicuna": (("vicuna", "vicuna_references"),
                   "--set vicuna --format raw {vicuna} --references {vicuna_references}"),
        "sni": (("sni",), "--set sni --format raw {sni}"),
        "unni": (("unni",), "--set unni --format raw {unni} --sample 10000"),
    },
    "minillm": {
        "train": (("dolly",), "--set dolly --format minillm {dolly} --split train"),
        "valid": (("dolly",), "--set dolly --format minillm {dolly} --split valid"),
        "dolly": (("dolly",), "--set dolly --format minillm {dolly} --split test"),
        "selfinst": (("selfinst",), "--set selfinst --format minillm {selfinst}"),
        "vicuna": (("vicuna",), "--set vicuna --format minillm {vicuna}"),
        "sni": (("sni",), "--set sni --format minillm {sni}"),
        "unni": (("unni",), "--set unni --format minillm {unni}"),
    },
}


def _source_arg(value: str) -> str:
    return f"--hub {shlex.quote(value[len(HUB):])}" if value.startswith(HUB) else f"--source {shlex.quote(value)}"


def prepare_job(fmt: str, name: str, paths: dict[str, str]) -> tuple[dict[str, str], str]:
    """The inputs (release key -> local path; hub sources have none) and the `kdbench prepare-eval`
    arguments (without --out) that make the prepared file `name` from the releases at `paths`, each
    path shell-quoted (`shlex.split` gives the argument list back)."""
    keys, args = _JOBS[fmt][name]
    inputs = {key: paths[key] for key in keys if not paths[key].startswith(HUB)}
    values = {key: (_source_arg(paths[key]) if i == 0 else shlex.quote(paths[key])) for i, key in enumerate(keys)}
    return inputs, args.format(**values)


def needed(fmt: str, names: list[str] | tuple[str, ...]) -> list[str]:
    """The release keys the prepared files `names` read, in table order."""
    wanted = {key for name in names for key in _JOBS[fmt][name][0]}
    return [key for key in RELEASES[fmt] if key in wanted]


def missing(fmt: str, paths: dict[str, str], keys: list[str], workdir: Path) -> list[str]:
    """One line per release in `keys` that is not at its path: the key, the path, what is expected
    there and where to get it (the same words as data/README.md)."""
    lines = []
    for key in keys:
        value, release = paths[key], RELEASES[fmt][key]
        if value.startswith(HUB) or (workdir / value).exists():
            continue
        lines.append(f"data.releases.{fmt}.{key}: {value} not found; expected {release.expected}. "
                     f"Get it from {release.where}.")
    return lines


def readme_rows(fmt: str) -> list[str]:
    return [release.readme_row for release in RELEASES[fmt].values()]
