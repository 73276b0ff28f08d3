"""AdaKD as its released code (github.com/SassyRong/AdaKD, `loss/losses.py`, `distillation.py`)
computes it: LATF's warm-up boundary against the release's loop, the release's difficulty indicators
against independent float64 computations, and the student's gradient through IDTS's temperature
(`tau_grad`) against plain autograd on the full logits with τ not detached."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import IGNORE, count_valid, objective, valid_positions
from kdbench.policies import Composed
from tests.conftest import plan_of

# --- LATF on the release's warm-up boundary ------------------------------------------------------------


def release_latf(losses, *, total, warmup, decay, eps, sigma):
    """distillation.py's LATF block, transcribed: global_step is 1-based, the reference is set once
    `global_step > warmup_iters·total_iters`, r floors at 0.1. Returns r and L_ref after each step."""
    ema = ref = None
    ratio, out = 1.0, []
    for global_step, loss in enumerate(losses, 1):
        ema = loss if ema is None else decay * ema + (1 - decay) * loss
        if ref is not None:
            delta, band = ref - ema, ref * eps
            if delta < -band:
                ratio, ref = min(ratio * (1 + sigma), 1.0), ema
            elif delta > band:
                ratio, ref = max(ratio * (1 - sigma), 0.1), ema
        elif global_step > warmup * total:
            ref = ema
        out.append((ratio, ref))
    return out


@pytest.mark.parametrize("total, warmup", [(400, 0.05), (400, 0.0), (137, 0.07), (100, 0.29)])
def test_latf_trajectory_equals_the_release_loop(plugins, total, warmup):
    t = np.arange(total)
    rng = np.random.default_rng(total)
    # falls, stalls, rises, falls again, with noise: r moves both ways and hits r_min
    losses = 4 * np.exp(-t / 40) + 0.6 + 0.5 * np.sin(t / 15) + 0.05 * rng.standard_normal(total)
    losses = np.abs(losses).tolist()
    policy = plugins["adakd"].obj(total_steps=total, warmup=warmup, beta=0.9, eps=0.02, delta=0.1)
    mine = []
    for loss in losses:
        policy.observe(loss)
        mine.append((policy.ratio, policy.ref))
    theirs = release_latf(losses, total=total, warmup=warmup, decay=0.9, eps=0.02, sigma=0.1)
    assert mine == theirs
    assert len({r for r, _ in mine}) > 5 and min(r for r, _ in mine) == pytest.approx(0.1)
    first_ref = next(i for i, (_, ref) in enumerate(mine) if ref is not None)
    assert first_ref == math.floor(warmup * total)  # 0-based: 1-based step floor(w·T) + 1


def test_latf_reference_is_set_after_step_21_of_400_at_warm_up_5_percent(plugins):
    policy = plugins["adakd"].obj(total_steps=400)
    for _ in range(20):
        policy.observe(1.0)
    assert policy.ref is None
    policy.observe(1.0)
    assert policy.ref == 1.0


# --- the release's indicators, against float64 computations from their formulas --------------------

def np_logp(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def nmtkd_reference(s_logits, t_logits, k):
    """calculate_nmtkd_score, token by token with explicit loops."""
    out = []
    for zs, zt in zip(s_logits, t_logits):
        q, p = np.exp(np_logp(zs)), np.exp(np_logp(zt))
        t_top, s_top = np.argsort(-p, kind="stable")[:k], np.argsort(-q, kind="stable")[:k]
        score = sum(max(q[u] - q[t_top[0]], 0.0) for u in t_top)
        score += sum(max(q[v] - q[u], 0.0) for u in t_top for v in s_top if p[u] > p[v])
        out.append(score)
    return np.array(out)


def logtoku_reference(s_logits, k):
    from scipy.special import digamma

    top = -np.sort(-np.asarray(s_logits, dtype=np.float64), -1)[:, :k]
    a = top - top.min(-1, keepdims=True) + 1e-8
    a0 = a.sum(-1, keepdims=True)
    au = np.sum(-(a / a0) * (digamma(a + 1) - digamma(a0 + 1)), -1)
    eu = k / (a0[:, 0] + k)
    norm = [(x - x.min()) / (x.max() - x.min()) for x in (au, eu)]
    return norm[0] * norm[1]


def reference_score(indicator, s_logits, t_logits, labels, k=10):
    ls, lt = np_logp(s_logits), np_logp(t_logits)
    q, p = np.exp(ls), np.exp(lt)
    ent = -np.sum(q * ls, -1)
    ce = -ls[np.arange(len(labels)), labels]
    if indicator == "prob":
        return 1 - q.max(-1)
    if indicator == "entropy":
        return ent
    if indicator == "ce_entropy":
        return ce * ent
    if indicator == "gt_prob":
        return (1 - p[np.arange(len(labels)), labels]) * -np.log(q[np.arange(len(labels)), labels] + 1e-8)
    if indicator == "bhattacharyya":
        return -np.log(np.sum(np.sqrt(q * p), -1) + 1e-8)
    if indicator == "sensitivity_reverse":
        return np.maximum(np.sum(q * (ls - lt), -1), 1e-8) / np.maximum(ent, 1e-8)
    if indicator == "nmtkd":
        return nmtkd_reference(s_logits, t_logits, k)
    if indicator == "logtoku":
        return logtoku_reference(s_logits, k)
    raise AssertionError(indicator)


RELEASE_INDICATORS = ["nmtkd", "prob", "entropy", "ce_entropy", "gt_prob", "bhattacharyya",
                      "sensitivity_reverse", "logtoku"]


def pair(seed, n=32, v=40, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


@pytest.mark.parametrize("indicator", RELEASE_INDICATORS)
def test_release_indicator_equals_its_formula(plugins, indicator):
    s, t = pair(11)
    labels = torch.randint(0, 40, (32,), generator=torch.Generator().manual_seed(12))
    policy = plugins["adakd"].obj(total_steps=10, indicator=indicator, tau_grad=False)
    stats = policy.token_stats(F.log_softmax(s, -1), F.log_softmax(t, -1), labels)
    got = policy.plan(stats, 0.0)  # the plan's own scores: logtoku is normalised over the micro-batch
    ref = reference_score(indicator, s.numpy(), t.numpy(), labels.numpy())
    mine = policy.difficulty(F.log_softmax(s.double(), -1), F.log_softmax(t.double(), -1), labels).numpy()
    np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-12)
    assert len(set(np.round(ref, 6))) > 16  # the formula spreads the tokens
    kept = got.weight.bool().numpy()  # r = 1 at the start: every token kept, τ from IDTS over all
    assert kept.all()
    tau = np.exp(-0.5 * np.tanh(np.log(np.maximum(ref, 1e-12) / max(np.sort(ref)[(len(ref) - 1) // 2], 1e-12))))
    np.testing.assert_allclose(got.tau_student.double().numpy(), tau, rtol=1e-4, atol=1e-6)


def test_nmtkd_by_hand():
    """One token, k 3: the teacher ranks a > b > c; the student puts b above a (relu(q_b − q_a) in the
    top-1 term) and ranks d (outside the teacher's top 3) above c."""
    from kdbench.registry import discover
    from tests.conftest import REPO

    nmtkd = __import__(discover(REPO / "methods")["adakd"].obj.__module__, fromlist=["nmtkd_score"]).nmtkd_score
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    q = torch.tensor([[0.3, 0.4, 0.05, 0.25]])
    # top-1: relu(q_b − q_a) = 0.1; pairs (u ∈ {a,b,c}, v ∈ S = {b,a,d}) with p_u > p_v and q_v > q_u:
    # (a, b): 0.1; (a, d), (b, d): q_d < q_a, q_b; (c, d): 0.25 − 0.05 = 0.2
    got = nmtkd(q.log(), p.log(), 3)
    assert got.item() == pytest.approx(0.1 + 0.1 + 0.2, abs=1e-6)


def test_random_selection_is_reproducible_from_the_seed_with_the_base_temperature(plugins):
    s, t = pair(13, n=40)
    plans = {}
    for seed in (1, 1, 2):
        policy = plugins["adakd"].obj(total_steps=10, indicator="random", seed=seed, tau_base=1.3)
        policy.ratio = 0.5
        plans.setdefault(seed, []).append(plan_of(policy, F.log_softmax(s, -1), F.log_softmax(t, -1), 0.0))
        policy.observe(1.0)
        plans[seed].append(plan_of(policy, F.log_softmax(s, -1), F.log_softmax(t, -1), 0.0))
    (a, a_next), (b, _), (c, _) = plans[1][:2], plans[1][2:], plans[2]
    assert torch.equal(a.weight, b.weight) and a.weight.sum() == 20  # same seed and step: same tokens
    assert not torch.equal(a.weight, c.weight) and not torch.equal(a.weight, a_next.weight)
    hardest = torch.topk(plugins["adakd"].obj(total_steps=10).difficulty(F.log_softmax(s, -1), F.log_softmax(t, -1)), 20)
    assert not torch.equal(a.weight.nonzero().flatten().sort().values, hardest.indices.sort().values)
    assert torch.allclose(a.tau_student, torch.full((40,), 1.3))  # the release's scores are all 1: τ = τ_base
    assert not a.tau_grads


# --- the gradient through τ (tau_grad) ------------------------------------------------------------------

B, T, D, V = 3, 20, 16, 40


def inputs(dtype, seed=0, rows=V, bias=False):
    g = torch.Generator().manual_seed(seed)
    h_s = (torch.randn(B, T, D, generator=g) * 2).to(dtype).requires_grad_()
    h_t = (torch.randn(B, T, D, generator=g) * 2).to(dtype)
    head_s = torch.nn.Linear(D, rows, bias=bias).to(dtype)
    head_t = torch.nn.Linear(D, rows, bias=False).to(dtype).requires_grad_(False)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :4] = IGNORE
    labels[2, 15:] = IGNORE
    return h_s, h_t, labels, head_s, head_t


