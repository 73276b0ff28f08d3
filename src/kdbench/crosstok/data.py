"""The training data of a cross-tokenizer run: each example tokenized for both models, the rows
of the loss paired by the method's alignment, and the micro-batches that carry both.

Each side renders the prompt and tokenizes prompt and response as `kdbench.sft_data.encode_example`
does for one tokenizer (its own template with `prompt_format: chat`; the response text is shared),
so the student's ids and labels are exactly those of a same-tokenizer run and the teacher reads its
own tokens. The response is tokenized once more per side with character offsets
(`kdbench.crosstok.align.encode`, the same ids) to form the units of the loss, each a tuple of
student positions and a tuple of teacher positions:

- `pairs`: the one-to-one exact groups (one student and one teacher token over the same text,
  `align.exact_pairs`), then the end-of-sequence token of each side;
- `position`: the i-th response token (and end of sequence) of each side with the i-th, the first
  min(n_s, n_t) of them (ULD's code);
- `chunks`: every exact group (the tokens between two common cuts: the same text on both sides, one
  or several tokens per side; X-Token's chunks), then the end of sequence;
- `groups`: the same units, merged as GOLD merges them (the harness's `cross_objective`);
- `mined`: FuseLLM's minimum-edit-distance alignment (`align.mined_alignment`): a student position
  whose warping path matches it with exactly one teacher position whose token has the same
  marker-free string or maps to the student's token by the vocab_map's MinED map (FuseLLM's "soft"
  test; without the map, the same string alone: its "hard" one), then the end of sequence (FuseLLM
  takes the one-hot of the student's token elsewhere, which the harness's cross-entropy term already is);
- `attention`: one unit per example, the whole response (and end of sequence) of each side, which
  the method aligns itself (DSKD's cross-model attention); positions cut off by
  `training.max_length` leave the unit, which is dropped only when a side has none left.

A label position k predicts its token from the logits at k − 1, so a unit's positions become rows
k − 1 of each side's outputs. A unit with a position cut off by `training.max_length` on either side
is dropped. Student response positions in no unit get no distillation term; the cross-entropy
covers every one (kdbench.losses.cross_objective, which also merges a unit's rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdbench.crosstok import align
from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE
from kdbench.registry import ALIGNMENTS, KD_TO_CE, loss_hp
from kdbench.sft_data import collate, encode_example


@dataclass
class CrossTok:
    """What a cross-tokenizer run's steps share: the method's function, bound hyper-parameters and
    alignment, the vocab_map arrays it takes (on the device), both vocabularies, the teacher's tokenizer,
    and for the `mined` alignment the MinED map {teacher id: student id} its units are tested with."""

    fn: Any
    hp: dict
    alignment: str
    space: str | None
    arrays: dict[str, torch.Tensor]
    student_vocab: int
    teacher_vocab: int
    teacher_tokenizer: Any
    mined_map: dict[int, int] | None = None
    modules: Any = None  # the method's trainable modules (`@crosstok(modules=...)`), or None
    kd_to_ce: bool = False  # its `dynamic_loss_scaling` (kdbench.registry.HARNESS_HP)


def build_modules(method: Any, student_dim: int, teacher_dim: int) -> Any:
    """The trainable module a cross-tokenizer plugin's `@crosstok(modules=<builder>)` names, built
    from the two models' hidden sizes (None for a plugin without one)."""
    import sys

    name = method.crosstok["modules"]
    return getattr(sys.modules[method.obj.__module__], name)(student_dim, teacher_dim) if name else None


def load(run: dict, student_tokenizer, device, modules: Any = None) -> CrossTok:
    """The CrossTok of a resolved run whose method is a cross-tokenizer plugin (`vocab_map` in the run);
    `modules`: what `build_modules` made for it (trained with the student)."""
    from transformers import AutoTokenizer

    from kdbench.crosstok import vocab
    from kdbench.registry import load_method_file

    method = load_method_file(run["method"]["divergence"]["path"])
    if method.kind != "crosstok":
        raise KDBenchError(f"{run['pair_file']}: the run names a vocab_map, but its method "
                           f"'{method.key}' is a {method.kind}, not a cross-tokenizer plugin.")
    teacher_tokenizer = AutoTokenizer.from_pretrained(run["teacher_tokenizer"])
    found = vocab.load(run["vocab_map"])
    alignment = method.crosstok["alignment"]
    unit_arrays = ("mined_teacher", "mined_student") if alignment == "mined" else ()  # its units read the map
    missing = [name for name in dict.fromkeys([*method.crosstok["needs"], *unit_arrays]) if name not in found]
    if missing:
        raise KDBenchError(f"{run['vocab_map']}: no {', '.join(missing)} array, which method '{method.key}' reads; "
                           "the file predates it: delete it and run the workflow again (rule vocab_map rebuilds it).")
    arrays = {name: torch.as_tensor(found[name]).to(device) for name in method.crosstok["needs"]}
    mined_map = dict(zip(found["mined_teacher"].tolist(), found["mined_student"].tolist())) \
        if alignment == "mined" else None
    hp = run["method"]["divergence"]["hp"]
    return CrossTok(method.obj, loss_hp(hp), alignment, method.crosstok["space"], arrays, len(student_tokenizer),
                    len(teacher_tokenizer), teacher_tokenizer, mined_map, modules, hp.get(KD_TO_CE, False))


