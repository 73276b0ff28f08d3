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


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