def hellinger_with_graph(s_logp, t_logp, labels):
    diff = F.softmax(t_logp, -1).sqrt() - F.softmax(s_logp, -1).sqrt()
    return diff.pow(2).sum(-1).div(2).sqrt()


def release_loss(h_s, h_t, labels, head_s, head_t, divergence, *, ratio, c, kd_ratio, score):
    """The release's AdaKD on the full logits, τ not detached (loss/losses.py: AdaKD with
    adaptive_temperature, calculate_distillation_weight): score → top-r selection → τ from the
    score and its median → mean over the kept tokens of τ²·D(z_s/τ, z_t/τ); the harness's CE mix."""
    h_s, y = valid_positions(h_s, labels)
    h_t = valid_positions(h_t, labels)[0]
    z_s, z_t = head_s(h_s)[:, :V], head_t(h_t)[:, :V].detach()
    s = score(F.log_softmax(z_s, -1), F.log_softmax(z_t, -1), y)
    n = y.numel()
    sel = torch.topk(s.detach(), max(1, math.floor(n * ratio))).indices
    median = s[sel].median()
    tau = torch.exp(-c * torch.tanh(torch.log(s[sel].clamp_min(1e-12) / median.clamp_min(1e-12))))
    values = divergence(F.log_softmax(z_s[sel] / tau[:, None], -1), F.log_softmax(z_t[sel] / tau[:, None], -1))
    kd = (values * tau**2).mean()
    ce = F.cross_entropy(head_s(h_s), y, reduction="sum")
    return 1 / n * ((1 - kd_ratio) * ce + kd_ratio * n * kd)


