"""AdaKD's swappable parts (difficulty indicator, ratio schedule, temperature rule) against independent
float64 computations, and every ablation variant of the paper's Tables 2-5 (docs/METHODS.md §2)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from kdbench.losses import IGNORE, NEG_FLOOR, TokenPlan, count_valid, objective
from tests.conftest import plan_of

# The grid's policy_defs for the AdaKD ablations (Qwen2, RKL base). The full method is the plugin key
# `adakd` itself (no definition needed); each other distinct configuration is defined once.
POLICY_DEFS = """
policy_defs:
  adakd-idts-only:        {policy: adakd, hp: {schedule: fixed, r_fixed: 1.0}}
  adakd-latf-only:        {policy: adakd, hp: {temperature: fixed, tau_fixed: 1.0}}
  adakd-ind-fkl:          {policy: adakd, hp: {indicator: fkl}}
  adakd-ind-rkl:          {policy: adakd, hp: {indicator: rkl}}
  adakd-ind-ce:           {policy: adakd, hp: {indicator: ce}}
  adakd-ind-js:           {policy: adakd, hp: {indicator: js}}
  adakd-ind-nmt-top5:     {policy: adakd, hp: {indicator: nmt_topk, topk_k: 5}}
  adakd-r-fixed0.75:      {policy: adakd, hp: {schedule: fixed, r_fixed: 0.75}}
  adakd-r-linear1.0-0.75: {policy: adakd, hp: {schedule: linear, r0: 1.0, r1: 0.75}}
  adakd-r-cosine1.0-0.75: {policy: adakd, hp: {schedule: cosine, r0: 1.0, r1: 0.75}}
  adakd-r-cosine1.0-0.5:  {policy: adakd, hp: {schedule: cosine, r0: 1.0, r1: 0.5}}
  adakd-t-inverse:        {policy: adakd, hp: {c: -0.5}}
  adakd-t-fixed0.8:       {policy: adakd, hp: {temperature: fixed, tau_fixed: 0.8}}
  adakd-t-fixed1.2:       {policy: adakd, hp: {temperature: fixed, tau_fixed: 1.2}}
  adakd-t-fixed-e-0.5:    {policy: adakd, hp: {temperature: fixed, tau_fixed: 0.6065306597126334}}
  adakd-t-ctkd:           {policy: adakd, hp: {temperature: ctkd, tau_min: 1.0, tau_max: 2.0}}
  adakd-t-logit-std:      {policy: adakd, hp: {temperature: logit_std, tau_base: 1.0}}
