"""The DAG is light: `snakemake -n` and `kdbench check` never import torch or transformers (the
checks that need them run in kdbench.preflight's child process, before the first job)."""

import re
import sys

from tests.conftest import run_cli, workflow_copy

HEAVY = ("torch", "transformers", "deepspeed", "peft")


def imported(stderr: str) -> set[str]:
    """The top-level packages `python -X importtime` reports as imported."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.M)}


def test_a_dry_run_of_the_default_grid_imports_no_torch(tmp_path):
    root = workflow_copy(tmp_path)
    done = run_cli(sys.executable, "-X", "importtime", "-m", "snakemake", "-n", cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^total\s+\d+$", done.stdout, re.M)  # it planned the grid
    modules = imported(done.stderr)
    assert "kdbench" in modules and "snakemake" in modules
    assert modules.isdisjoint(HEAVY), sorted(modules & set(HEAVY))


def test_kdbench_check_imports_no_torch_and_still_checks_model_configs(tmp_path):
    """`kdbench check` runs the transformers checks in a child process: its own process stays light,
    and a misspelt model config key is still found (here the cache cannot answer: a new file)."""
    root = workflow_copy(tmp_path)
    probe = ("import sys; from kdbench.check import main; main(sys.argv[1:]); "
             f"print('heavy:', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = run_cli(sys.executable, "-c", probe, "config/tiny.yaml", cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "heavy: []" in done.stdout and "student: 2 layers × 64 hidden" in done.stdout
    pair = root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml"
    pair.write_text(pair.read_text().replace("n_layer:", "n_layerz:", 1))
    bad = run_cli(sys.executable, "-m", "kdbench.cli", "check", "config/tiny.yaml", cwd=root, timeout=600)
    assert bad.returncode == 1 and "config.n_layerz': transformers' GPT2Config" in bad.stderr
    dry = run_cli(sys.executable, "-m", "snakemake", "-n", cwd=root, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]  # a dry run plans without it; a real run stops in onstart
    real = run_cli(sys.executable, "-m", "snakemake", "--cores", "1", "results/tokenizer", cwd=root, timeout=300)
    assert real.returncode != 0 and "n_layerz" in real.stderr + real.stdout
    assert not (root / "results/tokenizer").exists()  # stopped before any job
