"""Base divergence formulas, shared by the divergence plugins (methods/fkl.py, …) and the token
policies that score tokens with them (AdaKD's difficulty indicators), so each formula is written once.

Every function takes fp32 log-probabilities over the vocabulary, the vocabulary being the last
dimension: `student_logp` = log q, `teacher_logp` = log p, shape (…, V), and returns one value per
token, shape (…,). Nothing here masks, reduces, tempers or multiplies by τ²: the harness
(kdbench.losses) alone does that. Nothing here checks a weight's range either; a plugin checks its
own hyper-parameters and says what is wrong in its own words.
"""

from __future__ import annotations

import math

import torch

JS_FLOOR = 1e-8  # the mixture m of `js` is clamped at 1e-8 inside the log (docs/METHODS.md §1)
JS_LOG_FLOOR = math.log(JS_FLOOR)  # -18.420680743952367


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), the expectation under the teacher."""
    p = teacher_logp.exp()
    return (p * (teacher_logp - student_logp)).sum(-1)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) = Σ_v q_v (log q_v − log p_v), the expectation under the student."""
    q = student_logp.exp()
    return (q * (student_logp - teacher_logp)).sum(-1)


def log_mixture(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_weight: float,
                student_weight: float) -> torch.Tensor:
    """log m_v with m_v = a·p_v + b·q_v (a = teacher_weight, b = student_weight), per vocabulary entry.

    Computed as logaddexp(log p + log a, log q + log b), the weights' logs taken in the inputs'
    dtype, so it is exact where p or q underflows; a weight of 0 drops its term (log 0 = −inf).
    Returns (…, V), not per token: it is the inner term of the skew and JS divergences below.
    """
    log_w = torch.tensor([teacher_weight, student_weight], dtype=student_logp.dtype, device=student_logp.device).log()
    return torch.logaddexp(teacher_logp + log_w[0], student_logp + log_w[1])


def skew_forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Skew forward KL, KL(p ‖ m) = Σ_v p_v (log p_v − log m_v) with m = α p + (1−α) q.

    α = 0 is forward_kl; α = 1 is 0; the value is at most −log α.
    """
    log_m = log_mixture(student_logp, teacher_logp, alpha, 1.0 - alpha)
    p = teacher_logp.exp()
    return (p * (teacher_logp - log_m)).sum(-1)


def skew_reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Skew reverse KL, KL(q ‖ m) = Σ_v q_v (log q_v − log m_v) with m = (1−α) p + α q.

    α = 0 is reverse_kl; α = 1 is 0; the value is at most −log α.
    """
    log_m = log_mixture(student_logp, teacher_logp, 1.0 - alpha, alpha)
    q = student_logp.exp()
    return (q * (student_logp - log_m)).sum(-1)


def js(student_logp: torch.Tensor, teacher_logp: torch.Tensor, lam: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence with the student's weight λ:

        m_v  = (1−λ) p_v + λ q_v,   log m_v taken as log max(m_v, 1e-8)   (JS_FLOOR)
        JS   = λ Σ_v q_v (log q_v − log m_v) + (1−λ) Σ_v p_v (log p_v − log m_v)

    λ = 0.5 is the classic JSD, in [0, log 2]; λ = 0 and λ = 1 give 0. The floor also stops the
    gradient through m where m < 1e-8, so values within ~1e-8 per entry of it are approximate.
    """
    log_m = log_mixture(student_logp, teacher_logp, 1.0 - lam, lam).clamp_min(JS_LOG_FLOOR)
    p, q = teacher_logp.exp(), student_logp.exp()
    kl_q_m = (q * (student_logp - log_m)).sum(-1)
    kl_p_m = (p * (teacher_logp - log_m)).sum(-1)
    return lam * kl_q_m + (1.0 - lam) * kl_p_m
