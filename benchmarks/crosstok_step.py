"""Per-step time of the cross-tokenizer plugins on the tiny BPE/Unigram pair: the harness's
`cross_objective` around each plugin (the smoke test's setup, tests/smoke/test_crosstok_train.py).

Generated data (64 examples, 8 in the micro-batch), both generated tokenizers (vocabulary 400 each),
random GPT-2 teacher and student of two sizes; one step = the teacher's forward (no grad), the
student's, `kdbench.losses.cross_objective` at the plugin's kd_ratio, backward and an Adam step
(student and, for dskd, its projectors). Three warm-up steps, then 20 timed on this process's CPU
clock (`time.process_time`) and the wall clock, one thread; the load average is printed beside.

    PYTHONPATH=src python benchmarks/crosstok_step.py [plugin ...]   # default: simple_ctkd dskd
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from kdbench.crosstok import vocab
from kdbench.crosstok.data import build_modules, collate_pair, encode_pair
from kdbench.datagen import generate
from kdbench.jsonl import read_jsonl
from kdbench.losses import UNIT_KEYS, cross_objective
from kdbench.models import LastHidden
from kdbench.registry import discover

SIZES = [(2, 32, 1, 16), (4, 128, 2, 64)]  # teacher layers × width, student layers × width
MERGE = {"groups": "observed", "attention": "attention"}


def lm(vocab_size, n_layer, n_embd, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=vocab_size, n_positions=256))


def stepper(plugin, records, toks, arrays, size):
    """One optimizer step of `plugin` on the micro-batch; returns the step's KD mean."""
    student_tok, teacher_tok = toks
    t_layers, d_t, s_layers, d_s = size
    mb = collate_pair([encode_pair(r, student_tok, teacher_tok, 192, "minillm", plugin.crosstok["alignment"])
                       for r in records], student_tok.pad_token_id, teacher_tok.pad_token_id)
    teacher = LastHidden(lm(len(teacher_tok), t_layers, d_t, 0)).eval().requires_grad_(False)
    student = LastHidden(lm(len(student_tok), s_layers, d_s, 1))
    modules = build_modules(plugin, d_s, d_t)
    opt = torch.optim.Adam([*student.parameters(), *(modules.parameters() if modules else ())], lr=1e-2)
    n = int((mb["labels"] != -100).sum())

    def step():
        opt.zero_grad()
        with torch.no_grad():
            t_hidden = teacher(mb["teacher_input_ids"], mb["teacher_attention_mask"])
        parts = cross_objective(
            student(mb["input_ids"], mb["attention_mask"]), t_hidden, mb["labels"], {k: mb[k] for k in UNIT_KEYS},
            method=plugin.obj, hparams=plugin.defaults, arrays={k: arrays[k] for k in plugin.crosstok["needs"]},
            student_vocab=len(student_tok), teacher_vocab=len(teacher_tok), kd_ratio=plugin.crosstok["kd_ratio"],
            n_global=n, student_head=student.head, teacher_head=teacher.head, chunk_size=64,
            merge=MERGE.get(plugin.crosstok["alignment"], "mean"), space=plugin.crosstok["space"], modules=modules,
            embeddings=(student.lm.get_input_embeddings(), teacher.lm.get_input_embeddings()))
        parts.loss.backward()
        opt.step()
        return parts.kd_mean
    return step


def main(keys):
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    paths = generate(root / "data", seed=0, n_train=64, n_valid=5, n_eval=5)
    for kind in ("bpe", "unigram"):
        from kdbench.tokenizer import train_tokenizer

        train_tokenizer([paths["train"]], root / kind, vocab_size=400, kind=kind)
    toks = tuple(AutoTokenizer.from_pretrained(root / kind) for kind in ("unigram", "bpe"))
    arrays = {k: torch.as_tensor(v) for k, v in vocab.build(*toks)[0].items()}
    plugins, records = discover(Path(__file__).resolve().parents[1] / "methods"), read_jsonl(paths["train"])[:8]
    for size in SIZES:
        for key in keys:
            step = stepper(plugins[key], records, toks, arrays, size)
            for _ in range(3):
                step()
            load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            for _ in range(20):
                step()
            wall, cpu = (time.perf_counter() - wall) / 20, (time.process_time() - cpu) / 20
            print(f"teacher {size[0]}x{size[1]}, student {size[2]}x{size[3]}: {key:12s} {1000 * cpu:6.1f} ms CPU, "
                  f"{1000 * wall:6.1f} ms wall per step (load {load:.2f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["simple_ctkd", "dskd"])
