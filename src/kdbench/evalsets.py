"""Prepare the real evaluation sets (Dolly, SelfInst, Vicuna, S-NI, UnNI) as kdbench eval jsonl.

Every loader turns a source file into normalised examples ``{"instruction": str, "input": str,
"output": list[str]}`` (``output`` = the references, scored by the max over them), the format
`kdbench evaluate` and the lm-eval tasks under ``evaluation/tasks/`` read. Two source formats:

``minillm`` (every set): the MiniLLM processed jsonl (``data/{dolly,self-inst,vicuna,sinst/11_,
    uinst/11_}/valid.jsonl`` of microsoft/LMOps), one line per example with ``instruction`` (str),
    ``input`` (str, may be absent: read as ``""``) and ``output`` (str or non-empty list of str).
    Other keys (MiniLLM's rendered ``prompt``) are ignored: the prompt is always rendered by
    `kdbench.prompts.build_prompt`, which is MiniLLM's template.

``raw`` (the upstream releases):
  ``dolly``    databricks-dolly-15k.jsonl: ``instruction``, ``context``, ``response`` (``category``
               and other keys ignored) -> instruction, input = context, one reference = response.
  ``selfinst`` user_oriented_instructions.jsonl of yizhongw/self-instruct: ``instruction`` and
               ``instances``, a non-empty list of ``{"input", "output"}``; one example per instance.
  ``vicuna``   FastChat's question.jsonl: the question in ``text`` (or ``turns``, a list of exactly
               one string, as in FastChat's llm_judge copy); ``question_id``, ``category`` ignored.
               The questions carry no reference answer, and ROUGE-L needs one: a record must also
               have ``output`` (str or list of str) or ``reference`` (list of str), otherwise
               loading fails and says so. The MiniLLM processed Vicuna file has the references.
  ``sni``      a Super-NaturalInstructions task file (``tasks/taskNNN_*.json``, one JSON object) or a
               directory of them (read in name order): ``Definition`` (list of str, joined with a
               blank line, or str) is the instruction; ``Instances``, a list of ``{"input", "output":
               list of str}``, gives one example per instance with all its outputs as references.
               Every instance of every given task is used (no per-task cap): pick the test tasks by
               choosing the files.
  ``unni``     core_data.jsonl of orhonovich/unnatural-instructions: ``instruction`` and
               ``instances``, a list of ``{"input", "output", "constraints"}``; one example per
               instance, one reference. A non-empty ``constraints`` other than "None"/"None." is
               appended to the instruction after a blank line (it states the expected answer
               format). ``reformulations`` (paraphrased instructions of the same instances, in the
               full release) are ignored: the lineage evaluates the core set.

Filters (documented, counted and reported; never silent):
  * S-NI and UnNI keep an example only if its **first** reference has at least
    `MIN_RESPONSE_WORDS` (11) whitespace-separated words (MiniLLM's "responses >= 11 words"
    subsets). The first reference is the one the lineage treats as *the* ground-truth response
    (MiniLLM's loader tokenises ``output[0]`` as the target), and it keeps the rule independent of
    how many paraphrases a record lists; "any" would let a one-word answer in through a long
    alternative, "all" would drop examples for a short alternative phrasing.
  * Dolly (raw) optionally drops examples whose response has more than ``max_response_words``
    words before splitting (the lineage drops over-long examples with its model tokenizer; a word
    count keeps the split the same for every model pair). Off by default.

A record that lacks a field, has the wrong type or an empty instruction or reference is an error
(`KDBenchError` naming the file, the line and the field), never dropped.

The Dolly split (`split_dolly`): after the optional length filter, the examples in file order are
shuffled with ``random.Random(seed).shuffle`` (seed 42 by default); the first ``n_test`` (500) are
the test set, the next ``n_valid`` (1,000) the validation set and the rest the training set; each
split is then written in file order. Same file and seed, same split, on any platform.

Hub sources (`hub_records`) go through the same per-record code; they are for machines that can
reach the hub (not this one).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from kdbench.errors import KDBenchError
from kdbench.jsonl import json_lines, write_jsonl_atomic

SETS = ("dolly", "selfinst", "vicuna", "sni", "unni")
FORMATS = ("raw", "minillm")
DOLLY_SPLITS = ("train", "valid", "test")
MIN_RESPONSE_WORDS = 11
SHORT_FILTERED_SETS = ("sni", "unni")
DOLLY_N_VALID = 1000
DOLLY_N_TEST = 500
DEFAULT_SEED = 42


class EvalExample(TypedDict):
    """One normalised evaluation example: the prompt fields and the references."""

    instruction: str
    input: str
    output: list[str]


@dataclass
class Prepared:
    """The examples of one prepared set and what happened on the way: ``n_read`` examples came out
    of the source, ``dropped`` maps each filter's description to the number it removed and, for raw
    Dolly, ``split_sizes`` gives the size of every split (``examples`` is the chosen one)."""

    examples: list[EvalExample]
    n_read: int
    dropped: dict[str, int] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)


Record = tuple[str, Any]  # (where: "file, line N" for messages, the decoded JSON value)
Parser = Callable[[str, dict[str, Any]], list[EvalExample]]

_HINTS = {
    ("dolly", "raw"): (
        'raw Dolly lines look like {"instruction": ..., "context": ..., "response": ..., "category": ...}'
    ),
    ("selfinst", "raw"): (
        'raw SelfInst lines look like {"instruction": ..., "instances": [{"input": ..., "output": ...}]}'
    ),
    ("vicuna", "raw"): 'raw Vicuna lines look like {"question_id": ..., "text": ..., "category": ..., "output": ...}',
    ("sni", "raw"): 'an S-NI task file is {"Definition": [...], "Instances": [{"input": ..., "output": [...]}], ...}',
    ("unni", "raw"): (
        'raw UnNI lines look like {"instruction": ..., "instances": '
        '[{"input": ..., "output": ..., "constraints": ...}]}'
    ),
}
_MINILLM_HINT = (
    'MiniLLM processed lines look like {"instruction": ..., "input": ..., "output": ...} '
    '("output" a string or a list of strings; "input" may be omitted)'
)
_NO_REFERENCE = (
    "ROUGE-L needs a reference answer and this Vicuna question has none. The MiniLLM processed "
    "Vicuna file (data/vicuna/valid.jsonl, --format minillm) carries reference answers in "
    '"output"; for the raw FastChat questions add an "output" (string or list of strings) to each line'
)


# ---------------------------------------------------------------- reading sources


def read_jsonl_records(path: Path) -> Iterator[Record]:
    """Yield ``("file, line N", object)`` for every non-blank line of a jsonl file; a line that is not
    UTF-8, not JSON or not a JSON object is a `KDBenchError` naming the file and line."""
    for where, value in json_lines(path):
        if not isinstance(value, dict):
            raise KDBenchError(f"{where}: expected one JSON object per line, found {type(value).__name__}.")
        yield where, value


def _read_sni_tasks(path: Path) -> Iterator[Record]:
    """Yield ``(file, task object)`` for an S-NI task file or each ``*.json`` of a directory."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise KDBenchError(
            f"{path}: no *.json task files in this directory; pass S-NI task files (tasks/taskNNN_*.json)."
        )
    for file in files:
        try:
            value = json.loads(file.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise KDBenchError(f"{file}: cannot be read ({exc.strerror}).") from None
        except UnicodeDecodeError:
            raise KDBenchError(f"{file}: not valid UTF-8; re-save the file as UTF-8.") from None
        except json.JSONDecodeError as exc:
            raise KDBenchError(
                f"{file}, line {exc.lineno}: not valid JSON ({exc.msg}); an S-NI task file is one JSON object."
            ) from None
        if not isinstance(value, dict):
            raise KDBenchError(f"{file}: expected one JSON object (an S-NI task), found {type(value).__name__}.")
        yield str(file), value


def hub_records(hub_id: str, split: str = "train", revision: str | None = None) -> Iterator[Record]:
    """Yield ``("hub_id [split] row N", row)`` from a dataset on the Hugging Face hub.

    The rows must have the fields of the chosen set and format (e.g. ``databricks/databricks-dolly-15k``
    with ``--format raw``); they are checked exactly like lines of a local file. Needs the hub.
    """
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types (connection, missing split, bad id)
        raise KDBenchError(f"cannot load {hub_id!r} (split {split!r}) from the hub: {exc}") from exc
    for index, row in enumerate(rows, start=1):
        yield f"{hub_id} [{split}] row {index}", dict(row)


def source_records(set_name: str, fmt: str, source: Path) -> Iterator[Record]:
    """The records of a local source: jsonl lines, or S-NI task objects for ``sni``/``raw``."""
    if not source.exists():
        raise KDBenchError(f"{source}: no such file or directory; pass the {set_name} file with --source.")
    if set_name == "sni" and fmt == "raw":
        return _read_sni_tasks(source)
    if source.is_dir():
        raise KDBenchError(f"{source} is a directory; pass the {set_name} jsonl file itself.")
    return read_jsonl_records(source)


# ---------------------------------------------------------------- field checks


def _text(record: dict[str, Any], key: str, where: str, hint: str, *, required: bool = True) -> str:
    """``record[key]`` as a string; missing, non-string or (when ``required``) blank is an error."""
    if key not in record:
        raise KDBenchError(f'{where}: the record has no "{key}" field; {hint}.')
    value = record[key]
    if not isinstance(value, str):
        raise KDBenchError(f'{where}: "{key}" must be a string, found {type(value).__name__}; {hint}.')
    if required and not value.strip():
        raise KDBenchError(f'{where}: "{key}" is empty; every example needs it. Fix or remove the record.')
    return value


def _references(value: Any, key: str, where: str, hint: str) -> list[str]:
    """A reference field (a string or a non-empty list of strings) as a list of non-blank strings."""
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(ref, str) for ref in refs):
        raise KDBenchError(f'{where}: "{key}" must be a string or a non-empty list of strings; {hint}.')
    if any(not ref.strip() for ref in refs):
        raise KDBenchError(
            f'{where}: "{key}" holds an empty reference; ROUGE-L against an empty reference is meaningless. '
            "Fix or remove the record."
        )
    return refs