def _response(record: dict) -> str:
    return record["output"][0] if isinstance(record["output"], list) else record["output"]


def _prompt_length(labels: list[int], total: int) -> int:
    """Where the response starts: the first label that is not IGNORE (the whole length if none)."""
    return next((k for k, label in enumerate(labels) if label != IGNORE), total)


Unit = tuple[tuple[int, ...], tuple[int, ...]]


def response_units(student: align.Encoded, teacher: align.Encoded, alignment: str,
                   mined_map: dict[int, int] | None = None) -> list[Unit]:
    """(student positions, teacher positions) of each unit of the response under `alignment`, the
    end of sequence (position len(response) on each side) the last; `mined_map`: see the module doc."""
    if alignment not in ALIGNMENTS:
        raise KDBenchError(f"cross-tokenizer alignment {alignment!r} is not wired; known: {', '.join(ALIGNMENTS)}.")
    n_s, n_t = len(student.ids), len(teacher.ids)
    if alignment == "pairs":
        units = [((i,), (j,)) for i, j in align.exact_pairs(align.exact_groups(student, teacher))]
    elif alignment in ("chunks", "groups"):
        units = [(g.student, g.teacher) for g in align.exact_groups(student, teacher)]
    elif alignment == "mined":
        same, maps = align.strip_markers, mined_map or {}
        units = [((i,), t) for i, t in enumerate(align.mined_alignment(student, teacher))
                 if len(t) == 1 and (same(student.tokens[i]) == same(teacher.tokens[t[0]])
                                     or maps.get(teacher.ids[t[0]]) == student.ids[i])]
    elif alignment == "attention":
        return [(tuple(range(n_s + 1)), tuple(range(n_t + 1)))]
    else:
        units = [((k,), (k,)) for k in range(min(n_s, n_t))]
    return [*units, ((n_s,), (n_t,))]


def encode_pair(record: dict, student_tok, teacher_tok, max_length: int, prompt_format: str,
                alignment: str, mined_map: dict[int, int] | None = None) -> dict[str, list]:
    """One example for both models: the student's `input_ids`/`labels`, the teacher's
    `teacher_input_ids`, and `units`: (student rows, teacher rows) of each aligned unit."""
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
    def rows(positions, start, length):  # label position k is row k - 1; None if one is cut off
        kept = tuple(start + i - 1 for i in positions if 0 < start + i < length)
        return kept if len(kept) == len(positions) or (alignment == "attention" and kept) else None

    units = [(rs, rt) for si, tj in response_units(s_enc, t_enc, alignment, mined_map)
             if (rs := rows(si, s_start, len(s["input_ids"]))) and (rt := rows(tj, t_start, len(t["input_ids"])))]
    return {**s, "teacher_input_ids": t["input_ids"], "units": units}


def collate_pair(examples: list[dict], student_pad: int, teacher_pad: int) -> dict[str, torch.Tensor]:
    """The student's right-padded batch (kdbench.sft_data.collate), the teacher's ids and mask, and
    per side the units' rows as flat indices into its (batch × length) outputs (`student_rows`,
    `teacher_rows`) with the unit of each row (`student_units`, `teacher_units`: 0, 1, ... in order)
    the token each row predicts (`student_tokens`, `teacher_tokens`: the id at row + 1) and the token
    at the row itself (`student_inputs`, `teacher_inputs`)."""
    batch = collate(examples, student_pad)
    teacher = collate([{"input_ids": e["teacher_input_ids"], "labels": e["teacher_input_ids"]} for e in examples],
                      teacher_pad)
    batch.update(teacher_input_ids=teacher["input_ids"], teacher_attention_mask=teacher["attention_mask"])
    units = [(b, unit) for b, e in enumerate(examples) for unit in e["units"]]
    for side, width in ((0, batch["input_ids"].shape[1]), (1, teacher["input_ids"].shape[1])):
        name = ("student", "teacher")[side]
        pairs = [(b * width + row, u) for u, (b, unit) in enumerate(units) for row in unit[side]]
        batch[f"{name}_rows"] = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        batch[f"{name}_units"] = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        ids = (batch["input_ids"], teacher["input_ids"])[side].flatten()
        batch[f"{name}_tokens"] = ids[batch[f"{name}_rows"] + 1]
        batch[f"{name}_inputs"] = ids[batch[f"{name}_rows"]]
    return batch
