"""AdaKD: token-adaptive knowledge distillation with swappable difficulty indicator, kept-ratio
schedule and temperature rule (defaults: Hellinger + LATF + IDTS, the full method)."""

import math

import torch

from kdbench import formulas
from kdbench.losses import TauGrad, TokenPlan
from kdbench.registry import token_policy

PAD_BELOW = -1e29  # the harness floors -inf vocabulary padding at -1e30; log-probs below this are padding


# --- difficulty indicators: (student_logp (N,V), teacher_logp (N,V)[, labels]) -> (N,), larger = harder ---
# ("fkl", "rkl" and "js" are kdbench.formulas' forward_kl, reverse_kl and js, the same formulas as the
# divergence plugins, clamped at 0 against rounding)

def hellinger(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Per-token Hellinger distance `(1/√2)·sqrt(Σ_v (√p − √q)²)` in [0, 1] (untempered, no grad)."""
    diff = (teacher_logp / 2).exp() - (student_logp / 2).exp()
    return (diff.pow(2).sum(-1) / 2).sqrt()


def label_cross_entropy(student_logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of the student against the ground-truth token: −log q(y_i) ≥ 0."""
    return -student_logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def topk_miss_rate(student_logp: torch.Tensor, teacher_logp: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Fraction of the teacher's top-k tokens that are NOT among the student's top-k, in {0, 1/k, …, 1}.

    k is capped at the vocabulary size; ties inside a top-k are broken by torch.topk."""
    k = min(k, teacher_logp.shape[-1])
    t_top = teacher_logp.topk(k, dim=-1).indices
    s_top = student_logp.topk(k, dim=-1).indices
    shared = (t_top.unsqueeze(-1) == s_top.unsqueeze(-2)).any(-1).sum(-1)
    return 1.0 - shared.to(teacher_logp.dtype) / k


def logit_std(logp: torch.Tensor) -> torch.Tensor:
    """Per-token standard deviation of the logits over the real vocabulary, clamped ≥ 1e-6.

    log_softmax shifts each row by a constant, so the std of the log-probs equals the std of the
    logits. Entries below -1e29 (the harness's -1e30 padding floor, or -inf) are excluded. Population
    std (divide by the count), as a z-score uses."""
    real = logp > PAD_BELOW
    x = torch.where(real, logp, torch.zeros_like(logp))
    n = real.sum(-1).clamp_min(1).to(logp.dtype)
    mean = x.sum(-1, keepdim=True) / n.unsqueeze(-1)
    var = torch.where(real, (x - mean).pow(2), torch.zeros_like(x)).sum(-1) / n
    return var.sqrt().clamp_min(1e-6)


# --- the AdaKD release's other indicators (loss/losses.py of github.com/SassyRong/AdaKD,
# `_compute_token_scores` and `calculate_nmtkd_score`), written from its formulas on log-probs ---

def nmtkd_score(student_logp: torch.Tensor, teacher_logp: torch.Tensor, k: int = 10) -> torch.Tensor:
    """The release's NMT-KD score (`calculate_nmtkd_score`, called with k 10; after Zhang et al.'s
    NMT-KD top-k ranking loss), no grad. With T = the teacher's top-k ids by p (T_1 its top-1) and S
    the student's top-k ids by q:
        s = Σ_{u∈T} relu(q_u − q_{T_1}) + Σ_{u∈T, v∈S} [p_u > p_v]·relu(q_v − q_u) ≥ 0,
    the student's probability mass out of the teacher's order. k is capped at the vocabulary size."""
    k = min(k, teacher_logp.shape[-1])
    q, p = student_logp.exp(), teacher_logp.exp()
    p_top, t_ids = p.topk(k, dim=-1)
    q_top, s_ids = q.topk(k, dim=-1)
    q_at_t = q.gather(-1, t_ids)
    top1 = (q_at_t - q_at_t[:, :1]).clamp_min(0).sum(-1)
    prefer = p_top.unsqueeze(-1) > p.gather(-1, s_ids).unsqueeze(-2)  # [u, v]: the teacher ranks T_u above S_v
    pairs = (prefer * (q_top.unsqueeze(-2) - q_at_t.unsqueeze(-1))).clamp_min(0).sum((-1, -2))
    return (top1 + pairs).detach()


def student_entropy(student_logp: torch.Tensor) -> torch.Tensor:
    """H(q) = −Σ_v q log q (the release's `entropy`)."""
    return -(student_logp.exp() * student_logp).sum(-1)


def logtoku_parts(student_logp: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """LogTokU's aleatoric and epistemic uncertainty of the student (Ma et al., "Estimating LLM
    Uncertainty with Logits"; the release's LogTokUCalculator), before their min–max normalisation.
    With a = the top-k logits minus their minimum, + 1e-8 (log-probs give the same: a shift cancels),
    a0 = Σ a: AU = −Σ_j (a_j/a0)(ψ(a_j + 1) − ψ(a0 + 1)), EU = k / (a0 + k). k capped at V."""
    k = min(k, student_logp.shape[-1])
    top = student_logp.topk(k, dim=-1).values
    alpha = top - top.min(-1, keepdim=True).values + 1e-8
    a0 = alpha.sum(-1, keepdim=True)
    au = (-(alpha / a0) * (torch.digamma(alpha + 1) - torch.digamma(a0 + 1))).sum(-1)
    return au, k / (a0.squeeze(-1) + k)


def min_max(x: torch.Tensor) -> torch.Tensor:
    """(x − min x)/(max x − min x) over the micro-batch's tokens; all 0 when x is constant (the
    release divides 0 by 0 there)."""
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def release_score(indicator: str, student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                  labels: torch.Tensor | None) -> torch.Tensor:
    """The release's per-token scores other than nmtkd and logtoku (see AdaKD's docstring)."""
    q = student_logp.exp()
    if indicator == "random":
        return torch.ones_like(student_logp[:, 0])
    if indicator == "prob":
        return 1 - q.max(-1).values
    if indicator == "entropy":
        return student_entropy(student_logp)
    if indicator == "bhattacharyya":
        return -torch.log(((student_logp + teacher_logp) / 2).exp().sum(-1) + 1e-8)
    if indicator == "sensitivity_reverse":
        rkl = formulas.reverse_kl(student_logp, teacher_logp)
        return rkl.clamp_min(1e-8) / student_entropy(student_logp).clamp_min(1e-8)
    ce = label_cross_entropy(student_logp, labels)
    if indicator == "ce_entropy":
        return ce * student_entropy(student_logp)
    p_label = teacher_logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).exp()  # gt_prob
    return (1 - p_label) * -torch.log(q.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1) + 1e-8)


# --- ratio schedules and the CTKD-style temperature curriculum: functions of progress t ∈ [0, 1] ---

def scheduled_ratio(schedule: str, t: float, *, r_fixed: float, r0: float, r1: float) -> float:
    """Kept ratio r(t) of a non-adaptive schedule ("fixed", "linear", "cosine")."""
    t = min(1.0, max(0.0, float(t)))
    if schedule == "fixed":
        return r_fixed
    if schedule == "linear":
        return r0 + (r1 - r0) * t
    if schedule == "cosine":
        return r1 + (r0 - r1) * (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"scheduled_ratio: schedule {schedule!r} is not a fixed-form schedule")


def ctkd_temperature(t: float, *, tau_min: float, tau_max: float) -> float:
    """The curriculum stand-in for CTKD: τ(t) = τ_min + (τ_max − τ_min)·(1 − cos(π t))/2."""
    t = min(1.0, max(0.0, float(t)))
    return tau_min + (tau_max - tau_min) * (1 - math.cos(math.pi * t)) / 2


INDICATORS = ("hellinger", "fkl", "rkl", "ce", "js", "nmt_topk", "nmtkd", "random", "prob", "entropy",
              "ce_entropy", "gt_prob", "bhattacharyya", "sensitivity_reverse", "logtoku")
NEEDS_LABELS = ("ce", "ce_entropy", "gt_prob")
# Scores without a gradient: τ is then constant under tau_grad too (the release detaches nmtkd's).
NO_SCORE_GRADIENT = ("nmt_topk", "nmtkd", "random")
SCHEDULES = ("latf", "fixed", "linear", "cosine")
TEMPERATURES = ("idts", "fixed", "ctkd", "logit_std")
LATF_RESETS = ("trigger", "change")  # when L_ref follows the EMA: any threshold crossing (release), or r changed


def _wide(x: torch.Tensor) -> torch.Tensor:
    """A statistic in fp32, or fp64 when computed in fp64."""
    return x if x.dtype == torch.float64 else x.float()


def _check_labels(indicator: str, student_logp: torch.Tensor, labels: torch.Tensor | None) -> None:
    if labels is None:
        raise ValueError(f"AdaKD: indicator {indicator!r} needs the ground-truth token of each row: call "
                         "token_stats(student_logp, teacher_logp, labels=<(N,) target ids>).")
    n, vocab = student_logp.shape
    if labels.shape != (n,):
        raise ValueError(f"AdaKD: labels has shape {tuple(labels.shape)}; indicator {indicator!r} needs ({n},), "
                         "one target id per row of the log-probs.")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"AdaKD: labels must be token ids in [0, {vocab}) (valid positions only, "
                         f"no -100); got range [{int(labels.min())}, {int(labels.max())}].")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"AdaKD: {name} = {value!r} must be a finite number.")
    return float(value)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"AdaKD: {name} = {value!r} is not one of: {', '.join(allowed)}.")


