"""SimpleCTKD: knowledge distillation on the common sub-vocabulary of two tokenizers."""

import torch

from kdbench.crosstok import losses
from kdbench.registry import crosstok


@crosstok(alignment="pairs", space="common")
def simple_ctkd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, common_student: torch.Tensor,
                common_teacher: torch.Tensor, kd_ratio: float = 0.5) -> torch.Tensor:
    """SimpleCTKD (KDFlow, songmzhang/KDFlow `kdflow/algorithms/simple_ctkd.py`), a cross-tokenizer method.

    Formula (per aligned unit, q = student, p = teacher, C = the common pairs (s_c, t_c) of the pair's
    vocab_map): both distributions restricted to C and renormalised,
        q̃_c = q_{s_c} / Σ_{c'} q_{s_c'},   p̃_c = p_{t_c} / Σ_{c'} p_{t_c'},
        SimpleCTKD = KL(p̃ ‖ q̃) = Σ_c p̃_c (log p̃_c − log q̃_c).
    Direction: forward KL. Range: [0, ∞).
    Alignment: one-to-one exact groups (one student and one teacher token over the same text) and
    the end of sequence (`alignment="pairs"`, kdbench.crosstok.data).
    Defaults (KDFlow's): temperature 1, loss = 0.5 · CE + 0.5 · KD (`kd_ratio` 0.5, the harness's mix).
    No hyper-parameters. A token policy composes in the common space (`space="common"`: p̃, q̃).
    Formula code: kdbench.crosstok.losses.simple_ctkd; docs/METHODS.md §6.
    """
    return losses.simple_ctkd(student_logp, teacher_logp, common_student, common_teacher)
