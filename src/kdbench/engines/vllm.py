"""The ``vllm`` generation engine (``evaluation.engine: vllm``): vLLM's offline ``LLM.generate`` on a
GPU, for grids whose evaluation is too slow with transformers' ``generate``. vLLM is an optional extra
(``pip install -e ".[vllm]"``), imported here only, and only when a job's engine is vllm.

The protocol is the hf engine's (docs/METHODS.md §5): the same rendered prompts, truncated to their last
``max_prompt_tokens`` tokens by the model's own tokenizer and passed as token ids; top-k 0 (off; vLLM
spells it -1), top-p, temperature; ``max_new_tokens``; repetition penalty 1; stopping at every eos id
(the tokenizer's and the generation config's); special tokens skipped, whitespace stripped; greedy as
temperature 0. Each request carries its row seed (``SamplingParams.seed``), so vLLM samples it from a
generator of its own, seeded as the hf engine seeds it: the same distribution and seeding, a different
sampler (so not the same bits). vLLM has no n-gram blocking: a grid with ``no_repeat_ngram_size > 0``
and this engine is refused before any job (kdbench.eval_protocol.check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError


def requests(prompt_ids: list[list[int]], seeds: list[int], settings: dict[str, Any],
             eos_ids: list[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """One ``(prompt, SamplingParams keyword arguments)`` per row: the prompt as vLLM's token-ids
    prompt, the sampling settings of the protocol ``settings`` (kdbench.spec.Protocol's names)."""
    if settings["no_repeat_ngram_size"]:
        raise KDBenchError(f"engine vllm cannot block repeated n-grams (no_repeat_ngram_size "
                           f"{settings['no_repeat_ngram_size']}); set it to 0 or use engine hf")
    if settings["do_sample"]:
        sampling = {"temperature": settings["temperature"], "top_p": settings["top_p"],
                    "top_k": settings["top_k"] or -1}  # HF's 0 (off) is vLLM's -1
    else:
        sampling = {"temperature": 0.0}
    return [({"prompt_token_ids": list(ids)},
             {"n": 1, **sampling, "seed": seed if settings["do_sample"] else None,
              "max_tokens": settings["max_new_tokens"], "repetition_penalty": 1.0, "stop_token_ids": list(eos_ids),
              "skip_special_tokens": True})
            for ids, seed in zip(prompt_ids, seeds)]


class Engine:
    """A model directory served by vLLM; :meth:`generate_rows` is kdbench.evaluate.generate_rows's."""

    device = "cuda (vllm)"

    def __init__(self, model_dir: Path, dtype: str = "fp32"):
        try:
            from vllm import LLM
        except ImportError as err:
            raise KDBenchError(f"evaluation.engine vllm needs vLLM: pip install -e \".[vllm]\" ({err})") from None
        from transformers import GenerationConfig

        # generation_config="vllm": the protocol's settings alone, never the model's own defaults
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), generation_config="vllm", seed=0,
                       dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
        try:  # its eos ids end a response, as they do under the hf engine
            self.generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            self.generation_config = GenerationConfig()

    def generate_rows(self, tokenizer: Any, rows: list[tuple[str, int]], settings: dict[str, Any], *,
                      eos_ids: list[int], groups: list[int] | None = None, synced_gpus: bool = False,
                      on_rows: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
        """Every row in one ``LLM.generate`` call (vLLM batches and schedules them itself)."""
        from vllm import SamplingParams

        tokenizer.truncation_side = "left"
        ids = tokenizer([p for p, _ in rows], truncation=True, max_length=settings["max_prompt_tokens"])["input_ids"]
        built = requests(ids, [seed for _, seed in rows], settings, eos_ids)
        outputs = self.llm.generate([prompt for prompt, _ in built], [SamplingParams(**kw) for _, kw in built])
        texts = [output.outputs[0].text.strip() for output in outputs]
        if on_rows is not None:
            on_rows(list(range(len(rows))), texts)
        return texts
