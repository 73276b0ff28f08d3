"""lm-eval hooks of the kdbench tasks: the prompt, the references and the per-document scores all
come from kdbench itself, so an lm-eval run and ``kdbench evaluate`` score the same way.

A document is one line of a kdbench eval jsonl: ``instruction``, ``input`` (empty or absent when
the example has none) and ``output`` (one reference string or a list of them).

Scoring goes through ``process_results`` rather than a ``metric_list`` function on purpose: with a
list of references lm-eval scores a metric function per reference and then records
``1.0 if any(scores) else 0.0``, which would turn ROUGE-L into "any overlap"; here ROUGE-L is the
maximum over the references (``kdbench.evaluate.rouge_l``), as in the MiniLLM protocol.
"""

from __future__ import annotations

from typing import Any

from kdbench.evaluate import exact_match, rouge_l
from kdbench.prompts import build_prompt


def doc_to_text(doc: dict[str, Any]) -> str:
    """The MiniLLM prompt of a document (`kdbench.prompts.build_prompt`)."""
    return build_prompt(doc["instruction"], doc.get("input") or "")


def doc_to_target(doc: dict[str, Any]) -> list[str]:
    """The references of a document, always as a list."""
    output = doc["output"]
    return [output] if isinstance(output, str) else list(output)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """ROUGE-L F x100 (max over references) and exact match x100 of the one generated response,
    stripped as ``kdbench evaluate`` strips its decoded text."""
    prediction = results[0].strip()
    references = doc_to_target(doc)
    return {"rougeL": rouge_l(prediction, references), "exact_match": exact_match(prediction, references)}
