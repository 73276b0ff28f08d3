"""Shared fixtures: the repository root, the method plugins, and a tiny pair built from scratch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Every process the suite starts can take a test-only fault (tests/faults.py, kdbench.testhooks);
# a test switches one on with that file's variables.
os.environ["KDBENCH_TEST_HOOKS"] = str(REPO / "tests" / "faults.py")

# Test tiers: a test's tier is the folder it lives in (tests/<tier>/...), marked here, so a new test
# needs no marker of its own. Bare `pytest` runs DEFAULT_TIER; CI runs every tier but gpu.
TIERS = ("unit", "smoke", "workflow", "cluster", "gpu")
DEFAULT_TIER = "unit"
CI_SELECTION = "not gpu"


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, which reads these markers
def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(tests):
            continue
        tier = item.path.relative_to(tests).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.path}: a test lives in a tier folder, tests/<{'|'.join(TIERS)}>/; "
                                    "move it into the folder of its tier.")
        item.add_marker(tier)


def pytest_ignore_collect(collection_path, config):
    """Bare `pytest` does not even import the other tiers' modules (their imports cost seconds)."""
    tests = Path(__file__).parent
    if _bare(config) and collection_path.parent == tests and collection_path.is_dir() \
            and collection_path.name != DEFAULT_TIER:
        return True
    return None


def _bare(config) -> bool:
    """Neither a marker expression nor a path was given: pytest collects its testpaths."""
    return not config.option.markexpr and config.args_source == pytest.Config.ArgsSource.TESTPATHS


def pytest_report_header(config):
    if _bare(config):
        return (f"kdbench: bare `pytest` runs the {DEFAULT_TIER} tier only; `pytest -m \"{CI_SELECTION}\"` runs "
                "what CI runs, `pytest -m <tier>` one tier, `pytest <path>` the tests named.")
    return None


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def plugins():
    from kdbench.registry import discover

    return discover(REPO / "methods")


def plan_of(policy, student_logp, teacher_logp, progress, labels=None):
    """A token policy's plan for one chunk of tokens, as the harness asks for it."""
    return policy.plan(policy.token_stats(student_logp, teacher_logp, labels), progress)


