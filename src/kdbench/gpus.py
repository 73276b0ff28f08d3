"""GPU pinning for concurrent training jobs on one node.

Snakemake schedules jobs under `--resources gpu=N` but does not say which GPUs a job gets, so each
training job claims its own with exclusive `flock` locks on `<lock dir>/gpu<i>.lock` (released by the
kernel when the process ends, even on SIGKILL) and sets CUDA_VISIBLE_DEVICES before CUDA starts.
The GPU count comes from KDBENCH_GPUS or `nvidia-smi -L`, never from torch (which would initialise
CUDA and freeze the visible set).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdbench.errors import KDBenchError

LOCK_DIR = Path(os.environ.get("KDBENCH_GPU_LOCKS", "/tmp/kdbench-gpu-locks"))


def gpu_count() -> int:
    if "KDBENCH_GPUS" in os.environ:
        return int(os.environ["KDBENCH_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


@contextmanager
def claim(n: int, total: int, lock_dir: Path = LOCK_DIR, poll: float = 5.0,
          timeout: float | None = None) -> Iterator[list[int]]:
    """Hold `n` of the node's `total` GPUs exclusively; yields their ids. Waits while others hold them."""
    if n > total:
        raise KDBenchError(f"the run asks for {n} GPUs (training.gpus) but this node has {total}.")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        held = []
        for i in range(total):
            handle = open(lock_dir / f"gpu{i}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((i, handle))
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
        yield [i for i, _ in held]
    finally:
        for _, handle in held:
            handle.close()
