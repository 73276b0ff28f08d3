"""Reading and writing instruction data in the MiniLLM processed jsonl format.

One JSON object per line: ``{"instruction": str, "input": str, "output": str}``, where ``output`` may
also be a non-empty list of reference strings (S-NI, UnNI: several references per example, scored by
the max over them) and ``input`` may be missing (read as ``""``). Extra keys are kept untouched.

Every malformed case fails with a `KDBenchError` that names the file and the 1-based line number.
Writing goes through a temporary file in the destination folder and `os.replace`, so a reader never
sees a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kdbench.atomic import write_text
from kdbench.errors import KDBenchError

_FORMAT_HINT = (
    'each line must be one JSON object like {"instruction": "...", "input": "...", "output": "..."} '
    '("output" may be a list of reference strings; "input" may be omitted)'
)


def count_records(path: str | os.PathLike[str]) -> int:
    """The records of a jsonl file without parsing them: its non-blank lines (a missing file raises
    FileNotFoundError, which Snakemake's resource functions take as "count when it exists")."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and check an instruction-data jsonl file; blank lines are skipped.

    Returns the records in file order, each with ``input`` defaulted to ``""`` when absent.
    Raises `KDBenchError` naming the file (and line) for: a missing or unreadable file, a file with no
    records, bytes that are not UTF-8, a line that is not valid JSON or not an object, and a record
    whose ``instruction``/``input``/``output`` is missing or has the wrong type.
    """
    return [_check_record(record, where) for where, record in json_lines(path, hint=_FORMAT_HINT)]


def json_lines(path: str | os.PathLike[str], hint: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``("file, line N", value)`` for every non-blank line of a jsonl file. A missing or
    unreadable file, a file with no records, and a line that is not UTF-8 or not JSON are a
    `KDBenchError` naming the file and line (`hint` is appended: what a line should look like)."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KDBenchError(
            f"{path}: file not found; check the path, or generate the data with `kdbench data`."
        ) from None
    except OSError as exc:
        raise KDBenchError(f"{path}: cannot be read ({exc.strerror}); check that it is a readable file.") from None
    found = False
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}, line {lineno}"
        try:
            line = line_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise KDBenchError(
                f"{where}: byte {exc.start + 1} of the line is not valid UTF-8; re-save the file as UTF-8."
            ) from None
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KDBenchError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){suffix}.") from None
        found = True
        yield where, value
    if not found:
        raise KDBenchError(f"{path}: the file has no records{suffix}.")


def _check_record(record: Any, where: str) -> dict[str, Any]:
    """Validate one decoded line and default its ``input``; `where` is "file, line N" for messages."""
    if not isinstance(record, dict):
        raise KDBenchError(f"{where}: expected a JSON object, found {type(record).__name__}; {_FORMAT_HINT}.")
    for key in ("instruction", "output"):
        if key not in record:
            raise KDBenchError(f'{where}: the record has no "{key}" field; {_FORMAT_HINT}.')
    if not isinstance(record["instruction"], str):
        raise KDBenchError(f'{where}: "instruction" must be a string; {_FORMAT_HINT}.')
    record.setdefault("input", "")
    if not isinstance(record["input"], str):
        raise KDBenchError(f'{where}: "input" must be a string; {_FORMAT_HINT}.')
    output = record["output"]
    is_refs = isinstance(output, list) and output and all(isinstance(ref, str) for ref in output)
    if not (isinstance(output, str) or is_refs):
        raise KDBenchError(f'{where}: "output" must be a string or a non-empty list of strings; {_FORMAT_HINT}.')
    return record


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write `records` one JSON object per line (UTF-8, ``\\n`` endings) and return the path.

    The text goes to a temporary file beside `path` that then replaces it atomically; parent folders
    are created. The bytes depend only on the records and their key order.
    """
    data = "".join(json.dumps(dict(record), ensure_ascii=False) + "\n" for record in records)
    return write_text(path, data)
