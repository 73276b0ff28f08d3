"""Instruction data → token ids with the prompt masked, and the right-padded batches the loop trains on."""

from __future__ import annotations

import torch

from kdbench.losses import IGNORE
from kdbench.prompts import render_prompt


def encode_example(record: dict, tokenizer, max_length: int, prompt_format: str = "minillm") -> dict[str, list[int]]:
    """Prompt (the grid's `evaluation.prompt_format`, so training sees what evaluation asks) + response
    + EOS; labels are -100 on the prompt, so only the response (and EOS) count."""
    output = record["output"][0] if isinstance(record["output"], list) else record["output"]
    prompt_ids = tokenizer(render_prompt(prompt_format, tokenizer, record["instruction"], record.get("input", "")),
                           add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    def pad(seq, value):
        return seq + [value] * (width - len(seq))
    return {
        "input_ids": torch.tensor([pad(e["input_ids"], pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
        "labels": torch.tensor([pad(e["labels"], IGNORE) for e in examples]),
    }