def workflow_copy(dest: Path) -> Path:
    """The workflow as a fresh clone has it (tracked and new files; no results), under `dest`."""
    for name in ("Snakefile", "workflows", "config", "methods", "evaluation"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def grid_config(root: Path, tables: list[dict] | None = None, **axes) -> dict:
    """config/tiny.yaml with its tables replaced: by `tables`, or by one table `main` over `axes`
    (pairs, methods, seeds, sets). A whole `tables` list is needed because Snakemake merges a
    --configfile into config/tiny.yaml, whose own tables would otherwise stay."""
    import yaml

    cfg = yaml.safe_load((root / "config/tiny.yaml").read_text())
    cfg["tables"] = tables or [{"name": "main", **axes}]
    return cfg


def prepare_run(root: Path, pair: str, label: str, edit_pair, n_train: int = 60) -> dict:
    """One tiny run ready to train, made with the `kdbench` CLI as a user would: the default GPT-2
    pair edited by `edit_pair(spec)` and saved as `pair`, generated data, tokenizer, both initial
    models, and `results/runs/{pair}/{label}/seed1/run.yaml`. Returns the resolved run."""
    import yaml

    spec = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    edit_pair(spec)
    (root / f"config/pairs/{pair}.yaml").write_text(yaml.safe_dump(spec))
    grid = {**grid_config(root, pairs=[pair], methods=[label]), "teacher_cache": False}  # the run alone: no states
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    for cmd in (["data", "--out", "results/data", "--n-train", str(n_train), "--n-valid", "5", "--n-eval", "5"],
                ["tokenizer", "--data", "results/data/train.jsonl", "--vocab-size", "400", "--out", "results/tokenizer"],
                *[["init-model", "--pair", f"config/pairs/{pair}.yaml", "--role", role, "--tokenizer",
                   "results/tokenizer", "--out", f"results/models/{pair}/{role}-init"] for role in ("teacher", "student")]):
        done = run_cli("kdbench", *cmd, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
    resolved = run_cli("kdbench", "resolve", "grid.yaml", pair, label, "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    run_dir = root / f"results/runs/{pair}/{label}/seed1"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(resolved.stdout)
    return yaml.safe_load(resolved.stdout)


def max_abs(a: dict, b: dict) -> tuple[str, float]:
    """The tensor name with the largest absolute difference between two state dicts, and that difference."""
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}
    worst = max(diffs, key=diffs.get)
    return worst, diffs[worst]


def assert_same_sgd_step(start: dict, whole: dict, accumulated: dict) -> None:
    """One SGD step (lr 1: the update is the gradient) must not depend on the micro-batching."""
    assert whole.keys() == accumulated.keys() == start.keys()
    _, moved = max_abs(whole, start)
    assert moved > 1e-3, f"the step moved the weights by only {moved:.3g}; the comparison would be vacuous"
    worst, diff = max_abs(whole, accumulated)
    assert diff <= 1e-5, f"{worst}: max |Δ| {diff:.3g} between the two micro-batchings (step size {moved:.3g})"


def assert_same_adamw_step(start: dict, whole: dict, accumulated: dict, lr: float, decay: float) -> float:
    """One AdamW step must not depend on the micro-batching wherever it is not eps-dominated; returns
    the largest weight change. AdamW's first step: w1 = w0·(1 − lr·wd) − lr·g/(|g| + eps), so
    |g| > 9·eps ⇔ |normalised step| > 0.9; entries below that amplify fp32 noise and may differ,
    but at most 1e-4 of all weights."""
    assert whole.keys() == accumulated.keys() == start.keys()
    moved, forgiven, total = 0.0, 0, 0
    for k, w0 in start.items():
        steps = [(w0 * (1 - lr * decay) - w[k]) / lr for w in (whole, accumulated)]
        determined = (steps[0].abs() > 0.9) | (steps[1].abs() > 0.9)
        diff = (whole[k] - accumulated[k]).abs()
        assert not (determined & (diff > 1e-5)).any(), (
            f"{k}: max |Δ| {diff[determined].max().item():.3g} on entries whose step is not eps-dominated")
        forgiven += int(((diff > 1e-5) & ~determined).sum())
        total += w0.numel()
        moved = max(moved, (whole[k] - w0).abs().max().item())
    assert forgiven <= 1e-4 * total, f"{forgiven} of {total} eps-dominated weights differ by more than 1e-5"
    return moved


def local_arc_task(root: Path) -> Path:
    """lm-eval's own arc_easy (multiple choice, acc / acc_norm) on a three-question local jsonl,
    ``root/mc/arc_local.jsonl``: a YAML ``root/mc/arc_local.yaml`` that includes the stock one and
    points its dataset at the file (relative to ``root``), as evaluation/tasks/README.md describes."""
    import json

    import lm_eval
    import yaml

    questions = [("What does a dog do?", ["runs in the park", "sings opera", "files taxes"], "A"),
                 ("Which is a colour?", ["seven", "red", "Tuesday"], "B"),
                 ("What jumps over the lazy dog?", ["a table", "the moon", "the quick brown fox"], "C")]
    (root / "mc").mkdir(parents=True, exist_ok=True)
    records = [{"id": f"q{i}", "question": q, "choices": {"text": c, "label": ["A", "B", "C"]}, "answerKey": k}
               for i, (q, c, k) in enumerate(questions)]
    (root / "mc" / "arc_local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    task = root / "mc" / "arc_local.yaml"
    task.write_text(yaml.safe_dump({
        "include": str(Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"), "task": "arc_local",
        "tag": [], "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": "mc/arc_local.jsonl"}},
        "training_split": None, "validation_split": None, "test_split": "test"}))
    return task


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
