"""The harness (kdbench.losses): masking, vocabulary alignment, CE mix, and the global-token reduction."""

import torch
import torch.nn.functional as F

from kdbench.losses import IGNORE, TokenPlan, count_valid, objective

B, T, V = 3, 9, 40


def batch(seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, vocab, generator=g) * 2
    t = torch.randn(B, T, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (B, T), generator=g)
    labels[:, :4] = IGNORE  # prompt
    labels[1, 7:] = IGNORE  # padding
    return s, t, labels


def fkl_by_hand(s, t, labels):
    """Mean over response tokens of Σ p log(p/q) at the next-token positions, in float64."""
    values = []
    for b in range(B):
        for i in range(T - 1):
            if labels[b, i + 1] != IGNORE:
                p, q = F.softmax(t[b, i].double(), -1), F.softmax(s[b, i].double(), -1)
                values.append((p * (p.log() - q.log())).sum())
    return torch.stack(values).mean()


def test_kd_loss_is_the_mean_over_response_tokens(plugins):
    s, t, labels = batch()
    parts = objective(s, t, labels, vocab_size=V, kd_ratio=1.0, n_global=count_valid(labels),
                      divergence=plugins["fkl"].obj)
    assert parts.n_tokens == count_valid(labels) == 5 + 3 + 5  # labels 4..8 per row; row 1 stops at 6
    assert torch.allclose(parts.loss.double(), fkl_by_hand(s, t, labels), rtol=1e-5)


def test_ce_only_and_the_kd_ratio_mix(plugins):
    s, t, labels = batch(1)
    n = count_valid(labels)
    ce = F.cross_entropy(s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    sft = objective(s, None, labels, vocab_size=V, kd_ratio=0.0, n_global=n)
    assert torch.allclose(sft.loss, ce, rtol=1e-5)
    mixed = objective(s, t, labels, vocab_size=V, kd_ratio=0.3, n_global=n, divergence=plugins["fkl"].obj)
    assert torch.allclose(mixed.loss.double(), 0.7 * ce.double() + 0.3 * fkl_by_hand(s, t, labels), rtol=1e-5)


def test_masked_positions_do_not_matter(plugins):
    s, t, labels = batch(2)
    base = objective(s, t, labels, vocab_size=V, kd_ratio=0.5, n_global=14, divergence=plugins["fkl"].obj)
    s2, t2 = s.clone(), t.clone()
    s2[:, :3], t2[:, :3] = 1e4, -1e4  # positions predicting prompt tokens
    s2[1, 6:], t2[1, 6:] = float("nan"), 0.0  # positions predicting padding
    other = objective(s2, t2, labels, vocab_size=V, kd_ratio=0.5, n_global=14, divergence=plugins["fkl"].obj)
    assert torch.allclose(base.loss, other.loss)


def test_vocab_padding_rows_are_dropped(plugins):
    s, t, labels = batch(3)
    n = count_valid(labels)
    base = objective(s, t, labels, vocab_size=V, kd_ratio=1.0, n_global=n, divergence=plugins["fkl"].obj)
    t_wide = torch.cat([t, torch.full((B, T, 8), float("-inf"))], -1)  # e.g. Qwen2-7B's 152,064 vs 151,936
    s_wide = torch.cat([s, torch.randn(B, T, 3) * 50], -1)
    wide = objective(s_wide, t_wide, labels, vocab_size=V, kd_ratio=1.0, n_global=n, divergence=plugins["fkl"].obj)
    assert torch.allclose(base.loss, wide.loss)


def test_micro_batches_reduce_by_the_global_token_count(plugins):
    """Gradient accumulation over unequal micro-batches gives the gradient of the whole-batch token mean."""
    s, t, labels = batch(4)
    n = count_valid(labels)
    whole = s.clone().requires_grad_()
    objective(whole, t, labels, vocab_size=V, kd_ratio=0.5, n_global=n, divergence=plugins["fkl"].obj).loss.backward()
    split = s.clone().requires_grad_()
    for rows in (slice(0, 1), slice(1, 3)):
        objective(split[rows], t[rows], labels[rows], vocab_size=V, kd_ratio=0.5, n_global=n,
                  divergence=plugins["fkl"].obj).loss.backward()
    assert torch.allclose(whole.grad, split.grad, atol=1e-7)


class KeepEven:
    """A scripted policy: keeps even-indexed tokens with temperature 2."""

    def token_stats(self, student_logp, teacher_logp, labels):
        return {"n": torch.ones(student_logp.shape[0])}

    def plan(self, stats, progress):
        n = stats["n"].numel()
        weight = (torch.arange(n) % 2 == 0).float()
        return TokenPlan.shared(weight, torch.full((n,), 2.0))


def test_policy_weights_temperatures_and_tau_squared(plugins):
    s, t, labels = batch(5)
    n = count_valid(labels)
    parts = objective(s, t, labels, vocab_size=V, kd_ratio=1.0, n_global=n, divergence=plugins["fkl"].obj,
                      policy=KeepEven())
    mask = labels[:, 1:] != IGNORE
    sv, tv = s[:, :-1][mask].double() / 2, t[:, :-1][mask].double() / 2
    p, logq = F.softmax(tv, -1), F.log_softmax(sv, -1)
    per_token = (p * (p.log() - logq)).sum(-1) * 4
    assert parts.n_selected == (n + 1) // 2
    assert torch.allclose(torch.tensor(parts.kd_mean, dtype=torch.float64), per_token[::2].mean(), rtol=1e-5)


def test_chunked_hidden_state_path_equals_full_logits(plugins):
    """Loss and gradients from hidden states + heads, 5 tokens at a time with recomputation,
    equal those from the full logits, with and without a token policy."""
    g = torch.Generator().manual_seed(6)
    hs, ht = torch.randn(B, T, 16, generator=g), torch.randn(B, T, 24, generator=g)
    head_s, head_t = torch.nn.Linear(16, V + 4, bias=False), torch.nn.Linear(24, V, bias=False)
    _, _, labels = batch(6)
    n = count_valid(labels)
    for policy in (None, plugins["adakd"].obj(total_steps=10)):
        if policy is not None:
            policy.ratio = 0.6
        results = []
        for chunk in (None, 5):
            head_s.zero_grad()
            h = hs.clone().requires_grad_()
            kw = dict(vocab_size=V, kd_ratio=0.7, n_global=n, divergence=plugins["fkl"].obj, policy=policy)
            if chunk is None:
                parts = objective(head_s(h), head_t(ht).detach(), labels, **kw)
            else:
                parts = objective(h, ht, labels, student_head=head_s, teacher_head=head_t, chunk_size=chunk, **kw)
            parts.loss.backward()
            results.append((parts.loss.detach(), h.grad.clone(), head_s.weight.grad.clone(), parts.n_selected))
        (l1, g1, w1, n1), (l2, g2, w2, n2) = results
        assert n1 == n2 and torch.allclose(l1, l2, rtol=1e-5)
        assert torch.allclose(g1, g2, atol=1e-6) and torch.allclose(w1, w2, atol=1e-6)


def test_adakd_with_everything_switched_off_is_the_base_method(plugins):
    s, t, labels = batch(7)
    n = count_valid(labels)
    off = plugins["adakd"].obj(total_steps=10, schedule="fixed", r_fixed=1.0, temperature="fixed", tau_fixed=1.0)
    kw = dict(vocab_size=V, kd_ratio=1.0, n_global=n, divergence=plugins["rkl"].obj)
    assert torch.allclose(objective(s, t, labels, policy=off, **kw).loss, objective(s, t, labels, **kw).loss)
