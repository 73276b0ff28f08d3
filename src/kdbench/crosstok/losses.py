"""Cross-tokenizer KD formulas, one pure per-token function per method.

Conventions as in `kdbench.formulas`: inputs are fp32 log-probabilities over each model's own
vocabulary, already at the temperature (student_logp = log q, (N, V_s); teacher_logp = log p,
(N, V_t)), row i of each being an aligned pair of positions (`kdbench.crosstok.align`); each
function returns (N,) per-token values. Nothing here masks, reduces, or multiplies by τ²: the harness
does that, and mixes in the student's cross-entropy with the weight each docstring names as the
method's default. Vocabulary arguments come from the pair's artifact (`kdbench.crosstok.vocab`):
`common_student`/`common_teacher` (paired ids) and the projection's `indices`/`weights`
(V_s, k), -1 for none. docs/METHODS.md §6 gives each method's alignment and
where we follow the code rather than the paper.
"""

from __future__ import annotations

import torch

from kdbench import formulas

LOG_FLOOR = 1e-8  # TRL GOLD: log(clamp(p, 1e-8)) on probability inputs
PKL_EPS = 1e-10  # NeMo-RL P-KL: renormalise and take the log of projected probabilities with +1e-10


def sorted_l1(student_p: torch.Tensor, teacher_p: torch.Tensor, *, truncate: bool = False,
              top: int | None = None) -> torch.Tensor:
    """Σ_k |q_(k) − p_(k)| over both probability vectors sorted in decreasing order: the shorter one
    zero-padded (ULD, GOLD), or both cut to the shorter length and to `top` (NeMo-RL's gold path)."""
    n_s, n_t = student_p.shape[-1], teacher_p.shape[-1]
    width = min(n_s, n_t) if truncate else max(n_s, n_t)
    if top is not None:
        width = min(width, top)
    s = student_p.topk(min(width, n_s), dim=-1).values
    t = teacher_p.topk(min(width, n_t), dim=-1).values
    s = torch.nn.functional.pad(s, (0, width - s.shape[-1]))
    t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1)


def uld(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs"; code: Nicolas-BZRD/llm-recipes).

    Formula (per aligned token i): the Wasserstein-1 distance between q and p under a uniform
    transport cost, whose closed form on sorted vectors is
        ULD_i = Σ_k |q_(k) − p_(k)|,   q_(1) ≥ q_(2) ≥ …,  p_(1) ≥ …,  the shorter vector zero-padded.
    Objective (`uld_objective`): L = cross_entropy_factor · CE + distil_factor · ULD, llm-recipes'
    defaults 1 and 1.5, student and teacher temperatures 1 (no τ²).
    Alignment (code): the i-th answer token of the student with the i-th of the teacher, the first
    min(len_s, len_t) of each; no text alignment. Direction: symmetric. Range: [0, 2].
    """
    return sorted_l1(student_logp.exp(), teacher_logp.exp())


ULD_CE_FACTOR, ULD_DISTIL_FACTOR = 1.0, 1.5  # llm-recipes configs/distillation.py


def uld_objective(uld_values: torch.Tensor, ce: torch.Tensor, *, cross_entropy_factor: float = ULD_CE_FACTOR,
                  distil_factor: float = ULD_DISTIL_FACTOR) -> torch.Tensor:
    """ULD's mix of the student's cross-entropy and the ULD term, per token."""
    return cross_entropy_factor * ce + distil_factor * uld_values


def renormalised(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-probabilities restricted to `ids` and renormalised over them (log_softmax of the sub-logits)."""
    sub = logp[..., ids]
    return sub - sub.logsumexp(-1, keepdim=True)


def simple_ctkd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, common_student: torch.Tensor,
                common_teacher: torch.Tensor) -> torch.Tensor:
    """SimpleCTKD (KDFlow, songmzhang/KDFlow `kdflow/algorithms/simple_ctkd.py`): KD on the common
    sub-vocabulary C (pairs (s_c, t_c) of the artifact), both distributions renormalised over it:
        q̃_c = q_{s_c} / Σ_{c'} q_{s_c'},   p̃_c = p_{t_c} / Σ_{c'} p_{t_c'}
        SimpleCTKD_i = KL(p̃ ‖ q̃) = Σ_c p̃_c (log p̃_c − log q̃_c)
    KDFlow's defaults: divergence `kl` (forward), temperature 1, loss = 0.5 · CE + 0.5 · KD (kd_ratio 0.5).
    Alignment: exact token alignment (one student and one teacher token over the same text).
    KDFlow matches tokens after replacing `Ġ` by `▁`; the artifact also reads byte-level and
    byte-fallback tokens as bytes. Direction: forward. Range: [0, ∞).
    """
    return formulas.forward_kl(renormalised(student_logp, common_student), renormalised(teacher_logp, common_teacher))


