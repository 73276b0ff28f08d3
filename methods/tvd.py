"""Total variation distance `tvd`: ½ Σ_v |p − q|."""

import torch

from kdbench.registry import divergence


@divergence
def tvd(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Total variation distance, ½ ‖p − q‖₁: symmetric and bounded.

    Paper: f-DISTILL, "f-Divergence Minimization for Sequence-Level Knowledge Distillation" (Wen et
    al., ACL 2023), used here at token level as a bounded, symmetric baseline.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        TVD_i = ½ Σ_v |p_v − q_v|
    The (sub)gradient is ½·sign(q_v − p_v) through q (0 where p_v = q_v). The τ² factor and τ itself
    are applied by the harness.
    Direction: symmetric (TVD(p, q) = TVD(q, p)).
    Hyper-parameters: none. Range: [0, 1].
    """
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)
