"""Reverse KL divergence `rkl`: token-level KL(q ‖ p), the mode-seeking counterpart of `fkl`."""

import torch

from kdbench import formulas
from kdbench.registry import divergence


@divergence
def rkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Reverse KL, KL(q ‖ p): mode-seeking, the student concentrates on the teacher's main modes.

    Paper: the "RKL" baseline of AdaKD (AAAI 2026) and DistiLLM (ICML 2024); MiniLLM (ICLR 2024)
    motivates reverse KL for LMs, but this is the token-level loss, not MiniLLM's sequence-level
    policy gradient.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        RKL_i = Σ_v q_v (log q_v − log p_v)
    The gradient flows through q both as the weight and inside the log. Entries with q_v = 0 count
    0 (0·log 0 = 0); where the teacher has p_v = 0 (padding floored at −1e30 by the harness) and
    q_v > 0 the value is very large but finite. The τ² factor and τ itself are applied by the harness.
    Direction: reverse (expectation under the student).
    Hyper-parameters: none. Range: [0, ∞).
    """
    return formulas.reverse_kl(student_logp, teacher_logp)
