"""Token policies: the `TokenPolicy` protocol a policy plugin implements, and `Composed`, which runs
one or several of them (`egad+adakd`) over one divergence.

Each policy plans independently from its own statistics; the plans combine multiplicatively
(weights, student and teacher temperatures, scales multiply; feature weights add; the temperature
factors with a gradient, `TokenPlan.tau_grads`, are kept side by side), which with one
policy is that policy's plan unchanged. The harness talks to policies only through the protocol's
members: it knows no policy's own attribute names (what a policy logs comes from its log_scalars()).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from kdbench.losses import TokenPlan
from kdbench.registry import MEMBERS, missing_members  # noqa: F401 (the protocol's members, checked on load)


@runtime_checkable
class TokenPolicy(Protocol):
    """What the harness calls on a token policy (methods/_template_policy.py is a minimal one).

    Constructed with its hyper-parameters (the keyword-only parameters of `__init__`, each with a
    literal default or none, kdbench.registry) plus the harness arguments it declares (`total_steps`,
    and for a policy with a feature loss `student_dim`/`teacher_dim`). Optionally a class attribute
    `base_divergence: str`, the divergence plugin key the policy runs over when its own key is a
    label's base (`egad` = fkl under EGAD); without it, fkl. Per micro-batch the harness
    calls token_stats on each chunk of valid tokens, then plan once over the micro-batch; per
    optimizer step, observe once; at each metrics record, log_scalars; at a checkpoint and on
    resume, state_dict/load_state_dict. A policy that is a torch.nn.Module (EGAD) is trained and
    saved with the student, so its state_dict/load_state_dict are the module's (tensor state).
    """

    def token_stats(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                    labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-token statistics {name: (n,)} of one chunk of n valid tokens, computed without grad
        from the untempered fp32 log-probs (n, V) and the (n,) target ids; the harness concatenates
        the chunks' values name by name before plan."""

    def plan(self, stats: dict[str, torch.Tensor], progress: float) -> TokenPlan:
        """The TokenPlan (per-token weight, student/teacher temperature, scale, optional feature
        weight) over the micro-batch's N valid tokens, from the concatenated stats and the training
        progress t = step/total_steps in [0, 1]. Pure: it must not change the policy's state, so the
        same arguments give the same plan (state changes belong in observe)."""

    def feature_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor | None:
        """Per-token feature loss (k,) on the final hidden states of the k tokens the plan gives a
        feature weight, with grad to the student; None for a policy without a feature term."""

    def observe(self, kd_loss: float) -> None:
        """The optimizer step's global mean distillation loss, once per step: update the state."""

    def state_dict(self) -> dict:
        """The state that changes across steps, for a checkpoint."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (resume)."""

    def log_scalars(self) -> dict[str, float]:
        """Scalars for metrics.jsonl, by key (AdaKD: {"latf_ratio": r}); {} if none."""


class Composed:
    """One or several token policies acting as one: their plans multiply, their log scalars merge."""

    def __init__(self, policies: list[TokenPolicy]):
        for p in policies:
            if missing_members(p):
                raise TypeError(f"{type(p).__name__} is not a kdbench.policies.TokenPolicy: it lacks "
                                f"{', '.join(missing_members(p))}.")
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
                            sum(features) if features else None, out.tau_grads + other.tau_grads)
        return out

    def feature_loss(self, student_hidden, teacher_hidden) -> torch.Tensor | None:
        """The one policy's feature loss (None if no policy has one); two with one is an error."""
        found = [f for p in self.policies if (f := p.feature_loss(student_hidden, teacher_hidden)) is not None]
        if len(found) > 1:
            names = ", ".join(type(p).__name__ for p in self.policies)
            raise ValueError(f"{len(found)} of the composed policies ({names}) return a feature loss; at most "
                             "one may, as the plan has a single feature weight.")
        return found[0] if found else None

    def observe(self, kd_loss: float) -> None:
        for p in self.policies:
            p.observe(kd_loss)

    def log_scalars(self) -> dict[str, float]:
        """Every policy's log scalars in one dict; a key a previous policy already logged is
        suffixed with the policy's position (`latf_ratio/1` for the second of `adakd+adakd`)."""
        merged: dict[str, float] = {}
        for i, p in enumerate(self.policies):
            for key, value in p.log_scalars().items():
                merged[f"{key}/{i}" if key in merged else key] = float(value)
        return merged

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
