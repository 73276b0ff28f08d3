"""AdaKD: token-adaptive knowledge distillation (LATF token focusing + IDTS per-token temperature)."""

import math

import torch

from kdbench.losses import TokenPlan
from kdbench.registry import token_policy


def hellinger(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Per-token Hellinger distance `(1/√2)·sqrt(Σ_v (√p − √q)²)` in [0, 1] (untempered, no grad)."""
    diff = (teacher_logp / 2).exp() - (student_logp / 2).exp()
    return (diff.pow(2).sum(-1) / 2).sqrt()


@token_policy
class AdaKD:
    """AdaKD, "LLM-Oriented Token-Adaptive Knowledge Distillation" (AAAI 2026, arXiv 2510.11615).

    Composes with any base divergence D. Per response token i of a micro-batch:

    Difficulty (Hellinger, untempered, no grad):  s_i = (1/√2)·sqrt(Σ_v (√p_v − √q_v)²) ∈ [0, 1].

    LATF (which tokens): keep the top-r fraction of valid tokens by s_i over the flattened
    micro-batch, n_sel = max(1, floor(n_valid·r)). State: EMA of the distillation loss
    L̄_t = β·L̄_{t−1} + (1−β)·L_t (initialised with the first value), ratio r (starts at 1),
    reference L_ref. The first `warmup` fraction of total steps keeps r = 1 and ends with
    L_ref = L̄. After warm-up, each step: L̄ < L_ref(1−ε) → r ← max(r_min, r(1−δ));
    L̄ > L_ref(1+ε) → r ← min(1, r(1+δ)); after any change L_ref ← L̄.

    IDTS (what temperature): ŝ_i = tanh(log(s_i / median_{selected}(s))),
    τ_i = τ_base·exp(−c·ŝ_i) ∈ [τ_base·e^{−c}, τ_base·e^{c}], detached: hard tokens get a low τ.

    Loss (applied by the harness): L = mean_{i∈selected} τ_i²·D(p^{τ_i}, q^{τ_i}).

    Defaults: beta 0.99, eps 0.05, delta 0.05, warmup 0.05, r_min 0.1, tau_base 1.0, c 0.5.
    Ranges: beta, eps, delta, warmup in [0, 1); r_min in (0, 1]; tau_base > 0; c ≥ 0 (a negative c
    is the paper's "inverse direction" ablation: hard tokens get a high τ).
    """

    def __init__(self, *, total_steps: int, beta: float = 0.99, eps: float = 0.05, delta: float = 0.05,
                 warmup: float = 0.05, r_min: float = 0.1, tau_base: float = 1.0, c: float = 0.5):
        self.beta, self.eps, self.delta, self.r_min = beta, eps, delta, r_min
        self.tau_base, self.c = tau_base, c
        self.warmup_steps = math.floor(warmup * total_steps)
        self.ema: float | None = None
        self.ratio = 1.0
        self.ref: float | None = None
        self.steps_seen = 0

    @torch.no_grad()
    def plan(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor, progress: float) -> TokenPlan:
        """Selection (weight 1 = kept, 0 = dropped) and one temperature per token for both models."""
        s = hellinger(student_logp, teacher_logp)
        n_sel = max(1, math.floor(s.numel() * self.ratio))
        selected = torch.topk(s, n_sel).indices
        weights = torch.zeros_like(s)
        weights[selected] = 1.0
        median = s[selected].median().clamp_min(1e-12)
        s_hat = torch.tanh(torch.log(s.clamp_min(1e-12) / median))
        temperature = self.tau_base * torch.exp(-self.c * s_hat)
        return TokenPlan.shared(weights, temperature)

    def observe(self, kd_loss: float) -> None:
        """Feed the step's global mean distillation loss; update the EMA, the reference and r."""
        self.ema = kd_loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * kd_loss
        if self.steps_seen < self.warmup_steps:
            if self.steps_seen == self.warmup_steps - 1:
                self.ref = self.ema
        elif self.ref is None:
            self.ref = self.ema
        else:
            ratio = self.ratio
            if self.ema < self.ref * (1 - self.eps):
                ratio = max(self.r_min, ratio * (1 - self.delta))
            elif self.ema > self.ref * (1 + self.eps):
                ratio = min(1.0, ratio * (1 + self.delta))
            if ratio != self.ratio:
                self.ratio, self.ref = ratio, self.ema
        self.steps_seen += 1

    def state_dict(self) -> dict:
        return {"ema": self.ema, "ratio": self.ratio, "ref": self.ref, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.ratio, self.ref, self.steps_seen = (
            state["ema"], state["ratio"], state["ref"], state["steps_seen"])