DIVERGENCES = ["fkl", "rkl", "skl", "srkl", "akl", "js", "tvd", "abkd", "sym_kl"]


def fused_grads(plugins, dtype, div, *, chunk_size, tau_grad, ratio=0.6, c=0.5, kd_ratio=1.0, indicator="hellinger",
                rows=V, bias=False, policies=1):
    h_s, h_t, labels, head_s, head_t = inputs(dtype, rows=rows, bias=bias)
    made = [plugins["adakd"].obj(total_steps=10, c=c, tau_grad=tau_grad, indicator=indicator) for _ in range(policies)]
    for p in made:
        p.ratio = ratio
    policy = made[0] if policies == 1 else Composed(made)
    parts = objective(h_s, h_t, labels, vocab_size=V, kd_ratio=kd_ratio, n_global=count_valid(labels),
                      divergence=plugins[div].obj, policy=policy, student_head=head_s, teacher_head=head_t,
                      chunk_size=chunk_size)
    return torch.autograd.grad(parts.loss, [h_s, *head_s.parameters()]), (h_s, h_t, labels, head_s, head_t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("div", DIVERGENCES)
def test_tau_grad_equals_autograd_with_tau_not_detached(plugins, dtype, div):
    for chunk_size in (None, 7):
        fused, (h_s, h_t, labels, head_s, head_t) = fused_grads(plugins, dtype, div, chunk_size=chunk_size,
                                                                tau_grad=True)
        loss = release_loss(h_s, h_t, labels, head_s, head_t, plugins[div].obj, ratio=0.6, c=0.5, kd_ratio=1.0,
                            score=hellinger_with_graph)
        reference = torch.autograd.grad(loss, [h_s, *head_s.parameters()])
        tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
        for mine, theirs in zip(fused, reference):
            torch.testing.assert_close(mine, theirs, rtol=tol["rtol"], atol=tol["atol"] * theirs.abs().max().item())
    detached, _ = fused_grads(plugins, dtype, div, chunk_size=7, tau_grad=False)
    gap = (detached[0] - reference[0]).norm() / reference[0].norm()
    assert gap > 1e-3, f"{div}: τ's gradient changes the student's gradient by only {gap:.2g}"


@pytest.mark.parametrize("case", ["CE mixed, padded head, bias", "fkl indicator", "inverse c", "adakd+adakd"])
def test_tau_grad_variants_equal_autograd(plugins, case):
    kw = {"CE mixed, padded head, bias": dict(kd_ratio=0.5, rows=V + 5, bias=True),
          "fkl indicator": dict(indicator="fkl"), "inverse c": dict(c=-0.5),
          "adakd+adakd": dict(policies=2)}[case]
    fused, (h_s, h_t, labels, head_s, head_t) = fused_grads(plugins, torch.float64, "rkl", chunk_size=5,
                                                            tau_grad=True, **kw)

    def fkl_score(s_logp, t_logp, y):
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1).clamp_min(0)

    score = fkl_score if kw.get("indicator") == "fkl" else hellinger_with_graph
    if kw.get("policies") == 2:
        loss = release_loss_composed(h_s, h_t, labels, head_s, head_t, plugins["rkl"].obj)
    else:
        loss = release_loss(h_s, h_t, labels, head_s, head_t, plugins["rkl"].obj, ratio=0.6, c=kw.get("c", 0.5),
                            kd_ratio=kw.get("kd_ratio", 1.0), score=score)
    reference = torch.autograd.grad(loss, [h_s, *head_s.parameters()])
    for mine, theirs in zip(fused, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12 * theirs.abs().max().item())


