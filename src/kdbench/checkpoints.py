"""Periodic checkpoints and exact resume of a training run.

A checkpoint is DeepSpeed's own (`engine.save_checkpoint`: model, optimizer and LR-scheduler states,
sharded as ZeRO requires) plus kdbench's client state (next step, data position, token-policy
state) and each rank's RNG states (`kdbench_rng_rank<R>.pt`: Python's `random`, torch's CPU
generator and, on a GPU, the CUDA generator of the rank's device, which dropout and sampling draw
from there), under `<run dir>/checkpoints/<fingerprint>/step<N>/`. The fingerprint hashes the
resolved run config, so a changed config never resumes from an old run's checkpoint. A checkpoint
counts only once its `kdbench_complete.json` marker exists (written last); a truncated or corrupted
one is reported and skipped in favour of the previous good one. Every file is verified to load with
`torch.load(weights_only=True)` before DeepSpeed (which unpickles) is allowed to read it; the only
classes allowed beyond tensors and containers are the three plain-data DeepSpeed classes that its
ZeRO 1-3 optimizer states hold (`DS_CHECKPOINT_CLASSES`).

A LoRA student's checkpoint holds its trainable weights (the adapters) and their optimizer states,
not the frozen base (DeepSpeed's `exclude_frozen_parameters`): the base is the run's start model,
which the run config names and the fingerprint covers, and every resume loads it from there first
(about 15 GB saved per checkpoint of a Qwen2-7B LoRA teacher SFT). An output head tied to the input
embeddings (GPT-2) stays in: DeepSpeed filters by parameter, and a tied weight is no parameter of its own.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import torch

from kdbench import atomic

MARKER = "kdbench_complete.json"
RNG_FILE = "kdbench_rng_rank{rank}.pt"


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: Python's, torch's CPU generator and, on cuda, `device`'s generator."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        if "cuda" not in state:
            print("kdbench: this checkpoint was written without a GPU, so the CUDA generator starts afresh; "
                  "the resumed run is not bit-for-bit the uninterrupted one.", file=sys.stderr)
        else:
            torch.cuda.set_rng_state(state["cuda"], device)


def fingerprint(run: dict) -> str:
    """What identifies a run's training trajectory: its resolved config (paths included: inside the
    checkout they are relative to it, kdbench.config.portable, so a copied checkout resumes too)."""
    return hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Checkpoints:
    def __init__(self, run_dir: Path, run: dict, keep: int):
        self.root = Path(run_dir) / "checkpoints" / fingerprint(run)
        self.keep = keep

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step*") if (p / MARKER).is_file())

    def save(self, engine, step: int, client_state: dict) -> None:
        tag = f"step{step:08d}"
        # Every rank's RNG states, before DeepSpeed's closing barrier (and so before rank 0's marker).
        (self.root / tag).mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(engine.device), self.root / tag / RNG_FILE.format(rank=engine.global_rank))
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=_has_frozen(engine.module))
        if engine.global_rank == 0:
            atomic.write_json(self.root / tag / MARKER, {"step": step})
            for old in self.complete()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, engine) -> dict | None:
        """Load the newest good checkpoint into the engine and this rank's RNG states into the
        generators; its client state, or None to start fresh."""
        for ckpt in reversed(self.complete()):
            try:
                with torch.serialization.safe_globals(_ds_checkpoint_classes()):
                    for f in ckpt.glob("*.pt"):
                        torch.load(f, map_location="cpu", weights_only=True)
                rng = torch.load(ckpt / RNG_FILE.format(rank=engine.global_rank), weights_only=True)
                _, client = engine.load_checkpoint(str(self.root), tag=ckpt.name,
                                                   load_module_strict=not _has_frozen(engine.module))
                if client is None:
                    raise RuntimeError("DeepSpeed found no checkpoint there")
                set_rng_state(rng, engine.device)
                return client
            except Exception as exc:  # a damaged checkpoint must not end the run: fall back
                print(f"kdbench: checkpoint {ckpt} is unreadable ({type(exc).__name__}: {exc}); "
                      "trying the previous one.", file=sys.stderr)
        return None


def _has_frozen(module: torch.nn.Module) -> bool:
    """Whether `module` has frozen weights (a LoRA model's base), which its checkpoints leave out."""
    return any(not p.requires_grad for p in module.parameters())


def _ds_checkpoint_classes() -> list:
    """What DeepSpeed's ZeRO 1-3 optimizer states pickle besides tensors (checked with
    `torch.serialization.get_unsafe_globals_in_checkpoint` on ZeRO 1, 2, 3, fp32 and bf16): the ZeRO
    stage enum, the static loss scaler's settings and ZeRO-1/2's fragment addresses (two ints)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]
