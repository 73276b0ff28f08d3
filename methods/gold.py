"""GOLD: TRL's hybrid ULD, a generalized JSD on the matched vocabulary plus a sorted L1 on the rest."""

import torch

from kdbench.crosstok import losses
from kdbench.registry import crosstok


@crosstok(alignment="groups")
def gold(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, common_student: torch.Tensor,
         common_teacher: torch.Tensor, kd_ratio: float = 1.0, beta: float = 0.5, matched_weight: float | None = None,
         unmatched_weight: float | None = None) -> torch.Tensor:
    """GOLD (Hugging Face TRL `trl/experimental/gold`, `ULDLoss._compute_hybrid_uld_loss` with
    `uld_use_hybrid_loss`), a cross-tokenizer method.

    Formula (per aligned group, q = student, p = teacher, C = the common pairs (s_c, t_c) of the
    pair's vocab_map, U = the rest of each vocabulary):
        GOLD = w_m · JSD_β(q_{s_C}, p_{t_C}) + w_u · Σ_k |q^U_(k) − p^U_(k)|   (the shorter zero-padded)
    with JSD_β TRL's generalized JSD on the matched probabilities as they are (logs clamped at 1e-8;
    β = 0 forward KL, β = 1 reverse KL), and w_m = |C| / V_t, w_u = 1 − w_m unless both weights are
    given. Direction: symmetric at β = 0.5. Range: [0, ∞).
    Alignment: every group of tokens between common cuts (`alignment="groups"`); a group of k > 1
    tokens on a side is one distribution, TRL's "observed" merge: the first position's probabilities
    times the probabilities of the tokens actually at positions 2..k (each clamped at 1e-8), not
    renormalised (kdbench.losses.cross_objective, `kdbench.crosstok.losses.merge_group`).
    Defaults (TRL): β 0.5 in [0, 1], adaptive weights, temperature 1 (no τ²), distillation weight 1
    and cross-entropy weight 0 (`kd_ratio` 1.0). TRL matches raw token strings; the vocab_map's C
    normalises `Ġ`/`▁`/byte fallback. No token policy composes with it (no one distribution pair).
    Formula code: kdbench.crosstok.losses.gold; docs/METHODS.md §6.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gold: beta {beta} must be in [0, 1].")
    return losses.gold(student_logp, teacher_logp, common_student, common_teacher, beta=beta,
                       matched_weight=matched_weight, unmatched_weight=unmatched_weight)
