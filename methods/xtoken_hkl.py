"""X-Token H-KL: KL on the common vocabulary plus a sorted L1 on the rest."""

import torch

from kdbench.crosstok import losses
from kdbench.registry import crosstok


@crosstok(alignment="chunks")
def xtoken_hkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, relaxed_student: torch.Tensor,
               relaxed_teacher: torch.Tensor, kd_ratio: float = 0.5, dynamic_loss_scaling: bool = True, uncommon_topk: int = 8192) -> torch.Tensor:
    """X-Token H-KL (NVIDIA NeMo-RL, `_compute_gold` with `xtoken_loss=True`), a cross-tokenizer method.

    Formula (per aligned chunk, q = student, p = teacher; C = the common pairs (s_c, t_c) read off
    the projection by the relaxed rule, top weight ≥ 0.6 (the pair's vocab_map `relaxed_*`); U = the
    rest of each vocabulary; K = min(|U_s|, |U_t|, uncommon_topk)):
        HKL = Σ_{c∈C} p_{t_c} (log p_{t_c} − log q_{s_c}) + Σ_{k ≤ K} |q^U_(k) − p^U_(k)|
    (the KL on the full-vocabulary log-probabilities restricted to C, not renormalised; both uncommon
    parts sorted decreasing and cut to K).
    Direction: forward KL on C, symmetric on U. Range: [0, ∞).
    Alignment: as `xtoken` (chunks; student probabilities and teacher log-probabilities averaged).
    Defaults (NeMo-RL, as `xtoken`): temperature 1, uncommon_topk 8192 (≥ 1), `dynamic_loss_scaling`
    true with kd_ratio 0.5 (L ∝ CE + sg(CE/HKL)·HKL); false with kd_ratio 0.909091 is NeMo-RL's fixed
    1·HKL + 0.1·CE (the label `xtoken_hkl-fixed`).
    No token policy composes with it: its two terms are not one distribution pair in one vocabulary.
    Formula code: kdbench.crosstok.losses.xtoken_hkl; docs/METHODS.md §6.
    """
    if uncommon_topk < 1:
        raise ValueError(f"xtoken_hkl: uncommon_topk {uncommon_topk}: give at least 1.")
    return losses.xtoken_hkl(student_logp, teacher_logp, relaxed_student, relaxed_teacher, uncommon_topk=uncommon_topk)
