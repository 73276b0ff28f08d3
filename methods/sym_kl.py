"""Symmetric KL mixture `sym_kl`: (1−λ)·FKL + λ·RKL (not DistiLLM's skew `skl`)."""

import torch

from kdbench.registry import divergence


@divergence
def sym_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, lam: float = 0.9) -> torch.Tensor:
    """Symmetric KL mixture, (1−λ)·KL(p ‖ q) + λ·KL(q ‖ p): interpolates mean- and mode-seeking.

    Paper: none of its own; the convex FKL/RKL mixture that docs/METHODS.md §1 lists beside the
    DistiLLM (Ko et al., ICML 2024) skew losses. Named `sym_kl` so nobody confuses it with
    DistiLLM's skew KL `skl`.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        FKL_i = Σ_v p_v (log p_v − log q_v),   RKL_i = Σ_v q_v (log q_v − log p_v)
        SYM_i = (1−λ)·FKL_i + λ·RKL_i
    λ = 0 gives `fkl`, λ = 1 gives `rkl`, λ = 0.5 is half the Jeffreys divergence. The gradient of
    the RKL part flows through q inside the sum (token level). The τ² factor and τ itself are
    applied by the harness.
    Direction: both (λ is the weight of the reverse direction).
    Hyper-parameters: lam = 0.9, range [0, 1] (outside it the value can be negative: it is then no
    longer a divergence, though still finite). Value range: [0, ∞).
    """
    p, q = teacher_logp.exp(), student_logp.exp()
    diff = teacher_logp - student_logp
    return ((1.0 - lam) * p * diff - lam * q * diff).sum(-1)
