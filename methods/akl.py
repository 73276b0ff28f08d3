"""Adaptive KL `akl`: a per-token gate between forward and reverse KL by where the gap lies."""

import torch

from kdbench.registry import divergence


@divergence
def akl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, mu: float = 0.5) -> torch.Tensor:
    """Adaptive KL: FKL and RKL weighted by the student's error in the teacher's head vs. its tail.

    Paper: AKL, "Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large Language
    Models" (Wu et al., COLING 2025, arXiv 2404.02657). FKL fits the head of p first, RKL its tail;
    AKL leans on whichever part the student currently gets more wrong.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        sort the vocabulary by p descending; c_v = Σ_{u ranked ≤ v} p_u (inclusive cumulative mass);
        head H = {v : c_v ≤ μ} ∪ {top-1 token}  (the top-1 is always in the head)
        g_head = Σ_{v∈H} |p_v − q_v|,   g_tail = Σ_{v∉H} |p_v − q_v|   (q detached: gates carry no grad)
        AKL_i  = g_head/(g_head+g_tail)·FKL_i + g_tail/(g_head+g_tail)·RKL_i
    with FKL_i = Σ p (log p − log q) and RKL_i = Σ q (log q − log p) (gradient through q inside the
    sum, as in `rkl`). Guards: c is clamped at 1 so rounding never pushes a token out of the head when
    μ ≥ 1 (then H is the whole vocabulary and AKL = FKL); when g_head + g_tail = 0 (q = p exactly,
    where FKL = RKL = 0) the gates are ½, ½. Ties in p keep vocabulary order (stable sort). The τ²
    factor and τ itself are applied by the harness.
    Direction: adaptive per token (forward on head errors, reverse on tail errors).
    Hyper-parameters: mu = 0.5 (the paper's), meaningful range [0, 1] (μ ≤ 0: head = top-1 only;
    μ ≥ 1: head = everything, i.e. `fkl`). Value range: [0, ∞).
    """
    p, q = teacher_logp.exp(), student_logp.exp()
    diff = teacher_logp - student_logp
    fkl = (p * diff).sum(-1)
    rkl = -(q * diff).sum(-1)
    with torch.no_grad():
        p_sorted, order = p.sort(dim=-1, descending=True, stable=True)
        err = (p_sorted - q.detach().gather(-1, order)).abs()
        head = p_sorted.cumsum(-1).clamp_max(1.0) <= mu
        head[..., 0] = True
        g_head = torch.where(head, err, 0.0).sum(-1)
        g_tail = torch.where(head, 0.0, err).sum(-1)
        total = g_head + g_tail
        w_head = torch.where(total > 0, g_head / torch.where(total > 0, total, 1.0), 0.5)
    return w_head * fkl + (1.0 - w_head) * rkl