def _check_unit(name, value):  # [0, 1)
    if not 0 <= _number(name, value) < 1:
        raise ValueError(f"AdaKD: {name} = {value!r} is outside its range [0, 1).")


def _check_ratio(name, value):  # (0, 1]
    if not 0 < _number(name, value) <= 1:
        raise ValueError(f"AdaKD: {name} = {value!r} is outside its range (0, 1] (a kept fraction of tokens).")


def _check_tau(name, value):  # (0, ∞)
    if not _number(name, value) > 0:
        raise ValueError(f"AdaKD: {name} = {value!r} must be a temperature > 0.")


@token_policy
class AdaKD:
    """AdaKD, "LLM-Oriented Token-Adaptive Knowledge Distillation" (AAAI 2026, arXiv 2510.11615),
    as a token policy with three swappable parts; the defaults are the full method
    (indicator "hellinger", schedule "latf", temperature "idts").

    Composes with any base divergence D. Per micro-batch the harness passes the untempered fp32
    log-probs of the N valid (response) tokens, p = teacher, q = student, and training progress
    t = step/total ∈ [0, 1]. The policy returns a TokenPlan: weight 1 for the kept tokens, 0 for the
    others, and per-token temperatures/scale; the harness computes
        L = mean_{i∈selected} scale_i·D(softmax(z_s,i/τ_s,i), softmax(z_t,i/τ_t,i)),
    with τ_s = τ_t = τ_i and scale = τ_i² except under "logit_std".

    1. indicator: token difficulty s_i (untempered; larger = harder, minimal when q = p for those
       that compare q with p). Drives the selection and IDTS; its gradient, see `tau_grad` under 3.
       - "hellinger" (default; docs/METHODS.md §2): s = (1/√2)·sqrt(Σ_v (√p − √q)²) ∈ [0, 1].
       - "fkl": KL(p‖q) = Σ_v p (log p − log q) ∈ [0, ∞)   (Table 3 "FKD").
       - "rkl": KL(q‖p) = Σ_v q (log q − log p) ∈ [0, ∞)   (Table 3 "RKD").
       - "ce": cross-entropy vs the ground truth, −log q(y_i) ∈ [0, ∞) (Table 3). Needs the target ids:
         token_stats(..., labels=(N,) long tensor, the label of each row); a ValueError if labels is None.
       - "js": Jensen–Shannon, m = ½p + ½q, ½KL(q‖m) + ½KL(p‖m) ∈ [0, log 2] (λ = 0.5 fixed).
       - "nmt_topk": Table 3's "NMT-KD top-k rank score" as we read it before the release's code,
         k = `topk_k` (integer ≥ 1; label adakd-ind-nmt-top5 sets 5). Our definition: the fraction of the teacher's top-k tokens that are NOT among the student's
         top-k, s = 1 − |top_k(p) ∩ top_k(q)| / k ∈ {0, 1/k, …, 1}. Assumption: the paper's formula
         is not in our sources; we assume it scores rank agreement on the teacher's top-k, the view
         of the teacher distribution used in the NMT KD literature (e.g. Zhang et al., ACL 2023, on
         the teacher's top-ranked tokens). The score is discrete, so ties are frequent; torch.topk
         breaks them, and the IDTS median of an all-zero selection is clamped at 1e-12.
       The AdaKD release's other rules (loss/losses.py `_compute_token_scores`; its script passes
       k 10 to every rule, `topk_k`'s default), q = student, p = teacher, y = ground truth:
       - "nmtkd": its `calculate_nmtkd_score` (nmtkd_score above), detached as there.
       - "random": every s_i = 1; the kept tokens are drawn uniformly, seeded by the run's `seed`
         (a harness argument) and the step; IDTS then gives every token τ_base.
       - "prob" 1 − max q; "entropy" H(q); "ce_entropy" −log q_y·H(q); "gt_prob"
         (1 − p_y)·(−log(q_y + 1e-8)); "bhattacharyya" −log(Σ √(qp) + 1e-8); "sensitivity_reverse"
         max(KL(q‖p), 1e-8)/max(H(q), 1e-8); "logtoku" min–max(AU)·min–max(EU) over the micro-batch
         (logtoku_parts), only with tau_grad false. "ce", "ce_entropy", "gt_prob" need the labels.

    2. schedule: the kept ratio r; the top max(1, floor(N·r)) tokens by s_i are kept, over all N
       valid tokens of the micro-batch (flattened, not per sequence). r at progress t is
       `kept_ratio(t)` (logged as `latf_ratio` by log_scalars()).
       - "latf" (default; LATF, docs/METHODS.md §2): EMA of the step's global mean distillation loss
         L̄_t = β·L̄_{t−1} + (1−β)·L_t (initialised with the first value), ratio r (starts at 1),
         reference L_ref. The first floor(`warmup`·total_steps) steps keep r = 1; the first step
         after them sets L_ref = L̄ (the release: 1-based step > warmup·total).
         After warm-up, each step: L̄ < L_ref(1−ε) → r ← max(r_min, r(1−δ));
         L̄ > L_ref(1+ε) → r ← min(1, r(1+δ)). When L_ref is reset is `latf_reset`:
         - "trigger" (default; the AdaKD release, distillation.py of github.com/SassyRong/AdaKD):
           L_ref ← L̄ whenever L̄ leaves [L_ref(1−ε), L_ref(1+ε)], also when r is already at its
           bound (r_min or 1) and so cannot move: a loss that keeps falling while r sits at r_min
           moves the reference down with it, and a later rise is measured from there.
         - "change" (docs/METHODS.md §2 read literally, "after any change L_ref ← L̄"): L_ref ← L̄ only
           when r actually changed; at a saturated bound the old reference stays.
         Knobs: beta β = 0.99, eps ε = 0.05, delta δ = 0.05, warmup = 0.05 (each in [0, 1));
         r_min = 0.1 in (0, 1]; latf_reset "trigger" or "change".
       - "fixed": r = `r_fixed` (default 1.0, in (0, 1]); r_fixed 1.0 keeps every token.
       - "linear": r(t) = r0 + (r1 − r0)·t; `r0` = 1.0, `r1` = 0.75, each in (0, 1].
       - "cosine": r(t) = r1 + (r0 − r1)·(1 + cos(π t))/2 (r0 at t = 0, r1 at t = 1).
       Non-latf schedules take r from the progress t passed to plan() (t clamped to [0, 1]); observe()
       then only keeps the EMA of the loss (for logging/inspection) and the step count, never r/ref.

    3. temperature: the per-token temperature rule (constants of the student, except IDTS's τ
       under tau_grad).
       - "idts" (default; IDTS, docs/METHODS.md §2): ŝ_i = tanh(log(s_i / median_{selected} s)),
         τ_i = τ_base·exp(−c·ŝ_i) ∈ [τ_base·e^{−|c|}, τ_base·e^{|c|}]; c > 0: hard tokens get a low τ,
         easy ones a high τ. `tau_base` = 1.0 (> 0), `c` = 0.5 (any finite real; c < 0 is the
         Table 5 "inverse direction" ablation, hard tokens get a HIGH τ: c = −0.5).
         s and the median are clamped at 1e-12 before the log.
         `tau_grad` = True (default; the release, whose score, median and τ keep the student's
         graph): the student also gets the gradient through τ_i (its τ² weight and z/τ_i of both
         models) and through τ_i's score s_i and the median (plan → TokenPlan.tau_grads; the harness
         applies it, kdbench.losses). False: τ detached (label adakd-tau-detached). Indicators
         without a gradient ("nmtkd", "nmt_topk", "random") leave τ constant either way.
       - "fixed": τ_i = `tau_fixed` for every token (default 1.0, > 0), scale τ².
       - "ctkd": a deterministic stand-in for CTKD (Li et al., "Curriculum Temperature for Knowledge
         Distillation", AAAI 2023). CTKD LEARNS one global τ adversarially: a gradient-reversal
         layer makes τ maximise the KD loss while the student minimises it, with the reversal
         strength λ raised easy → hard by a cosine schedule λ(t) = λ_min + (λ_max − λ_min)·(1 − cos πt)/2.
         That needs a trainable parameter and a min-max update that the token-policy interface
         (no grad, no optimizer) does not carry, so the adversarial learned temperature is NOT
         implemented. Instead τ follows CTKD's cosine curriculum shape directly:
             τ(t) = τ_min + (τ_max − τ_min)·(1 − cos(π t))/2,  same τ for every token, scale τ².
         τ rises from `tau_min` (= 1.0, plain KD, CTKD's initial τ) to `tau_max` (= 2.0) because
         with the τ² correction the distillation loss τ²·D grows with τ in the usual regime (it
         tends to logit matching as τ → ∞), so the loss-maximising adversary pushes τ up, harder
         as λ grows. τ_max = 2.0 is our choice for LLM vocabularies (CTKD's image setting lets τ
         range over [1, 21]); both > 0, and τ_max < τ_min gives a falling curriculum.
       - "logit_std": logit standardisation (Sun et al., "Logit Standardization in Knowledge
         Distillation", CVPR 2024; the reference table's "NormKD / logit standardisation" row):
         each model's logits are z-scored per token, then softmax with base temperature τ_base.
         Mean shifts cancel in softmax, so this is τ_student,i = std(z_s,i)·τ_base,
         τ_teacher,i = std(z_t,i)·τ_base, scale = τ_base² (`tau_base`, default 1.0).
         std is the population std over the vocabulary of the log-probs (= that of the logits, as
         log_softmax is a per-row shift), ignoring entries < −1e29 (vocabulary padding), clamped
         ≥ 1e-6. (A torch.std-based implementation would use Bessel's correction; the factor
         √(V/(V−1)) is negligible at LLM vocabulary sizes.)

    Interface (kdbench.policies.TokenPolicy): token_stats(student_logp, teacher_logp, labels) ->
    per-token statistics of a chunk (labels = the (N,) ground-truth token ids, read only by indicator
    "ce"); plan(stats, progress) -> TokenPlan over all N valid tokens of the micro-batch, pure (the
    same arguments give the same plan; no state changes); observe(kd_loss) once per optimizer step,
    the only place the state changes; feature_loss -> None (no feature term); log_scalars() ->
    {"latf_ratio": r}. `self.ratio` is LATF's r (the initial r(0) under the other schedules).

    State for resume (state_dict/load_state_dict): ema, ratio, ref, steps_seen (everything that
    changes across steps; the other parts are functions of t).

    Invalid hyper-parameters raise ValueError naming the parameter, its value and the allowed
    values: indicator/schedule/temperature/latf_reset outside the lists above; r_min, r_fixed, r0, r1 outside
    (0, 1]; tau_base, tau_fixed, tau_min, tau_max ≤ 0; beta, eps, delta, warmup outside [0, 1);
    c not finite; topk_k not an integer ≥ 1; tau_grad not a bool, or true with "logtoku".

    The AdaKD paper's ablations (Qwen2 RKL base; docs/METHODS.md §2) as hyper-parameters, everything not
    named at its default:
    - Table 2: base = no policy; "+IDTS only" = schedule "fixed", r_fixed 1.0; "+LATF only" =
      temperature "fixed", tau_fixed 1.0; "AdaKD (full)" = defaults.
    - Table 3 (indicator, with LATF + IDTS): FKD = indicator "fkl"; RKD = "rkl"; cross-entropy vs
      ground truth = "ce" (harness passes labels); JS = "js"; NMT-KD top-k (k = 5) = "nmt_topk",
      topk_k 5, or the release's score "nmtkd" (k 10); Hellinger = defaults; the random-selection
      control = "random".
    - Table 4 (ratio, with Hellinger + IDTS): LATF = defaults; fixed r = 1.0 = schedule "fixed",
      r_fixed 1.0 (= Table 2 "+IDTS"); fixed r = 0.75 = schedule "fixed", r_fixed 0.75;
      linear 1.0→0.75 = schedule "linear", r0 1.0, r1 0.75; cosine 1.0→0.75 = schedule "cosine",
      r0 1.0, r1 0.75; cosine 1.0→0.5 = schedule "cosine", r0 1.0, r1 0.5.
    - Table 5 (temperature, with Hellinger + LATF): T = 1.0 = temperature "fixed", tau_fixed 1.0
      (= Table 2 "+LATF"); IDTS c = 0.5 = defaults; inverse direction (hard → high T) = c −0.5;
      T = 0.8 / 1.2 / e^{−0.5} = temperature "fixed", tau_fixed 0.8 / 1.2 / 0.6065306597126334;
      CTKD = temperature "ctkd" (tau_min 1.0, tau_max 2.0); logit standardisation = temperature
      "logit_std" (tau_base 1.0).
    """

    def __init__(self, *, total_steps: int, beta: float = 0.99, eps: float = 0.05, delta: float = 0.05,
                 warmup: float = 0.05, r_min: float = 0.1, tau_base: float = 1.0, c: float = 0.5,
                 indicator: str = "hellinger", schedule: str = "latf", temperature: str = "idts",
                 r_fixed: float = 1.0, r0: float = 1.0, r1: float = 0.75, tau_fixed: float = 1.0,
                 tau_min: float = 1.0, tau_max: float = 2.0, topk_k: int = 10, latf_reset: str = "trigger",
                 tau_grad: bool = True, seed: int = 0):
        _check_choice("indicator", indicator, INDICATORS)
        _check_choice("latf_reset", latf_reset, LATF_RESETS)
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("temperature", temperature, TEMPERATURES)
        for name, value in (("beta", beta), ("eps", eps), ("delta", delta), ("warmup", warmup)):
            _check_unit(name, value)
        for name, value in (("r_min", r_min), ("r_fixed", r_fixed), ("r0", r0), ("r1", r1)):
            _check_ratio(name, value)
        for name, value in (("tau_base", tau_base), ("tau_fixed", tau_fixed), ("tau_min", tau_min),
                            ("tau_max", tau_max)):
            _check_tau(name, value)
        _number("c", c)
        if isinstance(topk_k, bool) or not isinstance(topk_k, int) or topk_k < 1:
            raise ValueError(f"AdaKD: topk_k = {topk_k!r} must be an integer ≥ 1.")
        if not isinstance(tau_grad, bool):
            raise ValueError(f"AdaKD: tau_grad = {tau_grad!r} must be true or false.")
        if tau_grad and indicator == "logtoku" and temperature == "idts":
            raise ValueError("AdaKD: indicator = 'logtoku' with tau_grad = True is not implemented (its min–max "
                             "normalisation couples every token of the micro-batch); set tau_grad: false.")
        self.indicator, self.schedule, self.temperature = indicator, schedule, temperature
        self.beta, self.eps, self.delta, self.r_min = beta, eps, delta, r_min
        self.r_fixed, self.r0, self.r1 = r_fixed, r0, r1
        self.tau_base, self.c, self.tau_fixed, self.tau_min, self.tau_max = tau_base, c, tau_fixed, tau_min, tau_max
        self.topk_k, self.latf_reset, self.tau_grad, self.seed = topk_k, latf_reset, tau_grad, seed
        self.total_steps = total_steps
        self.warmup_steps = math.floor(warmup * total_steps)
        self.ema: float | None = None
        self.ratio = 1.0 if schedule == "latf" else self._scheduled(0.0)
        self.ref: float | None = None
        self.steps_seen = 0

    def _scheduled(self, progress: float) -> float:
        return scheduled_ratio(self.schedule, progress, r_fixed=self.r_fixed, r0=self.r0, r1=self.r1)

    def kept_ratio(self, progress: float) -> float:
        """The kept ratio r at training progress t (pure): LATF's current r, or the schedule's r(t)."""
        return self.ratio if self.schedule == "latf" else self._scheduled(progress)

    def difficulty(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """s_i of the configured indicator, (N,), larger = harder ("logtoku": normalised over these rows)."""
        if self.indicator in NEEDS_LABELS:
            _check_labels(self.indicator, student_logp, labels)
        if self.indicator == "hellinger":
            return hellinger(student_logp, teacher_logp)
        if self.indicator == "fkl":
            return formulas.forward_kl(student_logp, teacher_logp).clamp_min(0)
        if self.indicator == "rkl":
            return formulas.reverse_kl(student_logp, teacher_logp).clamp_min(0)
        if self.indicator == "js":
            return formulas.js(student_logp, teacher_logp, 0.5).clamp_min(0)
        if self.indicator == "nmt_topk":
            return topk_miss_rate(student_logp, teacher_logp, self.topk_k)
        if self.indicator == "nmtkd":
            return nmtkd_score(student_logp, teacher_logp, self.topk_k)
        if self.indicator == "logtoku":
            au, eu = logtoku_parts(student_logp, self.topk_k)
            return min_max(au) * min_max(eu)
        if self.indicator == "ce":
            return label_cross_entropy(student_logp, labels)
        return release_score(self.indicator, student_logp, teacher_logp, labels)

    @torch.no_grad()
    def token_stats(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor,
                    labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-token statistics of one chunk of tokens (the harness concatenates the chunks)."""
        if self.indicator == "logtoku":  # normalised over the micro-batch in plan
            au, eu = logtoku_parts(student_logp, self.topk_k)
            stats = {"au": _wide(au), "eu": _wide(eu)}
        else:
            stats = {"difficulty": _wide(self.difficulty(student_logp, teacher_logp, labels))}
        if self.temperature == "logit_std":
            stats["std_student"] = _wide(logit_std(student_logp))
            stats["std_teacher"] = _wide(logit_std(teacher_logp))
        return stats

    @torch.no_grad()
    def plan(self, stats: dict[str, torch.Tensor], progress: float) -> TokenPlan:
        """Selection (weight 1 = kept, 0 = dropped) and per-token temperatures for both models,
        over all N valid tokens of the micro-batch. Pure: it reads the state, never changes it."""
        s = stats["difficulty"] if "difficulty" in stats else min_max(stats["au"]) * min_max(stats["eu"])
        n_sel = max(1, math.floor(s.numel() * self.kept_ratio(progress)))
        selected = self._select(s, n_sel)
        weights = torch.zeros_like(s)
        weights[selected] = 1.0
        if self.temperature == "idts":
            median_raw = s[selected].median()
            median = median_raw.clamp_min(1e-12)
            s_hat = torch.tanh(torch.log(s.clamp_min(1e-12) / median))
            extra = {}
            if self.tau_grad and self.indicator not in NO_SCORE_GRADIENT:
                extra["tau_grads"] = (self._tau_grad(s, selected, median_raw, s_hat),)
            return TokenPlan.shared(weights, self.tau_base * torch.exp(-self.c * s_hat), **extra)
        if self.temperature == "fixed":
            return TokenPlan.shared(weights, torch.full_like(s, self.tau_fixed))
        if self.temperature == "ctkd":
            tau = ctkd_temperature(progress, tau_min=self.tau_min, tau_max=self.tau_max)
            return TokenPlan.shared(weights, torch.full_like(s, tau))
        return TokenPlan(weights, stats["std_student"] * self.tau_base, stats["std_teacher"] * self.tau_base,
                         torch.full_like(s, self.tau_base**2))

    def _select(self, s: torch.Tensor, n_sel: int) -> torch.Tensor:
        """The kept tokens: the n_sel largest s_i, or under "random" n_sel drawn uniformly without
        replacement by a generator seeded with (seed, steps observed), so a run and its resume draw
        the same tokens (micro-batches of one step with equal token counts draw the same positions)."""
        if self.indicator != "random":
            return torch.topk(s, n_sel).indices
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps_seen)
        return torch.randperm(s.numel(), generator=gen)[:n_sel].to(s.device)

    def _tau_grad(self, s, selected, median_raw, s_hat) -> TauGrad:
        """How log τ_i = log τ_base − c·tanh(log(max(s_i, 1e-12)/max(m, 1e-12))) moves with s_i and with
        the median m of the kept s, which autograd (like torch.median) splits evenly over the kept
        tokens whose score equals it."""
        slope = -self.c * (1 - s_hat**2)  # d log τ / d log(s/m)
        floor = torch.tensor(1e-12, dtype=s.dtype, device=s.device)
        d_s = torch.where(s >= floor, slope / s.clamp_min(1e-12), torch.zeros_like(s))
        d_m = -slope / median_raw if median_raw >= floor else torch.zeros_like(s)
        ties = selected[s[selected] == median_raw]
        share = torch.zeros_like(s)
        if median_raw >= floor:  # below the clamp m moves nothing
            share[ties] = 1.0 / ties.numel()
        return TauGrad(self.difficulty, d_s, d_m, share)

    def observe(self, kd_loss: float) -> None:
        """Feed the step's global mean distillation loss; update the EMA and, under LATF, L_ref and r."""
        self.ema = kd_loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * kd_loss
        if self.schedule == "latf":
            self._latf_update()
        self.steps_seen += 1

    def _latf_update(self) -> None:
        """The release's rule (distillation.py): L_ref is first set on 1-based step g > warmup·total,
        i.e. 0-based step floor(warmup·total), the first step after the warm-up."""
        if self.steps_seen < self.warmup_steps:
            return
        if self.ref is None:
            self.ref = self.ema
        else:
            ratio, crossed, fall = self.ratio, True, self.ref - self.ema  # the release compares the fall
            if fall < -self.ref * self.eps:                              # with ±ε·L_ref
                ratio = min(1.0, ratio * (1 + self.delta))
            elif fall > self.ref * self.eps:
                ratio = max(self.r_min, ratio * (1 - self.delta))
            else:
                crossed = False
            if ratio != self.ratio or (crossed and self.latf_reset == "trigger"):
                self.ratio, self.ref = ratio, self.ema

    def feature_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> None:
        """AdaKD has no hidden-state feature term."""
        return None

    def log_scalars(self) -> dict[str, float]:
        """`latf_ratio`: under LATF, r after the last observed step's update (the r the next step
        keeps); under a fixed-form schedule, r(t) of the last observed step, t = step/total_steps."""
        if self.schedule == "latf":
            return {"latf_ratio": self.ratio}
        return {"latf_ratio": self._scheduled(max(self.steps_seen - 1, 0) / max(self.total_steps, 1))}

    def state_dict(self) -> dict:
        """What changes across steps: the loss EMA, LATF's r and L_ref, the steps observed."""
        return {"ema": self.ema, "ratio": self.ratio, "ref": self.ref, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (resume)."""
        self.ema, self.ratio, self.ref, self.steps_seen = (
            state["ema"], state["ratio"], state["ref"], state["steps_seen"])
