"""The training objective. Read kdbench.reference_loss first: the same formula in about 30 lines of
autograd on the full logits; this module computes it chunk by chunk, to the same numbers. The one
place that shifts, masks, aligns vocabularies, upcasts to fp32, applies temperatures and token
weights, chunks, reduces, and mixes in cross-entropy.

For one micro-batch, with the N valid (response) positions of the step counted globally (all
micro-batches of the optimizer step, all ranks) as N_global:

    KD_mb   = Σ_i w_i [c_i D_i + f_i F_i] / Σ_i w_i   D: the method's per-token divergence on
                                                   softmax(z_s/τs_i) vs softmax(z_t/τt_i);
                                                   w, τ, c (usually τ²) and f from the token
                                                   policy's TokenPlan (all 1 / f = 0 without one);
                                                   F: the policy's feature loss (EGAD), if any
    loss_mb = world/N_global · [ (1 − kd_ratio)·Σ_i CE_i + kd_ratio·n_mb·KD_mb ]

Backpropagated without DeepSpeed's 1/gas scaling and averaged over ranks by DeepSpeed, this gives
exactly the mean over the step's N_global tokens when every w_i = 1, whatever the micro-batching;
with a token policy, each micro-batch's weighted mean counts by its share of tokens.

Memory and time: given the models' final hidden states and output heads (`student_head`,
`teacher_head`), the loss works `chunk_size` tokens at a time and computes its gradient in the
forward pass, as fused linear-cross-entropy losses do: per chunk, both heads' logits once, the loss,
and right away its gradient with respect to the chunk's student hidden states and the student head's
trainable tensors, accumulated, then the chunk's logits are freed. Backward only hands the stored
gradients to autograd (`_Gradients`), so neither model's full (tokens × vocab) logits are ever alive
at once and no chunk is recomputed. The harness's own steps (log-softmax, temperatures, the
vocabulary floor, the token weights, the cross-entropy, a linear head) are differentiated by hand
with the same kernels autograd uses, so the gradients are autograd's to the bit for one chunk; the
divergence plugin is differentiated by autograd on the chunk, so any plugin works unchanged. Work
that changes nothing is skipped: the cross-entropy's gradient at weight 0 (its value is still
logged), division by a temperature of 1, row selection when every token is kept. A token policy
that needs global statistics (top-r% selection, medians) gets them from a cheap no-grad first pass
over the same chunks: `token_stats` per chunk, then `plan` on the concatenated statistics. Without
heads, the inputs are logits (tests, small vocab).

A plan may let its temperatures depend on the student with a gradient (`TokenPlan.tau_grads`, AdaKD's
`tau_grad`, as the AdaKD release computes it): τ_i = f(s_i, m), s_i a per-token score of the student's
untempered logits, m the median of the kept tokens' scores. With E_i = τ_i·∂L/∂τ_i, which each chunk
knows right after its loss (E_i = −Σ_v z_s,iv ∂L/∂z_s,iv − Σ_v z_t,iv ∂L/∂z_t,iv + 2·c_i·∂L/∂c_i, the
logits' gradients taken through z/τ_i at fixed τ), the chunk adds E_i·∂log τ_i/∂s_i·∂s_i/∂z_i to the
student's logit gradient and accumulates ∂L/∂m = Σ_i E_i·∂log τ_i/∂m; after the last chunk, ∂L/∂m
times ∂m/∂z goes to the median token(s). −∞ logits stay −∞ at every temperature (no τ-gradient).
Inputs in fp64 are computed in fp64 throughout; anything narrower in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
NEG_FLOOR = -1e30  # -inf vocabulary padding → a finite floor: exp() is still 0, but 0·(−inf) NaNs vanish


@dataclass
class TauGrad:
    """How a plan's per-token temperature factor τ_i (one factor of τ_student, τ_teacher, and τ_i² of
    the scale) depends on the student: through s_i = score(student_logp, teacher_logp, labels)_i, a
    differentiable per-token function of the untempered fp32/fp64 log-probs of the token itself, and
    through the median m of the kept tokens' scores."""

    score: Callable[..., torch.Tensor]  # (student_logp (n,V), teacher_logp (n,V), labels (n,)) -> (n,)
    dlogtau_ds: torch.Tensor  # (N,) ∂ log τ_i / ∂ s_i
    dlogtau_dm: torch.Tensor  # (N,) ∂ log τ_i / ∂ m
    median_share: torch.Tensor  # (N,) ∂ m / ∂ s_j (1/K on the K kept tokens at the median, else 0)


