"""The training data of a cross-tokenizer run: each example tokenized for both models, the rows
of the loss paired by the method's alignment, and the micro-batches that carry both.

Each side renders the prompt and tokenizes prompt and response as `kdbench.sft_data.encode_example`
does for one tokenizer (its own template with `prompt_format: chat`; the response text is shared),
so the student's ids and labels are exactly those of a same-tokenizer run and the teacher reads its
own tokens. The response is tokenized once more per side with character offsets
(`kdbench.crosstok.align.encode`, the same ids) to pair response positions:

- `pairs`: the one-to-one exact groups (one student and one teacher token over the same text,
  `align.exact_pairs`), then the end-of-sequence token of each side;
- `position`: the i-th response token (and end of sequence) of each side with the i-th, the first
  min(n_s, n_t) of them (ULD's code).

A paired label position k predicts its token from the logits at k − 1, so a pair (k_s, k_t) becomes
the row k_s − 1 of the student's outputs and k_t − 1 of the teacher's. Pairs cut off by
`training.max_length` on either side are dropped. Student response positions without a pair get no
distillation term; the cross-entropy covers every one (kdbench.losses.cross_objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdbench.crosstok import align
from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE
from kdbench.sft_data import collate, encode_example


@dataclass
class CrossTok:
    """What a cross-tokenizer run's steps share: the method's function, bound hyper-parameters and
    alignment, the vocab_map arrays it takes (on the device), both vocabularies, the teacher's tokenizer."""

    fn: Any
    hp: dict
    alignment: str
    arrays: dict[str, torch.Tensor]
    student_vocab: int
    teacher_vocab: int
    teacher_tokenizer: Any


def load(run: dict, student_tokenizer, device) -> CrossTok:
    """The CrossTok of a resolved run whose method is a cross-tokenizer plugin (`vocab_map` in the run)."""
    from transformers import AutoTokenizer

    from kdbench.crosstok import vocab
    from kdbench.registry import load_method_file

    method = load_method_file(run["method"]["divergence"]["path"])
    if method.kind != "crosstok":
        raise KDBenchError(f"{run['pair_file']}: the run names a vocab_map, but its method "
                           f"'{method.key}' is a {method.kind}, not a cross-tokenizer plugin.")
    teacher_tokenizer = AutoTokenizer.from_pretrained(run["teacher_tokenizer"])
    found = vocab.load(run["vocab_map"])
    arrays = {name: torch.as_tensor(found[name]).to(device) for name in method.crosstok["needs"]}
    return CrossTok(method.obj, run["method"]["divergence"]["hp"], method.crosstok["alignment"], arrays,
                    len(student_tokenizer), len(teacher_tokenizer), teacher_tokenizer)


def _response(record: dict) -> str:
    return record["output"][0] if isinstance(record["output"], list) else record["output"]


def _prompt_length(labels: list[int], total: int) -> int:
    """Where the response starts: the first label that is not IGNORE (the whole length if none)."""
    return next((k for k, label in enumerate(labels) if label != IGNORE), total)


def response_pairs(student: align.Encoded, teacher: align.Encoded, alignment: str) -> list[tuple[int, int]]:
    """(student, teacher) response positions paired by `alignment`, the end of sequence (position
    len(response) on each side) included."""
    if alignment not in ("pairs", "position"):
        raise KDBenchError(f"cross-tokenizer alignment {alignment!r} is not wired; known: pairs, position.")
    n_s, n_t = len(student.ids), len(teacher.ids)
    if alignment == "pairs":
        return [*align.exact_pairs(align.exact_groups(student, teacher)), (n_s, n_t)]
    return [(k, k) for k in range(min(n_s, n_t) + 1)]


def encode_pair(record: dict, student_tok, teacher_tok, max_length: int, prompt_format: str,
                alignment: str) -> dict[str, list]:
    """One example for both models: the student's `input_ids`/`labels`, the teacher's
    `teacher_input_ids`, and `rows`: (student row, teacher row) of each aligned pair."""
    sides = []
    for tok in (student_tok, teacher_tok):
        encoded = encode_example(record, tok, max_length, prompt_format)
        offsets = align.encode(tok, _response(record), add_special_tokens=False)
        start = _prompt_length(encoded["labels"], len(encoded["input_ids"]))
        if start < len(encoded["input_ids"]) and tuple(encoded["input_ids"][start:start + len(offsets.ids)]) != \
                offsets.ids[:len(encoded["input_ids"]) - start]:
            raise KDBenchError(f"{getattr(tok, 'name_or_path', 'tokenizer')}: the response's tokens differ when "
                               "tokenized with offsets; cross-tokenizer alignment needs the same ids.")
        sides.append((encoded, offsets, start))
    (s, s_enc, s_start), (t, t_enc, t_start) = sides
    rows = [(s_start + i - 1, t_start + j - 1) for i, j in response_pairs(s_enc, t_enc, alignment)
            if 0 < s_start + i < len(s["input_ids"]) and 0 < t_start + j < len(t["input_ids"])]
    return {**s, "teacher_input_ids": t["input_ids"], "rows": rows}


def collate_pair(examples: list[dict], student_pad: int, teacher_pad: int) -> dict[str, torch.Tensor]:
    """The student's right-padded batch (kdbench.sft_data.collate), the teacher's ids and mask, and
    the aligned rows as flat indices into each side's (batch × length) outputs."""
    batch = collate(examples, student_pad)
    teacher = collate([{"input_ids": e["teacher_input_ids"], "labels": e["teacher_input_ids"]} for e in examples],
                      teacher_pad)
    width_s, width_t = batch["input_ids"].shape[1], teacher["input_ids"].shape[1]
    rows = [(b * width_s + i, b * width_t + j) for b, e in enumerate(examples) for i, j in e["rows"]]
    batch.update(teacher_input_ids=teacher["input_ids"], teacher_attention_mask=teacher["attention_mask"],
                 student_rows=torch.tensor([r[0] for r in rows], dtype=torch.long),
                 teacher_rows=torch.tensor([r[1] for r in rows], dtype=torch.long))
    return batch
