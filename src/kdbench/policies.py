"""Token policies in composition: `egad+adakd` runs both policies over one divergence.

Each policy plans independently from its own statistics; the plans combine multiplicatively
(weights, student and teacher temperatures, scales multiply; feature weights add), which with one
policy is that policy's plan unchanged.
"""

from __future__ import annotations

import torch

from kdbench.losses import TokenPlan


class Composed:
    def __init__(self, policies: list):
        self.policies = policies

    def token_stats(self, student_logp, teacher_logp, labels=None) -> dict[str, torch.Tensor]:
        return {f"{i}/{k}": v for i, p in enumerate(self.policies)
                for k, v in p.token_stats(student_logp, teacher_logp, labels).items()}

    def plan(self, stats: dict[str, torch.Tensor], progress: float) -> TokenPlan:
        plans = [p.plan({k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith(f"{i}/")}, progress)
                 for i, p in enumerate(self.policies)]
        out = plans[0]
        for other in plans[1:]:
            features = [f for f in (out.feature_weight, other.feature_weight) if f is not None]
            out = TokenPlan(out.weight * other.weight, out.tau_student * other.tau_student,
                            out.tau_teacher * other.tau_teacher, out.scale * other.scale,
                            sum(features) if features else None)
        return out

    def feature_loss(self, student_hidden, teacher_hidden):
        owners = [p for p in self.policies if hasattr(p, "feature_loss")]
        if len(owners) != 1:
            raise ValueError(f"{len(owners)} composed policies define a feature loss; at most one may")
        return owners[0].feature_loss(student_hidden, teacher_hidden)

    def observe(self, kd_loss: float) -> None:
        for p in self.policies:
            p.observe(kd_loss)

    @property
    def ratio(self) -> float | None:
        ratios = [p.ratio for p in self.policies if hasattr(p, "ratio")]
        return ratios[0] if ratios else None

    def modules(self) -> list[torch.nn.Module]:
        """Policies with trainable parameters (EGAD's projection): trained and saved with the student."""
        return [p for p in self.policies if isinstance(p, torch.nn.Module)]

    def load_state_dicts(self, states: list[dict]) -> None:
        for p, state in zip(self.policies, states, strict=True):
            if not isinstance(p, torch.nn.Module):
                p.load_state_dict(state)

    def state_dicts(self) -> list[dict]:
        """Non-tensor state for resume (AdaKD's EMA, ratio, reference); tensor state lives in modules()."""
        return [{} if isinstance(p, torch.nn.Module) else p.state_dict() for p in self.policies]
