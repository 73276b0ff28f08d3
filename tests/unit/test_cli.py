"""The console script's own options: `kdbench --version` and `kdbench env` (versions, devices, the
checkout), run as a user runs them."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys

import torch

import kdbench


def _kdbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, timeout=300)


def test_version_is_the_package_version() -> None:
    done = _kdbench("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"kdbench {kdbench.__version__}\n"
    assert kdbench.__version__ == importlib.metadata.version("kdbench")  # one source: pyproject reads it


def test_env_lists_versions_devices_and_the_checkout() -> None:
    done = _kdbench("env")
    assert done.returncode == 0, done.stderr
    lines = dict(re.findall(r"^- (.+?): (.*)$", done.stdout, re.M))
    assert done.stdout.startswith("Copy-paste the following information when reporting an issue:")
    assert lines["Python version"] == platform.python_version()
    assert lines["kdbench version"].startswith(f"{kdbench.__version__} (") and "git " in lines["kdbench version"]
    for package in ("torch", "transformers", "deepspeed", "lm-eval", "snakemake", "scipy"):
        assert lines[f"{package} version"] == importlib.metadata.version(package), package
    expected = "cuda:0 " if torch.cuda.is_available() else "cpu only"
    assert lines["Devices"].startswith(expected)
    assert re.fullmatch(r"\d+", lines["GPUs for the workflow (KDBENCH_GPUS or nvidia-smi)"])
    assert "unknown command" in _kdbench("envv").stderr
