"""Shim for methods/seqkd.smk: replace each training response by the teacher's greedy response."""
import sys

from kdbench.evaluate import generate, load_model
from kdbench.gpus import pinned
from kdbench.jsonl import read_jsonl, write_jsonl_atomic
from kdbench.prompts import render_prompt

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
records = read_jsonl(snakemake.input.data)  # noqa: F821
with pinned(1, "seqkd generation"):  # a GPU of its own (kdbench.gpus), as training jobs get
    model, tokenizer = load_model(snakemake.input.model)  # noqa: F821
    prompts = [render_prompt(snakemake.params.prompt_format, tokenizer, r["instruction"], r.get("input", ""))  # noqa: F821
               for r in records]
    responses = generate(model, tokenizer, prompts, seed=0, do_sample=False, batch_size=32,
                         max_new_tokens=snakemake.params.max_new_tokens)  # noqa: F821
write_jsonl_atomic(snakemake.output[0], [{**r, "output": out} for r, out in zip(records, responses) if out])  # noqa: F821
