"""Cross-tokenizer formulas (kdbench.crosstok.losses) against independent numpy computations written
from each method's code (llm-recipes ULD, KDFlow SimpleCTKD, NeMo-RL P-KL / H-KL, TRL GOLD), on
small random tensors with different student and teacher vocabularies, and against the same-vocabulary
special cases they reduce to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench import formulas
from kdbench.crosstok import losses

N, V_S, V_T = 5, 7, 10
COMMON_S, COMMON_T = [0, 2, 3, 6], [4, 1, 9, 0]


def logps(seed: int = 0, n: int = N, v_s: int = V_S, v_t: int = V_T, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v_s, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, v_t, generator=g, dtype=torch.float64) * scale
    return s.log_softmax(-1), t.log_softmax(-1)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def test_uld_is_the_l1_of_sorted_zero_padded_probabilities():
    s, t = logps()
    got = losses.uld(s, t)
    for i in range(N):
        q = np.sort(np.exp(s[i].numpy()))[::-1]
        p = np.sort(np.exp(t[i].numpy()))[::-1]
        q = np.concatenate([q, np.zeros(V_T - V_S)])
        assert got[i].item() == pytest.approx(np.abs(q - p).sum(), abs=1e-12)
    assert losses.uld(t, t).abs().max() == 0  # same distribution: 0
    ce = torch.rand(N, dtype=torch.float64)
    assert torch.allclose(losses.uld_objective(got, ce), ce + 1.5 * got)


def test_simple_ctkd_is_forward_kl_over_the_renormalised_common_vocabulary():
    s, t = logps(1)
    got = losses.simple_ctkd(s, t, torch.tensor(COMMON_S), torch.tensor(COMMON_T))
    for i in range(N):
        q = np.exp(s[i].numpy())[COMMON_S]
        p = np.exp(t[i].numpy())[COMMON_T]
        assert got[i].item() == pytest.approx(kl(p / p.sum(), q / q.sum()), abs=1e-12)
    same = torch.arange(V_S)  # one vocabulary, all of it common: plain forward KL
    s2, t2 = logps(2, v_t=V_S)
    assert torch.allclose(losses.simple_ctkd(s2, t2, same, same), formulas.forward_kl(s2, t2))


def projection(seed: int = 3, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randperm(V_T, generator=g)[:k] for _ in range(V_S)])
    weights = torch.rand(V_S, k, generator=g, dtype=torch.float64)
    indices[1, 1:] = -1  # a one-to-one row
    weights[1, 1:] = 0
    return indices, weights / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("vocab_topk", [None, 4])
def test_xtoken_pkl_is_forward_kl_to_the_projected_student(vocab_topk):
    s, t = logps(4)
    indices, weights = projection()
    dense = np.zeros((V_S, V_T))
    for row in range(V_S):
        for col, w in zip(indices[row].tolist(), weights[row].tolist()):
            if col >= 0:
                dense[row, col] += w
    got = losses.xtoken_pkl(s, t, indices, weights, vocab_topk=vocab_topk)
    tn = t.numpy()
    subset = np.arange(V_T) if vocab_topk is None else np.sort(np.argsort(-tn.max(0))[:vocab_topk])
    for i in range(N):
        r = (np.exp(s[i].numpy()) @ dense)[subset]
        r = r / (r.sum() + 1e-10)
        p = softmax(tn[i][subset])
        assert got[i].item() == pytest.approx(float(np.sum(p * (np.log(p) - np.log(r + 1e-10)))), abs=1e-9)
    identity = torch.arange(V_S).unsqueeze(1)  # same vocabulary, M = I: forward KL
    s2, t2 = logps(5, v_t=V_S)
    assert torch.allclose(losses.xtoken_pkl(s2, t2, identity, torch.ones(V_S, 1, dtype=torch.float64), vocab_topk=None),
                          formulas.forward_kl(s2, t2), atol=1e-8)


def test_xtoken_hkl_is_unrenormalised_kl_on_common_plus_truncated_sorted_l1():
    s, t = logps(6)
    for top in (8192, 2):
        got = losses.xtoken_hkl(s, t, torch.tensor(COMMON_S), torch.tensor(COMMON_T), uncommon_topk=top)
        for i in range(N):
            q, p = np.exp(s[i].numpy()), np.exp(t[i].numpy())
            common = float(np.sum(p[COMMON_T] * (np.log(p[COMMON_T]) - np.log(q[COMMON_S]))))
            qu = np.sort(np.delete(q, COMMON_S))[::-1]
            pu = np.sort(np.delete(p, COMMON_T))[::-1]
            k = min(len(qu), len(pu), top)
            assert got[i].item() == pytest.approx(common + np.abs(qu[:k] - pu[:k]).sum(), abs=1e-12)


def trl_generalized_jsd(q, p, beta):
    """TRL's generalized_jsd_loss on probability inputs, written out for one row."""
    lq, lp = np.log(np.maximum(q, 1e-8)), np.log(np.maximum(p, 1e-8))
    if beta == 0:
        return float(np.sum(np.exp(lp) * (lp - lq)))
    if beta == 1:
        return float(np.sum(np.exp(lq) * (lq - lp)))
    lm = np.logaddexp(lq + np.log(1 - beta), lp + np.log(beta))
    return float(beta * np.sum(np.exp(lp) * (lp - lm)) + (1 - beta) * np.sum(np.exp(lq) * (lq - lm)))


