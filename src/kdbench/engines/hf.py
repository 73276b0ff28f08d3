"""The ``hf`` generation engine: transformers' ``generate`` in left-padded batches, each response
sampled from its own random stream (:func:`kdbench.engines.row_seed`).

Sampling is Gumbel-max: at every step a response's next token is
``argmax_v (log softmax(z / T)_v + g_v)`` with ``g_v = -log(-log u_v)``, ``u ~ U(0, 1)^V`` drawn from the
response's own ``torch.Generator``, which is a draw from ``softmax(z / T)`` (after top-k / top-p
filtering, whose removed tokens stay at -inf). transformers' other processors (n-gram blocking)
act on ``z`` first, as in its own sampling; its greedy search then takes the argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper
from transformers import TopPLogitsWarper


class RowSampler(LogitsProcessor):
    """Scores whose argmax is a sample of each row's next token, from the row's own generator."""

    def __init__(self, seeds: list[int], settings: dict[str, Any], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.warpers = [warper for warper, default in (
            (TemperatureLogitsWarper(settings["temperature"]), settings["temperature"] == 1.0),
            (TopKLogitsWarper(settings["top_k"]) if settings["top_k"] else None, not settings["top_k"]),
            (TopPLogitsWarper(settings["top_p"]), settings["top_p"] == 1.0)) if not default]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
        return torch.log_softmax(scores.float(), dim=-1) + gumbel


def generate(model: Any, tokenizer: Any, prompts: list[str], seeds: list[int], settings: dict[str, Any],
             kwargs: dict[str, Any], on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """One response per prompt (``prompts[i]`` sampled from ``seeds[i]``'s stream), in batches of
    ``settings["batch_size"]`` in the order of the prompts as given (the caller sorts them); prompts
    keep their last ``max_prompt_tokens`` tokens. ``kwargs``: ``model.generate``'s other settings.
    ``on_batch(indices, responses)`` is called after each batch."""
    encoded = tokenizer(prompts, truncation=True, max_length=settings["max_prompt_tokens"])["input_ids"]
    responses: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(prompts), settings["batch_size"]):
            rows = list(range(start, min(start + settings["batch_size"], len(prompts))))
            batch = tokenizer.pad([{"input_ids": encoded[i]} for i in rows], return_tensors="pt").to(model.device)
            sampler = ([RowSampler([seeds[i] for i in rows], settings, model.device)]
                       if settings["do_sample"] else [])
            output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    do_sample=False, logits_processor=LogitsProcessorList(sampler), **kwargs)
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(rows, texts):
                responses[i] = text.strip()
            if on_batch is not None:
                on_batch(rows, [responses[i] for i in rows])
    return responses
