"""GPU pinning: every job that puts a model on a GPU (training, evaluation, lm-eval, generation).

Snakemake schedules jobs under `--resources gpu=N` but does not say which GPUs a job gets, so each
job claims its own with exclusive `flock` locks on `<lock dir>/gpu<id>.lock` (released by the
kernel when the process ends, even on SIGKILL) and sets CUDA_VISIBLE_DEVICES before CUDA starts.

Which GPUs a job may claim (`gpu_pool`):
- CUDA_VISIBLE_DEVICES already set (by a scheduler such as SLURM, or by the user for the whole
  run): those and no others. A job given exactly what it asks for (a SLURM job of the plugin:
  `--gpus=N`) keeps CUDA_VISIBLE_DEVICES as it is; several jobs sharing one allocation (a local
  `snakemake` inside `salloc`) each narrow it to their own share of it.
- otherwise every GPU of the node, counted from KDBENCH_GPUS or `nvidia-smi -L`, never from torch
  (which would initialise CUDA and freeze the visible set).
Inside a scheduler allocation the locks live in a folder of that allocation, so jobs of other
allocations on the same node (whose device ids repeat under cgroups: each sees its GPU as 0) never
wait on each other.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kdbench.errors import KDBenchError

LOCK_DIR = Path(os.environ.get("KDBENCH_GPU_LOCKS", "/tmp/kdbench-gpu-locks"))
SCHEDULER_JOBS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")  # set inside a SLURM / PBS / LSF allocation


def gpu_count() -> int:
    if "KDBENCH_GPUS" in os.environ:
        return int(os.environ["KDBENCH_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def gpu_pool(environ: Mapping[str, str] | None = None) -> tuple[list[str], Path, str]:
    """The GPU ids a job may claim, the folder of their locks, and where they come from (for messages)."""
    environ, lock_dir = os.environ if environ is None else environ, LOCK_DIR
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return [str(i) for i in range(gpu_count())], lock_dir, "this node"
    ids = [g.strip() for g in given.split(",") if g.strip()]
    if ids and ids[0].startswith("-"):  # "-1": CUDA sees none
        ids = []
    allocation = next((f"{var.split('_')[0].lower()}-{environ[var]}" for var in SCHEDULER_JOBS if environ.get(var)), None)
    return ids, lock_dir / allocation if allocation else lock_dir, f"CUDA_VISIBLE_DEVICES={given}"


@contextmanager
def claim(n: int, gpus: list[str], lock_dir: Path = LOCK_DIR, poll: float = 5.0, timeout: float | None = None,
          where: str = "this node", what: str = "the job") -> Iterator[list[str]]:
    """Hold `n` of the GPUs `gpus` exclusively; yields their ids. Waits while others hold them."""
    if n > len(gpus):
        raise KDBenchError(f"{what} asks for {n} GPUs but {where} gives {len(gpus)}; lower the count, or run "
                           "it where it gets that many (--resources gpu=… on one node, the job's GPUs on a cluster).")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        held = []
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((gpu, handle))
            if len(held) == n:
                break
        if len(held) == n:
            break
        for _, handle in held:
            handle.close()
        if deadline is not None and time.monotonic() > deadline:
            raise KDBenchError(f"no {n} free GPUs within {timeout} s (locks in {lock_dir}).")
        time.sleep(poll)
    try:
        yield [gpu for gpu, _ in held]
    finally:
        for _, handle in held:
            handle.close()


@contextmanager
def pinned(n: int, what: str = "the job", poll: float = 5.0, timeout: float | None = None) -> Iterator[list[str]]:
    """Run the body on `n` GPUs of its own: claimed from `gpu_pool()` and made the only visible ones
    (CUDA_VISIBLE_DEVICES, restored afterwards). Yields their ids; [] where there is no GPU (the
    body runs on the CPU). Call it before anything initialises CUDA."""
    gpus, lock_dir, where = gpu_pool()
    if not gpus or n < 1:
        yield []
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with claim(n, gpus, lock_dir, poll=poll, timeout=timeout, where=where, what=what) as held:
        if held != gpus or before is None:  # only ever narrows what the job was given
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
        try:
            yield held
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