def project(student_p: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, teacher_vocab: int) -> torch.Tensor:
    """Student probabilities mapped to the teacher vocabulary: r_t = Σ_s q_s M[s, t] with the sparse
    projection M given per student row as (`indices`, `weights`), -1 for an empty slot."""
    valid = indices >= 0
    cols = indices.clamp_min(0).flatten()  # (V_s * k,)
    contrib = student_p.unsqueeze(-1) * (weights * valid).to(student_p.dtype)  # (N, V_s, k)
    out = student_p.new_zeros(student_p.shape[0], teacher_vocab)
    return out.index_add_(1, cols, contrib.flatten(1))


def xtoken_pkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
               *, vocab_topk: int | None = 8192) -> torch.Tensor:
    """X-Token P-KL (NVIDIA NeMo-RL, `CrossTokenizerDistillationLossFn._compute_p_kl`): the student's
    distribution projected to the teacher vocabulary through the sparse projection M, then forward KL.
    With S the `vocab_topk` teacher ids of largest maximum (over the rows given) teacher log-probability
    (all ids when None or ≥ V_t):
        r_t  = Σ_s q_s M[s, t],   r̃_t = r_t / (Σ_{t'∈S} r_{t'} + 1e-10),   p̃_t = p_t / Σ_{t'∈S} p_{t'}
        PKL_i = Σ_{t∈S} p̃_t (log p̃_t − log(r̃_t + 1e-10))
    NeMo-RL's defaults: temperature 1 with τ², vocab_topk 8192 (chosen once per micro-batch from the
    teacher's maximum logit, here from its maximum log-probability over the rows given), loss =
    kl_loss_weight 1 · KL + ce_loss_scale 0.1 · CE with the KL rescaled to CE's magnitude each step
    (dynamic_loss_scaling). Alignment: chunks of positions with the same text; a many-to-many chunk
    averages the projected student probabilities and the teacher log-probabilities over its positions.
    Direction: forward. Range: [0, ∞).
    """
    vocab = teacher_logp.shape[-1]
    subset = torch.arange(vocab, device=teacher_logp.device)
    if vocab_topk is not None and vocab_topk < vocab:
        subset = teacher_logp.max(0).values.topk(vocab_topk).indices.sort().values
    r = project(student_logp.exp(), indices, weights, vocab)[:, subset]
    r = r / (r.sum(-1, keepdim=True) + PKL_EPS)
    return formulas.forward_kl((r + PKL_EPS).log(), renormalised(teacher_logp, subset))


def xtoken_hkl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, common_student: torch.Tensor,
               common_teacher: torch.Tensor, *, uncommon_topk: int = 8192) -> torch.Tensor:
    """X-Token H-KL (NeMo-RL `_compute_gold` with `xtoken_loss=True`): KL on the common part of the
    vocabulary plus a sorted L1 on the rest, with the common pairs read off the projection by the
    relaxed rule (top weight ≥ 0.6; `kdbench.crosstok.vocab.exact_map(relaxed=True)`). The KL is over the
    full-vocabulary log-probabilities restricted to C, not renormalised; the L1 sorts both uncommon
    parts, cuts them to the shorter one and to `uncommon_topk`:
        HKL_i = Σ_{c∈C} p_{t_c} (log p_{t_c} − log q_{s_c}) + Σ_{k ≤ K} |q^U_(k) − p^U_(k)|,
        K = min(|U_s|, |U_t|, uncommon_topk)
    NeMo-RL's defaults: temperature 1 with τ², uncommon_topk 8192, CE mixed as for P-KL.
    Alignment: as P-KL (chunks; student and teacher log-probabilities averaged over a chunk).
    Direction: forward on C. Range: [0, ∞).
    """
    common = formulas.forward_kl(student_logp[:, common_student], teacher_logp[:, common_teacher])
    return common + sorted_l1(*_uncommon_p(student_logp, teacher_logp, common_student, common_teacher),
                              truncate=True, top=uncommon_topk)


