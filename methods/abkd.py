"""α-β divergence `abkd`: ABKD's AB-divergence, a two-knob family containing FKL and RKL."""

import torch

from kdbench.registry import divergence


@divergence
def abkd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, alpha: float = 0.2,
         beta: float = 0.7) -> torch.Tensor:
    """α-β divergence D_AB^{(α,β)}(p ‖ q): α powers the teacher's probabilities, β the student's;
    the family runs from FKL (α=1, β=0) to RKL (α=0, β=1) and beyond.

    Paper: ABKD, "ABKD: Pursuing a Proper Allocation of the Probability Mass in Knowledge
    Distillation via α-β-Divergence" (Wang et al., ICML 2025); the divergence is Cichocki, Cruces &
    Amari, "Generalized Alpha-Beta Divergences and Their Application to Robust NMF", Entropy 2011.
    Formula (per token i, p = teacher, q = student, both softmax(z/τ); α, β, α+β ≠ 0):
        D_i = −1/(αβ) Σ_v [ p_v^α q_v^β − α/(α+β) p_v^{α+β} − β/(α+β) q_v^{α+β} ]
    The limits, used exactly when a hyper-parameter is 0 (continuous in α, β; each checked against
    the general formula at a distance 1e-5 from the limit), with d_v = log p_v − log q_v:
        α ≠ 0, β = 0:      (1/α²) Σ_v [ p^α log(p^α/q^α) − p^α + q^α ]      (α = 1: KL(p‖q) = `fkl`)
        α = 0, β ≠ 0:      (1/β²) Σ_v [ q^β log(q^β/p^β) − q^β + p^β ]      (β = 1: KL(q‖p) = `rkl`)
        α = −β ≠ 0:        (1/α²) Σ_v [ (p/q)^α − log (p/q)^α − 1 ]  =  (1/α²) Σ_v [ e^{α d} − 1 − α d ]
        α = β = 0:         ½ Σ_v d_v²                                        (log-Euclidean)
    Powers are exponentials of the log-probabilities (p^α = e^{α log p}), so p = 0 (padding floored
    at −1e30 by the harness) gives p^α = 0 and finite gradients for α > 0, and 0·log 0 = 0.
    α = 1, β = 0 is `fkl`; α = 0, β = 1 is `rkl`; α = β = ½ is 2 Σ_v (√p − √q)² (4·H², H the
    Hellinger distance with the 1/√2 of AdaKD).
    The τ² factor and τ itself are applied by the harness. Near α = 0 or β = 0 the general formula
    cancels: in fp32 its relative error is about 3e-8/min(|α|, |β|) (3e-5 at 1e-3), so set an exact
    0 to get the closed form (α + β → 0 is not affected).
    Direction: interpolates; forward at (1, 0), reverse at (0, 1).
    Hyper-parameters: alpha = 0.2, beta = 0.7 (docs/METHODS.md §1). Range: α ≥ 0, β ≥ 0, not both 0,
    for a finite value on every input. The formula is a divergence for any real α, β and the plugin
    computes it there too, but a negative exponent (this includes the α = −β ≠ 0 case) or α = β = 0
    makes it unbounded wherever p or q is 0 (vocabulary padding, underflow on extreme logits), and
    the value or its gradient then overflows. Value range: [0, ∞).
    """
    a, b = teacher_logp, student_logp
    if alpha == 0 and beta == 0:
        return 0.5 * (a - b).square().sum(-1)
    if beta == 0:
        p_a = (alpha * a).exp()
        return (alpha * p_a * (a - b) - p_a + (alpha * b).exp()).sum(-1) / alpha**2
    if alpha == 0:
        q_b = (beta * b).exp()
        return (beta * q_b * (b - a) - q_b + (beta * a).exp()).sum(-1) / beta**2
    if alpha + beta == 0:
        ad = alpha * (a - b)
        return (torch.expm1(ad) - ad).sum(-1) / alpha**2
    s = alpha + beta
    bracket = (alpha * a + beta * b).exp() - (alpha / s) * (s * a).exp() - (beta / s) * (s * b).exp()
    return -bracket.sum(-1) / (alpha * beta)
