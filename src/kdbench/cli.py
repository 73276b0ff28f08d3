"""The `kdbench` console script: one subcommand per workflow step, each usable by hand."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

from kdbench import __version__
from kdbench.errors import KDBenchError

COMMANDS = {
    "data": ("kdbench.datagen", "generate the embedded instruction data (train/valid/five eval sets)"),
    "tokenizer": ("kdbench.tokenizer", "train the local BPE tokenizer, saved in Hugging Face format"),
    "init-model": ("kdbench.models", "write the initial teacher or student of a pair"),
    "check": ("kdbench.check", "validate a grid config (schema, pairs, methods, hyper-parameters)"),
    "resolve": ("kdbench.check", "print the resolved run.yaml of one grid cell"),
    "run": ("kdbench.check", "snakemake with the same arguments, after reading each --configfile (file and line)"),
    "train": ("kdbench.train", "train one resolved run: kdbench train results/runs/.../run.yaml"),
    "vocab-map": ("kdbench.crosstok.vocab", "a cross-tokenizer pair's common vocabulary and X-Token projection"),
    "teacher-states": ("kdbench.teacher_states", "the teacher's hidden states on a run's micro-batches, for its siblings"),
    "evaluate": ("kdbench.evaluate", "generate and score one model on one eval set over decoding seeds"),
    "aggregate": ("kdbench.aggregate", "build the results tables from evaluation results"),
    "plots": ("kdbench.plots", "LATF ratio, temperature and training-curve plots; ours vs published bars"),
    "combine-tables": ("kdbench.aggregate", "stack per-pair tables into results/tables/main.md and main.csv"),
    "lm-eval": ("kdbench.lmeval", "run lm-eval tasks (evaluation/tasks or the library's own) over decoding seeds"),
    "lm-eval-table": ("kdbench.aggregate", "tabulate lm-eval results of one pair: mean ± std per task"),
    "prepare-eval": ("kdbench.evalsets", "convert a real eval set (raw or MiniLLM jsonl) into a kdbench eval jsonl"),
    "env": ("kdbench.provenance", "print versions, devices and the checkout, to paste into a bug report"),
}
ENTRIES = {"resolve": "resolve_main", "run": "run_main", "combine-tables": "combine_main", "lm-eval-table": "lm_eval_main",
           "env": "env_main"}


def extensions_dir() -> Path:
    """This environment's own folder for torch's JIT-built extensions (DeepSpeed's CPU
    `deepspeed_shm_comm` op): `<sys.prefix>/torch_extensions` when writable, else one per
    environment under the user's cache. torch's default (`~/.cache/torch_extensions`) is shared by
    every environment of a user, so two environments rebuild the op in turn, each build holding a
    lock that every training job waits on."""
    own = Path(sys.prefix) / "torch_extensions"
    if os.access(own if own.is_dir() else sys.prefix, os.W_OK):
        return own
    tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdbench" / f"torch_extensions-{tag}"


def usage() -> str:
    lines = ["usage: kdbench [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"kdbench {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kdbench: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))  # before DeepSpeed is imported
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, ENTRIES.get(name, "main"))
    try:
        return entry(rest) or 0
    except KDBenchError as exc:
        print(f"kdbench {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
