"""`kdbench teacher-states <spec.yaml | run.yaml> <out.safetensors>`: the teacher's final hidden states on every
dataset micro-batch of a run, computed once and shared by the runs that read the same micro-batches.

Every dataset-source student of a pair at one seed (FKL, RKL, … each ± AdaKD) reads the same stream
of micro-batches (`kdbench.stream.Stream`: same data, tokenizer, prompt format, max length,
micro-batch size and seed), and the teacher is frozen, so the teacher's forward pass is the same
in all of them; on the default grid it is about half of a student's step. With `teacher_cache:
true` the workflow runs it once per such group (`teacher_states` rule) and each run looks its
micro-batches up here instead (`Cached`).

Where it runs: on the device its students train on. A pair with `training.gpus` >= 1 gets a job that
claims one GPU (`kdbench.gpus.pinned`) and runs the teacher there in the pair's teacher dtype; a CPU
pair's job runs on the CPU with the train jobs' thread count. With several ranks (`training.gpus` >
1) the job runs the teacher over every rank's share of the stream, one after the other, into one
file, and each rank looks its own micro-batches up in it.

The file holds, per micro-batch, a digest of its tensors (input ids, attention mask, labels), the
teacher's hidden states at the positions the loss reads (`losses.valid_positions`: response tokens
only, about a tenth of the rows), in the teacher's dtype, and a digest of those stored states. What
a run trusts is verified:
- whole at open: the file parses, its tables agree with each other and with the file's size; a file
  that does not (truncated, unreadable, from an older kdbench) is removed, and the job stops with
  a message: rerunning the workflow recomputes it (the `teacher_states` rule's output is missing);
- each stored micro-batch on its use, against its content digest: a mismatch (a damaged or edited
  file) is handled the same way, naming the file and the micro-batch;
- against the live teacher on the first hit and every `VERIFY_EVERY`-th after: on the CPU the same
  bits (the same threads and kernels give them), on a GPU within `GPU_TOLERANCE` of the teacher's
  dtype (another GPU model, or other kernels, round differently); a difference beyond that turns the
  cache off for the rest of the run, with a warning, and the teacher runs live.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml

from kdbench.errors import KDBenchError

VERIFY_EVERY = 100  # a hit checked against the live teacher, besides the first
# On a GPU, the largest relative difference (Frobenius norm of the micro-batch's stored rows) between
# the stored states and the live teacher's that is rounding, per teacher dtype: bf16 keeps 8 bits of
# mantissa (2^-8 = 3.9e-3 per value), and differences of a few units in the last place accumulate over
# the layers; fp32 allows for TF32 matmuls (10 bits).
GPU_TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3, "fp32": 5e-3}
SPEC_KEYS = {"pair", "seed", "teacher", "teacher_dtype", "tokenizer", "prompt_format", "data", "max_length",
             "micro_batch_size", "micro_batches", "gpus"}
TABLES = ("states", "digests", "state_digests", "offsets")


def spec(run: dict) -> dict | None:
    """What a resolved run's stream of dataset micro-batches and its teacher's forward on them depend
    on, and so what its states file is computed from; None where stored states cannot serve it: SFT,
    on-policy sources, a ZeRO-3 teacher (partitioned over the ranks: no single device holds it), a
    cross-tokenizer run (its teacher reads its own tokens, `vocab_map` in the run). It
    holds no method setting, so every run of a pair and seed on the same data has the same spec;
    `gpus` says where the job runs (a GPU from 1 on) and how many ranks' shares of the stream it holds."""
    if unservable(run):
        return None
    tr = run["training"]
    return {"pair": run["run"]["pair"], "seed": run["run"]["seed"], "teacher": run["teacher"],
            "teacher_dtype": run["teacher_dtype"], "tokenizer": run["tokenizer"], "prompt_format": run["prompt_format"],
            "data": run["data"]["train"], "max_length": tr["max_length"], "micro_batch_size": tr["micro_batch_size"],
            "micro_batches": tr["steps"] * tr["gradient_accumulation_steps"], "gpus": tr["gpus"]}


def unservable(run: dict) -> str | None:
    """Why stored teacher states cannot serve a resolved run, in words (None: they can)."""
    method = run["method"]
    if not run["teacher"] or method["kd_ratio"] <= 0:
        return "it trains without a teacher (kd_ratio 0: SFT)"
    if method["source"] != "off_policy":
        return (f"its micro-batches come from the {method['source']} source, sampled while it trains, so no "
                "stored states can match them")
    if run.get("teacher_zero3"):
        return "its teacher is a ZeRO-3 engine (teacher.zero3), partitioned over the ranks, so no single device holds it"
    if run.get("vocab_map"):
        return "it is a cross-tokenizer run: its teacher reads its own tokens, not the student's micro-batches"
    return None


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


