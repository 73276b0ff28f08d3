"""The training objective. The one place that shifts, masks, aligns vocabularies, upcasts to fp32,
applies temperatures and token weights, reduces, and mixes in cross-entropy.

For one micro-batch, with the N valid (response) positions of the step counted globally (all
micro-batches of the optimizer step, all ranks) as N_global:

    KD_mb   = Σ_i w_i c_i D_i / Σ_i w_i          (D = the method's per-token divergence on softmax(z/τ_i);
                                                w, τ and the scale c (usually τ²) from the token
                                                policy's TokenPlan, or all 1)
    loss_mb = world/N_global · [ (1 − kd_ratio)·Σ_i CE_i + kd_ratio·n_mb·KD_mb ]

Backpropagated without DeepSpeed's 1/gas scaling and averaged over ranks by DeepSpeed, this gives
exactly the mean over the step's N_global tokens when every w_i = 1, whatever the micro-batching;
with a token policy, each micro-batch's weighted mean counts by its share of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

IGNORE = -100
NEG_FLOOR = -1e30  # -inf vocabulary padding → a finite floor: exp() is still 0, but 0·(−inf) NaNs vanish


@dataclass
class TokenPlan:
    """What a token policy decides for the N valid tokens of a micro-batch (all detached):
    the KD term is Σ_i weight_i·scale_i·D(softmax(z_s/tau_student_i), softmax(z_t/tau_teacher_i)) / Σ_i weight_i."""

    weight: torch.Tensor  # (N,) ≥ 0; 0 drops the token (LATF), soft values re-weight it (curricula)
    tau_student: torch.Tensor  # (N,)
    tau_teacher: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,) usually τ² (Hinton's gradient-scale correction)

    @classmethod
    def shared(cls, weight: torch.Tensor, tau: torch.Tensor) -> "TokenPlan":
        """One temperature per token for both models, weighted τ² (AdaKD's IDTS, fixed T, ...)."""
        return cls(weight, tau, tau, tau**2)

    @classmethod
    def uniform(cls, n: int, device=None) -> "TokenPlan":
        ones = torch.ones(n, device=device)
        return cls.shared(ones, ones)


@dataclass
class LossParts:
    loss: torch.Tensor  # what to backpropagate for this micro-batch
    ce_sum: float  # Σ CE over valid tokens (for logging)
    kd_mean: float  # KD_mb (for logging and the policy's EMA)
    n_tokens: int  # valid tokens in this micro-batch
    n_selected: int  # tokens with a non-zero policy weight
    temperature: torch.Tensor | None  # τ of the selected tokens, for logging


def valid_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token alignment and masking: the logits and labels of response tokens only, flattened."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    return logits[mask], labels[mask]


def count_valid(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def align_vocab(student: torch.Tensor, teacher: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compare over the shared real vocabulary: drop rows beyond the tokenizer's size (padding rows)."""
    return student[..., :vocab_size], teacher[..., :vocab_size]


def objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
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
) -> LossParts:
    """The micro-batch loss; see the module docstring for the reduction."""
    s_logits, targets = valid_positions(student_logits, labels)
    s_logits = s_logits.float()
    n_tokens = targets.numel()
    ce_sum = F.cross_entropy(s_logits, targets, reduction="sum") if n_tokens else s_logits.sum() * 0
    kd_mean = torch.zeros((), device=s_logits.device)
    n_selected, temps = 0, None
    if kd_ratio > 0 and n_tokens:
        t_logits, _ = valid_positions(teacher_logits, labels)
        s_logits, t_logits = align_vocab(s_logits, t_logits.float(), vocab_size)
        s_logits, t_logits = s_logits.clamp_min(NEG_FLOOR), t_logits.clamp_min(NEG_FLOOR)
        kd_mean, n_selected, temps = _kd_mean(s_logits, t_logits, divergence, hparams or {}, policy, progress)
    loss = world_size / n_global * ((1 - kd_ratio) * ce_sum + kd_ratio * n_tokens * kd_mean)
    return LossParts(loss, ce_sum.item(), kd_mean.item(), n_tokens, n_selected, temps)


def _kd_mean(s_logits, t_logits, divergence, hparams, policy, progress):
    if policy is None:
        plan = TokenPlan.uniform(s_logits.shape[0], s_logits.device)
    else:
        with torch.no_grad():
            plan = policy.plan(F.log_softmax(s_logits.detach(), -1), F.log_softmax(t_logits, -1), progress)
    sel = plan.weight > 0
    tau_s, tau_t = plan.tau_student[sel].unsqueeze(-1), plan.tau_teacher[sel].unsqueeze(-1)
    values = divergence(F.log_softmax(s_logits[sel] / tau_s, -1), F.log_softmax(t_logits[sel] / tau_t, -1), **hparams)
    kd_mean = (plan.weight[sel] * plan.scale[sel] * values).sum() / plan.weight.sum()
    return kd_mean, int(sel.sum()), tau_s.squeeze(-1)
