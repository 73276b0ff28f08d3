"""Steady-state training throughput (response tokens/s) of the kdbench harness loop against minimal
hand-written PyTorch distillation loops, same models, data, method and optimizer settings.

- harness: the real `kdbench.train.train(run)` on a resolved fkl run of the tiny GPT-2 pair
  (DeepSpeed engine, ZeRO 0, fp32; accelerator cpu, or cuda where a GPU is): final hidden states, output heads applied
  chunk by chunk with recomputation in backward, the global-token-count reduction, clipping, schedule.
  Its time per step is read back from its own metrics.jsonl: each record's `tokens_per_s` is the
  response tokens since the loop started divided by the seconds since then, so the seconds at a
  logged step are (cumulative tokens) / tokens_per_s, the cumulative tokens being known from the
  same data stream. Each run is a process of its own (`train` ends by destroying its process
  group, so a second one cannot start in the same process); nothing in the loop is changed but
  its clock (`time.perf_counter`, which `--clock cpu` replaces by that process's `time.process_time`).
- harness, stored: the same run with the teacher's hidden states stored beforehand (`teacher_cache`,
  kdbench.teacher_states, computed once outside the timing): what a student of the default grid
  pays when its teacher ran once for all its siblings.
- hand loop: what one writes without a harness: `model(input_ids, attention_mask).logits` for the
  teacher (no grad) and the student, shift, keep the response positions, log_softmax of both, the
  fkl plugin's per-token divergence, sum / response tokens, backward, `clip_grad_norm_`, AdamW step,
  the same scheduler. Same micro-batches in the same order (`kdbench.stream.Stream` with the run's
  seed, collated in the loop as the harness does).
- hand loop, response heads: the same, but the output heads are applied to the response positions
  only (`model.base_model` → final hidden states → keep → `get_output_embeddings()`), as the
  harness does, in one piece. The plain hand loop also pays for prompt and padding logits; this one
  isolates the harness's own machinery (DeepSpeed engine, chunking with recomputation in backward,
  the always-computed cross-entropy, the bookkeeping).

All loops exclude one-time startup (model loading, DeepSpeed init, the first `--warmup` steps) and
time steps `--warmup`+1 .. `--steps`−1 only, on the same clock: without a GPU by default this
process's CPU time (`time.process_time`), so other jobs on a shared machine do not count; `--clock
wall` for elapsed time (the default on a GPU, where the hand loops run on cuda too). Dropout is off in both models: the harness trains the student in whatever mode
`from_pretrained` left it (eval; see the README section), so equal modes need zero dropout. The
loops run in turn, `--repeats` rounds in one process on `--threads` torch threads; the best
(fastest) repeat of each is reported, as interference only ever slows a run down.

    python benchmarks/train_step.py                       # 110 steps, 4 loops x 2 repeats (~2 min)
    python benchmarks/train_step.py --clock wall --repeats 3
    python benchmarks/train_step.py --profile 25          # plus cProfile's top 25 of each loop
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import yaml

REPO = Path(__file__).resolve().parents[1]
PAIR = "gpt2-bench-s_from_gpt2-bench-t"
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=110, help="optimizer steps per run (default 110)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (default 10)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="examples per micro-batch (default 16)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example at most (default 128)")
    parser.add_argument("--vocab-size", type=int, default=1000, help="tokenizer vocabulary (default 1000)")
    parser.add_argument("--n-train", type=int, default=800, help="training examples (default 800)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--clock", choices=CLOCKS, default=None,
                        help="cpu: this process's CPU seconds (default without a GPU: other jobs on a shared "
                             "machine do not count), wall: elapsed seconds (default, and the only sensible "
                             "choice, on a GPU)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timing, cProfile one more run of each loop and print its top N functions")
    args = parser.parse_args(argv)
    args.clock = args.clock or ("wall" if torch.cuda.is_available() else "cpu")
    if args.steps - args.warmup < 10 or args.warmup < 1:
        parser.error("need --warmup >= 1 and at least 10 timed steps (--steps - --warmup)")
    return args


def build(workdir: Path, args: argparse.Namespace) -> dict:
    """Data, tokenizer, the tiny pair's init models and its resolved fkl run, in `workdir` (the cwd)."""
    from kdbench.config import load_grid
    from kdbench.datagen import generate as generate_data
    from kdbench.models import build_random
    from kdbench.tokenizer import train_tokenizer

    for name in ("config", "methods", "workflows"):
        shutil.copytree(REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
    pair = yaml.safe_load((workdir / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    del pair["teacher"]["sft"]  # a random teacher costs the same per step as a trained one
    for role in ("teacher", "student"):
        pair[role]["config"].update(NO_DROPOUT)
    pair["training"].update(steps=args.steps, micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                            gradient_accumulation_steps=1, checkpoint_every=0, log_every=args.warmup)
    (workdir / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    grid = yaml.safe_load((workdir / "config/tiny.yaml").read_text())
    grid["tables"] = [{"name": "bench", "pairs": [PAIR], "methods": ["fkl"]}]  # the one run measured
    (workdir / "grid.yaml").write_text(yaml.safe_dump(grid))

    paths = generate_data(workdir / "results/data", seed=0, n_train=args.n_train, n_valid=10, n_eval=10)
    train_tokenizer([paths["train"]], workdir / "results/tokenizer", vocab_size=args.vocab_size)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "results/tokenizer")
    for role in ("teacher", "student"):
        out = workdir / f"results/models/{PAIR}/{role}-init"
        build_random(pair["family"], pair[role]["config"], tokenizer, pair[role].get("seed", 0)).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return load_grid(workdir / "grid.yaml", workdir=workdir).resolve_run(PAIR, "fkl", 1)


def stream_batches(run: dict, tokenizer) -> tuple[list[list[dict]], list[int]]:
    """The run's micro-batches (examples) in the harness's order, and each optimizer step's response tokens."""
    from kdbench.jsonl import read_jsonl
    from kdbench.losses import count_valid
    from kdbench.sft_data import collate, encode_example
    from kdbench.stream import Stream

    tr = run["training"]
    examples = [encode_example(r, tokenizer, tr["max_length"]) for r in read_jsonl(run["data"]["train"])]
    stream = Stream(examples, tr["micro_batch_size"], run["run"]["seed"])
    gas = tr["gradient_accumulation_steps"]
    batches = [next(stream) for _ in range(tr["steps"] * gas)]
    tokens = [sum(count_valid(collate(b, tokenizer.pad_token_id)["labels"]) for b in batches[s * gas:(s + 1) * gas])
              for s in range(tr["steps"])]
    return batches, tokens


# One harness run, in a process of its own: `train` ends by destroying the process group that
# DeepSpeed's cached groups refer to, so a second `train` in the same process cannot initialise.
HARNESS = """import sys, time, torch, yaml
if sys.argv[2] == "cpu":
    time.perf_counter = time.process_time  # the loop's own clock, which its tokens_per_s reads
torch.set_num_threads(int(sys.argv[3]))
from kdbench.train import train
train(yaml.safe_load(open(sys.argv[1])))
"""


def harness(run: dict, name: str, tokens: list[int], warmup: int, clock: str, threads: int,
            profile: Path | None = None) -> tuple[float, int]:
    """Seconds and response tokens of steps warmup+1 .. steps−1 of the real `kdbench.train.train`
    (run in a subprocess; with `profile`, under cProfile, its stats written there)."""
    run = {**run, "run": {**run["run"], "dir": f"results/bench/{name}"}}
    Path(f"{name}.yaml").write_text(yaml.safe_dump(run))
    Path("harness.py").write_text(HARNESS)
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    done = subprocess.run([sys.executable, *prof, "harness.py", f"{name}.yaml", clock, str(threads)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"harness run {name} failed:\n{done.stderr[-3000:]}")
    records = {r["step"]: r for r in map(json.loads, Path(run["run"]["dir"], "metrics.jsonl").read_text().splitlines())}
    last = run["training"]["steps"] - 1
    cumulative = [sum(tokens[:k + 1]) for k in range(len(tokens))]

    def seconds_at(step: int) -> float:
        return cumulative[step] / records[step]["tokens_per_s"]

    return seconds_at(last) - seconds_at(warmup), cumulative[last] - cumulative[warmup]


def stored_teacher(run: dict):
    """The teacher's hidden states on the run's stream (kdbench.teacher_states), computed once; returns
    a wrapper that puts them where the harness looks (`states_path`) for one call and away after it."""
    from kdbench.teacher_states import spec, states_path, write

    where = states_path(run)
    aside = where.with_name(where.name + ".aside")
    write(spec(run), aside, spec(run)["micro_batches"])

    def call(loop):
        os.replace(aside, where)
        try:
            return loop()
        finally:
            os.replace(where, aside)
    return call


def hand_loop(run: dict, batches: list[list[dict]], tokens: list[int], warmup: int, tokenizer, clock,
              response_heads: bool = False) -> tuple[float, int]:
    """Seconds and response tokens of steps warmup+1 .. steps−1 of a minimal hand-written KD loop
    (with `response_heads`, the output heads see the response positions only)."""
    from transformers import get_scheduler

    from kdbench.losses import IGNORE
    from kdbench.models import load_causal_lm
    from kdbench.registry import load_method_file
    from kdbench.sft_data import collate

    tr = run["training"]
    fkl = load_method_file(run["method"]["divergence"]["path"]).obj
    torch.manual_seed(run["run"]["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where DeepSpeed puts the harness
    student = load_causal_lm(run["student"], dtype="fp32").to(device).train()
    teacher = load_causal_lm(run["teacher"], dtype="fp32").to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
    scheduler = get_scheduler(tr["schedule"], optimizer, num_warmup_steps=int(tr["warmup_ratio"] * tr["steps"]),
                              num_training_steps=tr["steps"])
    gas = tr["gradient_accumulation_steps"]
    start = None
    for step in range(tr["steps"]):
        for b in batches[step * gas:(step + 1) * gas]:
            mb = {k: v.to(device) for k, v in collate(b, tokenizer.pad_token_id).items()}
            keep = mb["labels"][:, 1:] != IGNORE
            inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"]}
            if response_heads:
                with torch.no_grad():
                    t_hidden = teacher.base_model(**inputs).last_hidden_state[:, :-1][keep]
                    t_logits = teacher.get_output_embeddings()(t_hidden)
                s_hidden = student.base_model(**inputs).last_hidden_state[:, :-1][keep]
                s_logits = student.get_output_embeddings()(s_hidden)
            else:
                with torch.no_grad():
                    t_logits = teacher(**inputs).logits[:, :-1][keep]
                s_logits = student(**inputs).logits[:, :-1][keep]
            s_logp = F.log_softmax(s_logits.float(), -1)
            t_logp = F.log_softmax(t_logits.float(), -1)
            loss = fkl(s_logp, t_logp).sum() / tokens[step]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), tr["grad_clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.item()  # what a loop logs (on cuda: waits for the step, as the harness's logging does)
        if step == warmup:
            start = clock()
    return clock() - start, sum(tokens[warmup + 1:])


def top_functions(profile: cProfile.Profile | pstats.Stats, n: int) -> str:
    out = io.StringIO()
    stats = profile if isinstance(profile, pstats.Stats) else pstats.Stats(profile)
    stats.stream = out
    stats.sort_stats("tottime").print_stats(n)
    text = out.getvalue()
    return text[text.index("   ncalls"):].rstrip()  # from the column header on (not the file, totals, ordering)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the resolved run's paths are relative to the workflow directory
        try:
            run = build(Path(tmp), args)
            print(f"built in {tmp}; timing {args.repeats} x 4 runs of {args.steps} steps", file=sys.stderr, flush=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(run["tokenizer"])
            batches, tokens = stream_batches(run, tokenizer)
            stored = stored_teacher(run)
            loops = {
                "harness": lambda i: harness(run, f"r{i}", tokens, args.warmup, args.clock, args.threads),
                "harness, stored": lambda i: stored(lambda: harness(run, f"s{i}", tokens, args.warmup, args.clock,
                                                                    args.threads)),
                "hand loop": lambda i: hand_loop(run, batches, tokens, args.warmup, tokenizer, clock),
                "hand, resp. heads": lambda i: hand_loop(run, batches, tokens, args.warmup, tokenizer, clock,
                                                          response_heads=True),
            }
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in loops}
            for i in range(args.repeats):
                for name, loop in loops.items():
                    results[name].append(loop(i))
            profiles = {}
            if args.profile:
                harness(run, "profile", tokens, args.warmup, args.clock, args.threads, Path(tmp) / "harness.prof")
                profiles["harness"] = pstats.Stats(str(Path(tmp) / "harness.prof"))
                for name, loop in loops.items():
                    if name != "harness":
                        profiles[name] = cProfile.Profile()
                        profiles[name].runcall(loop, "profile")
        finally:
            os.chdir(here)

    import deepspeed

    tr = run["training"]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, "
          f"{cpu}, {args.threads} thread(s); tiny GPT-2 pair (teacher 4x128, student 2x64, dropout 0), vocab "
          f"{len(tokenizer)}; fkl, micro-batch {tr['micro_batch_size']} x accumulation "
          f"{tr['gradient_accumulation_steps']}, max length {tr['max_length']}, loss chunk {tr['loss_chunk_size']}; "
          f"{args.steps} steps, timed {args.warmup + 1}..{args.steps - 1} "
          f"({sum(tokens[args.warmup + 1:]):,} response tokens); {args.clock} clock, best of {args.repeats}")
    print(f"{'loop':<18} {'tokens/s':>9} {'ms/step':>8}   all repeats (tokens/s)")
    rate = {}
    for name, runs in results.items():
        rates = [n / s for s, n in runs]
        rate[name] = max(rates)
        ms = 1000 * min(s for s, _ in runs) / (args.steps - args.warmup - 1)
        print(f"{name:<18} {rate[name]:>9,.0f} {ms:>8.1f}   {', '.join(f'{r:,.0f}' for r in rates)}")
    print(f"harness / hand loop: {rate['harness'] / rate['hand loop']:.3f}x tokens/s (target >= 0.95x)")
    print(f"harness / hand loop with response heads: {rate['harness'] / rate['hand, resp. heads']:.3f}x tokens/s")
    print(f"harness with stored teacher states / harness: {rate['harness, stored'] / rate['harness']:.3f}x tokens/s "
          "(teacher_cache; the same weights)")
    for name, profile in profiles.items():
        print(f"\ncProfile, {name} (one whole run incl. startup; sorted by own time):\n"
              f"{top_functions(profile, args.profile)}")


if __name__ == "__main__":
    main()
