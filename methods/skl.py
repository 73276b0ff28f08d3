"""Skew forward KL divergence `skl`: DistiLLM's SKL, KL(p ‖ αp + (1−α)q) (skew, not symmetric)."""

import torch

from kdbench import formulas
from kdbench.registry import divergence


@divergence
def skl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, alpha: float = 0.1) -> torch.Tensor:
    """Skew forward KL, KL(p ‖ m) with m = αp + (1−α)q: forward KL against a teacher-smoothed student.

    Paper: DistiLLM, "Towards Streamlined Distillation for Large Language Models" (Ko et al.,
    ICML 2024), its "SKL". In this lineage SKL means *skew* KL; the symmetric FKL/RKL mixture is
    `sym_kl`.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        m_v    = α p_v + (1−α) q_v          (log m computed as a log-sum-exp of the log-probabilities)
        SKL_i  = Σ_v p_v (log p_v − log m_v)
    α = 0 gives `fkl`; α = 1 gives 0. Mixing in the teacher bounds the value (≤ −log α for α > 0)
    and the gradient when q_v → 0 where p_v > 0. The gradient reaches the student only through m.
    The τ² factor and τ itself are applied by the harness.
    Direction: forward (expectation under the teacher).
    Hyper-parameters: alpha = 0.1 (DistiLLM's default), range [0, 1]; a value outside [0, 1] makes m
    a signed mixture whose log is NaN, so it raises ValueError. Value range: [0, −log α].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"skl: alpha must be in [0, 1] (the teacher's weight in the mixture); got {alpha}.")
    return formulas.skew_forward_kl(student_logp, teacher_logp, alpha)
