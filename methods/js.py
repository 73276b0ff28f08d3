"""Generalized Jensen-Shannon divergence `js`: GKD's JSD(β) with interpolation weight λ."""

import torch

from kdbench import formulas
from kdbench.registry import divergence


@divergence
def js(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, lam: float = 0.9) -> torch.Tensor:
    """Generalized JSD, λ·KL(q ‖ m) + (1−λ)·KL(p ‖ m) with m = (1−λ)p + λq.

    Paper: GKD, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
    (Agarwal et al., ICLR 2024), its generalized JSD; λ here is the student's weight, i.e. GKD's
    β = 1 − λ (λ = 0.9 ↔ GKD β = 0.1).
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        m_v   = (1−λ) p_v + λ q_v,   log m_v taken as log max(m_v, 1e-8)
        JSD_i = λ Σ_v q_v (log q_v − log m_v) + (1−λ) Σ_v p_v (log p_v − log m_v)
    λ = 0.5 is the classic Jensen-Shannon divergence; λ → 0 and λ → 1 both give 0 (so the value
    scales like λ(1−λ)). log m is a log-sum-exp of the log-probabilities, floored at log 1e-8
    (docs/METHODS.md's clamp: it also stops the gradient through m where m < 1e-8, so values within
    ~1e-8 per entry of that floor are approximate). The τ² factor and τ are applied by the harness.
    Direction: both (λ weighs the reverse, student-side term).
    Hyper-parameters: lam = 0.9, range [0, 1]; outside it m is a signed mixture whose log is NaN, so
    it raises ValueError. Value range: [0, H(λ)] with H the binary entropy (≤ log 2), up to ~1e-8 per
    clamped entry.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"js: lam must be in [0, 1] (the student's weight in the mixture m); got {lam}.")
    return formulas.js(student_logp, teacher_logp, lam)  # the floor is formulas.JS_FLOOR
