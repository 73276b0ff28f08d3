"""EGAD: entropy-guided adaptive distillation (the design card's entropy-curriculum variant)."""

import math

import torch

from kdbench.losses import TokenPlan
from kdbench.registry import token_policy

PACINGS = ("linear", "root", "step")


def normalised_entropy(teacher_logp: torch.Tensor) -> torch.Tensor:
    """h_i = H(p_i) / log|V| in [0, 1] (padding entries floored by the harness contribute 0)."""
    p = teacher_logp.exp()
    return -(p * teacher_logp).sum(-1) / math.log(teacher_logp.shape[-1])


def percentile(values: torch.Tensor) -> torch.Tensor:
    """u_i = rank_i / (N − 1) in [0, 1] within the batch (0 = lowest; ties broken by position); 0 if N = 1."""
    n = values.numel()
    ranks = torch.empty(n, device=values.device)
    ranks[torch.argsort(values, stable=True)] = torch.arange(n, device=values.device, dtype=torch.float32)
    return ranks / max(n - 1, 1)


def pacing(t: float, *, lambda0: float, t_full: float, kind: str) -> float:
    """λ(t) = λ0 + (1 − λ0)·g(min(1, t/t_full)), g = x (linear), √x (root) or 1[x ≥ 1] (step)."""
    x = min(1.0, max(0.0, t) / t_full) if t_full > 0 else 1.0
    g = {"linear": x, "root": math.sqrt(x), "step": float(x >= 1.0)}[kind]
    return lambda0 + (1 - lambda0) * g


@token_policy
class EGAD(torch.nn.Module):
    """EGAD, "Entropy-Guided Adaptive Distillation for Token-Level Knowledge Transfer"
    (arXiv 2605.01732). Only the abstract is public; this is kdbench's instantiation (docs/METHODS.md §4).

    Signal: teacher entropy per token, h_i = H(p_i)/log|V| ∈ [0, 1], untempered, no grad;
    u_i = h_i's percentile within the micro-batch's valid tokens (rank/(N−1)).

    1. Curriculum, easy → hard (`curriculum`): progress t = step/total; pacing
       λ(t) = λ0 + (1 − λ0)·g(min(1, t/t_full)) with g linear (x), root (√x) or step (1[x ≥ 1]);
       token weight w_i = sigmoid((λ(t) − u_i)/κ). Early on only low-entropy tokens count; from
       t_full on all do (w ≥ sigmoid(0) = 0.5 for the highest-entropy token, ≈1 for the rest).
       Off: w_i = 1.
    2. Entropy temperature (`entropy_temperature`): τ_i = τ_base·exp(γ·(h_i − median(h))), detached,
       with the τ_i² scale as in AdaKD. γ < 0 (default −0.5): confident tokens softened, uncertain
       ones sharpened; γ > 0 is the opposite-sign ablation. Off: τ_i = τ_base.
    3. Dual branch (`feature_branch`): tokens with u_i ≥ q_hard also get a feature loss
       β_feat·(1 − cos(W·h_s,i, h_t,i)) between the student's and the teacher's FINAL hidden states
       at that position (assumption: the layer map is last → last, the states the harness has);
       W is a learned linear projection d_s → d_t (no bias), trained with the student and saved with
       its checkpoint. Easy tokens get logits-only KD.

    L_EGAD = Σ_i w_i [τ_i² D(p^{τ_i}, q^{τ_i}) + β_feat·1[hard_i]·F_i] / Σ_i w_i, D = the base
    divergence (`fkl` unless a method_defs entry says otherwise: the label `egad` is `fkl` under this
    policy). Composes with AdaKD (`egad+adakd`): weights, temperatures and scales multiply.

    Assumptions (the paper's formulas are not public): percentiles are within-micro-batch; the
    entropy is of the untempered teacher; W is initialised orthogonally-ish (PyTorch's default
    Linear init) and has no bias; hard/easy is decided by the same percentile as the curriculum.

    Defaults: lambda0 0.3, t_full 0.5, pacing "linear", kappa 0.05, tau_base 1.0, gamma −0.5,
    q_hard 0.7, beta_feat 1.0; curriculum, entropy_temperature and feature_branch on (turning one
    off is the EGAD ablations). Ranges: lambda0, q_hard in [0, 1]; t_full in [0, 1]; kappa > 0;
    tau_base > 0; beta_feat ≥ 0.
    """

    base_divergence = "fkl"

    def __init__(self, *, total_steps: int, student_dim: int = 1, teacher_dim: int = 1,
                 lambda0: float = 0.3, t_full: float = 0.5, pacing: str = "linear", kappa: float = 0.05,
                 tau_base: float = 1.0, gamma: float = -0.5, q_hard: float = 0.7, beta_feat: float = 1.0,
                 curriculum: bool = True, entropy_temperature: bool = True, feature_branch: bool = True):
        super().__init__()
        for name, value in (("lambda0", lambda0), ("t_full", t_full), ("q_hard", q_hard)):
            if not 0 <= value <= 1:
                raise ValueError(f"EGAD: {name} = {value} is outside its range [0, 1]")
        for name, value in (("kappa", kappa), ("tau_base", tau_base)):
            if not value > 0:
                raise ValueError(f"EGAD: {name} = {value} must be > 0")
        if beta_feat < 0:
            raise ValueError(f"EGAD: beta_feat = {beta_feat} must be ≥ 0")
        if pacing not in PACINGS:
            raise ValueError(f"EGAD: pacing = {pacing!r}; allowed: {', '.join(PACINGS)}")
        self.lambda0, self.t_full, self.pacing, self.kappa = lambda0, t_full, pacing, kappa
        self.tau_base, self.gamma, self.q_hard, self.beta_feat = tau_base, gamma, q_hard, beta_feat
        self.curriculum, self.entropy_temperature = curriculum, entropy_temperature
        self.feature_branch = feature_branch and beta_feat > 0
        self.proj = torch.nn.Linear(student_dim, teacher_dim, bias=False) if self.feature_branch else None

    @torch.no_grad()
    def token_stats(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor, labels=None) -> dict:
        return {"entropy": normalised_entropy(teacher_logp).float()}

    @torch.no_grad()
    def plan(self, stats: dict, progress: float) -> TokenPlan:
        h = stats["entropy"]
        u = percentile(h)
        weight = torch.ones_like(h)
        if self.curriculum:
            lam = pacing(progress, lambda0=self.lambda0, t_full=self.t_full, kind=self.pacing)
            weight = torch.sigmoid((lam - u) / self.kappa)
        tau = torch.full_like(h, self.tau_base)
        if self.entropy_temperature:
            tau = self.tau_base * torch.exp(self.gamma * (h - h.median()))
        feature = (u >= self.q_hard).float() * self.beta_feat if self.feature_branch else None
        return TokenPlan.shared(weight, tau, feature_weight=feature)

    def feature_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor | None:
        """F_i = 1 − cos(W·h_s,i, h_t,i), per hard token; gradient reaches the student and W (None
        with the feature branch off)."""
        if self.proj is None:
            return None
        projected = self.proj(student_hidden.to(self.proj.weight.dtype)).float()
        return 1 - torch.nn.functional.cosine_similarity(projected, teacher_hidden.float(), dim=-1)

    def observe(self, kd_loss: float) -> None:
        """EGAD's schedule depends on progress only; nothing to update."""

    def log_scalars(self) -> dict[str, float]:
        """EGAD logs nothing of its own (its state is W, saved with the student)."""
        return {}
