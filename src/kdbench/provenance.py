"""Provenance of every number: code version, packages, device, seeds, method versions, and (from the
training job, `shapes`) the shape of the student and teacher actually loaded (`kdbench.models.model_shape`:
layers, hidden size, heads, vocabulary, parameter count), so a reader sees what was built."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

PACKAGES = ("kdbench", "torch", "transformers", "deepspeed", "tokenizers", "snakemake", "rouge-score",
            "lm-eval", "pandas", "peft", "datasets", "scipy", "numpy")


def git_state(root: Path) -> dict:
    """The commit of the checkout the code runs from, whether it had uncommitted changes, and how
    many files git does not track there (a new plugin, say; ignored files such as results/ are not
    counted): `dirty` is true for either."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        sha = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=all")
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None, "untracked": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None, "untracked": None}
    lines = status.stdout.splitlines()
    return {"sha": sha.stdout.strip(), "dirty": bool(lines), "untracked": sum(line.startswith("??") for line in lines)}


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


def devices() -> list[str]:
    """One line per accelerator torch sees (CUDA or MPS), or the CPU with its thread count."""
    if torch.cuda.is_available():
        lines = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                         f"{props.major}.{props.minor}")
        return lines
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return ["mps (Apple GPU)"]
    return [f"cpu only ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})"]


def environment() -> list[tuple[str, str]]:
    """What `kdbench env` prints: platform, Python, the kdbench checkout, package versions, devices."""
    from kdbench import __version__
    from kdbench.gpus import gpu_count

    root = Path(__file__).resolve().parents[2]
    git = git_state(root)
    checkout = f"{Path(__file__).resolve().parent}" + (
        f", git {git['sha'][:12]}{' (uncommitted changes)' if git['dirty'] else ''}" if git["sha"] else "")
    versions = package_versions()
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA build"
    rows = [("Platform", platform.platform()), ("Python version", platform.python_version()),
            ("kdbench version", f"{__version__} ({checkout})")]
    rows += [(f"{name} version", version or "not installed") for name, version in versions.items() if name != "kdbench"]
    rows += [("PyTorch build", cuda), ("Devices", "; ".join(devices())),
             ("GPUs for the workflow (KDBENCH_GPUS or nvidia-smi)", str(gpu_count()))]
    return rows


def env_main(argv: list[str] | None = None) -> int:
    """`kdbench env`: versions, devices and the checkout, as `trl env` prints them for bug reports."""
    import argparse

    argparse.ArgumentParser(prog="kdbench env", description=env_main.__doc__).parse_args(argv)
    print("Copy-paste the following information when reporting an issue:\n")
    for key, value in environment():
        print(f"- {key}: {value}")
    return 0


def collect(root: Path, device: torch.device, **extra) -> dict:
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(root),
            "packages": package_versions(), "device": device_info(device), **extra}
