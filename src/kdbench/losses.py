"""The training objective. The one place that shifts, masks, aligns vocabularies, upcasts to fp32,
applies temperatures and token weights, chunks, reduces, and mixes in cross-entropy.

For one micro-batch, with the N valid (response) positions of the step counted globally (all
micro-batches of the optimizer step, all ranks) as N_global:

    KD_mb   = Σ_i w_i [c_i D_i + f_i F_i] / Σ_i w_i   D: the method's per-token divergence on
                                                   softmax(z_s/τs_i) vs softmax(z_t/τt_i);
                                                   w, τ, c (usually τ²) and f from the token
                                                   policy's TokenPlan (all 1 / f = 0 without one);
                                                   F: the policy's feature loss (EGAD), if any
    loss_mb = world/N_global · [ (1 − kd_ratio)·Σ_i CE_i + kd_ratio·n_mb·KD_mb ]

Backpropagated without DeepSpeed's 1/gas scaling and averaged over ranks by DeepSpeed, this gives
exactly the mean over the step's N_global tokens when every w_i = 1, whatever the micro-batching;
with a token policy, each micro-batch's weighted mean counts by its share of tokens.

Memory: given the models' final hidden states and output heads (`student_head`, `teacher_head`),
logits are computed `chunk_size` tokens at a time and recomputed in backward (activation
checkpointing per chunk, as fused-linear losses do), so neither model's full (tokens × vocab)
logits are ever alive at once. A token policy that needs global statistics (top-r% selection,
medians) gets them from a cheap no-grad first pass over the same chunks: `token_stats` per chunk,
then `plan` on the concatenated statistics. Without heads, the inputs are logits (tests, small vocab).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
NEG_FLOOR = -1e30  # -inf vocabulary padding → a finite floor: exp() is still 0, but 0·(−inf) NaNs vanish


@dataclass
class TokenPlan:
    """What a token policy decides for the N valid tokens of a micro-batch (all detached): see the
    module docstring for how each field enters the loss."""

    weight: torch.Tensor  # (N,) ≥ 0; 0 drops the token (LATF), soft values re-weight it (curricula)
    tau_student: torch.Tensor  # (N,)
    tau_teacher: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,) usually τ² (Hinton's gradient-scale correction)
    feature_weight: torch.Tensor | None = None  # (N,) weight of the policy's feature loss (EGAD's hard tokens)

    @classmethod
    def shared(cls, weight: torch.Tensor, tau: torch.Tensor, **extra) -> TokenPlan:
        """One temperature per token for both models, scaled τ² (AdaKD's IDTS, fixed T, ...)."""
        return cls(weight, tau, tau, tau**2, **extra)

    @classmethod
    def uniform(cls, n: int, device=None) -> TokenPlan:
        ones = torch.ones(n, device=device)
        return cls.shared(ones, ones)


@dataclass
class LossParts:
    loss: torch.Tensor  # what to backpropagate for this micro-batch
    ce_sum: float  # Σ CE over valid tokens (for logging)
    kd_mean: float  # KD_mb (for logging and the policy's EMA)
    n_tokens: int  # valid tokens in this micro-batch
    n_selected: int  # tokens with a non-zero policy weight
    temperature: torch.Tensor | None  # student τ of the selected tokens, for logging


def valid_positions(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token alignment and masking: the outputs and labels of response tokens only, flattened."""
    outputs, labels = outputs[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    return outputs[mask], labels[mask]


def count_valid(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def _logits(h: torch.Tensor, head: Callable | None) -> torch.Tensor:
    return (head(h) if head is not None else h).float()


def _aligned(z: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Compare over the shared real vocabulary (padding rows dropped); -inf floored."""
    return z[:, :vocab_size].clamp_min(NEG_FLOOR)


def objective(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    vocab_size: int,
    kd_ratio: float,
    n_global: int,
    world_size: int = 1,
    divergence: Callable[..., torch.Tensor] | None = None,
    hparams: dict[str, Any] | None = None,
    policy: Any = None,
    progress: float = 0.0,
    student_head: Callable | None = None,
    teacher_head: Callable | None = None,
    chunk_size: int | None = None,
) -> LossParts:
    """The micro-batch loss; `*_out` are logits (B,T,V) or, with heads, final hidden states (B,T,D)."""
    h_s, targets = valid_positions(student_out, labels)
    n = targets.numel()
    distill = kd_ratio > 0 and n > 0
    h_t = valid_positions(teacher_out, labels)[0] if distill else None
    chunks = [slice(i, i + (chunk_size or n)) for i in range(0, n, chunk_size or max(n, 1))]

    plan = None
    if distill:
        plan = _plan(h_s, h_t, targets, chunks, student_head, teacher_head, vocab_size, policy, progress)

    def terms(h_s_c, h_t_c, targets_c, *plan_c):
        z_s = _logits(h_s_c, student_head)
        ce = F.cross_entropy(z_s, targets_c, reduction="sum")
        if not distill:
            return ce, ce.new_zeros(())
        w, tau_s, tau_t, scale = plan_c
        sel = w > 0
        z_t = _aligned(_logits(h_t_c[sel], teacher_head), vocab_size)
        z_s = _aligned(z_s[sel], vocab_size)
        values = divergence(F.log_softmax(z_s / tau_s[sel, None], -1), F.log_softmax(z_t / tau_t[sel, None], -1),
                            **(hparams or {}))
        return ce, (w[sel] * scale[sel] * values).sum()

    ce_sum, kd_sum = h_s.new_zeros((), dtype=torch.float32), h_s.new_zeros((), dtype=torch.float32)
    for c in chunks:
        args = (h_s[c], h_t[c] if distill else None, targets[c])
        if distill:
            args += (plan.weight[c], plan.tau_student[c], plan.tau_teacher[c], plan.scale[c])
        ce_c, kd_c = checkpoint(terms, *args, use_reentrant=False) if chunk_size else terms(*args)
        ce_sum, kd_sum = ce_sum + ce_c, kd_sum + kd_c

    n_selected, temps = 0, None
    kd_mean = h_s.new_zeros((), dtype=torch.float32)
    if distill:
        if plan.feature_weight is not None:
            hard = plan.feature_weight > 0
            feats = policy.feature_loss(h_s[hard].float(), h_t[hard].float())
            kd_sum = kd_sum + (plan.weight[hard] * plan.feature_weight[hard] * feats).sum()
        kd_mean = kd_sum / plan.weight.sum()
        selected = plan.weight > 0
        n_selected, temps = int(selected.sum()), plan.tau_student[selected]
    loss = world_size / n_global * ((1 - kd_ratio) * ce_sum + kd_ratio * n * kd_mean)
    return LossParts(loss, ce_sum.item(), kd_mean.item(), n, n_selected, temps)


@torch.no_grad()
def _plan(h_s, h_t, targets, chunks, student_head, teacher_head, vocab_size, policy, progress) -> TokenPlan:
    """The token policy's plan from per-chunk statistics (a no-grad first pass), or uniform."""
    if policy is None:
        return TokenPlan.uniform(targets.numel(), h_s.device)
    stats: dict[str, list[torch.Tensor]] = {}
    for c in chunks:
        s_logp = F.log_softmax(_aligned(_logits(h_s[c], student_head), vocab_size), -1)
        t_logp = F.log_softmax(_aligned(_logits(h_t[c], teacher_head), vocab_size), -1)
        for key, value in policy.token_stats(s_logp, t_logp, targets[c]).items():
            stats.setdefault(key, []).append(value)
    return policy.plan({k: torch.cat(v) for k, v in stats.items()}, progress)