"""

# Each AdaKD row of Tables 2-5 in evaluation/reference/adakd_aaai2026.csv -> its policy label
# ("adakd" = the plugin with defaults). The baselines (adakd False) run without a policy.
ROWS = {
    ("table2", "+ IDTS"): "adakd-idts-only",
    ("table2", "+ LATF"): "adakd-latf-only",
    ("table2", "AdaKD (full)"): "adakd",
    ("table3", "FKD"): "adakd-ind-fkl",
    ("table3", "RKD"): "adakd-ind-rkl",
    ("table3", "Cross-Entropy (vs. ground truth)"): "adakd-ind-ce",
    ("table3", "JS-Divergence"): "adakd-ind-js",
    ("table3", "NMTKD (top-k, k=5)"): "adakd-ind-nmt-top5",
    ("table3", "Hellinger"): "adakd",
    ("table4", "LATF"): "adakd",
    ("table4", "fixed r = 1.0"): "adakd-idts-only",
    ("table4", "fixed r = 0.75"): "adakd-r-fixed0.75",
    ("table4", "linear r: 1.0 → 0.75"): "adakd-r-linear1.0-0.75",
    ("table4", "cosine r: 1.0 → 0.75"): "adakd-r-cosine1.0-0.75",
    ("table4", "cosine r: 1.0 → 0.5"): "adakd-r-cosine1.0-0.5",
    ("table5", "T = 1.0"): "adakd-latf-only",
    ("table5", "AdaKD (c = 0.5)"): "adakd",
    ("table5", "Inverse Scaling (−c, i.e. hard→high T)"): "adakd-t-inverse",
    ("table5", "T = 0.8"): "adakd-t-fixed0.8",
    ("table5", "T = 1.2"): "adakd-t-fixed1.2",
    ("table5", "T ≈ e^{−0.5}"): "adakd-t-fixed-e-0.5",
    ("table5", "CTKD (curriculum temperature)"): "adakd-t-ctkd",
    ("table5", "Logit Std. (NormKD / logit standardisation)"): "adakd-t-logit-std",
}

INDICATORS = ["hellinger", "fkl", "rkl", "ce", "js", "nmt_topk"]
SCHEDULES = ["latf", "fixed", "linear", "cosine"]
TS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]


def logp(x):
    return F.log_softmax(x.float(), -1)


def make(plugins, **hp):
    return plugins["adakd"].obj(total_steps=hp.pop("total_steps", 20), **hp)


def pair(seed, n=24, v=40, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


# --- float64 references, written from the formulas --------------------------------------------------

def np_logp(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_score(indicator, s_logits, t_logits, labels=None, k=10):
    ls, lt = np_logp(s_logits), np_logp(t_logits)
    q, p = np.exp(ls), np.exp(lt)
    if indicator == "hellinger":
        return np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, -1)) / math.sqrt(2)
    if indicator == "fkl":
        return np.sum(p * (lt - ls), -1)
    if indicator == "rkl":
        return np.sum(q * (ls - lt), -1)
    if indicator == "js":
        m = 0.5 * p + 0.5 * q
        return 0.5 * np.sum(q * np.log(q / m), -1) + 0.5 * np.sum(p * np.log(p / m), -1)
    if indicator == "ce":
        return -ls[np.arange(len(labels)), labels]
    if indicator == "nmt_topk":
        t_top = np.argsort(-lt, -1)[:, :k]
        s_top = np.argsort(-ls, -1)[:, :k]
        return np.array([1 - len(set(a) & set(b)) / k for a, b in zip(t_top, s_top)])
    raise AssertionError(indicator)


# --- 1. difficulty indicators -------------------------------------------------------------------------

@pytest.mark.parametrize("indicator", INDICATORS)
def test_indicator_equals_float64_reference(plugins, indicator):
    s, t = pair(3)
    labels = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(4))
    policy = make(plugins, indicator=indicator)
    got = policy.difficulty(logp(s), logp(t), labels).double().numpy()
    ref = reference_score(indicator, s.numpy(), t.numpy(), labels.numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert (got >= 0).all()


@pytest.mark.parametrize("indicator", [i for i in INDICATORS if i != "ce"])
def test_indicator_is_minimal_when_the_student_equals_the_teacher(plugins, indicator):
    s, t = pair(5)
    s[0] = t[0]  # row 0: a perfect student
    got = make(plugins, indicator=indicator).difficulty(logp(s), logp(t))
    assert got[0].item() == pytest.approx(0.0, abs=1e-5)
    assert got[0] <= got[1:].min() + 1e-6


@pytest.mark.parametrize("indicator", ["hellinger", "fkl", "rkl", "js"])
def test_larger_score_for_a_student_further_from_the_teacher(plugins, indicator):
    t = torch.zeros(10, 5)
    s = torch.zeros(10, 5)
    s[:, 0] = torch.arange(10.0)  # token i drifts further from the teacher as i grows
    got = make(plugins, indicator=indicator).difficulty(logp(s), logp(t))
    assert (got[1:] > got[:-1]).all()


def test_ce_indicator_is_larger_when_the_student_misses_the_label(plugins):
    s = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    got = make(plugins, indicator="ce").difficulty(logp(s), logp(torch.zeros(3, 3)), labels)
    assert got[0] < got[1] < got[2]


def test_ce_indicator_needs_labels(plugins):
    s, t = pair(6)
    policy = make(plugins, indicator="ce")
    with pytest.raises(ValueError, match="labels"):
        plan_of(policy, logp(s), logp(t), 0.0)
    with pytest.raises(ValueError, match="shape"):
        plan_of(policy, logp(s), logp(t), 0.0, labels=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="-100"):
        plan_of(policy, logp(s), logp(t), 0.0, labels=torch.full((24,), IGNORE))


def test_nmt_topk_counts_missing_teacher_top_k_tokens(plugins):
    t = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2]])
    s = torch.tensor([[9.0, 8, 7, 0, 0, 6, 5, 0]])  # shares 3 of the teacher's top 5
    assert make(plugins, indicator="nmt_topk", topk_k=5).difficulty(logp(s), logp(t)).item() == pytest.approx(0.4)
    got = make(plugins, indicator="nmt_topk", topk_k=2).difficulty(logp(s), logp(t)).item()
    assert got == pytest.approx(0.0)
    assert make(plugins, indicator="nmt_topk", topk_k=50).difficulty(logp(s), logp(t)).item() == 0.0  # k ≤ V


@pytest.mark.parametrize("indicator", [i for i in INDICATORS if i != "ce"])
def test_indicators_ignore_floored_vocabulary_padding(plugins, indicator):
    s, t = pair(7, v=12)
    policy = make(plugins, indicator=indicator)
    plain = policy.difficulty(logp(s), logp(t))
    pad = torch.full((24, 3), float("-inf")).clamp_min(NEG_FLOOR)  # as the harness floors -inf padding
    padded = policy.difficulty(logp(torch.cat([s, pad], -1)), logp(torch.cat([t, pad], -1)))
    assert torch.isfinite(padded).all()
    assert torch.allclose(padded, plain, atol=1e-6)


# --- 2. ratio schedules -------------------------------------------------------------------------------

SCHEDULE_CASES = {
    "fixed": ({"schedule": "fixed", "r_fixed": 0.6}, lambda t: 0.6),
    "linear": ({"schedule": "linear", "r0": 1.0, "r1": 0.75}, lambda t: 1.0 - 0.25 * t),
    "cosine": ({"schedule": "cosine", "r0": 1.0, "r1": 0.5}, lambda t: 0.5 + 0.25 * (1 + math.cos(math.pi * t))),
    "cosine-up": ({"schedule": "cosine", "r0": 0.2, "r1": 0.9}, lambda t: 0.9 - 0.35 * (1 + math.cos(math.pi * t))),
}


@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_schedule_trajectory_and_selection_count(plugins, case):
    hp, closed_form = SCHEDULE_CASES[case]
    policy = make(plugins, **hp)
    assert policy.kept_ratio(0.0) == pytest.approx(closed_form(0.0))  # before any plan
    s, t = pair(8, n=37)
    ref = reference_score("hellinger", s.numpy(), t.numpy())
    for step, progress in enumerate(TS):
        plan = plan_of(policy, logp(s), logp(t), progress)
        assert policy.kept_ratio(progress) == pytest.approx(closed_form(progress), abs=1e-12)
        n_sel = max(1, math.floor(37 * policy.kept_ratio(progress)))
        assert plan.weight.sum().item() == n_sel and set(plan.weight.unique().tolist()) <= {0.0, 1.0}
        kept = plan.weight.numpy() > 0
        assert ref[kept].min() >= ref[~kept].max() if (~kept).any() else True  # the hardest are kept
        policy.observe(5.0 - step)  # a falling loss: LATF would shrink r, the fixed forms ignore it
        assert policy.ref is None
    assert policy.steps_seen == len(TS) and policy.ema is not None


def test_schedule_endpoints_and_progress_clamp(plugins):
    s, t = pair(9, n=40)
    lin = make(plugins, schedule="linear", r0=1.0, r1=0.75)
    cos = make(plugins, schedule="cosine", r0=1.0, r1=0.75)
    for policy in (lin, cos):
        assert plan_of(policy, logp(s), logp(t), 1.0).weight.sum() == 30  # floor(40 · 0.75)
        assert policy.kept_ratio(1.0) == 0.75
        assert policy.kept_ratio(1.3) == 0.75
        assert plan_of(policy, logp(s), logp(t), -0.1).weight.sum() == 40
    assert cos.kept_ratio(0.5) == pytest.approx(0.875)
    tiny = make(plugins, schedule="fixed", r_fixed=0.01)
    assert plan_of(tiny, logp(s), logp(t), 0.3).weight.sum() == 1  # n_sel = max(1, ·)


def test_latf_ratio_ignores_progress_and_moves_only_by_observe(plugins):
    policy = make(plugins, beta=0.0, warmup=0.0, delta=0.5)
    s, t = pair(10, n=40)
    for progress in TS:
        assert plan_of(policy, logp(s), logp(t), progress).weight.sum() == 40
        assert policy.kept_ratio(progress) == 1.0
    policy.observe(10.0)
    policy.observe(5.0)
    assert policy.kept_ratio(0.7) == 0.5 and policy.log_scalars() == {"latf_ratio": 0.5} and plan_of(policy, logp(s), logp(t), 0.0).weight.sum() == 20


# --- 3. temperature rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("c", [0.5, -0.5, 1.5])
def test_idts_follows_the_formula_over_the_selected_median(plugins, c):
    policy = make(plugins, indicator="fkl", schedule="fixed", r_fixed=0.5, tau_base=2.0, c=c)
    s_logits, t_logits = pair(11, n=30)
    plan = plan_of(policy, logp(s_logits), logp(t_logits), 0.0)
    score = reference_score("fkl", s_logits.numpy(), t_logits.numpy())
    selected = np.sort(score)[::-1][:15]
    lower_median = np.sort(selected)[(len(selected) - 1) // 2]  # torch's median of an even count
    expected = 2.0 * np.exp(-c * np.tanh(np.log(score / lower_median)))
    tau = plan.tau_student.double().numpy()
    np.testing.assert_allclose(tau, expected, rtol=1e-4)
    assert torch.equal(plan.tau_teacher, plan.tau_student) and torch.allclose(plan.scale, plan.tau_student**2)
    assert tau.min() >= 2.0 * math.exp(-abs(c)) - 1e-6 and tau.max() <= 2.0 * math.exp(abs(c)) + 1e-6
    hardest, easiest = score.argmax(), score.argmin()
    if c > 0:  # hard → low τ
        assert tau[hardest] == tau.min() and tau[easiest] == tau.max()
    else:  # inverse direction: hard → HIGH τ
        assert tau[hardest] == tau.max() and tau[easiest] == tau.min()


@pytest.mark.parametrize("tau_fixed", [1.0, 0.8, 1.2, math.exp(-0.5)])
def test_fixed_temperature_is_constant(plugins, tau_fixed):
    policy = make(plugins, temperature="fixed", tau_fixed=tau_fixed)
    s, t = pair(12)
    for progress in (0.0, 0.5, 1.0):
        plan = plan_of(policy, logp(s), logp(t), progress)
        assert torch.allclose(plan.tau_student, torch.full((24,), tau_fixed))
        assert torch.equal(plan.tau_teacher, plan.tau_student)
        assert torch.allclose(plan.scale, torch.full((24,), tau_fixed**2))


def test_ctkd_temperature_follows_its_cosine_curriculum(plugins):
    policy = make(plugins, temperature="ctkd", tau_min=1.0, tau_max=3.0)
    s, t = pair(13)
    taus = []
    for progress in TS:
        plan = plan_of(policy, logp(s), logp(t), progress)
        expected = 1.0 + 2.0 * (1 - math.cos(math.pi * progress)) / 2
        assert torch.allclose(plan.tau_student, torch.full((24,), expected))
        assert torch.equal(plan.tau_teacher, plan.tau_student)
        assert torch.allclose(plan.scale, plan.tau_student**2)
        taus.append(plan.tau_student[0].item())
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(3.0)
    assert taus == sorted(taus)  # easy → hard: τ rises monotonically
    assert taus[TS.index(0.5)] == pytest.approx(2.0)
    default = make(plugins, temperature="ctkd")
    assert plan_of(default, logp(s), logp(t), 1.0).tau_student[0].item() == pytest.approx(2.0)  # tau_max 2.0


def test_logit_std_uses_each_models_logit_std_ignoring_padding(plugins):
    policy = make(plugins, temperature="logit_std", tau_base=2.0)
    s, t = pair(14, n=6, v=30)
    s = s + torch.arange(6.0).unsqueeze(-1) * 7  # per-row shifts do not change the std
    t[:, 1] *= 5
    s[5] = 0.0  # a constant row: std 0, clamped at 1e-6
    pad = torch.full((6, 4), NEG_FLOOR)
    plan = plan_of(policy, logp(torch.cat([s, pad], -1)), logp(torch.cat([t, pad], -1)), 0.3)
    std_s = np.std(s.double().numpy(), -1)  # numpy's population std of the real logits
    std_t = np.std(t.double().numpy(), -1)
    np.testing.assert_allclose(plan.tau_student[:5].double().numpy() / 2.0, std_s[:5], rtol=1e-4)
    np.testing.assert_allclose(plan.tau_teacher.double().numpy() / 2.0, std_t, rtol=1e-4)
    assert plan.tau_student[5].item() == pytest.approx(2e-6, rel=1e-3)
    assert torch.allclose(plan.scale, torch.full((6,), 4.0))


# --- hyper-parameter checks and state -----------------------------------------------------------------

@pytest.mark.parametrize("name, value, allowed", [
    ("indicator", "kl", "hellinger, fkl, rkl, ce, js, nmt_topk, nmtkd, random, prob, entropy, ce_entropy"),
    ("tau_grad", 1, "true or false"), ("indicator", "logtoku", "set tau_grad: false"),
    ("schedule", "step", "latf, fixed, linear, cosine"),
    ("temperature", "learned", "idts, fixed, ctkd, logit_std"),
    ("latf_reset", "always", "trigger, change"),
    ("r_min", 0.0, "(0, 1]"), ("r_fixed", 1.5, "(0, 1]"), ("r0", 0, "(0, 1]"), ("r1", -0.25, "(0, 1]"),
    ("tau_base", 0.0, "> 0"), ("tau_fixed", -1.0, "> 0"), ("tau_min", 0, "> 0"), ("tau_max", -2.0, "> 0"),
    ("beta", 1.0, "[0, 1)"), ("eps", -0.1, "[0, 1)"), ("delta", 1.0, "[0, 1)"), ("warmup", 1.5, "[0, 1)"),
    ("r_fixed", float("nan"), "finite"), ("c", float("inf"), "finite"), ("tau_fixed", "1.0", "number"),
    ("topk_k", 0, "integer ≥ 1"), ("topk_k", 2.5, "integer ≥ 1"),
])
def test_invalid_hyper_parameters_raise_naming_the_parameter(plugins, name, value, allowed):
    with pytest.raises(ValueError) as err:
        make(plugins, **{name: value})
    message = str(err.value)
    assert f"{name} = {value!r}" in message and allowed in message


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_state_round_trips_exactly_for_each_schedule(plugins, schedule):
    hp = {"schedule": schedule, "beta": 0.5, "warmup": 0.1, "delta": 0.2, "r1": 0.5, "r_fixed": 0.75}
    s, t = pair(15, n=40)
    a = make(plugins, **hp)
    for step, loss in enumerate((10.0, 10.0, 7.0, 6.0, 5.0)):
        plan_of(a, logp(s), logp(t), step / 20)
        a.observe(loss)
    state = a.state_dict()
    assert set(state) == {"ema", "ratio", "ref", "steps_seen"}
    if schedule == "latf":
        assert a.ratio < 1.0 and a.ref is not None  # the run has moved r, so the round trip is not trivial
    b = make(plugins, **hp)
    b.load_state_dict(json.loads(json.dumps(state)))  # through a text checkpoint, exactly
    assert b.state_dict() == state
    for step, loss in enumerate((4.0, 9.0, 3.0), start=5):
        pa, pb = plan_of(a, logp(s), logp(t), step / 20), plan_of(b, logp(s), logp(t), step / 20)
        assert all(torch.equal(getattr(pa, f), getattr(pb, f)) for f in ("weight", "tau_student", "tau_teacher", "scale"))
        a.observe(loss)
        b.observe(loss)
        assert a.state_dict() == b.state_dict()


# --- the Tables 2-5 variants --------------------------------------------------------------------------

def policy_defs():
    return yaml.safe_load(POLICY_DEFS)["policy_defs"]


def test_every_adakd_row_of_tables_2_to_5_has_a_variant(repo):
    with open(repo / "evaluation" / "reference" / "adakd_aaai2026.csv", encoding="utf-8") as f:
        rows = {(r["table"], r["variant"]) for r in csv.DictReader(f)
                if r["table"] in ("table2", "table3", "table4", "table5") and r["adakd"] == "True"}
    assert rows == set(ROWS)
    assert set(ROWS.values()) == set(policy_defs()) | {"adakd"}


def tiny_batch(seed=16, b=2, t=10, v=30):
    g = torch.Generator().manual_seed(seed)
    s, te = torch.randn(b, t, v, generator=g) * 2, torch.randn(b, t, v, generator=g) * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :3] = IGNORE
    return s, te, labels


@pytest.mark.parametrize("label", ["adakd", *yaml.safe_load(POLICY_DEFS)["policy_defs"]])
def test_each_variant_binds_constructs_and_plans(plugins, label):
    spec = policy_defs().get(label, {"policy": "adakd", "hp": {}})
    assert spec["policy"] == "adakd"
    hp = plugins["adakd"].bind(spec["hp"], where=f"policy_defs.{label}")  # as config validation does
    policy = plugins["adakd"].obj(total_steps=50, **hp)
    s, t, labels = tiny_batch()
    n = count_valid(labels)
    for step, progress in enumerate((0.0, 0.5, 1.0)):
        parts = objective(s, t, labels, vocab_size=30, kd_ratio=1.0, n_global=n,
                          divergence=plugins["fkl"].obj, policy=policy, progress=progress)
        assert torch.isfinite(parts.loss) and parts.n_selected == max(1, math.floor(n * policy.kept_ratio(progress)))
        valid = labels[:, 1:] != IGNORE
        plan = plan_of(policy, logp(s[:, :-1][valid]), logp(t[:, :-1][valid]), progress, labels=labels[:, 1:][valid])
        assert isinstance(plan, TokenPlan)
        for field in (plan.weight, plan.tau_student, plan.tau_teacher, plan.scale):
            assert field.shape == (n,) and torch.isfinite(field).all()
        assert set(plan.weight.unique().tolist()) <= {0.0, 1.0}
        assert plan.weight.sum() == max(1, math.floor(n * policy.kept_ratio(progress)))
        assert (plan.tau_student > 0).all() and (plan.tau_teacher > 0).all() and (plan.scale > 0).all()
        policy.observe(3.0 - step)
    assert 0 < policy.kept_ratio(1.0) <= 1
