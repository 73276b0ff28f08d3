"""Skew reverse KL divergence `srkl`: DistiLLM's SRKL, KL(q ‖ (1−α)p + αq)."""

import torch

from kdbench import formulas
from kdbench.registry import divergence


@divergence
def srkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, alpha: float = 0.1) -> torch.Tensor:
    """Skew reverse KL, KL(q ‖ m) with m = (1−α)p + αq: reverse KL against a student-smoothed teacher.

    Paper: DistiLLM, "Towards Streamlined Distillation for Large Language Models" (Ko et al.,
    ICML 2024), its "SRKL" (the loss of its adaptive off-policy runs).
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        m_v     = (1−α) p_v + α q_v         (log m computed as a log-sum-exp of the log-probabilities)
        SRKL_i  = Σ_v q_v (log q_v − log m_v)
    α = 0 gives `rkl`; α = 1 gives 0. Mixing in the student bounds the value (≤ −log α for α > 0)
    where the teacher puts p_v = 0. The gradient flows through q as the weight, inside log q and
    through m. The τ² factor and τ itself are applied by the harness.
    Direction: reverse (expectation under the student).
    Hyper-parameters: alpha = 0.1 (DistiLLM's default), range [0, 1]; a value outside [0, 1] makes m
    a signed mixture whose log is NaN, so it raises ValueError. Value range: [0, −log α].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"srkl: alpha must be in [0, 1] (the student's weight in the mixture); got {alpha}.")
    return formulas.skew_reverse_kl(student_logp, teacher_logp, alpha)