def _instances(record: dict[str, Any], key: str, where: str, hint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, instance)`` for each object of the non-empty list ``record[key]``."""
    instances = record.get(key)
    if not isinstance(instances, list) or not instances:
        found = "no such field" if key not in record else f"found {instances!r:.60}"
        raise KDBenchError(f'{where}: "{key}" must be a non-empty list of objects ({found}); {hint}.')
    for index, instance in enumerate(instances):
        at = f"{where}, {key}[{index}]"
        if not isinstance(instance, dict):
            raise KDBenchError(f"{at}: expected an object, found {type(instance).__name__}; {hint}.")
        yield at, instance


def _example(instruction: str, input: str, references: list[str]) -> EvalExample:
    return {"instruction": instruction, "input": input, "output": references}


# ---------------------------------------------------------------- per-record parsers


def _minillm(set_name: str) -> Parser:
    def parse(where: str, record: dict[str, Any]) -> list[EvalExample]:
        instruction = _text(record, "instruction", where, _MINILLM_HINT)
        input = _text(record, "input", where, _MINILLM_HINT, required=False) if "input" in record else ""
        if "output" not in record:
            if set_name == "vicuna":
                raise KDBenchError(f"{where}: {_NO_REFERENCE}.")
            raise KDBenchError(f'{where}: the record has no "output" field; {_MINILLM_HINT}.')
        return [_example(instruction, input, _references(record["output"], "output", where, _MINILLM_HINT))]

    return parse


def _dolly_raw(where: str, record: dict[str, Any]) -> list[EvalExample]:
    hint = _HINTS["dolly", "raw"]
    instruction = _text(record, "instruction", where, hint)
    context = _text(record, "context", where, hint, required=False)
    response = _text(record, "response", where, hint)
    return [_example(instruction, context, [response])]


def _selfinst_raw(where: str, record: dict[str, Any]) -> list[EvalExample]:
    hint = _HINTS["selfinst", "raw"]
    instruction = _text(record, "instruction", where, hint)
    return [
        _example(
            instruction,
            _text(instance, "input", at, hint, required=False),
            [_text(instance, "output", at, hint)],
        )
        for at, instance in _instances(record, "instances", where, hint)
    ]


def _vicuna_raw(where: str, record: dict[str, Any]) -> list[EvalExample]:
    hint = _HINTS["vicuna", "raw"]
    if "text" in record:
        question = _text(record, "text", where, hint)
    else:
        turns = record.get("turns")
        if not (isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], str) and turns[0].strip()):
            raise KDBenchError(f'{where}: no question: expected "text" (or "turns" with exactly one string); {hint}.')
        question = turns[0]
    for key in ("output", "reference"):
        if key in record:
            return [_example(question, "", _references(record[key], key, where, hint))]
    raise KDBenchError(f"{where}: {_NO_REFERENCE}.")


def _sni_raw(where: str, task: dict[str, Any]) -> list[EvalExample]:
    hint = _HINTS["sni", "raw"]
    definition = task.get("Definition")
    parts = [definition] if isinstance(definition, str) else definition
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise KDBenchError(f'{where}: "Definition" must be a string or a non-empty list of strings; {hint}.')
    instruction = "\n\n".join(parts)
    if not instruction.strip():
        raise KDBenchError(f'{where}: "Definition" is empty; every example needs an instruction.')
    examples = []
    for at, instance in _instances(task, "Instances", where, hint):
        input = _text(instance, "input", at, hint, required=False)
        if "output" not in instance:
            raise KDBenchError(f'{at}: the instance has no "output" field; {hint}.')
        examples.append(_example(instruction, input, _references(instance["output"], "output", at, hint)))
    return examples


_NO_CONSTRAINTS = {"", "none", "none."}


def _unni_raw(where: str, record: dict[str, Any]) -> list[EvalExample]:
    hint = _HINTS["unni", "raw"]
    instruction = _text(record, "instruction", where, hint)
    examples = []
    for at, instance in _instances(record, "instances", where, hint):
        constraints = _text(instance, "constraints", at, hint, required=False) if "constraints" in instance else ""
        full = instruction if constraints.strip().lower() in _NO_CONSTRAINTS else f"{instruction}\n\n{constraints}"
        input = _text(instance, "input", at, hint, required=False)
        examples.append(_example(full, input, [_text(instance, "output", at, hint)]))
    return examples


_RAW_PARSERS: dict[str, Parser] = {
    "dolly": _dolly_raw,
    "selfinst": _selfinst_raw,
    "vicuna": _vicuna_raw,
    "sni": _sni_raw,
    "unni": _unni_raw,
}


def parse_records(set_name: str, fmt: str, records: Iterable[Record]) -> list[EvalExample]:
    """Normalise the records of one set in one format; any malformed record raises `KDBenchError`."""
    if set_name not in SETS:
        raise KDBenchError(f"unknown evaluation set {set_name!r}; choose one of {', '.join(SETS)}.")
    if fmt not in FORMATS:
        raise KDBenchError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    parse = _RAW_PARSERS[set_name] if fmt == "raw" else _minillm(set_name)
    return [example for where, record in records for example in parse(where, record)]


def load_examples(set_name: str, fmt: str, source: str | Path) -> list[EvalExample]:
    """Read and normalise a local source file (or S-NI task directory); no filter applied."""
    return parse_records(set_name, fmt, source_records(set_name, fmt, Path(source)))


# ---------------------------------------------------------------- filters and the Dolly split


def word_count(text: str) -> int:
    """Whitespace-separated words, the unit of the length filters."""
    return len(text.split())


def drop_short(examples: list[EvalExample], min_words: int = MIN_RESPONSE_WORDS) -> tuple[list[EvalExample], int]:
    """Keep the examples whose first reference has at least ``min_words`` words; return them and the
    number dropped."""
    kept = [ex for ex in examples if word_count(ex["output"][0]) >= min_words]
    return kept, len(examples) - len(kept)


def split_dolly(
    examples: list[EvalExample],
    *,
    seed: int = DEFAULT_SEED,
    n_valid: int = DOLLY_N_VALID,
    n_test: int = DOLLY_N_TEST,
) -> dict[str, list[EvalExample]]:
    """The deterministic train/valid/test split of Dolly (module docstring): seeded shuffle of the
    positions, test first, then valid, the rest train, each split back in file order."""
    if n_valid < 0 or n_test < 0:
        raise KDBenchError(f"Dolly split sizes must be non-negative, got valid={n_valid}, test={n_test}.")
    if len(examples) <= n_valid + n_test:
        raise KDBenchError(
            f"Dolly has {len(examples)} examples, too few for {n_test} test + {n_valid} valid + a training set; "
            "pass the full databricks-dolly-15k file."
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    positions = {
        "test": order[:n_test],
        "valid": order[n_test : n_test + n_valid],
        "train": order[n_test + n_valid :],
    }
    return {name: [examples[i] for i in sorted(idx)] for name, idx in positions.items()}


def prepare(
    set_name: str,
    fmt: str,
    examples: list[EvalExample],
    *,
    split: str | None = None,
    seed: int | None = None,
    max_response_words: int | None = None,
) -> Prepared:
    """Apply a set's filters and, for raw Dolly, the split (``split`` defaults to ``"test"``, ``seed``
    to 42); ``split``, ``seed`` and ``max_response_words`` apply to raw Dolly only."""
    dolly_raw = set_name == "dolly" and fmt == "raw"
    options = {"--split": split, "--seed": seed, "--max-response-words": max_response_words}
    given = [name for name, value in options.items() if value is not None]
    if given and not dolly_raw:
        raise KDBenchError(
            f"{', '.join(given)} apply to raw Dolly only (splitting databricks-dolly-15k); "
            f"the {fmt} {set_name} source is one evaluation split already."
        )
    prepared = Prepared(examples=examples, n_read=len(examples))
    if set_name in SHORT_FILTERED_SETS:
        prepared.examples, dropped = drop_short(examples)
        prepared.dropped[f"first reference under {MIN_RESPONSE_WORDS} words"] = dropped
    if dolly_raw:
        if max_response_words is not None:
            if max_response_words < 1:
                raise KDBenchError(f"--max-response-words must be at least 1, got {max_response_words}.")
            kept = [ex for ex in examples if word_count(ex["output"][0]) <= max_response_words]
            prepared.dropped[f"response over {max_response_words} words"] = len(examples) - len(kept)
            examples = kept
        split = split or "test"
        if split not in DOLLY_SPLITS:
            raise KDBenchError(f"unknown Dolly split {split!r}; choose one of {', '.join(DOLLY_SPLITS)}.")
        parts = split_dolly(examples, seed=DEFAULT_SEED if seed is None else seed)
        prepared.examples = parts[split]
        prepared.split_sizes = {name: len(part) for name, part in parts.items()}
    if not prepared.examples:
        raise KDBenchError(f"no {set_name} example is left after filtering; check the source file and --set.")
    return prepared


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench prepare-eval",
        description="Convert a real evaluation set (raw release or MiniLLM processed jsonl) into a kdbench eval jsonl.",
    )
    parser.add_argument("--set", required=True, choices=SETS, dest="set_name", help="which evaluation set")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--source", type=Path, help="local source file (S-NI raw: a task .json file or a directory of them)"
    )
    where.add_argument("--hub", metavar="ID", help="a hub dataset id instead of --source (needs network)")
    parser.add_argument("--hub-split", default="train", help="split of the --hub dataset (default: train)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="raw release or MiniLLM processed")
    parser.add_argument("--out", type=Path, required=True, help="output eval jsonl")
    parser.add_argument("--split", choices=DOLLY_SPLITS, help="raw Dolly only: which split to write (default: test)")
    parser.add_argument("--seed", type=int, help=f"raw Dolly only: split seed (default: {DEFAULT_SEED})")
    parser.add_argument(
        "--max-response-words",
        type=int,
        help="raw Dolly only: drop examples whose response is longer, before splitting",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``kdbench prepare-eval``: write one normalised eval set and report what was kept and filtered."""
    args = _parser().parse_args(argv)
    if args.hub:
        records = hub_records(args.hub, split=args.hub_split)
    else:
        records = source_records(args.set_name, args.fmt, args.source)
    examples = parse_records(args.set_name, args.fmt, records)
    prepared = prepare(
        args.set_name,
        args.fmt,
        examples,
        split=args.split,
        seed=args.seed,
        max_response_words=args.max_response_words,
    )
    write_jsonl_atomic(args.out, prepared.examples)
    dropped = "".join(f", dropped {n} ({why})" for why, n in prepared.dropped.items())
    splits = " / ".join(f"{name} {n}" for name, n in prepared.split_sizes.items())
    print(
        f"{args.set_name}: read {prepared.n_read} examples{dropped}"
        + (f"; split {splits}; wrote {args.split or 'test'}" if splits else "")
        + f"; kept {len(prepared.examples)} -> {args.out}"
    )
    return 0
