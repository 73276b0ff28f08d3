"""EGAD (docs/METHODS.md §4) against independent computations: entropy signal, curriculum, entropy
temperature, dual-branch feature loss, ablation switches, composition with AdaKD."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import IGNORE, count_valid, objective
from kdbench.policies import Composed
from tests.conftest import plan_of


def egad_module(plugins):
    return sys.modules[plugins["egad"].obj.__module__]


def make(plugins, **hp):
    return plugins["egad"].instantiate(hp, total_steps=10, student_dim=6, teacher_dim=8)


def teacher_with_entropies(n=20, v=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    sharpness = torch.linspace(0.0, 40.0, n).unsqueeze(-1)  # row 0 uniform, last rows near one-hot
    return torch.randn(n, v, generator=g) * sharpness


def test_normalised_entropy_matches_numpy(plugins):
    z = teacher_with_entropies()
    got = egad_module(plugins).normalised_entropy(F.log_softmax(z, -1)).numpy()
    p = F.softmax(z.double(), -1).numpy()
    ref = -(p * np.log(p)).sum(-1) / math.log(z.shape[-1])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got[0] == pytest.approx(1.0, abs=1e-6) and got[-1] < 0.05


def test_percentile_and_pacing(plugins):
    mod = egad_module(plugins)
    assert mod.percentile(torch.tensor([0.3, 0.1, 0.9, 0.5])).tolist() == pytest.approx([1 / 3, 0, 1, 2 / 3])
    kw = dict(lambda0=0.3, t_full=0.5)
    assert mod.pacing(0.25, kind="linear", **kw) == pytest.approx(0.3 + 0.7 * 0.5)
    assert mod.pacing(0.25, kind="root", **kw) == pytest.approx(0.3 + 0.7 * math.sqrt(0.5))
    assert mod.pacing(0.25, kind="step", **kw) == pytest.approx(0.3)
    assert mod.pacing(0.9, kind="step", **kw) == pytest.approx(1.0)


def test_curriculum_moves_from_low_to_high_entropy_tokens(plugins):
    policy = make(plugins)
    t = F.log_softmax(teacher_with_entropies(), -1)
    stats = policy.token_stats(t, t)
    h = stats["entropy"]
    early, late = policy.plan(stats, 0.0), policy.plan(stats, 0.5)
    u = egad_module(plugins).percentile(h)
    np.testing.assert_allclose(early.weight.numpy(), torch.sigmoid((0.3 - u) / 0.05).numpy(), rtol=1e-6)
    assert early.weight[h.argmin()] > 0.99 and early.weight[h.argmax()] < 1e-4
    assert (late.weight >= 0.5 - 1e-6).all()


def test_entropy_temperature_and_feature_weight(plugins):
    policy = make(plugins, gamma=-0.5, q_hard=0.7, beta_feat=2.0)
    t = F.log_softmax(teacher_with_entropies(), -1)
    stats = policy.token_stats(t, t)
    plan = policy.plan(stats, 1.0)
    h = stats["entropy"]
    expected = torch.exp(-0.5 * (h - h.median()))
    assert torch.allclose(plan.tau_student, expected) and torch.allclose(plan.scale, expected**2)
    assert plan.tau_student[h.argmax()] == plan.tau_student.min()  # uncertain tokens are sharpened
    u = egad_module(plugins).percentile(h)
    assert torch.equal(plan.feature_weight, 2.0 * (u >= 0.7).float())


def test_feature_loss_is_one_minus_cosine_and_trains_the_projection(plugins):
    policy = make(plugins)
    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(5, 6, generator=g, requires_grad=True), torch.randn(5, 8, generator=g)
    got = policy.feature_loss(hs, ht)
    w = policy.proj.weight.detach().double().numpy()
    a, b = hs.detach().double().numpy() @ w.T, ht.double().numpy()
    ref = 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-5)
    got.sum().backward()
    assert hs.grad.abs().sum() > 0 and policy.proj.weight.grad.abs().sum() > 0


def test_ablation_switches(plugins):
    t = F.log_softmax(teacher_with_entropies(), -1)
    plan = plan_of(make(plugins, curriculum=False, entropy_temperature=False, feature_branch=False), t, t, 0.0)
    assert torch.equal(plan.weight, torch.ones(20)) and torch.equal(plan.tau_student, torch.ones(20))
    assert plan.feature_weight is None and make(plugins, feature_branch=False).proj is None
    with pytest.raises(ValueError, match="q_hard = 1.5"):
        make(plugins, q_hard=1.5)
    with pytest.raises(ValueError, match="pacing"):
        make(plugins, pacing="exp")


def test_egad_in_the_harness_with_adakd(plugins):
    """egad+adakd: weights, temperatures and scales multiply; the feature loss reaches W and the student."""
    g = torch.Generator().manual_seed(4)
    B, T, V = 2, 8, 12
    hs = torch.randn(B, T, 6, generator=g, requires_grad=True)
    ht = torch.randn(B, T, 8, generator=g)
    head_s, head_t = torch.nn.Linear(6, V, bias=False), torch.nn.Linear(8, V, bias=False)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE
    egad, adakd = make(plugins), plugins["adakd"].obj(total_steps=10)
    adakd.ratio = 0.8
    both = Composed([egad, adakd])
    parts = objective(hs, ht, labels, vocab_size=V, kd_ratio=1.0, n_global=count_valid(labels),
                      divergence=plugins["fkl"].obj, policy=both, progress=0.6,
                      student_head=head_s, teacher_head=head_t, chunk_size=4)
    parts.loss.backward()
    assert egad.proj.weight.grad.abs().sum() > 0 and hs.grad.abs().sum() > 0
    valid = labels[:, 1:] != IGNORE
    s_logp = F.log_softmax(head_s(hs[:, :-1][valid]), -1).detach()
    t_logp = F.log_softmax(head_t(ht[:, :-1][valid]), -1)
    combined = plan_of(Composed([make(plugins), adakd]), s_logp, t_logp, 0.6)
    e, a = plan_of(make(plugins), s_logp, t_logp, 0.6), plan_of(adakd, s_logp, t_logp, 0.6)
    assert ((combined.weight > 0) & (combined.feature_weight > 0)).any()  # the feature branch is exercised
    assert torch.allclose(combined.weight, e.weight * a.weight)
    assert torch.allclose(combined.tau_student, e.tau_student * a.tau_student)
    assert parts.n_selected == int((combined.weight > 0).sum())