@pytest.mark.parametrize("beta,weights", [(0.5, None), (0.0, None), (1.0, (0.3, 0.7)), (0.2, (1.0, 0.0))])
def test_gold_is_trl_s_hybrid_of_jsd_on_matched_and_sorted_l1_on_the_rest(beta, weights):
    s, t = logps(7)
    kwargs = {} if weights is None else {"matched_weight": weights[0], "unmatched_weight": weights[1]}
    got = losses.gold(s, t, torch.tensor(COMMON_S), torch.tensor(COMMON_T), beta=beta, **kwargs)
    w_m, w_u = weights or (len(COMMON_T) / V_T, 1 - len(COMMON_T) / V_T)
    for i in range(N):
        q, p = np.exp(s[i].numpy()), np.exp(t[i].numpy())
        qu = np.sort(np.delete(q, COMMON_S))[::-1]
        pu = np.sort(np.delete(p, COMMON_T))[::-1]
        qu = np.concatenate([qu, np.zeros(max(0, len(pu) - len(qu)))])
        pu = np.concatenate([pu, np.zeros(max(0, len(qu) - len(pu)))])
        expected = w_m * trl_generalized_jsd(q[COMMON_S], p[COMMON_T], beta) + w_u * np.abs(qu - pu).sum()
        assert got[i].item() == pytest.approx(expected, abs=1e-10)
    with pytest.raises(ValueError, match="both matched_weight and unmatched_weight"):
        losses.gold(s, t, torch.tensor(COMMON_S), torch.tensor(COMMON_T), matched_weight=0.5)


def test_merge_group_multiplies_in_the_observed_tokens_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]], dtype=torch.float64)
    ids = [0, 1, 2]
    assert torch.allclose(losses.merge_group(probs, ids), probs[0] * 0.6 * 0.5)
    assert torch.allclose(losses.merge_group(probs, ids, "bayesian"), probs[2] * 0.5 * 0.6)
    assert torch.equal(losses.merge_group(probs[:1], [0]), probs[0])
    with pytest.raises(ValueError, match="allowed: observed, bayesian"):
        losses.merge_group(probs, ids, "mean")


@pytest.mark.parametrize("name", ["uld", "simple_ctkd", "xtoken_pkl", "xtoken_hkl", "gold"])
def test_each_formula_gives_the_student_a_gradient_and_a_descent_lowers_it(name):
    """A few gradient steps on the student's logits lower each loss (the teacher fixed)."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(N, V_S, generator=g, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(N, V_T, generator=g, dtype=torch.float64) * 3).log_softmax(-1)
    cs, ct = torch.tensor(COMMON_S), torch.tensor(COMMON_T)
    indices, weights = projection()
    fn = {"uld": lambda s: losses.uld(s, t), "simple_ctkd": lambda s: losses.simple_ctkd(s, t, cs, ct),
          "xtoken_pkl": lambda s: losses.xtoken_pkl(s, t, indices, weights),
          "xtoken_hkl": lambda s: losses.xtoken_hkl(s, t, cs, ct), "gold": lambda s: losses.gold(s, t, cs, ct)}[name]
    opt = torch.optim.SGD([z], lr=0.5)
    first = None
    for _ in range(30):
        loss = fn(z.log_softmax(-1)).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(z.grad).all()
        opt.step()
    assert fn(z.log_softmax(-1)).mean().item() < 0.9 * first
