"""Where a step's training responses come from (docs/METHODS.md §1); the loop picks one source, once.

- `off_policy`: the dataset's responses.
- `on_policy_mixed` (GKD, Agarwal et al. ICLR 2024): with probability `p` (0.5) per step the batch's
  responses are sampled from the student (top-k 0, top-p 1.0, temperature 1.0), else the dataset's.
- `adaptive_replay` (DistiLLM, Ko et al. ICML 2024): per step u ~ U(0,1); θ starts at 0 and rises by
  0.1 (cap 1.0) at each epoch end whose validation loss is ≥ the reference + 0.1;
  samp = θ·(1 − step/total); u < samp, or (buffer not full and u < θ) → fresh student samples,
  which also enter a replay buffer (capacity 1000, oldest dropped); else u < θ → a batch drawn from
  the buffer; else the dataset batch. As in DistiLLM's finetune.py (github.com/jongwooko/distillm):
  the validation loss is the student's cross-entropy on the validation set (eval mode: no dropout;
  kdbench weights it by tokens over the whole set, DistiLLM averages per-batch means); the reference
  is the value of an evaluation before the first step, and it is replaced only when θ rises (so θ
  rises once the loss has climbed 0.1 above where it was when θ last rose, not above the previous
  epoch's).

A batch is a list of examples `{"input_ids", "labels"}` (token lists; labels -100 on the prompt).
Student samples keep the prompt and replace the response: labels mark the sampled tokens (and EOS).
All randomness comes from Python's `random` and torch's global RNG, which checkpoints restore.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

import torch

from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE


def prompt_length(example: dict) -> int:
    labels = example["labels"]
    return next((i for i, y in enumerate(labels) if y != IGNORE), len(labels))


@torch.no_grad()
def sample_responses(lm, batch: list[dict], *, pad_id: int, eos_id: int, max_new_tokens: int,
                     max_length: int, synced_gpus: bool = False) -> list[dict]:
    """Replace each example's response by one sampled from `lm` (top-k 0, top-p 1.0, T 1.0).
    `synced_gpus`: keep generating until every rank is done (a ZeRO-3 model on several ranks, whose
    every forward is collective)."""
    prompts = [ex["input_ids"][:prompt_length(ex)] for ex in batch]
    width = max(len(p) for p in prompts)
    device = next(lm.parameters()).device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    was_training = lm.training
    lm.eval()
    out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                      max_new_tokens=max(1, min(max_new_tokens, max_length - width)), pad_token_id=pad_id,
                      eos_token_id=eos_id, synced_gpus=synced_gpus)
    lm.train(was_training)
    samples = []
    for prompt, row in zip(prompts, out[:, width:].tolist()):
        response = row[:row.index(eos_id) + 1] if eos_id in row else row
        samples.append({"input_ids": (prompt + response)[:max_length],
                        "labels": ([IGNORE] * len(prompt) + response)[:max_length]})
    return samples


class OffPolicy:
    """The dataset's responses. Every source counts the micro-batches it gave by kind (`counts`:
    dataset, sampled, replayed), which the training loop logs and checkpoints."""

    needs_validation = False

    def __init__(self, stream: Iterator[list[dict]], sampler, total_steps: int, batch_size: int):
        self.stream, self.sample, self.total_steps, self.batch_size = stream, sampler, total_steps, batch_size
        self.counts = {"dataset": 0, "sampled": 0, "replayed": 0}

    def next(self, step: int) -> list[dict]:
        return self._dataset()

    def _dataset(self) -> list[dict]:
        self.counts["dataset"] += 1
        return next(self.stream)

    def _sampled(self) -> list[dict]:
        """A dataset micro-batch with the student's own responses."""
        self.counts["sampled"] += 1
        return self.sample(next(self.stream))

    def begin(self, validation_loss: float) -> None:
        """The validation loss before the first step (sources with `needs_validation`)."""

    def end_epoch(self, validation_loss: float) -> None:
        pass

    def metrics(self) -> dict:
        """What metrics.jsonl records of the source (nothing for the dataset alone)."""
        return {}

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = dict(state["counts"])


class OnPolicyMixed(OffPolicy):
    def __init__(self, stream, sampler, total_steps: int, batch_size: int, p: float = 0.5):
        super().__init__(stream, sampler, total_steps, batch_size)
        self.p = p

    def next(self, step: int) -> list[dict]:
        return self._sampled() if random.random() < self.p else self._dataset()

    def metrics(self) -> dict:
        return {"sampled_batches": self.counts["sampled"]}


class AdaptiveReplay(OffPolicy):
    needs_validation = True

    def __init__(self, stream, sampler, total_steps: int, batch_size: int, capacity: int = 1000,
                 theta_step: float = 0.1, loss_rise: float = 0.1):
        super().__init__(stream, sampler, total_steps, batch_size)
        self.capacity, self.theta_step, self.loss_rise = capacity, theta_step, loss_rise
        self.theta, self.previous, self.buffer = 0.0, None, deque(maxlen=capacity)

    def next(self, step: int) -> list[dict]:
        u = random.random()
        samp = self.theta * (1 - step / self.total_steps)
        if u < samp or (len(self.buffer) < self.capacity and u < self.theta):
            batch = self._sampled()
            self.buffer.extend(batch)
            return batch
        if u < self.theta:
            self.counts["replayed"] += 1
            return random.sample(list(self.buffer), min(len(self.buffer), self.batch_size))
        return self._dataset()

    def begin(self, validation_loss: float) -> None:
        self.previous = validation_loss

    def end_epoch(self, validation_loss: float) -> None:
        if self.previous is None:
            raise KDBenchError("adaptive_replay: end_epoch before begin; the loop evaluates the validation loss "
                               "before the first step.")
        if validation_loss >= self.previous + self.loss_rise:
            self.theta = min(1.0, self.theta + self.theta_step)
            self.previous = validation_loss

    def metrics(self) -> dict:
        return {"theta": self.theta, "theta_reference": self.previous, "sampled_batches": self.counts["sampled"],
                "replayed_batches": self.counts["replayed"]}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "theta": self.theta, "previous": self.previous, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.theta, self.previous = state["theta"], state["previous"]
        self.buffer = deque(state["buffer"], maxlen=self.capacity)


SOURCES = {"off_policy": OffPolicy, "on_policy_mixed": OnPolicyMixed, "adaptive_replay": AdaptiveReplay}


def make_source(name: str, hp: dict, stream, sampler, total_steps: int, batch_size: int) -> OffPolicy:
    if name not in SOURCES:
        raise KDBenchError(f"unknown data source '{name}'; known: {', '.join(SOURCES)}")
    return SOURCES[name](stream, sampler, total_steps, batch_size, **hp)
