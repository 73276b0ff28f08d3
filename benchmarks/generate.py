"""Throughput of batched generation (`kdbench.evaluate.generate`, batch 32) against one prompt at a
time, on the tiny student of the embedded default.

Everything is built in a temporary folder, so the script runs from a fresh clone: the generated
instruction data (`kdbench.datagen`), a tokenizer trained on it (`kdbench.tokenizer`, vocabulary
1,000) and a random-init 2-layer / 64-wide GPT-2 (the student of
config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml). The prompts are the first ``--n-prompts`` examples
of the generated Dolly-shaped set, rendered with the MiniLLM template.

Both modes call the same function with the protocol's sampling settings (top-k 0, top-p 1.0,
temperature 1.0), the same prompts and the same seed, differing only in ``batch_size``. They run
alternately, ``--repeats`` rounds after one untimed warm-up round, on one torch thread, and the
median time of each is reported as samples/s, with the ratio. A random-init model rarely samples
eos (about 1/1,000 per step), so nearly every response runs to ``--max-new-tokens``; a response that
does stop early saves work one by one, while a batch runs until its longest response ends, so the
ratio understates the per-token gain rather than overstating it.

    python benchmarks/generate.py                         # 64 prompts, 64 new tokens, 3 rounds
    python benchmarks/generate.py --max-new-tokens 256    # the protocol's length (slower)

With ``--protocol``, one model's evaluation as the protocol runs it instead: ``--sets`` sets of
``--n-prompts`` prompts under the five decoding seeds, decoded one call per (set, seed) (each set
and seed in its own batches) against all together (`kdbench.evaluate.generate_rows`, as `evaluate_sets` calls it: full batches
across sets and seeds). ``--baseline FILE`` times the first mode with the ``generate`` of another
version's evaluate.py (e.g. ``git show main:src/kdbench/evaluate.py > /tmp/old.py``).

    python benchmarks/generate.py --protocol --n-prompts 60 --max-new-tokens 48 --batch-size 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from kdbench.datagen import generate as generate_data
from kdbench.evaluate import generate
from kdbench.jsonl import read_jsonl
from kdbench.models import build_random
from kdbench.prompts import build_prompt
from kdbench.tokenizer import train_tokenizer

STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512}
SEED = 10  # the first decoding seed of the protocol


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=int, default=64, help="prompts per round (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per response (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the batched mode (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per mode (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--protocol", action="store_true", help="sets x seeds: per (set, seed) vs together")
    parser.add_argument("--sets", type=int, default=5, help="--protocol: eval sets (default 5)")
    parser.add_argument("--baseline", type=Path, help="--protocol: evaluate.py whose generate runs per (set, seed)")
    return parser.parse_args(argv)


def protocol_modes(args: argparse.Namespace, model, tokenizer, prompts: list[str]) -> dict:
    """The two ways to decode ``--sets`` sets (prompt lists) under the protocol's five seeds."""
    import importlib.util

    from kdbench.engines import row_seed
    from kdbench.evaluate import generate_rows, resolve_protocol

    per_call = generate
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_evaluate", args.baseline)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        per_call = module.generate
    seeds = [10, 20, 30, 40, 50]
    sets = [prompts[i::args.sets] for i in range(args.sets)]  # disjoint sets of equal size
    protocol = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}

    def one_by_one() -> None:
        for seed in seeds:
            for chunk in sets:
                per_call(model, tokenizer, chunk, seed=seed, **protocol)

    def together() -> None:  # what evaluate_sets decodes: every set and seed, each seed's rows in turn
        keyed = [(seeds.index(seed), (p, row_seed(seed, i, p))) for seed in seeds for chunk in sets
                 for i, p in enumerate(chunk)]
        generate_rows(model, tokenizer, [row for _, row in keyed], resolve_protocol(protocol),
                      groups=[group for group, _ in keyed])

    return {"per set+seed": one_by_one, "together": together}


def build(workdir: Path, n_prompts: int) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase, list[str]]:
    """Data, tokenizer and student in `workdir`; returns the student, its tokenizer and the prompts."""
    paths = generate_data(workdir / "data", seed=0, n_train=500, n_valid=10, n_eval=max(n_prompts, 10))
    train_tokenizer([paths["train"]], workdir / "tokenizer", vocab_size=1000)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "tokenizer")
    model = build_random("gpt2", STUDENT, tokenizer, seed=0).eval()
    records = read_jsonl(paths["dolly"])[:n_prompts]
    if len(records) < n_prompts:
        raise SystemExit(f"only {len(records)} prompts available; lower --n-prompts")
    return model, tokenizer, [build_prompt(r["instruction"], r["input"]) for r in records]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = {f"batched ({args.batch_size})": args.batch_size, "one by one": 1}
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, prompts = build(Path(tmp), args.n_prompts)

        def run(batch_size: int) -> float:
            start = time.perf_counter()
            if callable(batch_size):
                batch_size()
            else:
                generate(model, tokenizer, prompts, seed=SEED, max_new_tokens=args.max_new_tokens,
                         batch_size=batch_size)
            return time.perf_counter() - start

        if args.protocol:
            modes = protocol_modes(args, model, tokenizer, prompts)

        for batch_size in modes.values():  # warm-up: allocator, kernels, tokenizer caches
            run(batch_size)
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, batch_size in modes.items():
                times[name].append(run(batch_size))

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}, "
          f"{args.threads} thread(s); student GPT-2 2 layers x 64, vocab {len(tokenizer)}; "
          f"{args.n_prompts} prompts, {args.max_new_tokens} new tokens, sampling, seed {SEED}; "
          f"median of {args.repeats} rounds")
    print(f"{'mode':<14} {'median s':>9} {'samples/s':>10}")
    rates = {}
    samples = args.n_prompts * (5 if args.protocol else 1)
    for name in modes:
        median = statistics.median(times[name])
        rates[name] = samples / median
        print(f"{name:<14} {median:>9.2f} {rates[name]:>10.1f}")
    first, second = rates.values()
    print(f"{' / '.join(modes)}: {first / second:.2f}x samples/s")


if __name__ == "__main__":
    main()
