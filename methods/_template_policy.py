"""Template for a new token policy: copy to methods/<key>.py (the key is the file stem), rename the
class, write the docstring, and list the label `<divergence>+<key>` in a grid config. Files starting
with `_` are not discovered, so this template is never registered.

A token policy implements every member of kdbench.policies.TokenPolicy (the registry checks this
when it loads the file and names what is missing): token_stats, plan, feature_loss, observe,
state_dict, load_state_dict, log_scalars. The harness calls nothing else on it. Its hyper-parameters
are the keyword-only parameters of __init__ with literal defaults (the harness supplies total_steps,
and student_dim/teacher_dim to a policy that declares them); range checks belong in __init__, which
runs with the config's values before any job. `base_divergence` (optional) is the divergence the
label `<key>` alone runs over; `<divergence>+<key>` names its own.
"""

import torch

from kdbench.losses import TokenPlan
from kdbench.registry import token_policy


@token_policy
class MyPolicy:
    """<Name>: <one line>.

    Paper: <authors, venue, arXiv id>.
    Rule (per token i of the micro-batch's N valid tokens, p = teacher, untempered):
        s_i = max_v p_v (the teacher's confidence);  w_i = 1 if s_i ≥ threshold else 0
        (at least the most confident token is kept);  τ_i = tau, scale τ².
    State: the EMA of the distillation loss (logged as `my_loss_ema`), for resume.
    Defaults: threshold = 0.0 (keep every token), tau = 1.0, beta = 0.9.
    Ranges: threshold in [0, 1]; tau > 0; beta in [0, 1).
    """

    base_divergence = "fkl"  # the label `<key>` alone: FKL under this policy (optional; fkl without it)

    def __init__(self, *, total_steps: int, threshold: float = 0.0, tau: float = 1.0, beta: float = 0.9):
        if not 0 <= threshold <= 1:
            raise ValueError(f"MyPolicy: threshold = {threshold!r} is outside its range [0, 1].")
        if not tau > 0:
            raise ValueError(f"MyPolicy: tau = {tau!r} must be a temperature > 0.")
        if not 0 <= beta < 1:
            raise ValueError(f"MyPolicy: beta = {beta!r} is outside its range [0, 1).")
        self.total_steps, self.threshold, self.tau, self.beta = total_steps, threshold, tau, beta
        self.ema: float | None = None

    @torch.no_grad()
    def token_stats(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                    labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-token statistics of one chunk of tokens ((n, V) untempered fp32 log-probs), no grad;
        the harness concatenates the chunks before plan."""
        return {"confidence": teacher_logp.max(-1).values.exp().float()}

    @torch.no_grad()
    def plan(self, stats: dict[str, torch.Tensor], progress: float) -> TokenPlan:
        """The plan over all N valid tokens. Pure: read the state, never change it (use observe)."""
        s = stats["confidence"]
        weight = (s >= self.threshold).float()
        if s.numel() and not weight.any():
            weight[s.argmax()] = 1.0
        return TokenPlan.shared(weight, torch.full_like(s, self.tau))

    def feature_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor | None:
        """No hidden-state feature term (a policy with one returns (k,) losses, as EGAD does)."""
        return None

    def observe(self, kd_loss: float) -> None:
        """Once per optimizer step, the step's global mean distillation loss: the only state update."""
        self.ema = kd_loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * kd_loss

    def state_dict(self) -> dict:
        """Everything observe changes, JSON-serialisable (it goes into the checkpoint's client state)."""
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (resume)."""
        self.ema = state["ema"]

    def log_scalars(self) -> dict[str, float]:
        """Scalars for metrics.jsonl (keys other than the harness's own); {} when there is nothing."""
        return {} if self.ema is None else {"my_loss_ema": self.ema}
