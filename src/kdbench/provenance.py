"""Provenance of every number: code version, packages, device, seeds, method versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

PACKAGES = ("kdbench", "torch", "transformers", "deepspeed", "tokenizers", "snakemake", "rouge-score",
            "lm-eval", "pandas", "peft")


def git_state(root: Path) -> dict:
    """The commit of the checkout the code runs from, and whether it had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "python": platform.python_version(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "scheduler_gpus": os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def collect(root: Path, device: torch.device, **extra) -> dict:
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(root),
            "packages": package_versions(), "device": device_info(device), **extra}