@dataclass
class TokenPlan:
    """What a token policy decides for the N valid tokens of a micro-batch (all detached): see the
    module docstring for how each field enters the loss."""

    weight: torch.Tensor  # (N,) ≥ 0; 0 drops the token (LATF), soft values re-weight it (curricula)
    tau_student: torch.Tensor  # (N,)
    tau_teacher: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,) usually τ² (Hinton's gradient-scale correction)
    feature_weight: torch.Tensor | None = None  # (N,) weight of the policy's feature loss (EGAD's hard tokens)
    tau_grads: tuple[TauGrad, ...] = ()  # temperature factors the student gets a gradient through

    @classmethod
    def shared(cls, weight: torch.Tensor, tau: torch.Tensor, **extra) -> TokenPlan:
        """One temperature per token for both models, scaled τ² (AdaKD's IDTS, fixed T, ...)."""
        return cls(weight, tau, tau, tau**2, **extra)

    @classmethod
    def uniform(cls, n: int, device=None) -> TokenPlan:
        ones = torch.ones(n, device=device)
        return cls.shared(ones, ones)


@dataclass
class LossParts:
    loss: torch.Tensor  # what to backpropagate for this micro-batch
    ce_sum: float  # Σ CE over valid tokens (for logging)
    kd_mean: float  # KD_mb (for logging and the policy's EMA)
    n_tokens: int  # valid tokens in this micro-batch
    n_selected: int  # tokens with a non-zero policy weight
    temperature: torch.Tensor | None  # student τ of the selected tokens, for logging
    aligned: int | None = None  # cross-tokenizer: the student's response tokens in some aligned unit


@dataclass(frozen=True)
class LinearHead:
    """An output head that is one linear map, `F.linear(h, weight, bias)`. A plain `nn.Linear` head
    is applied as one (so is a ZeRO-3 head's gathered weight, see `models.Heads`): the loss then
    differentiates it by hand, two matmuls per chunk, with the weight's gradient accumulated in place.
    Any other head (a LoRA-wrapped module, a function) is differentiated by autograd per chunk."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


def valid_positions(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token alignment and masking: the outputs and labels of response tokens only, flattened."""
    outputs, labels = outputs[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    return outputs[mask], labels[mask]


def count_valid(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def _linear(head: Callable | None) -> LinearHead | None:
    if isinstance(head, LinearHead):
        return head
    if type(head) is torch.nn.Linear and not (head._forward_hooks or head._forward_pre_hooks):
        return LinearHead(head.weight, head.bias)
    return None


def _wide(z: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 where the input is fp64."""
    return z if z.dtype == torch.float64 else z.float()


def _logits(h: torch.Tensor, head: Callable | None) -> torch.Tensor:
    return _wide(head(h) if head is not None else h)


def _below_floor(z: torch.Tensor) -> bool:
    return z.numel() > 0 and bool(z.amin() < NEG_FLOOR)


def _aligned(z: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Compare over the shared real vocabulary (padding rows dropped); -inf floored."""
    z = z[:, :vocab_size]
    return z.clamp_min(NEG_FLOOR) if _below_floor(z) else z


def _log_probs(z: torch.Tensor, vocab_size: int, tau: torch.Tensor | None, owned: bool):
    """log_softmax(aligned(z) / τ) and the mask of entries the floor left alone (None: all of them).
    `owned`: z is this module's own tensor, so τ may divide it in place."""
    z = z[:, :vocab_size]
    kept = None
    if _below_floor(z):
        kept = z >= NEG_FLOOR
        z, owned = z.clamp_min(NEG_FLOOR), True
    if tau is not None:
        z = z.div_(tau[:, None]) if owned else z / tau[:, None]
    return F.log_softmax(z, -1), kept


def _log_softmax_backward(grad: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """The gradient wrt log_softmax's input, by the kernel autograd itself uses."""
    return torch._log_softmax_backward_data(grad, logp, -1, logp.dtype)


def objective(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    vocab_size: int,
    kd_ratio: float,
    n_global: int,
    world_size: int = 1,
    divergence: Callable[..., torch.Tensor] | None = None,
    hparams: dict[str, Any] | None = None,
    policy: Any = None,
    progress: float = 0.0,
    student_head: Callable | None = None,
    teacher_head: Callable | None = None,
    chunk_size: int | None = None,
) -> LossParts:
    """The micro-batch loss; `*_out` are logits (B,T,V) or, with heads, final hidden states (B,T,D)."""
    h_s, targets = valid_positions(student_out, labels)
    n = targets.numel()
    distill = kd_ratio > 0 and n > 0
    h_t = valid_positions(teacher_out, labels)[0] if distill else None
    chunks = [slice(i, i + (chunk_size or n)) for i in range(0, n, chunk_size or max(n, 1))]
    plan = _plan(h_s, h_t, targets, chunks, student_head, teacher_head, vocab_size, policy, progress) if distill else None
    total = partial(_total, kd_ratio=kd_ratio, n=n, n_global=n_global, world_size=world_size,
                    weight_sum=plan.weight.sum() if distill else None)

    student = _StudentHead(student_head, h_s)
    chunk = _Chunk(student, teacher_head, vocab_size, divergence, hparams or {}, train_ce=kd_ratio < 1,
                   coefficients=_coefficients(total, h_s) if torch.is_grad_enabled() else None)
    if distill and plan.tau_grads and chunk.coefficients is not None and student.wants_grad:
        chunk.tau = _TauGradient(plan.tau_grads, targets, vocab_size)
    ce_sum, kd_sum = _chunk_sums(chunk, chunks, h_t, targets, plan, weighted=policy is not None)
    if chunk.tau is not None:
        chunk.tau.finish(student)
    if student.grads is not None:
        ce_sum, kd_sum = _Gradients.apply(ce_sum, kd_sum, chunk.coefficients, student.grads, h_s, *student.params)

    n_selected, temps = 0, None
    if distill:
        kd_sum, n_selected, temps = _features_and_selection(plan, policy, h_s, h_t, kd_sum)
    loss, kd_mean = total(ce_sum, kd_sum)
    return LossParts(loss, ce_sum.item(), kd_mean.item(), n, n_selected, temps)


# kdbench.crosstok.data.collate_pair: per side, the rows of the units, their unit, the token each predicts
UNIT_KEYS = ("student_rows", "student_units", "student_tokens", "teacher_rows", "teacher_units", "teacher_tokens",
             "student_inputs", "teacher_inputs")
MERGE_FLOOR = 1e-8  # GOLD's clamp of the observed tokens' probabilities in a merged group


def cross_objective(student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor,
                    units: dict[str, torch.Tensor], *, method: Callable[..., torch.Tensor], hparams: dict[str, Any],
                    arrays: dict[str, torch.Tensor], student_vocab: int, teacher_vocab: int, kd_ratio: float,
                    n_global: int, world_size: int = 1, student_head: Callable | None = None,
                    teacher_head: Callable | None = None, chunk_size: int | None = None, merge: str = "mean",
                    policy: Any = None, progress: float = 0.0, space: str | None = None, kd_to_ce: bool = False,
                    embeddings: tuple[Callable, Callable] | None = None, modules: Any = None) -> LossParts:
    """The micro-batch loss of a cross-tokenizer method (docs/METHODS.md §6): the cross-entropy over
    every valid student token (`objective` at kd_ratio 0) and the method's per-unit values over the
    aligned units. `units` (UNIT_KEYS) gives per side the rows of each unit as flat indices into its
    (B·T) outputs, in unit order (kdbench.crosstok.data). Each side's log-probabilities are over its
    own vocabulary (padding rows dropped, −inf floored), τ = 1; a unit of several rows is one row per
    side: with `merge` "mean" (X-Token's chunks) the log of the mean of the student's probabilities and
    the mean of the teacher's log-probabilities; with "observed" (GOLD's groups, TRL's default) on each
    side the first row's log-probabilities plus the log-probabilities (clamped at log 1e-8) of the
    tokens the other rows predict, not renormalised. With U_mb units in the micro-batch:

        KD_mb   = Σ_u D_u / U_mb
        loss_mb = (1 − kd_ratio)·world/N_global·Σ_i CE_i + kd_ratio·world/N_global·n_mb·KD_mb

    so a micro-batch's KD mean counts by its share of the step's tokens, as under a token policy.
    Units go `chunk_size` rows at a time, checkpointed: one chunk of (rows × vocabulary) logits alive.
    With a token `policy`, the method's `space` (kdbench.registry.crosstok) gives the one distribution
    pair per unit the policy reads (`_space`); its plan's weights, temperatures (on each side's
    logits) and scales apply per unit, KD_mb = Σ_u w_u c_u D_u / Σ_u w_u, and the whole micro-batch
    is one chunk (`_cross_policy_sums`; a temperature's gradient reaches the student as in
    kdbench.reference_loss). With `merge` "attention" (DSKD) each unit, one example's whole response
    per side, goes to the method unmerged (`_attention_sums`), and KD_mb = Σ_u D_u / Σ_u n_s,u.
    `kd_to_ce`: KD_mb scaled to CE's size in the loss (`_scaled_to_ce`)."""
    ce = objective(student_out, None, labels, vocab_size=student_vocab, kd_ratio=0.0, n_global=n_global,
                   world_size=world_size, student_head=student_head, chunk_size=chunk_size)
    s_units, t_units = units["student_units"], units["teacher_units"]
    n_units = int(s_units[-1]) + 1 if s_units.numel() else 0
    kd_sum, weight_sum, temps = student_out.new_zeros((), dtype=torch.float32), float(n_units), None
    chunk = (student_head, teacher_head, method, hparams, arrays, student_vocab, teacher_vocab)
    if kd_ratio > 0 and n_units and merge == "attention":  # no token policy composes (labels refuse it)
        kd_sum = _attention_sums(student_out, teacher_out, units, n_units, embeddings, modules, *chunk)
        weight_sum = float(s_units.numel())
    elif kd_ratio > 0 and n_units and policy is not None:
        rows = (units["student_rows"], units["teacher_rows"])
        kd_sum, weight_sum, temps = _cross_policy_sums(
            student_out.flatten(0, 1)[rows[0]], teacher_out.flatten(0, 1)[rows[1]].detach(),
            (s_units, units["student_tokens"]), (t_units, units["teacher_tokens"]), n_units, merge, policy, progress,
            space, *chunk)
    elif kd_ratio > 0 and n_units:
        h_s = student_out.flatten(0, 1)[units["student_rows"]]
        h_t = teacher_out.flatten(0, 1)[units["teacher_rows"]].detach()
        step = max(1, (chunk_size or s_units.numel()) * n_units // s_units.numel())  # units per chunk
        for u in range(0, n_units, step):
            s0, s1, t0, t1 = (int(x) for x in (*torch.searchsorted(s_units, torch.tensor([u, u + step], device=s_units.device)),
                                               *torch.searchsorted(t_units, torch.tensor([u, u + step], device=t_units.device))))
            kd_sum = kd_sum + checkpoint(
                _cross_chunk, h_s[s0:s1], h_t[t0:t1], (s_units[s0:s1] - u, units["student_tokens"][s0:s1]),
                (t_units[t0:t1] - u, units["teacher_tokens"][t0:t1]), min(step, n_units - u), merge,
                *chunk, use_reentrant=False)
    kd_mean = kd_sum / max(weight_sum, 1e-12) if n_units else kd_sum
    loss = (1 - kd_ratio) * ce.loss + kd_ratio * world_size / n_global * ce.n_tokens * _scaled_to_ce(kd_mean, ce, kd_to_ce)
    n_selected = int(weight_sum) if merge == "attention" else n_units if temps is None else int(temps.numel())
    aligned = int(units["student_rows"].numel())
    return LossParts(loss, ce.ce_sum, kd_mean.item(), ce.n_tokens, n_selected, temps, aligned)


def _scaled_to_ce(kd_mean: torch.Tensor, ce: LossParts, on: bool) -> torch.Tensor:
    """KD_mb as the loss takes it: with a method's `dynamic_loss_scaling` on (NeMo-RL's
    CrossTokenizerDistillationLossFn) sg(CE_mb / |KD_mb|)·KD_mb, CE_mb = Σ_i CE_i / n_mb (KD_mb itself
    where it is 0), whose value is CE_mb and whose gradient is the method's, scaled; the logged
    `kd_mean` (and a policy's) stays the unscaled KD_mb."""
    size = kd_mean.detach().abs()
    return kd_mean * (ce.ce_sum / max(ce.n_tokens, 1) / size) if on and size > 0 else kd_mean


def _cross_chunk(h_s, h_t, s_units, t_units, n, merge, student_head, teacher_head, method, hparams, arrays,
                 student_vocab, teacher_vocab):
    """Σ of a cross-tokenizer method's values over one chunk of `n` units (each side's rows merged per
    unit); `s_units`/`t_units`: (unit, predicted token) of each row."""
    logp_s = _merge(F.log_softmax(_aligned(_logits(h_s, student_head), student_vocab), -1), s_units, n, merge, True)
    with torch.no_grad():
        logp_t = _merge(F.log_softmax(_aligned(_logits(h_t, teacher_head), teacher_vocab), -1), t_units, n, merge, False)
    return method(logp_s, logp_t, **arrays, **hparams).sum()


def _attention_sums(student_out, teacher_out, units, n_units, embeddings, modules, student_head, teacher_head, method,
                    hparams, arrays, student_vocab, teacher_vocab) -> torch.Tensor:
    """Σ over the units of a cross-model attention method's per-row values of both sides, one
    checkpointed call per unit (its logits recomputed in backward). A unit is one example's whole
    response per side; the method (kdbench.registry.SEQUENCE_INPUTS) gets its rows' log-probabilities,
    hidden states, the input `embeddings` (the two models' embedding modules, no grad) of each row's
    token and predicted token, the student's predicted ids, the output-head weights (detached) and its
    trainable `modules`, and returns (per student row, per teacher row) values, summed here."""
    h_s = student_out.flatten(0, 1)[units["student_rows"]]
    h_t = teacher_out.flatten(0, 1)[units["teacher_rows"]].detach()
    inputs = {}
    with torch.no_grad():
        for side, embed in zip(("student", "teacher"), embeddings):
            inputs[f"{side}_input_embeds"] = _wide(embed(units[f"{side}_inputs"]))
            inputs[f"{side}_target_embeds"] = _wide(embed(units[f"{side}_tokens"]))
    heads = {"student_head": _head_weight(student_head, student_vocab),
             "teacher_head": _head_weight(teacher_head, teacher_vocab)}
    bounds = [[0, *torch.bincount(units[f"{side}_units"], minlength=n_units).cumsum(0).tolist()]
              for side in ("student", "teacher")]
    total = h_s.new_zeros((), dtype=torch.float32)
    for u in range(n_units):
        (s0, s1), (t0, t1) = (b[u:u + 2] for b in bounds)
        rows = {k: v[s0:s1] if k.startswith("student") else v[t0:t1] for k, v in inputs.items()}
        total = total + checkpoint(_attention_unit, h_s[s0:s1], h_t[t0:t1], units["student_tokens"][s0:s1], rows,
                                   heads, student_head, teacher_head, method, hparams, arrays, modules, student_vocab,
                                   teacher_vocab, use_reentrant=False)
    return total


def _attention_unit(h_s, h_t, targets, rows, heads, student_head, teacher_head, method, hparams, arrays, modules,
                    student_vocab, teacher_vocab) -> torch.Tensor:
    """Σ of one example's per-row values of both sides (a cross-model attention method)."""
    logp_s = F.log_softmax(_aligned(_logits(h_s, student_head), student_vocab), -1)
    with torch.no_grad():
        logp_t = F.log_softmax(_aligned(_logits(h_t, teacher_head), teacher_vocab), -1)
    values_s, values_t = method(logp_s, logp_t, student_hidden=_wide(h_s), teacher_hidden=_wide(h_t),
                                student_targets=targets, modules=modules, **rows, **heads, **arrays, **hparams)
    return values_s.sum() + values_t.sum()


def _head_weight(head: Callable, vocab_size: int) -> torch.Tensor:
    """An output head's weight over the real vocabulary, detached, fp32 (its bias is not used)."""
    weight = getattr(getattr(head, "head", head), "weight", None)
    if weight is None:
        raise ValueError(f"a cross-model attention method reads the output head's weight, and this head "
                         f"({type(head).__name__}) has none.")
    return _wide(weight[:vocab_size].detach())


def _merge(logp: torch.Tensor, rows: tuple, n: int, merge: str, student: bool) -> torch.Tensor:
    return _observed(logp, *rows, n) if merge == "observed" else _per_unit(logp, rows[0], n, student)


def _space(z_s: torch.Tensor, z_t: torch.Tensor, s_units: tuple, t_units: tuple, n: int, merge: str, space: str,
           arrays: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, logits whose log_softmax is the distribution pair a token policy reads in `space`:
    "common" (both restricted to the common pairs and renormalised, SimpleCTKD's p̃, q̃) or "teacher"
    (the student's merged probabilities projected into the teacher's vocabulary, X-Token's r, and the teacher's)."""
    from kdbench.crosstok.losses import PKL_EPS, project

    logp_s, logp_t = _merge(F.log_softmax(z_s, -1), s_units, n, merge, True), _merge(F.log_softmax(z_t, -1), t_units, n,
                                                                                      merge, False)
    if space == "common":
        return logp_s[:, arrays["common_student"]], logp_t[:, arrays["common_teacher"]]
    projected = project(logp_s.exp(), arrays["projection_indices"], arrays["projection_weights"], logp_t.shape[-1])
    return (projected + PKL_EPS).log(), logp_t


def _cross_policy_sums(h_s, h_t, s_units, t_units, n, merge, policy, progress, space, student_head, teacher_head,
                       method, hparams, arrays, student_vocab, teacher_vocab):
    """(Σ_u w_u c_u D_u, Σ_u w_u, the kept units' student τ) over all `n` units under a token policy's
    plan, read from the units' distributions in the method's `space` at τ = 1 (labels None)."""
    z_s = _aligned(_logits(h_s, student_head), student_vocab)
    z_t = _aligned(_logits(h_t, teacher_head), teacher_vocab).detach()
    with torch.no_grad():
        pair = _space(z_s.detach(), z_t, s_units, t_units, n, merge, space, arrays)
        plan = policy.plan(policy.token_stats(*(F.log_softmax(z, -1) for z in pair), None), progress)
    if plan.feature_weight is not None:
        raise ValueError("a token policy with a feature loss (hidden states of aligned positions) does not "
                         "compose with a cross-tokenizer method.")
    tau_s, tau_t, factor = plan.tau_student, plan.tau_teacher, plan.weight * plan.scale
    if plan.tau_grads:  # τ_i·exp(δ_i): the plan's values, with the gradient of log τ_i (kdbench.reference_loss)
        everyone = torch.ones(n, dtype=torch.bool, device=z_s.device)
        delta = tau_change(plan.tau_grads, everyone, *_space(z_s, z_t, s_units, t_units, n, merge, space, arrays), None)
        tau_s, tau_t, factor = tau_s * delta.exp(), tau_t * delta.exp(), factor * (2 * delta).exp()
    logp_s = _merge(F.log_softmax(z_s / tau_s[s_units[0]][:, None], -1), s_units, n, merge, True)
    logp_t = _merge(F.log_softmax(z_t / tau_t[t_units[0]][:, None], -1), t_units, n, merge, False)
    values = method(logp_s, logp_t, **arrays, **hparams)
    kept = plan.weight > 0
    return (factor * values)[kept].sum(), float(plan.weight.sum()), plan.tau_student[kept]


def _observed(logp: torch.Tensor, unit: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """GOLD's "observed" merge (kdbench.crosstok.losses.merge_group) in log space: per unit, its first
    row plus Σ log(max(p_k(token_k), 1e-8)) over its other rows."""
    if logp.shape[0] == n:
        return logp
    first = torch.ones_like(unit, dtype=torch.bool)
    first[1:] = unit[1:] != unit[:-1]
    observed = logp.gather(1, tokens[:, None]).squeeze(1).clamp_min(math.log(MERGE_FLOOR)) * ~first
    return logp[first] + torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, unit, observed)[:, None]


def _per_unit(logp: torch.Tensor, unit: torch.Tensor, n: int, mean_probs: bool) -> torch.Tensor:
    """One row per unit: the row itself where each unit has one, else the log of the mean probability
    (`mean_probs`) or the mean log-probability over the unit's rows."""
    if logp.shape[0] == n:
        return logp
    count = torch.zeros(n, 1, dtype=logp.dtype, device=logp.device).index_add_(0, unit, logp.new_ones(len(unit), 1))
    values = logp.exp() if mean_probs else logp
    merged = torch.zeros(n, logp.shape[1], dtype=logp.dtype, device=logp.device).index_add(0, unit, values) / count
    return merged.log() if mean_probs else merged


def tau_change(tau_grads, sel, z_s, z_t, y):
    """δ_i = Σ_k ∂logτ_k/∂s_i·(s_ki − s̄_ki) + ∂logτ_k/∂m·(m_k − m̄_k) over the kept tokens (`sel`),
    s_k the factor's score of the student's untempered log-probs (with grad; s̄ the same, detached),
    m_k = Σ_j share_kj·s_kj its median: 0 in value, with the gradient of log τ_i at the plan's point."""
    s_logp, t_logp, delta = F.log_softmax(z_s, -1), F.log_softmax(z_t, -1), 0.0
    for tg in tau_grads:
        s = tg.score(s_logp, t_logp, y)
        m = (tg.median_share[sel] * s).sum()
        delta = delta + tg.dlogtau_ds[sel] * (s - s.detach()) + tg.dlogtau_dm[sel] * (m - m.detach())
    return delta


def _total(ce_sum, kd_sum, *, kd_ratio: float, n: int, n_global: int, world_size: int,
           weight_sum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_mb from the micro-batch's Σ CE and Σ w·[c·D + f·F] (the module docstring), and KD_mb;
    `weight_sum`: Σ w (None without distillation)."""
    kd_mean = kd_sum / weight_sum if weight_sum is not None else kd_sum
    return world_size / n_global * ((1 - kd_ratio) * ce_sum + kd_ratio * n * kd_mean), kd_mean


def _chunk_sums(chunk: _Chunk, chunks: list[slice], h_t: torch.Tensor | None, targets: torch.Tensor,
                plan: TokenPlan | None, weighted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ CE and Σ w·c·D over the chunks, each given its kept tokens and their part of the plan (None:
    no distillation). A temperature that is 1 for every token is not divided by; without a policy
    (`weighted` false) the plan is uniform and only its weights are read."""
    unit_s = unit_t = not weighted
    if plan is not None and weighted:
        unit_s, unit_t = bool((plan.tau_student == 1).all()), bool((plan.tau_teacher == 1).all())
    ce_sum, kd_sum = (chunk.student.h.new_zeros((), dtype=torch.float32) for _ in range(2))
    for c in chunks:
        kept = None
        if plan is not None:
            kept = _Kept.of(plan.weight[c], None if unit_s else plan.tau_student[c],
                            None if unit_t else plan.tau_teacher[c], plan.scale[c] if weighted else None)
        ce_c, kd_c = chunk(c, h_t[c] if plan is not None else None, targets[c], kept)
        ce_sum, kd_sum = ce_sum + ce_c, kd_sum + kd_c
    return ce_sum, kd_sum


def _features_and_selection(plan: TokenPlan, policy: Any, h_s: torch.Tensor, h_t: torch.Tensor,
                            kd_sum: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The plan's hidden-state feature term added to the KD sum (EGAD's feature branch, on the tokens
    with a feature weight), the number of tokens kept, and their student temperatures."""
    if plan.feature_weight is not None:
        hard = plan.feature_weight > 0
        feats = policy.feature_loss(h_s[hard].float(), h_t[hard].float())
        if feats is None:
            raise ValueError("the token policy's plan has a feature_weight, but its feature_loss returned None: "
                             "a policy without a feature loss must leave TokenPlan.feature_weight None.")
        kd_sum = kd_sum + (plan.weight[hard] * plan.feature_weight[hard] * feats).sum()
    selected = plan.weight > 0
    return kd_sum, int(selected.sum()), plan.tau_student[selected]


def _coefficients(total: Callable, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d Σ CE and d loss / d Σ KD, computed by autograd through `total` exactly as the real
    backward will compute them: the chunks' gradients are scaled by these in the forward pass."""
    device, dtype = h.device, (torch.float64 if h.dtype == torch.float64 else torch.float32)
    ce, kd = (torch.zeros((), device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    with torch.enable_grad():
        loss, _ = total(ce, kd)
    return tuple(g if g is not None else torch.zeros((), device=device)
                 for g in torch.autograd.grad(loss, (ce, kd), allow_unused=True))


class _StudentHead:
    """The student's output head over the N valid hidden states `h`, applied a chunk at a time, and
    the gradients of `h` and of the head's trainable tensors (`params`), accumulated chunk by chunk."""

    def __init__(self, head: Callable | None, h: torch.Tensor):
        self.head, self.h, self.linear = head, h, _linear(head)
        grad_mode = torch.is_grad_enabled()
        self.h_grad = grad_mode and h.requires_grad
        self.generic = grad_mode and head is not None and self.linear is None  # autograd differentiates it
        self.params: list[torch.Tensor] | None = []
        if self.generic:
            self.params = None  # found in the first chunk's graph
        elif grad_mode and self.linear is not None:
            self.params = [p for p in (self.linear.weight, self.linear.bias) if p is not None and p.requires_grad]
        self.grads: list[torch.Tensor | None] | None = None  # [d h, d params...], once a chunk is done
        self._graph = None  # generic head: (h leaf, head output) of the current chunk

    @property
    def wants_grad(self) -> bool:
        return self.h_grad or bool(self.params)

    def logits(self, c: slice) -> tuple[torch.Tensor, bool]:
        """Chunk c's logits, fp32 and detached, and whether they are this module's to modify in place."""
        h = self.h[c].detach()
        if self.generic:
            out = self.head(h.requires_grad_(self.h_grad))
            if self.params is None:
                self.params = _leaves(out, exclude=h)
            self._graph = (h, out) if out.requires_grad else None
            z, owned = out.detach(), False
        elif self.head is None:
            z, owned = h, False
        else:
            with torch.no_grad():
                z = self.head(h)
            owned = self.linear is not None
        self._dtype = z.dtype
        wide = _wide(z)
        return wide, owned or wide is not z

    def backward(self, c: slice, dz: torch.Tensor) -> None:
        """Back-propagate chunk c's logits gradient `dz` (fp32, all head rows) into the accumulators."""
        if self.grads is None:
            self.grads = [torch.zeros_like(self.h) if self.h_grad else None] + [None] * len(self.params)
        dz = dz.to(self._dtype)
        with torch.no_grad():
            if self.head is None:
                self.grads[0][c] = dz
            elif self.linear is not None:
                h, weight = self.h[c].detach(), self.linear.weight
                if self.h_grad:
                    torch.mm(dz, weight, out=self.grads[0][c])
                for i, p in enumerate(self.params, 1):
                    acc = self.grads[i]
                    if p is weight:  # the same products autograd forms for F.linear; later chunks add in place
                        self.grads[i] = dz.t().mm(h) if acc is None else acc.addmm_(dz.t(), h)
                    else:
                        self.grads[i] = dz.sum(0) if acc is None else acc.add_(dz.sum(0))
            elif self._graph is not None:
                h, out = self._graph
                self._graph = None
                inputs = ([h] if self.h_grad else []) + self.params
                found = list(torch.autograd.grad(out, inputs, dz, allow_unused=True))
                if self.h_grad:
                    self.grads[0][c] = found.pop(0)
                for i, g in enumerate(found, 1):
                    if g is not None:
                        self.grads[i] = g if self.grads[i] is None else self.grads[i].add_(g)


def _add_row(student: _StudentHead, j: int, dz: torch.Tensor) -> None:
    """Add the logits gradient `dz` (1, ≤ head rows) of valid token j to the student's accumulators."""
    c = slice(j, j + 1)
    z, _ = student.logits(c)
    full = dz.new_zeros(z.shape)
    full[:, :dz.shape[1]] = dz
    kept = student.grads[0][c].clone() if student.h_grad else None
    student.backward(c, full)
    if kept is not None:
        student.grads[0][c] += kept


def _leaves(out: torch.Tensor, exclude: torch.Tensor) -> list[torch.Tensor]:
    """The tensors requiring grad that autograd would accumulate into (its leaves) behind `out`,
    other than `exclude`: a generic head's trainable tensors (LoRA adapters, a tied weight, ...)."""
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # an AccumulateGrad node
        if var is not None and var is not exclude and all(var is not f for f in found):
            found.append(var)
        stack.extend(f for f, _ in fn.next_functions)
    return found


@dataclass(frozen=True)
class _Kept:
    """A chunk's kept tokens (non-zero plan weight) and their part of the plan: a temperature None
    where it is 1 for every token (no division), the factor w·c None without a policy (all 1)."""

    sel: torch.Tensor  # (rows,) bool: the kept rows
    every: bool  # every row kept: no row selection
    tau_s: torch.Tensor | None  # (kept,)
    tau_t: torch.Tensor | None  # (kept,)
    factor: torch.Tensor | None  # (kept,) w_i·c_i

    @classmethod
    def of(cls, weight: torch.Tensor, tau_s, tau_t, scale) -> _Kept:
        """From the chunk's (rows,) slices of the plan."""
        sel = weight > 0
        every = bool(sel.all())

        def kept(x):
            return x if every or x is None else x[sel]

        return cls(sel, every, kept(tau_s), kept(tau_t), None if scale is None else kept(weight) * kept(scale))


class _Chunk:
    """One chunk's Σ CE and Σ w·c·D, and (when the student needs grad) their gradient, scaled by the
    loss's coefficients, handed to the student head's accumulators."""

    def __init__(self, student: _StudentHead, teacher_head, vocab_size, divergence, hparams, train_ce, coefficients):
        self.student, self.teacher_head, self.vocab_size = student, teacher_head, vocab_size
        self.divergence, self.hparams, self.coefficients = divergence, hparams, coefficients
        self.train_ce = train_ce  # the CE term has a non-zero weight: its gradient is needed
        self.teacher_owned = _linear(teacher_head) is not None
        self.tau: _TauGradient | None = None  # the gradient through the plan's temperatures, if it has one

    def __call__(self, c: slice, h_t: torch.Tensor | None, targets: torch.Tensor, kept: _Kept | None) -> tuple:
        """Σ CE and Σ w·c·D of chunk c (`kept` None: no distillation, CE only); with grad, their
        gradient wrt the student's logits goes to its head: the divergence's by autograd on the
        tempered log-probs, carried back through τ, the floor and (`tau`) τ's own gradient."""
        z, owned = self.student.logits(c)
        grad = self.student.wants_grad
        if kept is None:
            return self._ce_only(c, z, targets, grad)
        rows, width = z.shape
        tg = self.tau is not None and grad  # untempered logits kept for the gradient through τ
        ce, ce_logp, s_logp, floor, t_logp, raw = self._log_probs(z, owned, h_t, targets, kept, grad, tg)
        del z  # from here on a chunk holds its log-probs only (and, for τ's gradient, the raw logits)
        if not grad:
            values = self.divergence(s_logp, t_logp, **self.hparams)
            return ce, (values if kept.factor is None else kept.factor * values).sum()

        kd, d_logp, elasticity = self._divergence_grad(s_logp, t_logp, raw, kept)
        del t_logp
        dz_kd = _log_softmax_backward(d_logp, s_logp) if d_logp is not None else torch.zeros_like(s_logp)
        del d_logp, s_logp
        self._to_raw_logits(c, dz_kd, kept, floor, elasticity, raw)
        del raw
        dz = dz_kd if kept.every and width == self.vocab_size else self._all_rows(dz_kd, kept.sel, rows, width)
        del dz_kd
        if self.train_ce:
            dz += self._ce_grad(ce_logp, targets)
        del ce_logp
        self.student.backward(c, dz)
        return ce.detach(), kd.detach()

    def _log_probs(self, z, owned, h_t, targets, kept: _Kept, grad: bool, tg: bool) -> tuple:
        """Σ CE (with its log-probs where its gradient is needed), the student's tempered log-probs of
        the kept tokens and the mask its vocabulary floor left alone, the teacher's, and with `tg` both
        models' untempered logits over the vocabulary `(s_raw, t_raw)` (else None)."""
        # log_softmax(z) of the student doubles as the CE's when the KD term sees the very same logits.
        shared = kept.every and kept.tau_s is None and z.shape[1] == self.vocab_size
        if not shared:  # CE first: the KD term below may divide z in place
            ce, ce_logp = self._ce(z, targets, grad)
        t_logp, t_raw = self._teacher_logp(h_t, kept, keep_raw=tg)
        z_kd = z if kept.every else z[kept.sel]
        s_raw = z_kd[:, :self.vocab_size] if tg else None
        s_logp, floor = _log_probs(z_kd, self.vocab_size, kept.tau_s, (owned or not kept.every) and not tg)
        if shared:
            ce, ce_logp = (F.nll_loss(s_logp, targets, reduction="sum"), s_logp) if floor is None else \
                self._ce(z, targets, grad)
        return ce, ce_logp, s_logp, floor, t_logp, (s_raw, t_raw) if tg else None

    def _divergence_grad(self, s_logp, t_logp, raw, kept: _Kept) -> tuple:
        """Σ w·c·D of the kept tokens; its gradient wrt the student's tempered log-probs, scaled by the
        KD coefficient (None if the plugin ignores them), by autograd; and with `raw` (τ's gradient)
        each token's τ·∂L/∂τ but for the student's logits (`_TauGradient.elasticity`), else None."""
        leaf = s_logp.detach().requires_grad_()  # the plugin is differentiated by autograd
        t_in = t_logp.detach().requires_grad_() if raw is not None else t_logp
        with torch.enable_grad():
            values = self.divergence(leaf, t_in, **self.hparams)
            kd = (values if kept.factor is None else kept.factor * values).sum()
        if raw is None:
            del values
            (d_logp,) = torch.autograd.grad(kd, leaf, self.coefficients[1], allow_unused=True)
            return kd, d_logp, None
        d_logp, d_tlogp = torch.autograd.grad(kd, (leaf, t_in), self.coefficients[1], allow_unused=True)
        terms = self.coefficients[1] * kept.factor * values.detach()
        return kd, d_logp, self.tau.elasticity(terms, d_tlogp, t_logp, raw[1], kept.tau_t)

    def _to_raw_logits(self, c: slice, dz: torch.Tensor, kept: _Kept, floor, elasticity, raw) -> None:
        """In place: the gradient wrt the kept tokens' tempered logits z/τ becomes the gradient wrt
        their logits z: divided by τ, zero where the floor clamped z, plus (`raw`) the part through τ."""
        if kept.tau_s is not None:
            dz.div_(kept.tau_s[:, None])
        if floor is not None:
            dz.masked_fill_(~floor, 0.0)
        if raw is not None:
            s_raw, t_raw = raw
            dz += self.tau.chunk(c, kept.sel, elasticity - _dot_raw(dz, s_raw, None), s_raw, t_raw)

    def _all_rows(self, dz_kd: torch.Tensor, sel: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """The kept rows' gradient over the shared vocabulary, placed in the chunk's (rows, head rows)."""
        dz = dz_kd.new_zeros(rows, width)
        dz[sel, :self.vocab_size] = dz_kd
        return dz

    def _ce(self, z: torch.Tensor, targets: torch.Tensor, grad: bool) -> tuple:
        """Σ CE of the chunk, and its log-probs where its gradient is needed (else None)."""
        if grad and self.train_ce:
            logp = F.log_softmax(z, 1)
            return F.nll_loss(logp, targets, reduction="sum"), logp
        return F.cross_entropy(z, targets, reduction="sum"), None

    def _ce_only(self, c: slice, z: torch.Tensor, targets: torch.Tensor, grad: bool) -> tuple:
        """A chunk without distillation: Σ CE, its gradient handed to the student head."""
        ce_logp = F.log_softmax(z, 1)
        ce = F.nll_loss(ce_logp, targets, reduction="sum")
        dz = self._ce_grad(ce_logp, targets) if grad else None
        if dz is not None:
            self.student.backward(c, dz)
        return ce, torch.zeros_like(ce)

    @torch.no_grad()
    def _teacher_logp(self, h_t: torch.Tensor, kept: _Kept,
                      keep_raw: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's tempered log-probs of the chunk's kept tokens, and with `keep_raw` its
        untempered logits over the vocabulary (otherwise freed on return)."""
        z_t = _logits(h_t if kept.every else h_t[kept.sel], self.teacher_head)
        t_logp, _ = _log_probs(z_t, self.vocab_size, kept.tau_t,
                               (self.teacher_owned or not kept.every or z_t.dtype != h_t.dtype) and not keep_raw)
        return t_logp, (z_t[:, :self.vocab_size] if keep_raw else None)

    def _ce_grad(self, logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d (coefficient · Σ CE) / d logits: nll_loss's backward (−coefficient at each target), then
        log_softmax's."""
        d = torch.zeros_like(logp)
        d[torch.arange(len(targets), device=d.device), targets] = -self.coefficients[0]
        return _log_softmax_backward(d, logp)


def _dot_raw(d_logits: torch.Tensor | None, z: torch.Tensor, tau: torch.Tensor | None) -> torch.Tensor | float:
    """Σ_v z_v·∂L/∂z_v per row, ∂L/∂z = d_logits/τ (d_logits: the gradient wrt z/τ, or wrt z when
    tau is None), over the entries above the vocabulary floor: τ·∂L/∂τ = −this, for one model."""
    if d_logits is None:
        return 0.0
    dot = (d_logits * torch.where(z >= NEG_FLOOR, z, torch.zeros_like(z))).sum(-1)
    return dot if tau is None else dot / tau


class _TauGradient:
    """The student's gradient through the plan's temperature factors (TokenPlan.tau_grads): in each
    chunk through every kept token's own score, and, once every chunk has added its part of ∂L/∂m,
    through the median m to the token(s) at the median (`finish`)."""

    def __init__(self, tau_grads: tuple[TauGrad, ...], targets: torch.Tensor, vocab_size: int):
        self.tau_grads, self.targets, self.vocab_size = tau_grads, targets, vocab_size
        self.d_median = [0.0] * len(tau_grads)  # ∂L/∂m, summed over the chunks
        self.at_median: list[dict[int, torch.Tensor]] = [{} for _ in tau_grads]  # token -> ∂s/∂z

    @staticmethod
    def elasticity(kd_terms: torch.Tensor, d_tlogp: torch.Tensor | None, t_logp: torch.Tensor, t_raw: torch.Tensor,
                   tau_t: torch.Tensor | None) -> torch.Tensor:
        """τ·∂L/∂τ of each kept token but for the student's logits: 2·(the loss's terms c·D, scaled),
        through the τ² of the scale, and −Σ z_t ∂L/∂z_t, through the teacher's z/τ."""
        d_t = _log_softmax_backward(d_tlogp, t_logp) if d_tlogp is not None else None
        return 2 * kd_terms - _dot_raw(d_t, t_raw, tau_t)

    def chunk(self, c: slice, sel: torch.Tensor, elasticity: torch.Tensor, z_s: torch.Tensor, z_t: torch.Tensor):
        """∂L/∂z_s (n, V) of chunk c's kept tokens (`sel`) through their scores, given E = τ·∂L/∂τ."""
        rows = torch.arange(c.start, c.start + len(sel), device=z_s.device)[sel]
        dz = torch.zeros_like(z_s)
        t_logp, labels = F.log_softmax(_aligned(z_t, self.vocab_size), -1), self.targets[rows]
        for k, tg in enumerate(self.tau_grads):
            self.d_median[k] = self.d_median[k] + (elasticity * tg.dlogtau_dm[rows]).sum()
            d_s = elasticity * tg.dlogtau_ds[rows]
            on = d_s != 0
            if bool(on.any()):
                dz[on] += self._score_grad(tg, z_s[on], t_logp[on], labels[on], d_s[on])
            for i in (tg.median_share[rows] > 0).nonzero().flatten().tolist():
                one = torch.ones(1, dtype=z_s.dtype, device=z_s.device)
                self.at_median[k][int(rows[i])] = self._score_grad(tg, z_s[i:i + 1], t_logp[i:i + 1],
                                                                   labels[i:i + 1], one)
        return dz

    def _score_grad(self, tg: TauGrad, z: torch.Tensor, t_logp, labels, d_s: torch.Tensor) -> torch.Tensor:
        leaf = z.detach().requires_grad_()
        with torch.enable_grad():
            s = tg.score(F.log_softmax(_aligned(leaf, self.vocab_size), -1), t_logp, labels)
        return torch.autograd.grad(s, leaf, d_s.to(s.dtype))[0]

    def finish(self, student: _StudentHead) -> None:
        """Each median token's share of ∂L/∂m, through its score, into the student's gradients."""
        for k, tg in enumerate(self.tau_grads):
            for j, ds_dz in self.at_median[k].items():
                _add_row(student, j, self.d_median[k] * tg.median_share[j] * ds_dz)


class _Gradients(torch.autograd.Function):
    """Σ CE and Σ KD of the micro-batch's chunks, whose gradients with respect to the student hidden
    states and head tensors (`inputs`) were computed in the forward pass, already multiplied by the
    loss's coefficients: backward hands them over, scaled only if autograd brings back other
    coefficients (a loss scaled on its way to backward)."""

    @staticmethod
    def forward(ctx, ce_sum, kd_sum, coefficients, grads, *inputs):
        ctx.coefficients, ctx.grads = coefficients, grads
        return ce_sum.clone(), kd_sum.clone()

    @staticmethod
    def backward(ctx, d_ce, d_kd):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("kdbench.losses.objective: its loss was back-propagated twice; the gradient "
                               "is computed in the forward pass and handed over once.")
        ce0, kd0 = ctx.coefficients
        if not (torch.equal(d_ce, ce0) and torch.equal(d_kd, kd0)):
            factor = d_kd / kd0 if kd0 != 0 else d_ce / ce0
            if not (torch.allclose(d_ce, ce0 * factor) and torch.allclose(d_kd, kd0 * factor)):
                raise RuntimeError("kdbench.losses.objective: back-propagate its `loss` (or a multiple of it), "
                                   "not Σ CE and Σ KD with other weights.")
            for g in grads:
                if g is not None:
                    g.mul_(factor)
        return (None, None, None, None, *grads)


@torch.no_grad()
def _plan(h_s, h_t, targets, chunks, student_head, teacher_head, vocab_size, policy, progress) -> TokenPlan:
    """The token policy's plan from per-chunk statistics (a no-grad first pass), or uniform."""
    if policy is None:
        return TokenPlan.uniform(targets.numel(), h_s.device)
    stats: dict[str, list[torch.Tensor]] = {}
    for c in chunks:
        s_logp = F.log_softmax(_aligned(_logits(h_s[c], student_head), vocab_size), -1)
        t_logp = F.log_softmax(_aligned(_logits(h_t[c], teacher_head), vocab_size), -1)
        for key, value in policy.token_stats(s_logp, t_logp, targets[c]).items():
            stats.setdefault(key, []).append(value)
    return policy.plan({k: torch.cat(v) for k, v in stats.items()}, progress)
