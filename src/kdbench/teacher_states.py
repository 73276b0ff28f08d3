"""`kdbench teacher-states <spec.yaml | run.yaml> <out.safetensors>`: the teacher's final hidden states on every
dataset micro-batch of a run, computed once and shared by the runs that read the same micro-batches.

Every dataset-source student of a pair at one seed (FKL, RKL, … each ± AdaKD) reads the same stream
of micro-batches (`kdbench.stream.Stream`: same data, tokenizer, prompt format, max length,
micro-batch size and seed), and the teacher is frozen, so the teacher's forward pass is the same
in all of them; on the default grid it is about half of a student's step. With `teacher_cache:
true` the workflow runs it once per such group (`teacher_states` rule) and each run looks its
micro-batches up here instead (`Cached`).

The file holds, per micro-batch, a digest of its tensors (input ids, attention mask, labels) and
the teacher's hidden states at the positions the loss reads (`losses.valid_positions`: response
tokens only, about a tenth of the rows), in the teacher's dtype. A run uses a stored micro-batch
only when its digest matches, and checks the stored states against a live forward on its first
hit and every `VERIFY_EVERY`-th after; a mismatch (another CPU or GPU kind, other threads) turns
the cache off for the rest of the run, with a warning. So a run's numbers are those of the live
teacher either way.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml

from kdbench.errors import KDBenchError

VERIFY_EVERY = 100  # a hit checked against the live teacher, besides the first
SPEC_KEYS = {"pair", "seed", "teacher", "teacher_dtype", "tokenizer", "prompt_format", "data", "max_length",
             "micro_batch_size", "micro_batches", "gpus"}


def spec(run: dict) -> dict | None:
    """What a resolved run's stream of dataset micro-batches and its teacher's forward on them depend
    on, and so what its states file is computed from; None where stored states cannot serve it: SFT,
    on-policy sources, a ZeRO-3 teacher, several ranks (each reads its own slice of the stream). It
    holds no method setting, so every run of a pair and seed on the same data has the same spec."""
    tr, method = run["training"], run["method"]
    if (not run["teacher"] or method["kd_ratio"] <= 0 or method["source"] != "off_policy"
            or run.get("teacher_zero3") or tr["gpus"] > 1):
        return None
    return {"pair": run["run"]["pair"], "seed": run["run"]["seed"], "teacher": run["teacher"],
            "teacher_dtype": run["teacher_dtype"], "tokenizer": run["tokenizer"], "prompt_format": run["prompt_format"],
            "data": run["data"]["train"], "max_length": tr["max_length"], "micro_batch_size": tr["micro_batch_size"],
            "micro_batches": tr["steps"] * tr["gradient_accumulation_steps"], "gpus": tr["gpus"]}


def states_path(run: dict) -> Path | None:
    """Where a resolved run's teacher states lie (None: see `spec`), named by its stream:
    <results>/teacher_states/<pair>/seed<seed>/mb<micro-batch>_len<max length>_<hash of the spec>.safetensors
    (the run's directory is <results>/runs/<pair>/<label>/seed<seed>)."""
    what, run_dir = spec(run), Path(run["run"]["dir"])
    if what is None or len(run_dir.parents) < 4 or run_dir.parents[2].name != "runs":  # a run outside a results tree
        return None
    key = f"mb{what['micro_batch_size']}_len{what['max_length']}_{hashlib.sha256(repr(what).encode()).hexdigest()[:10]}"
    return run_dir.parents[3] / "teacher_states" / what["pair"] / f"seed{what['seed']}" / f"{key}.safetensors"


def digest(mb: dict) -> bytes:
    """What identifies a micro-batch: its input ids, attention mask and labels, as stored."""
    h = hashlib.blake2b(digest_size=16)
    for key in ("input_ids", "attention_mask", "labels"):
        t = mb[key].cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench teacher-states",
                                 description="The teacher's hidden states on a stream of dataset micro-batches.")
    ap.add_argument("spec", type=Path, help="the stream's spec (the workflow writes it beside the states), or a run.yaml")
    ap.add_argument("out", type=Path, help="the .safetensors file to write")
    ap.add_argument("--micro-batches", type=int, default=None, help="how many (default: the spec's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (the training jobs' own)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.spec.is_file():
        raise KDBenchError(f"{args.spec}: no such file; the workflow's teacher_states_spec rule writes it.")
    what = yaml.safe_load(args.spec.read_text())
    if isinstance(what, dict) and "method" in what:  # a resolved run
        from kdbench.spec import Training

        what = spec({**what, "training": Training.resolve(what["training"])})
        if what is None:
            raise KDBenchError(f"{args.spec}: this run cannot use stored teacher states (they need a teacher, kd_ratio "
                               "> 0, the off_policy source, no ZeRO-3 teacher and at most one GPU).")
    missing = sorted(SPEC_KEYS - set(what)) if isinstance(what, dict) else sorted(SPEC_KEYS)
    if missing:
        raise KDBenchError(f"{args.spec}: not a teacher-states spec or run.yaml (missing {', '.join(missing)}).")
    write(what, args.out, args.micro_batches or what["micro_batches"])
    return 0


def write(what: dict, out: Path, n: int) -> None:
    """Run the teacher over the first `n` micro-batches of the spec's stream; write them atomically."""
    import os

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from kdbench.jsonl import read_jsonl
    from kdbench.losses import valid_positions
    from kdbench.models import LastHidden, load_causal_lm
    from kdbench.sft_data import collate, encode_example
    from kdbench.stream import Stream

    tokenizer = AutoTokenizer.from_pretrained(what["tokenizer"])
    device = torch.device("cpu")  # the job claims no GPU; a run on one sees the device differs and runs its teacher live
    teacher = LastHidden(load_causal_lm(what["teacher"], dtype=what["teacher_dtype"])).eval().requires_grad_(False)
    teacher.to(device)
    examples = [encode_example(r, tokenizer, what["max_length"], what["prompt_format"]) for r in read_jsonl(what["data"])]
    stream = Stream(examples, what["micro_batch_size"], what["seed"])
    rows, digests, offsets = [], [], [0]
    with torch.no_grad():
        for _ in range(n):
            mb = collate(next(stream), tokenizer.pad_token_id)
            hidden = teacher(mb["input_ids"].to(device), mb["attention_mask"].to(device))
            rows.append(valid_positions(hidden, mb["labels"].to(device))[0].cpu())
            digests.append(torch.frombuffer(bytearray(digest(mb)), dtype=torch.uint8))
            offsets.append(offsets[-1] + len(rows[-1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({"states": torch.cat(rows), "digests": torch.stack(digests), "offsets": torch.tensor(offsets)}, tmp,
              metadata={"teacher": what["teacher"], "threads": str(torch.get_num_threads()), "device": device.type})
    os.replace(tmp, out)
    size = sum(r.numel() * r.element_size() for r in rows) / 2**20
    print(f"kdbench: teacher states of {n} micro-batches ({offsets[-1]:,} rows, {size:.1f} MiB) → {out}", file=sys.stderr)


class Cached:
    """The teacher's hidden states for a micro-batch: from the states file where it holds this
    micro-batch (by digest), else from the live teacher. Counts hits, misses and checks (provenance)."""

    def __init__(self, path: Path, live, device):
        import torch
        from safetensors import safe_open

        self.path, self.live, self.device, self.on = path, live, device, True
        self.file = safe_open(str(path), framework="pt")
        meta = self.file.metadata() or {}
        offsets = self.file.get_tensor("offsets").tolist()
        self.index = {bytes(d.tolist()): (offsets[i], offsets[i + 1])
                      for i, d in enumerate(self.file.get_tensor("digests"))}
        self.states = self.file.get_slice("states")
        self.counts = {"hits": 0, "misses": 0, "checked": 0}
        if meta.get("threads") != str(torch.get_num_threads()) or meta.get("device") != device.type:
            self._off(f"it was computed with {meta.get('threads')} thread(s) on {meta.get('device')}, this run uses "
                      f"{torch.get_num_threads()} on {device.type}")

    def __call__(self, mb: dict) -> torch.Tensor:
        """(B, T, D) teacher hidden states of `mb` (on the device); rows the loss does not read are 0."""
        span = self.index.get(digest(mb)) if self.on else None
        if span is None:
            self.counts["misses"] += 1
            return self.live(mb["input_ids"], mb["attention_mask"])
        import torch

        from kdbench.losses import IGNORE, valid_positions

        self.counts["hits"] += 1
        rows = self.states[span[0]:span[1]].to(self.device)
        if (self.counts["hits"] - 1) % VERIFY_EVERY == 0:
            self.counts["checked"] += 1
            live = self.live(mb["input_ids"], mb["attention_mask"])
            if not torch.equal(valid_positions(live, mb["labels"])[0], rows):
                self._off("a stored micro-batch differs from the live teacher's forward")
                return live
        hidden = rows.new_zeros((*mb["input_ids"].shape, rows.shape[-1]))
        hidden[:, :-1][mb["labels"][:, 1:] != IGNORE] = rows
        return hidden

    def _off(self, why: str) -> None:
        self.on = False
        print(f"kdbench: not using the teacher states {self.path}: {why}; the teacher runs live for the rest "
              "of this run (same numbers, no time saved).", file=sys.stderr)

    def provenance(self) -> dict:
        return {"file": str(self.path), "used": self.on, **self.counts}
