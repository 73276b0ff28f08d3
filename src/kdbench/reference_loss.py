"""The training objective, plainly: the formula of kdbench.losses on the full logits of one
micro-batch, differentiated by autograd. Read this first; `losses.objective` computes the same
numbers (to the bit for one chunk) chunk by chunk with its gradient in the forward pass, so that
neither model's (tokens × vocab) logits ever exist whole. Tests and benchmarks/kd_loss.py check the
fused loss against this one. A token policy's plan is computed without a gradient; where it lets
its temperatures pass one to the student (`TokenPlan.tau_grads`, AdaKD's `tau_grad`), τ and the
scale carry it through the plan's own derivatives (`kdbench.losses.tau_change`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.losses import NEG_FLOOR, tau_change, valid_positions


def reference_loss(h_s, h_t, labels, *, student_head, teacher_head, vocab_size, kd_ratio, divergence=None,
                   policy=None, progress=0.3, world_size=1):
    """`(loss_mb, Σ CE, KD_mb)` of one micro-batch whose N_global is its own valid-token count
    (kdbench.losses' docstring), from final hidden states and heads (None: the inputs are logits)."""
    h_s, y = valid_positions(h_s, labels)
    n = y.numel()
    z_s = (student_head(h_s) if student_head else h_s).float()
    with torch.set_grad_enabled(kd_ratio < 1):  # at weight 0 the cross-entropy is only logged
        ce = F.cross_entropy(z_s, y, reduction="sum")
    kd_mean = torch.zeros(())
    if kd_ratio > 0:
        h_t = valid_positions(h_t, labels)[0]

        def aligned(z):  # the shared vocabulary, its logits floored (losses.NEG_FLOOR)
            return z[:, :vocab_size].clamp_min(NEG_FLOOR)

        def teacher(h):
            return (teacher_head(h) if teacher_head else h).float()

        with torch.no_grad():  # the token plan: weights w, temperatures τ, scales c (all 1 without a policy)
            plan = None if policy is None else policy.plan(policy.token_stats(
                F.log_softmax(aligned(z_s), -1), F.log_softmax(aligned(teacher(h_t)), -1), y), progress)
            w, tau_s, tau_t, scale = (torch.ones(n),) * 4 if plan is None else \
                (plan.weight, plan.tau_student, plan.tau_teacher, plan.scale)
            sel = w > 0
            z_t = teacher(h_t[sel])
        tau_s, tau_t, factor = tau_s[sel], tau_t[sel], w[sel] * scale[sel]
        if plan is not None and plan.tau_grads:  # τ_i·exp(δ_i), c_i·exp(2δ_i): the same values, τ's gradient
            delta = tau_change(plan.tau_grads, sel, aligned(z_s[sel]), aligned(z_t), y[sel])
            tau_s, tau_t, factor = tau_s * delta.exp(), tau_t * delta.exp(), factor * (2 * delta).exp()
        values = divergence(F.log_softmax(aligned(z_s[sel]) / tau_s[:, None], -1),
                            F.log_softmax(aligned(z_t) / tau_t[:, None], -1))
        kd_mean = (factor * values).sum() / w.sum()
    return world_size / n * ((1 - kd_ratio) * ce + kd_ratio * n * kd_mean), ce, kd_mean
