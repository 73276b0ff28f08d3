"""`kdbench train <run.yaml>`: one distillation (or SFT) run on the DeepSpeed engine.

A recipe in three parts, read top to bottom in `train`:
- `build_session`: load the resolved run (typed: kdbench.spec.Training), the models and the method;
  hand the student, optimizer and schedule to `deepspeed.initialize` (accelerator `cpu` on a CPU
  machine, `cuda` on GPUs, same code); tokenise the data; resume at the newest good checkpoint.
- `train_step`, per optimizer step: gather the micro-batches, count the step's response tokens
  globally, and for each micro-batch run the teacher without grad, the student with grad,
  `kdbench.losses.objective`, backward and the engine step; feed the step's KD loss to the token
  policy; log; checkpoint.
- `finish`: save the student in Hugging Face format with `provenance.json`.
Fault injection reaches the loop only through `kdbench.testhooks` points (`train.step`,
`train.micro_batch`), which do nothing outside the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from tqdm import tqdm

from kdbench import atomic, losses, provenance, testhooks
from kdbench.checkpoints import Checkpoints
from kdbench.errors import KDBenchError
from kdbench.gpus import pinned
from kdbench.policies import Composed
from kdbench.prompts import check_prompt_room, template_tokens
from kdbench.registry import load_method_file
from kdbench.sft_data import collate, encode_example
from kdbench.sources import make_source, sample_responses
from kdbench.stream import Stream
from kdbench.spec import Training, accumulation_steps, read_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench train", description="Train one resolved run (run.yaml).")
    ap.add_argument("run_yaml", type=Path)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cpu-ranks", type=int, default=0, help="data-parallel ranks on the CPU (gloo) through the "
                    "DeepSpeed launcher, where there is no GPU: to try a multi-GPU run's bookkeeping on a laptop")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.run_yaml.is_file():
        raise KDBenchError(f"{args.run_yaml}: no such run config; `kdbench resolve` or the workflow writes it.")
    run = yaml.safe_load(args.run_yaml.read_text())
    if not isinstance(run, dict) or not {"run", "training", "method"} <= set(run):
        raise KDBenchError(f"{args.run_yaml}: not a resolved run config (needs keys run, training, method); "
                           "write it with `kdbench resolve <config> <pair> <method> <seed>`.")
    run = read_run(run, str(args.run_yaml))  # checked; the settings an older run.yaml predates take their defaults
    if "RANK" in os.environ:  # started by the DeepSpeed launcher: the parent holds the GPUs
        train(run)
        return 0
    with pinned(run["training"]["gpus"], "the run (training.gpus)") as ids:  # its own GPUs (kdbench.gpus)
        ranks = len(ids) if ids else args.cpu_ranks
        if ranks <= 1:  # one GPU, or the CPU
            train(run)
        else:  # data parallel over the claimed GPUs (the launcher honours CUDA_VISIBLE_DEVICES), or CPU ranks
            _launch(args.run_yaml, ranks, args.threads, on_cpu=not ids)
    return 0


def _launch(run_yaml: Path, ranks: int, threads: int | None, on_cpu: bool) -> None:
    """`ranks` data-parallel ranks of this run through the DeepSpeed launcher on this node. On GPUs
    the launcher takes the visible ones (CUDA_VISIBLE_DEVICES: the claimed GPUs; `--num_gpus` would
    make it ignore them). On the CPU, LOCAL_SIZE tells DeepSpeed's CPU accelerator how many ranks the
    node holds (it counts NUMA nodes otherwise, and the launcher refuses with "No slot '1'")."""
    cmd = ["deepspeed", "--master_port", str(_free_port()), *(["--num_gpus", str(ranks)] if on_cpu else []),
           "--no_local_rank", "--module", "kdbench.cli", "train", str(run_yaml),
           *(["--threads", str(threads)] if threads else [])]
    done = subprocess.run(cmd, env={**os.environ, "LOCAL_SIZE": str(ranks)})
    if done.returncode:
        raise KDBenchError(f"run {run_yaml}: a rank of its {ranks} failed (exit status {done.returncode}); its "
                           "message is above.")


def train(run: dict) -> None:
    """The recipe: build the session once, take its optimizer steps, save the student."""
    s = build_session(run)
    for step in tqdm(range(s.start_step, s.tr.steps), desc=f"{run['run']['pair']}/{s.method['label']}/seed{s.seed}",
                     initial=s.start_step, total=s.tr.steps, mininterval=5):
        train_step(s, step)
    finish(s)


@dataclass
class Session:
    """What a run's steps share: the resolved run, its typed training settings, the DeepSpeed engine
    (student), the teacher, the method, the data source, checkpoints and the running counters."""

    run: dict
    tr: Training
    tokenizer: Any
    engine: Any
    teacher: Any  # LastHidden of the teacher, or None (SFT)
    teacher_forward: Any  # the teacher itself, or its ZeRO-3 inference engine
    teacher_states: Any  # kdbench.teacher_states.Cached (the teacher's stored hidden states), or None
    heads: Any  # kdbench.models.Heads: the output heads the loss applies
    vocab_size: int
    divergence: Any
    policy: Composed | None
    shapes: dict  # provenance
    cross: Any = None  # kdbench.crosstok.data.CrossTok: a cross-tokenizer method's run, else None
    cross_modules: Any = None  # its trainable modules (DSKD's projectors), in the student's `extras`, or None
    checkpoints: Checkpoints | None = None
    stream: Stream | None = None
    collate: Any = None  # examples → a micro-batch (kdbench.sft_data.collate, or crosstok.data.collate_pair)
    source: Any = None
    selector: BestByValidRouge | None = None
    metrics: Any = None  # metrics.jsonl, open for appending (rank 0 alone writes it)
    valid: list | None = None  # encoded validation examples (sources that need a validation loss)
    start_step: int = 0
    tokens_seen: int = 0
    tokens_here: int = 0
    nonfinite_in_a_row: int = 0
    skipped_total: int = 0
    start: float = 0.0  # perf_counter at the first step (tokens_per_s, provenance seconds)

    @property
    def out(self) -> Path:
        return Path(self.run["run"]["dir"])

    @property
    def seed(self) -> int:
        return self.run["run"]["seed"]

    @property
    def method(self) -> dict:
        return self.run["method"]

    def micro_batch_loss(self, mb: dict, n_global: int, progress: float) -> losses.LossParts:
        """Teacher without grad, student with grad (final hidden states), then the harness."""
        mb = {k: v.to(self.engine.device) for k, v in mb.items()}
        if self.cross is not None:
            return self.cross_loss(mb, n_global, progress)
        with torch.no_grad():
            if self.teacher_states is not None:  # stored where they hold this micro-batch, else live
                t_hidden = self.teacher_states(mb)
            elif self.teacher is not None:
                t_hidden = self.teacher_forward(mb["input_ids"], mb["attention_mask"])
            else:
                t_hidden = None
        s_hidden = self.engine(mb["input_ids"], mb["attention_mask"])
        student_head, teacher_head = self.heads.gather()  # released after this micro-batch's backward
        return losses.objective(
            s_hidden, t_hidden, mb["labels"], vocab_size=self.vocab_size, kd_ratio=self.method["kd_ratio"],
            n_global=n_global, world_size=self.engine.world_size, divergence=self.divergence,
            hparams=self.method["divergence"]["hp"] if self.divergence else None, policy=self.policy,
            progress=progress, student_head=student_head, teacher_head=teacher_head,
            chunk_size=self.tr.loss_chunk_size)

    def cross_loss(self, mb: dict, n_global: int, progress: float) -> losses.LossParts:
        """A cross-tokenizer method's micro-batch: the teacher on its own tokens, the student on its
        own, and the harness over the aligned rows (kdbench.losses.cross_objective)."""
        with torch.no_grad():
            t_hidden = self.teacher_forward(mb["teacher_input_ids"], mb["teacher_attention_mask"])
        s_hidden = self.engine(mb["input_ids"], mb["attention_mask"])
        student_head, teacher_head = self.heads.gather()
        c = self.cross
        return losses.cross_objective(
            s_hidden, t_hidden, mb["labels"], {k: mb[k] for k in losses.UNIT_KEYS}, method=c.fn, hparams=c.hp,
            arrays=c.arrays, student_vocab=c.student_vocab, teacher_vocab=c.teacher_vocab,
            kd_ratio=self.method["kd_ratio"], n_global=n_global, world_size=self.engine.world_size,
            student_head=student_head, teacher_head=teacher_head, chunk_size=self.tr.loss_chunk_size,
            merge={"groups": "observed", "attention": "attention"}.get(c.alignment, "mean"), policy=self.policy,
            progress=progress, space=c.space, modules=c.modules, kd_to_ce=c.kd_to_ce, embeddings=(
                self.engine.module.lm.get_input_embeddings(), self.teacher.lm.get_input_embeddings()))

    def validation_loss(self) -> float:
        """The student's token-mean cross-entropy on the validation set in eval mode (DistiLLM's)."""
        def ce_of(mb):
            mb = {k: v.to(self.engine.device) for k, v in mb.items()}
            with torch.no_grad():
                s_hidden = self.engine(mb["input_ids"], mb["attention_mask"])
                parts = losses.objective(s_hidden, None, mb["labels"], vocab_size=self.vocab_size, kd_ratio=0.0,
                                         n_global=1, student_head=self.heads.gather()[0],
                                         chunk_size=self.tr.loss_chunk_size)
            self.heads.release()
            return parts.ce_sum / max(parts.n_tokens, 1)

        self.engine.eval()
        loss = _validation_loss(self.valid, self.tokenizer.pad_token_id, self.tr.micro_batch_size, ce_of)
        self.engine.train()
        return loss


def build_session(run: dict) -> Session:
    """Models, method and engine (`_build_models`), then the data, resumed at the newest good
    checkpoint of this exact run config, if any (`_build_data`)."""
    _single_process_env()
    _job_settings(run)  # what depends on where the job runs: accumulation for this world size, tensorboard
    tr = Training(**run["training"])  # complete: resolve_run wrote it so, read_run read it so
    random.seed(run["run"]["seed"])
    torch.manual_seed(run["run"]["seed"])
    s = _build_models(run, tr)
    if run.get("vocab_map"):  # a cross-tokenizer method (kdbench.crosstok.data)
        from kdbench.crosstok.data import load

        s.cross = load(run, s.tokenizer, s.engine.device, s.cross_modules)
    s.teacher_states = _teacher_states(s)
    _build_data(s)
    s.start = time.perf_counter()  # the clock starts at the first step, as tokens_per_s and provenance count
    return s


def _build_models(run: dict, tr: Training) -> Session:
    """The tokenizer, the student (LoRA, gradient checkpointing) and teacher, the method's
    divergence and token policies, and the DeepSpeed engine around the student."""
    from transformers import AutoTokenizer

    from kdbench.models import (Heads, LastHidden, apply_lora, check_head, check_vocab, enable_gradient_checkpointing,
                                load_causal_lm, model_shape)

    tokenizer = AutoTokenizer.from_pretrained(run["tokenizer"])
    # Under DeepSpeed bf16 the engine casts the student to bf16 and builds its fp32 masters from that copy.
    student_lm = load_causal_lm(run["student"], dtype="bf16" if tr.bf16 else "fp32")
    check_head(student_lm, run["pair_file"], "teacher" if run["run"]["method"] == "teacher" else "student")
    vocab_size, teacher = len(tokenizer), None
    if run["teacher"]:
        teacher_lm = load_causal_lm(run["teacher"], dtype=run["teacher_dtype"])
        check_head(teacher_lm, run["pair_file"], "teacher")  # the loss reads its logits through its head, too
        if not run.get("vocab_map"):  # one tokenizer (a cross-tokenizer run compares over a vocab_map)
            vocab_size = check_vocab(AutoTokenizer.from_pretrained(run["teacher"]), tokenizer,
                                     teacher_lm.get_output_embeddings().weight.shape[0],
                                     student_lm.get_output_embeddings().weight.shape[0], where=run["pair_file"])
        teacher = LastHidden(teacher_lm).eval().requires_grad_(False)
    shapes = {"student": model_shape(student_lm), "teacher": model_shape(teacher_lm) if teacher else None}
    if run["lora"]:
        student_lm, n_trainable = apply_lora(student_lm, run["lora"])
        print(f"kdbench: LoRA: {n_trainable:,} trainable parameters", file=sys.stderr)
    if tr.gradient_checkpointing:
        enable_gradient_checkpointing(student_lm)
    method = run["method"]
    plugin = load_method_file(method["divergence"]["path"]) if method["divergence"] else None
    divergence, student, policy, cross_modules = plugin.obj if plugin else None, LastHidden(student_lm), None, None
    if method["policies"]:
        harness = {"student_dim": student.hidden_size, "teacher_dim": teacher.hidden_size, "seed": run["run"]["seed"]}
        policy = Composed([load_method_file(p["path"]).instantiate(p["hp"], total_steps=tr.steps, **harness)
                           for p in method["policies"]])
        student.extras = torch.nn.ModuleList(policy.modules())  # trained and saved with the student (EGAD's W)
    if plugin is not None and plugin.kind == "crosstok":  # its modules, trained and saved with the student too
        from kdbench.crosstok.data import build_modules

        cross_modules = build_modules(plugin, student.hidden_size, teacher.hidden_size)
        student.extras.extend([cross_modules] if cross_modules is not None else [])
    engine = _engine(run, tr, student, cross_modules)
    teacher_forward = teacher
    if teacher is not None and run.get("teacher_zero3"):  # partitioned over the ranks (pair key teacher.zero3)
        from kdbench.models import zero3_inference_engine

        teacher_forward = zero3_inference_engine(teacher, dtype=run["teacher_dtype"], micro_batch_size=tr.micro_batch_size,
                                                 offload=run["teacher_zero3"]["offload"])
    elif teacher is not None:
        teacher.to(engine.device)
    return Session(run=run, tr=tr, tokenizer=tokenizer, engine=engine, teacher=teacher, teacher_forward=teacher_forward,
                   teacher_states=None,
                   heads=Heads(engine.module, teacher),  # gathered per micro-batch under ZeRO-3
                   vocab_size=vocab_size, divergence=divergence, policy=policy, shapes=shapes, cross_modules=cross_modules)


def _teacher_states(s: Session):
    """The teacher's stored hidden states on this run's micro-batches, where the workflow's
    teacher_states job has written them (`teacher_cache`; kdbench.teacher_states), else None."""
    from kdbench.teacher_states import Cached, states_path

    path = states_path(s.run)
    if path is None or not path.is_file():
        return None
    print(f"kdbench: the teacher's hidden states come from {path} where it holds a micro-batch", file=sys.stderr)
    return Cached(path, s.teacher, s.engine.device, s.run["teacher_dtype"])


def _engine(run: dict, tr: Training, student: torch.nn.Module, cross_modules: torch.nn.Module | None = None):
    """DeepSpeed owns clipping, accumulation boundaries, the optimizer and the schedule. A cross-
    tokenizer method's modules with a `modules_lr` train in a group of their own at that rate, on the
    same schedule (DSKD's projector group)."""
    import deepspeed
    from transformers import get_scheduler

    from kdbench.registry import MODULES_LR

    trainable = [p for p in student.parameters() if p.requires_grad]
    modules_lr = run["method"]["divergence"]["hp"].get(MODULES_LR) if cross_modules is not None else None
    if modules_lr is not None:
        own = {id(p) for p in cross_modules.parameters()}
        trainable = [{"params": [p for p in trainable if id(p) not in own]},
                     {"params": [p for p in trainable if id(p) in own], "lr": modules_lr}]
    if run["deepspeed"].get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu":
        # ZeRO-Offload: AdamW steps on the CPU copies, with DeepSpeed's vectorised CPU kernel.
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(trainable, lr=tr.lr, weight_decay=tr.weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=tr.lr, weight_decay=tr.weight_decay)
    scheduler = get_scheduler(tr.schedule, optimizer, num_warmup_steps=int(tr.warmup_ratio * tr.steps),
                              num_training_steps=tr.steps)
    ds_config = {**run["deepspeed"], "train_micro_batch_size_per_gpu": tr.micro_batch_size,
                 "gradient_accumulation_steps": tr.gradient_accumulation_steps, "gradient_clipping": tr.grad_clip,
                 "bf16": {"enabled": tr.bf16}}
    if tr.tensorboard:  # DeepSpeed's own monitor writes <run dir>/tensorboard/
        ds_config["tensorboard"] = {"enabled": True, "output_path": run["run"]["dir"], "job_name": "tensorboard"}
    engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    engine.train()  # from_pretrained returns eval mode: dropout must be on for training
    return engine


def _build_data(s: Session) -> None:
    """Prompt-masked examples as a resumable stream, the method's data source over it (dataset,
    student samples, replay), validation selection and metrics.jsonl, at the resume point."""
    from kdbench.jsonl import read_jsonl

    tr, engine, tokenizer, prompt_format = s.tr, s.engine, s.tokenizer, s.run["prompt_format"]
    key = "teacher.sft.max_length" if s.run["run"]["method"] == "teacher" else "training.max_length"
    check_prompt_room(template_tokens(tokenizer, prompt_format), {key: tr.max_length}, s.run["pair_file"],
                      f"the run's tokenizer ({s.run['tokenizer']})")  # a hub id's or GGUF file's: first known here
    records = read_jsonl(s.run["data"]["train"])
    if s.cross is None:
        examples = [encode_example(r, tokenizer, tr.max_length, prompt_format) for r in records]
        s.collate = partial(collate, pad_id=tokenizer.pad_token_id)
    else:  # both tokenizations and the aligned rows (kdbench.crosstok.data)
        from kdbench.crosstok.data import collate_pair, encode_pair

        examples = [encode_pair(r, tokenizer, s.cross.teacher_tokenizer, tr.max_length, prompt_format, s.cross.alignment,
                                s.cross.mined_map) for r in records]
        s.collate = partial(collate_pair, student_pad=tokenizer.pad_token_id,
                            teacher_pad=s.cross.teacher_tokenizer.pad_token_id)
    s.out.mkdir(parents=True, exist_ok=True)
    s.checkpoints = Checkpoints(s.out, s.run, keep=tr.keep_checkpoints)
    state = s.checkpoints.resume(engine) or {"step": 0, "micro_batches": 0, "tokens_seen": 0}
    if state["step"]:  # Checkpoints.resume has restored the RNG states too
        if s.policy is not None:
            s.policy.load_state_dicts(state["policies"])
        print(f"kdbench: resuming {s.out} at step {state['step']}", file=sys.stderr)
    s.start_step, s.tokens_seen = state["step"], state["tokens_seen"]
    s.stream = Stream(examples, tr.micro_batch_size, s.seed, start=state["micro_batches"])
    synced = _zero3(engine) and engine.world_size > 1  # ZeRO-3 on several ranks: generation in lockstep
    sampler = partial(sample_responses, engine.module.lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                      max_new_tokens=tr.sample_max_new_tokens, max_length=tr.max_length, synced_gpus=synced)
    s.source = make_source(s.method["source"], s.method["source_hp"], s.stream, sampler, tr.steps, tr.micro_batch_size)
    if state["step"]:
        s.source.load_state_dict(state["source"])
    if s.source.needs_validation:
        s.valid = [encode_example(r, tokenizer, tr.max_length, prompt_format) for r in read_jsonl(s.run["data"]["valid"])]
        if not state["step"]:  # DistiLLM evaluates before training; its θ compares later epochs with this
            s.source.begin(s.validation_loss())
    if tr.select == "valid_rougeL":
        s.selector = BestByValidRouge(s.out, s.run["data"]["valid"], tokenizer, tr, state.get("best"), prompt_format,
                                      synced_gpus=synced)
    if engine.global_rank == 0:  # one writer; the records hold statistics reduced over the ranks
        s.metrics = _open_metrics(s.out / "metrics.jsonl", keep_before=state["step"], saved=state.get("metrics", ""))


def train_step(s: Session, step: int) -> None:
    """One optimizer step: gather its micro-batches and count their response tokens over all ranks,
    run each through the loss, backward and the engine step (`micro_batches`), then what follows
    the step (`end_step`)."""
    tr, engine = s.tr, s.engine
    testhooks.point("train.step", step=step)  # fault-injection tests only (kdbench.testhooks)
    lr = engine.get_lr()  # this step's learning rates (the scheduler steps with the optimizer)
    micro = [s.collate(s.source.next(step)) for _ in range(tr.gradient_accumulation_steps)]
    n_global = int(_all_reduce_sum(sum(losses.count_valid(mb["labels"]) for mb in micro), engine.device))
    end_step(s, step, lr, n_global, micro_batches(s, step, micro, n_global))


def micro_batches(s: Session, step: int, micro: list[dict], n_global: int) -> dict:
    """Each micro-batch of the step through the loss, backward and the engine step (a non-finite
    one on any rank: no gradient, or the run stops); the step's sums of what was used."""
    engine = s.engine
    kd_weighted, ce_sum, n_selected, temps, n_skipped, aligned = 0.0, 0.0, 0, [], 0, 0
    for mb in micro:
        parts = s.micro_batch_loss(mb, n_global, step / s.tr.steps)
        parts = testhooks.point("train.micro_batch", parts, step=step)  # fault-injection tests only
        if _all_reduce_sum(float(not torch.isfinite(parts.loss.detach())), engine.device):  # on any rank
            s.nonfinite_in_a_row = _nonfinite(s.out, step, parts.loss.item(), s.tr, s.nonfinite_in_a_row + 1,
                                              s.checkpoints)
            engine.backward(_no_gradient(engine.module), scale_wrt_gas=False)  # keeps every rank's collectives
            engine.step()
            n_skipped += losses.count_valid(mb["labels"])
            continue
        s.nonfinite_in_a_row = 0
        engine.backward(parts.loss, scale_wrt_gas=False)
        s.heads.release()
        engine.step()
        kd_weighted, ce_sum, n_selected = kd_weighted + parts.kd_mean * parts.n_tokens, ce_sum + parts.ce_sum, \
            n_selected + parts.n_selected
        if parts.temperature is not None:
            temps.append(parts.temperature)
        aligned += parts.aligned or 0
    return {"kd_weighted": kd_weighted, "ce_sum": ce_sum, "n_selected": n_selected, "temps": temps,
            "n_skipped": n_skipped, "aligned": aligned}


def end_step(s: Session, step: int, lr: list[float], n_global: int, sums: dict) -> None:
    """After the step's micro-batches: its global mean KD loss to the token policy; then the
    source's epoch end, validation selection, the metrics record and the checkpoint."""
    tr, engine = s.tr, s.engine
    n_used = n_global - _all_reduce_sum(sums["n_skipped"], engine.device)
    s.skipped_total += n_global - n_used
    kd_loss = _all_reduce_sum(sums["kd_weighted"], engine.device) / max(n_used, 1)
    ce = _all_reduce_sum(sums["ce_sum"], engine.device) / max(n_used, 1)
    if s.policy is not None and n_used:
        s.policy.observe(kd_loss)
    if s.source.needs_validation and (step + 1) % max(1, s.stream.per_epoch // tr.gradient_accumulation_steps) == 0:
        s.source.end_epoch(s.validation_loss())
    s.tokens_seen, s.tokens_here = s.tokens_seen + n_global, s.tokens_here + n_global
    valid_rouge = None
    if s.selector is not None and ((step + 1) % tr.select_every == 0 or step == tr.steps - 1):
        valid_rouge = s.selector.score(engine.module.lm, step + 1)
    if step % tr.log_every == 0 or step == tr.steps - 1 or valid_rouge is not None:
        # over all ranks
        n_selected, tau = int(_all_reduce(sums["n_selected"], engine.device)), _temperatures(sums["temps"], engine.device)
        record = _metrics_record(step, lr, s.method["kd_ratio"], ce, kd_loss, n_global, n_selected, s.policy, tau,
                                 s.tokens_here / (time.perf_counter() - s.start))
        if s.cross is not None:  # the share of the step's response tokens some aligned unit covers
            record["align_ratio"] = _all_reduce_sum(sums["aligned"], engine.device) / max(n_global, 1)
        if s.metrics is not None:
            _log(s, step, record, valid_rouge)
    if tr.checkpoint_every and (step + 1) % tr.checkpoint_every == 0 and step + 1 < tr.steps:
        s.checkpoints.save(engine, step + 1, {
            "step": step + 1, "micro_batches": s.stream.position, "source": s.source.state_dict(),
            "tokens_seen": s.tokens_seen, "policies": s.policy.state_dicts() if s.policy else [],
            "best": s.selector.best if s.selector else None,
            "metrics": (s.out / "metrics.jsonl").read_text() if s.metrics else ""})  # rank 0's (the one DeepSpeed keeps)


def _log(s: Session, step: int, record: dict, valid_rouge: float | None) -> None:
    """One metrics.jsonl record (and the same scalars to tensorboard, with training.tensorboard)."""
    record.update(s.source.metrics())  # GKD/DistiLLM: student-sampled (and replayed) batches so far, θ
    if valid_rouge is not None:
        record["valid_rougeL"] = valid_rouge
    if s.skipped_total:
        record["skipped_tokens"] = s.skipped_total
    s.metrics.write(json.dumps(record) + "\n")
    s.metrics.flush()
    if s.engine.monitor.enabled:  # training.tensorboard: the same scalars, by step
        s.engine.monitor.write_events([(f"kdbench/{key}", value, step) for key, value in record.items()
                                       if key != "step" and isinstance(value, (int, float))])


def finish(s: Session) -> None:
    """Save the student (HF format, safetensors) atomically: write beside, then rename. Under ZeRO-3
    every rank first gathers the full weights (GatheredParameters is a no-op for ZeRO stages 0-2)."""
    import deepspeed

    from kdbench.models import SOURCE_FILE, model_source, save_student

    if s.metrics is not None:
        s.metrics.close()
    s.heads.release()
    engine, out, run, tr, method = s.engine, s.out, s.run, s.tr, s.method
    if s.selector is not None:  # the checkpoint selected by validation ROUGE-L becomes the saved model
        s.selector.restore_best(engine.module.lm)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if engine.global_rank == 0:
            tmp = out / ".model.tmp"
            save_student(engine.module.lm, tmp)
            s.tokenizer.save_pretrained(tmp)
            if len(engine.module.extras):
                save_file(engine.module.extras.state_dict(), tmp / "kdbench_policy_modules.safetensors")
            origin = model_source(run["student"])  # pretrained weights: carried into every model trained from them
            if origin:
                atomic.write_json(tmp / SOURCE_FILE, origin)
            if (out / "model").exists():  # a rerun by hand into a finished run directory
                shutil.rmtree(out / "model")
            os.replace(tmp, out / "model")
            atomic.write_json(out / "provenance.json", provenance.collect(
                Path.cwd(), engine.device, run=run["run"], seeds={"train": s.seed},
                methods=[{"key": m["key"], "version": m["version"]} for m in (method["divergence"], *method["policies"]) if m],
                models={"start": model_source(run["student"]), "teacher": model_source(run["teacher"])}, shapes=s.shapes,
                steps=tr.steps, tokens=s.tokens_seen, seconds=round(time.perf_counter() - s.start, 2),
                selected={"rule": tr.select, **(s.selector.best if s.selector else {"step": tr.steps})},
                teacher_states=s.teacher_states.provenance() if s.teacher_states else None))
    # Ranks leave together once rank 0 has saved; a rank that exits with its process group alive can
    # abort in interpreter teardown (seen with ZeRO-3 on two CPU ranks, about 1 exit in 20).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _metrics_record(step, lr, kd_ratio, ce, kd_loss, n_tokens, n_selected, policy, tau, tokens_per_s):
    """One step's record; `lr`: each optimizer group's rate (a second group: the method's modules)."""
    record = {"step": step, "loss": (1 - kd_ratio) * ce + kd_ratio * kd_loss, "ce": ce,
              "kd_loss": kd_loss if kd_ratio > 0 else None, "lr": lr[0],
              "tokens": n_tokens, "selected": n_selected, "tokens_per_s": round(tokens_per_s, 1)}
    if len(lr) > 1:
        record["modules_lr"] = lr[1]
    if policy is not None:
        record.update(policy.log_scalars())
    record.update(tau)
    return record


def _nonfinite(out: Path, step: int, value: float, tr: Training, in_a_row: int, checkpoints: Checkpoints) -> int:
    """A micro-batch whose loss is NaN/inf, seen before its backward (so the weights never take it):
    stop the run (`training.nonfinite: stop`), or skip it and go on, stopping once
    `training.max_nonfinite` come in a row. Returns how many came in a row."""
    last = checkpoints.complete()
    what = (f"run {out}: the loss became {value} at step {step}; last good checkpoint: "
            f"{last[-1] if last else 'none'}.")
    advice = "Lower the learning rate or check the data, then rerun (it resumes from that checkpoint)"
    if tr.nonfinite == "stop":
        raise KDBenchError(f"{what} {advice}; or set training.nonfinite: skip to skip such micro-batches.")
    if in_a_row >= tr.max_nonfinite:
        raise KDBenchError(f"{what} {in_a_row} micro-batches in a row were non-finite (training.max_nonfinite "
                           f"{tr.max_nonfinite}), so the weights have likely diverged. {advice}.")
    print(f"kdbench: {what} Skipping that micro-batch (training.nonfinite: skip).", file=sys.stderr)
    return in_a_row


def _no_gradient(module: torch.nn.Module) -> torch.Tensor:
    """A zero loss over every trainable parameter: its backward adds no gradient but runs the same
    hooks and collectives as a real micro-batch, so data-parallel ranks stay in step."""
    return sum((p * 0.0).sum() for p in module.parameters() if p.requires_grad)


class BestByValidRouge:
    """Checkpoint selection by validation ROUGE-L (greedy decoding on the first `select_examples`
    validation examples): the trainable weights of the best step are kept beside the run and put
    back into the model before it is saved. Its state (best step and score) resumes with the run."""

    def __init__(self, out: Path, valid_path: str, tokenizer, tr: Training, best: dict | None, prompt_format: str,
                 synced_gpus: bool = False):
        from kdbench.jsonl import read_jsonl

        self.path, self.tokenizer, self.tr = out / "best_trainable.safetensors", tokenizer, tr
        self.prompt_format = prompt_format
        self.synced_gpus = synced_gpus  # ZeRO-3 on several ranks: generation steps in lockstep
        self.examples = read_jsonl(valid_path)[:tr.select_examples]
        self.best = best or {"step": None, "valid_rougeL": -1.0}

    def score(self, lm, step: int) -> float:
        from kdbench.evaluate import evaluate_set

        was_training = lm.training
        lm.eval()
        summary, _ = evaluate_set(lm, self.tokenizer, self.examples, set_name="valid", seeds=[0], protocol={
            "do_sample": False, "max_new_tokens": self.tr.sample_max_new_tokens, "batch_size": 16,
            "prompt_format": self.prompt_format},
            synced_gpus=self.synced_gpus)
        lm.train(was_training)
        value = _from_rank0(summary["rougeL_mean"], next(lm.parameters()).device)  # every rank decides alike
        if value > self.best["valid_rougeL"]:
            import deepspeed

            self.best = {"step": step, "valid_rougeL": value}
            named = [(n, p) for n, p in lm.named_parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):  # ZeRO-3: full weights
                trainable = {n: p.detach().cpu().clone() for n, p in named}
            rank = int(os.environ.get("RANK", 0))
            if rank == 0:  # one writer (rank 0 saves the model too), through a temporary file of its own
                tmp = self.path.with_name(f"{self.path.name}.rank{rank}.tmp")
                save_file(trainable, tmp)
                os.replace(tmp, self.path)
        return value

    def restore_best(self, lm) -> None:
        from safetensors.torch import load_file

        if self.path.is_file():
            import deepspeed

            best = load_file(self.path)
            params = dict(lm.named_parameters())
            # ZeRO-3: gather, overwrite, and partition rank 0's values again (a no-op for stages 0-2).
            with deepspeed.zero.GatheredParameters([params[n] for n in best], modifier_rank=0), torch.no_grad():
                for name, value in best.items():
                    params[name].copy_(value.to(params[name].device, params[name].dtype))


def _validation_loss(examples: list[dict], pad_id: int, batch_size: int, loss_of) -> float:
    """Token-weighted mean of `loss_of` (a batch's token-mean loss) over the validation set."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], pad_id)
        n = losses.count_valid(batch["labels"])
        total, count = total + loss_of(batch) * n, count + n
    return total / max(count, 1)


def _open_metrics(path: Path, keep_before: int, saved: str = ""):
    """metrics.jsonl for appending, without records from steps a resumed run will redo. The records
    before the resume step come from the file, or from the checkpoint's copy (`saved`) where the file
    lost them: Snakemake deletes the outputs of a failed job, metrics.jsonl among them."""
    def before(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and json.loads(line)["step"] < keep_before]
    kept = max(before(path.read_text()) if path.is_file() else [], before(saved), key=len) if keep_before else []
    atomic.write_text(path, "".join(line + "\n" for line in kept))
    return open(path, "a")


def _job_settings(run: dict) -> None:
    """Settings that depend on where the job runs, checked at its start: with
    `training.global_batch_size`, the gradient accumulation for this job's world size; with
    `training.tensorboard`, that the tensorboard package is installed."""
    tr = run["training"]
    if tr.get("global_batch_size"):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tr["gradient_accumulation_steps"] = accumulation_steps(tr, world, run["pair_file"])
        print(f"kdbench: global batch {tr['global_batch_size']} = micro-batch {tr['micro_batch_size']} × "
              f"accumulation {tr['gradient_accumulation_steps']} × {world} rank(s)", file=sys.stderr)
    if tr.get("tensorboard"):
        try:
            import tensorboard  # noqa: F401  (DeepSpeed's monitor writes through torch.utils.tensorboard)
        except ImportError:
            raise KDBenchError(f"{run['pair_file']}: training.tensorboard is true, but the tensorboard package is not "
                               'installed; install it with `pip install -e ".[tensorboard]"` (or set '
                               "training.tensorboard: false).") from None


def _zero3(engine) -> bool:
    return bool(engine.zero_optimization_partition_weights())


def _all_reduce_sum(value: float, device) -> float:
    return _all_reduce(value, device)


def _all_reduce(value: float, device, op: str = "sum") -> float:
    """`value` summed (or its min, max) over the data-parallel ranks; the value itself on one rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor(float(value), device=device, dtype=torch.float64)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t.item()


def _from_rank0(value: float, device) -> float:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor(float(value), device=device, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.item()


def _temperatures(temps: list[torch.Tensor], device) -> dict:
    """tau_mean, tau_min and tau_max of a step's per-token temperatures over every rank ({} if none)."""
    t = torch.cat(temps).float() if temps else torch.zeros(0)
    count = _all_reduce(t.numel(), device)
    if not count:
        return {}
    return {"tau_mean": _all_reduce(float(t.sum()), device) / count,
            "tau_min": _all_reduce(float(t.min()) if t.numel() else math.inf, device, "min"),
            "tau_max": _all_reduce(float(t.max()) if t.numel() else -math.inf, device, "max")}


def _single_process_env() -> None:
    """Without a launcher, run as rank 0 of 1 (DeepSpeed otherwise tries MPI discovery)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
