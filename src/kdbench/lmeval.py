"""`kdbench lm-eval`: run lm-eval tasks (evaluation/tasks/ or the library's own) on one model directory.

A thin wrapper over `lm_eval.simple_evaluate` with the Hugging Face backend, offline on a local
model: the tasks' own generation settings (evaluation/tasks: the paper protocol) apply; the decoding
seed and the prompt budget (256 prompt tokens + max new tokens) are set here. Results are written
atomically as JSON (lm-eval's `results` and `configs`, plus what was run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdbench import atomic
from kdbench.errors import KDBenchError
from kdbench.gpus import pinned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench lm-eval", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model directory written by save_pretrained")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-eval task names or tags")
    ap.add_argument("--include-path", type=Path, default=Path("evaluation/tasks"))
    ap.add_argument("--seed", type=int, default=10, help="decoding seed")
    ap.add_argument("--max-length", type=int, default=512, help="prompt + generation token budget")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N documents per task")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not args.model.is_dir():
        raise KDBenchError(f"--model {args.model}: no such directory; pass a directory written by save_pretrained")
    if not args.include_path.is_dir():
        raise KDBenchError(f"--include-path {args.include_path}: no such directory of lm-eval task YAMLs")
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise KDBenchError("no lm-eval tasks given (config key evaluation.lm_eval_tasks)")

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(args.include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise KDBenchError(f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm_eval --tasks list` and "
                           f"the YAMLs in {args.include_path}")
    with pinned(1, "lm-eval"):  # a GPU of its own (kdbench.gpus), as training jobs get
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(args.model), "max_length": args.max_length,
                                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
            tasks=tasks, task_manager=manager, batch_size=args.batch_size, limit=args.limit,
            random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed)
    atomic.write_text(args.out, json.dumps({
        "model": str(args.model), "tasks": tasks, "seed": args.seed, "max_length": args.max_length,
        "results": out["results"], "configs": out.get("configs", {})}, indent=2, default=str) + "\n")
    for task, metrics in out["results"].items():
        print(task, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return 0
