"""MinED: FuseLLM's token-level fusion target, distilled from one teacher."""

import torch

from kdbench.registry import crosstok


@crosstok(alignment="mined")
def mined(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, common_student: torch.Tensor,
          common_teacher: torch.Tensor, kd_ratio: float = 0.1, top_k: int = 10) -> torch.Tensor:
    """MinED (FuseLLM: Wan et al., "Knowledge Fusion of Large Language Models", ICLR 2024; code
    fanqiwan/FuseLLM, `src/utils/others.py` dtw and `transform_step_logits`), with one teacher, a
    cross-tokenizer method.

    Alignment: dynamic time warping over the two token sequences with the Levenshtein distance of the
    marker-free token strings (`alignment="mined"`, kdbench.crosstok.align.mined_alignment); a
    student token matched with exactly one teacher token of the same string gets the teacher's
    distribution, every other student token the one-hot of its own token (FuseLLM), which is the
    harness's cross-entropy term, so only the matched units are given here.
    Formula (per matched unit, q = student, p = teacher): the teacher's `top_k` most probable tokens
    among those with a student counterpart (the vocab_map's common pairs C), renormalised over them,
    mapped to the student's ids, and the student's cross-entropy against that target:
        S = top_k of {t_c : c ∈ C} by p,   p̃_c = p_{t_c} / Σ_{c'∈S} p_{t_c'},   MinED = − Σ_{c∈S} p̃_c log q_{s_c}
    Direction: forward (a cross-entropy: KL(p̃ ‖ q) plus the target's entropy). Range: [0, ∞).
    Defaults (FuseLLM): top_k 10 (its stored logits per step, ≥ 1), temperature 1, L = 0.9 · CE + 0.1 ·
    fusion loss (`lm_loss_weight` 0.9: kd_ratio 0.1).
    Differences: FuseLLM maps each teacher token to a student token by minimum edit distance over the
    vocabularies (its vocab_mapping); here only tokens with the same text (the vocab_map's C) map,
    the others are left out of S. No token policy composes with it (a cross-entropy against a
    truncated target, no space).
    docs/METHODS.md §6.
    """
    if top_k < 1:
        raise ValueError(f"mined: top_k {top_k}: give at least 1.")
    teacher = teacher_logp[:, common_teacher]
    top = teacher.topk(min(top_k, teacher.shape[-1]), dim=-1)
    target = torch.softmax(top.values, dim=-1)
    return -(target * student_logp[:, common_student].gather(1, top.indices)).sum(-1)