def release_loss_composed(h_s, h_t, labels, head_s, head_t, divergence):
    """Two IDTS factors on the same tokens (`adakd+adakd`, r 0.6 each): τ = τ₁·τ₂ = τ₁², scale τ⁴."""
    h_s, y = valid_positions(h_s, labels)
    h_t = valid_positions(h_t, labels)[0]
    z_s, z_t = head_s(h_s)[:, :V], head_t(h_t)[:, :V].detach()
    s = hellinger_with_graph(F.log_softmax(z_s, -1), F.log_softmax(z_t, -1), y)
    sel = torch.topk(s.detach(), math.floor(y.numel() * 0.6)).indices
    tau = torch.exp(-0.5 * torch.tanh(torch.log(s[sel] / s[sel].median()))) ** 2
    values = divergence(F.log_softmax(z_s[sel] / tau[:, None], -1), F.log_softmax(z_t[sel] / tau[:, None], -1))
    return (values * tau**2).mean()


# --- the release's script settings and the new labels in the grids ----------------------------------------

def test_gkd_and_distillm_under_adakd_run_the_release_scripts_settings(repo):
    from kdbench.config import workflow_grid

    g = workflow_grid(repo / "config" / "config.yaml", workdir=repo, require_data=False)
    for base in ("gkd", "distillm"):
        plain, adakd = g.method(base), g.method(f"{base}+adakd")
        assert not plain["policies"] and adakd["divergence"]["key"] == "rkl"
        (policy,) = adakd["policies"]
        hp = policy["hp"]
        assert (hp["indicator"], hp["c"], hp["warmup"], hp["topk_k"]) == ("nmtkd", 0.3, 0.0, 10)
        assert hp["tau_grad"] is True
    full = g.method("rkl+adakd")["policies"][0]["hp"]  # AdaKD.sh: Hellinger, c 0.5, warm-up 0.05
    assert (full["indicator"], full["c"], full["warmup"], full["tau_grad"]) == ("hellinger", 0.5, 0.05, True)
    assert g.method("rkl+adakd-tau-detached")["policies"][0]["hp"]["tau_grad"] is False
    table3 = [m for _, m, _ in g.runs(table="table3")]
    assert "rkl+adakd-random" in table3 and "rkl+adakd-ind-nmtkd" in table3
    assert g.method("rkl+adakd-random")["policies"][0]["hp"]["indicator"] == "random"


@pytest.mark.parametrize("label", ["adakd-random", "adakd-ind-nmtkd", "adakd-tau-detached"])
def test_new_labels_train_a_step(plugins, repo, label):
    import yaml

    spec = yaml.safe_load((repo / "config" / "variants.yaml").read_text())["policy_defs"][label]
    policy = plugins["adakd"].obj(total_steps=20, seed=3, **plugins["adakd"].bind(spec["hp"], where=label))
    h_s, h_t, labels, head_s, head_t = inputs(torch.float32)
    parts = objective(h_s, h_t, labels, vocab_size=V, kd_ratio=1.0, n_global=count_valid(labels),
                      divergence=plugins["rkl"].obj, policy=policy, student_head=head_s, teacher_head=head_t,
                      chunk_size=9)
    parts.loss.backward()
    assert torch.isfinite(parts.loss) and h_s.grad.abs().sum() > 0


def test_the_seed_is_the_harness_s_not_a_hyper_parameter(plugins):
    from kdbench.errors import KDBenchError

    adakd = plugins["adakd"]
    with pytest.raises(KDBenchError, match="unknown hyper-parameter"):
        adakd.bind({"seed": 3}, where="policy_defs.x")
    policy = adakd.instantiate(adakd.bind({"indicator": "random"}, where="x"), total_steps=10, seed=7, student_dim=4)
    assert policy.seed == 7