def _uncommon_p(student_logp, teacher_logp, common_student, common_teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of the ids outside the common pairs, on each side."""
    keep_s = torch.ones(student_logp.shape[-1], dtype=torch.bool, device=student_logp.device)
    keep_t = torch.ones(teacher_logp.shape[-1], dtype=torch.bool, device=teacher_logp.device)
    keep_s[common_student], keep_t[common_teacher] = False, False
    return student_logp[:, keep_s].exp(), teacher_logp[:, keep_t].exp()


def trl_jsd(student_p: torch.Tensor, teacher_p: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's `generalized_jsd_loss(logits_are_probs=True)` per token: logs of probabilities clamped
    at 1e-8, m = β p + (1−β) q, JSD_β = β KL(p ‖ m) + (1−β) KL(q ‖ m); β = 0 is KL(p ‖ q), β = 1 is KL(q ‖ p)."""
    log_q, log_p = student_p.clamp_min(LOG_FLOOR).log(), teacher_p.clamp_min(LOG_FLOOR).log()
    if beta == 0:
        return formulas.forward_kl(log_q, log_p)
    if beta == 1:
        return formulas.reverse_kl(log_q, log_p)
    log_m = formulas.log_mixture(log_q, log_p, beta, 1.0 - beta)
    return beta * formulas.forward_kl(log_m, log_p) + (1.0 - beta) * formulas.forward_kl(log_m, log_q)


def gold(student_logp: torch.Tensor, teacher_logp: torch.Tensor, common_student: torch.Tensor,
         common_teacher: torch.Tensor, *, beta: float = 0.5, matched_weight: float | None = None,
         unmatched_weight: float | None = None) -> torch.Tensor:
    """GOLD's hybrid ULD (TRL `trl/experimental/gold`, `ULDLoss._compute_hybrid_uld_loss`, with
    `uld_use_hybrid_loss`): a generalized JSD on the matched vocabulary C (the probabilities at the
    common ids, not renormalised) plus ULD's sorted L1 on the unmatched rest, zero-padded:
        GOLD_i = w_m · JSD_β(q_{s_C}, p_{t_C}) + w_u · Σ_k |q^U_(k) − p^U_(k)|
    with w_m = |C| / V_t and w_u = 1 − w_m unless both weights are given (TRL's adaptive weighting).
    TRL's defaults: β 0.5, temperatures 1 (no τ²), distillation weight 1, cross-entropy weight 0.
    Alignment: groups closing at common byte offsets; a group of several tokens becomes one
    distribution (`merge_group`). TRL matches token strings as they are (no marker normalisation);
    the artifact's C normalises `Ġ`/`▁`/byte fallback. Direction: symmetric for β = 0.5. Range: [0, ∞).
    """
    if (matched_weight is None) != (unmatched_weight is None):
        raise ValueError("gold: give both matched_weight and unmatched_weight, or neither (adaptive weights).")
    if matched_weight is None:
        matched_weight = len(common_teacher) / teacher_logp.shape[-1]
        unmatched_weight = 1.0 - matched_weight
    matched = trl_jsd(student_logp[:, common_student].exp(), teacher_logp[:, common_teacher].exp(), beta)
    student_u, teacher_u = _uncommon_p(student_logp, teacher_logp, common_student, common_teacher)
    if student_u.shape[-1] == 0 or teacher_u.shape[-1] == 0:  # TRL: no unmatched term when a side has none
        return matched_weight * matched
    return matched_weight * matched + unmatched_weight * sorted_l1(student_u, teacher_u)


def merge_group(probs: torch.Tensor, token_ids: list[int], strategy: str = "observed") -> torch.Tensor:
    """GOLD's merge of a group of k positions into one distribution (`_merge_probabilities_with_alignment_groups`):
    "observed" (TRL's default) multiplies the first position's distribution by the probabilities of
    the tokens actually at positions 2..k, "bayesian" the last position's by those at 1..k−1 (each
    clamped at 1e-8). `probs` (k, V) are probabilities, `token_ids` the k tokens. Not renormalised."""
    if strategy not in ("observed", "bayesian"):
        raise ValueError(f"merge_group: strategy {strategy!r}; allowed: observed, bayesian.")
    base, others = (0, range(1, len(token_ids))) if strategy == "observed" else (len(token_ids) - 1,
                                                                                 range(len(token_ids) - 1))
    scale = torch.ones((), dtype=probs.dtype, device=probs.device)
    for k in others:
        scale = scale * probs[k, token_ids[k]].clamp_min(LOG_FLOOR)
    return probs[base] * scale
