"""Forward KL divergence `fkl`: the classic word-level KD objective."""

import torch

from kdbench import formulas
from kdbench.registry import divergence


@divergence
def fkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Forward KL, KL(p ‖ q): mean-seeking, the student covers every teacher mode.

    Paper: Hinton et al. 2015 (KD); word-level KD for LMs (Kim & Rush 2016); the "FKD" baseline of
    AdaKD (AAAI 2026) and MiniLLM's KD baseline.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ)):
        FKL_i = Σ_v p_v (log p_v − log q_v)
    The teacher-entropy term is kept, so the value is exactly 0 when q = p; its gradient equals the
    cross-entropy form −Σ_v p_v ∇log q_v. The τ² factor and τ itself are applied by the harness.
    Direction: forward (expectation under the teacher).
    Hyper-parameters: none. Range: [0, ∞).
    """
    return formulas.forward_kl(student_logp, teacher_logp)