def content_digest(rows) -> bytes:
    """What a stored micro-batch's states are: a digest of their shape, dtype and bytes."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(rows.shape)} {rows.dtype}".encode())
    h.update(rows.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench teacher-states",
                                 description="The teacher's hidden states on a stream of dataset micro-batches.")
    ap.add_argument("spec", type=Path, help="the stream's spec (the workflow writes it beside the states), or a run.yaml")
    ap.add_argument("out", type=Path, help="the .safetensors file to write")
    ap.add_argument("--micro-batches", type=int, default=None, help="how many per rank (default: the spec's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (the training jobs' own)")
    args = ap.parse_args(argv)
    import torch

    from kdbench.gpus import pinned

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.spec.is_file():
        raise KDBenchError(f"{args.spec}: no such file; the workflow's teacher_states_spec rule writes it.")
    what = yaml.safe_load(args.spec.read_text())
    if isinstance(what, dict) and "method" in what:  # a resolved run
        from kdbench.spec import read_run

        what = spec(read_run(what, str(args.spec)))
        if what is None:
            raise KDBenchError(f"{args.spec}: this run cannot use stored teacher states (they need a teacher, kd_ratio "
                               "> 0, the off_policy source and no ZeRO-3 teacher).")
    missing = sorted(SPEC_KEYS - set(what)) if isinstance(what, dict) else sorted(SPEC_KEYS)
    if missing:
        raise KDBenchError(f"{args.spec}: not a teacher-states spec or run.yaml (missing {', '.join(missing)}).")
    with pinned(min(what["gpus"], 1), "the teacher-states job") as ids:  # where its students train (kdbench.gpus)
        device = torch.device("cuda" if ids and torch.cuda.is_available() else "cpu")
        write(what, args.out, args.micro_batches or what["micro_batches"], device)
    return 0


def write(what: dict, out: Path, n: int, device=None) -> None:
    """Run the teacher (on `device`, default the CPU) over the first `n` micro-batches of every rank's
    share of the spec's stream; write them atomically with their digests."""
    import os

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from kdbench.jsonl import read_jsonl
    from kdbench.losses import valid_positions
    from kdbench.models import LastHidden, check_head, load_causal_lm
    from kdbench.prompts import check_prompt_room, template_tokens
    from kdbench.sft_data import collate, encode_example
    from kdbench.stream import Stream

    device, where = device or torch.device("cpu"), f"config/pairs/{what['pair']}.yaml"
    tokenizer = AutoTokenizer.from_pretrained(what["tokenizer"])
    check_prompt_room(template_tokens(tokenizer, what["prompt_format"]), {"training.max_length": what["max_length"]},
                      where, f"the run's tokenizer ({what['tokenizer']})")
    teacher = LastHidden(load_causal_lm(what["teacher"], dtype=what["teacher_dtype"])).eval().requires_grad_(False)
    teacher.to(device)
    check_head(teacher.lm, where, "teacher")  # the students apply its head to these states
    examples = [encode_example(r, tokenizer, what["max_length"], what["prompt_format"]) for r in read_jsonl(what["data"])]
    world = max(what["gpus"], 1)
    rows, digests, offsets = [], [], [0]
    with torch.no_grad():
        for rank in range(world):  # each data-parallel rank's own micro-batches (kdbench.stream.Stream)
            stream = Stream(examples, what["micro_batch_size"], what["seed"], rank=rank, world=world)
            for _ in range(n):
                mb = collate(next(stream), tokenizer.pad_token_id)
                hidden = teacher(mb["input_ids"].to(device), mb["attention_mask"].to(device))
                rows.append(valid_positions(hidden, mb["labels"].to(device))[0].cpu())
                digests.append(digest(mb))
                offsets.append(offsets[-1] + len(rows[-1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    as_bytes = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in digests]
    contents = [torch.frombuffer(bytearray(content_digest(r)), dtype=torch.uint8) for r in rows]
    save_file({"states": torch.cat(rows), "digests": torch.stack(as_bytes), "state_digests": torch.stack(contents),
               "offsets": torch.tensor(offsets)}, tmp,
              metadata={"teacher": what["teacher"], "threads": str(torch.get_num_threads()), "device": device.type,
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "dtype": what["teacher_dtype"], "ranks": str(world)})
    os.replace(tmp, out)
    size = sum(r.numel() * r.element_size() for r in rows) / 2**20
    print(f"kdbench: teacher states of {len(rows)} micro-batches ({world} rank(s), {offsets[-1]:,} rows, {size:.1f} "
          f"MiB) on {device} → {out}", file=sys.stderr)


class Cached:
    """The teacher's hidden states for a micro-batch: from the states file where it holds this
    micro-batch (by digest), else from the live teacher. Counts hits, misses and checks (provenance).
    A damaged file stops the run and is removed (`_damaged`); see the module docstring."""

    def __init__(self, path: Path, live, device, dtype: str = "fp32"):
        import torch

        self.path, self.live, self.device, self.on = Path(path), live, device, True
        self.tolerance = None if device.type == "cpu" else GPU_TOLERANCE.get(dtype, GPU_TOLERANCE["fp32"])
        self.counts = {"hits": 0, "misses": 0, "checked": 0}
        meta = self._open()
        threads = str(torch.get_num_threads())
        if meta.get("device") != device.type or (device.type == "cpu" and meta.get("threads") != threads):
            self._off(f"it was computed with {meta.get('threads')} thread(s) on {meta.get('device')}, this run uses "
                      f"{torch.get_num_threads()} on {device.type}")

    def _open(self) -> dict:
        """Open the file and check it whole: its tables are there and agree with each other and with
        the file's size (a truncated file does not). Returns its metadata."""
        import json
        import struct

        from safetensors import safe_open

        try:
            with open(self.path, "rb") as f:
                header_size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(header_size))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if self.path.stat().st_size != 8 + header_size + end:
                raise ValueError(f"{self.path.stat().st_size:,} bytes, where its header describes "
                                 f"{8 + header_size + end:,}")
            if set(TABLES) - set(header):
                raise ValueError(f"no {', '.join(sorted(set(TABLES) - set(header)))} (written by an older kdbench)")
            self.file = safe_open(str(self.path), framework="pt")
            offsets = self.file.get_tensor("offsets").tolist()
            digests, contents = self.file.get_tensor("digests"), self.file.get_tensor("state_digests")
            self.states = self.file.get_slice("states")
            n_rows = self.states.get_shape()[0]
            if not (len(offsets) == len(digests) + 1 == len(contents) + 1 and offsets[0] == 0 and offsets[-1] == n_rows
                    and all(a <= b for a, b in zip(offsets, offsets[1:]))):
                raise ValueError("its offsets, digests and states do not agree")
        except Exception as exc:  # any unreadable file: one message, and the workflow recomputes it
            raise self._damaged(f"it is unreadable ({type(exc).__name__}: {exc})") from None
        self.index = {bytes(d.tolist()): (i, offsets[i], offsets[i + 1]) for i, d in enumerate(digests)}
        self.contents = [bytes(c.tolist()) for c in contents]
        return self.file.metadata() or {}

    def __call__(self, mb: dict) -> torch.Tensor:
        """(B, T, D) teacher hidden states of `mb` (on the device); rows the loss does not read are 0."""
        span = self.index.get(digest(mb)) if self.on else None
        if span is None:
            self.counts["misses"] += 1
            return self.live(mb["input_ids"], mb["attention_mask"])
        import torch

        from kdbench.losses import valid_positions

        i, start, end = span
        rows = self.states[start:end]
        if content_digest(rows) != self.contents[i]:
            raise self._damaged(f"its stored micro-batch {i} (rows {start}-{end}) differs from the digest written with it")
        rows = rows.to(self.device)
        self.counts["hits"] += 1
        if (self.counts["hits"] - 1) % VERIFY_EVERY == 0:
            self.counts["checked"] += 1
            live = self.live(mb["input_ids"], mb["attention_mask"])
            if not self._agrees(valid_positions(live, mb["labels"])[0], rows):
                self._off(f"its micro-batch {i} differs from the live teacher's forward"
                          + (f" beyond the GPU tolerance {self.tolerance}" if self.tolerance else ""))
                return live
        (b, t), width = mb["input_ids"].shape, rows.shape[-1]
        where = valid_positions(torch.arange(b * t, device=rows.device).view(b, t), mb["labels"])[0]  # flat row ids
        hidden = rows.new_zeros((b * t, width))
        hidden[where] = rows
        return hidden.view(b, t, width)

    def _agrees(self, live, stored) -> bool:
        """The same bits on the CPU; on a GPU, within the tolerance of the teacher's dtype."""
        import torch

        if self.tolerance is None or live.shape != stored.shape:
            return torch.equal(live, stored)
        diff = torch.linalg.vector_norm((live - stored).float()) / torch.linalg.vector_norm(live.float()).clamp_min(1e-12)
        return bool(diff <= self.tolerance)

    def _damaged(self, why: str) -> KDBenchError:
        """Remove the damaged file (so that the workflow's teacher_states rule computes it again) and
        return the error that stops the run."""
        self.path.unlink(missing_ok=True)
        return KDBenchError(f"the teacher states {self.path} are damaged: {why}. The file has been removed; rerun the "
                            "workflow (it recomputes the file, then this run, which resumes from its last checkpoint).")

    def _off(self, why: str) -> None:
        self.on = False
        print(f"kdbench: not using the teacher states {self.path}: {why}; the teacher runs live for the rest "
              "of this run (same numbers, no time saved).", file=sys.stderr)

    def provenance(self) -> dict:
        return {"file": str(self.path), "used": self.on, **self.counts}

