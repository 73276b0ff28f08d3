"""The fused chunked loss (kdbench.losses.objective with heads): its values and gradients against
plain autograd on the full logits (kdbench.reference_loss), which is what the harness computed
before the gradient moved into the forward pass.

With one chunk the fused path must agree to the bit: it runs the same kernels autograd runs (so a
default-grid run trains to the same weights as before). With several chunks only the head weight's
gradient is summed in another order, so it agrees to float rounding."""

from __future__ import annotations

import pytest
import torch

from kdbench.losses import IGNORE, LinearHead, count_valid, objective
from kdbench.reference_loss import reference_loss as naive

B, T, D, V = 3, 24, 16, 50


def inputs(seed=0, dtype=torch.float32, rows=V, bias=False, tied=False):
    """Hidden states, labels (prompt and padding masked) and two linear heads with `rows` ≥ V rows."""
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(B, T, D, generator=g).to(dtype).requires_grad_()
    h_t = torch.randn(B, T, D + 8, generator=g).to(dtype)
    head_s = torch.nn.Linear(D, rows, bias=bias).to(dtype)
    head_t = torch.nn.Linear(D + 8, rows, bias=False).to(dtype).requires_grad_(False)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :5] = IGNORE
    labels[1, 18:] = IGNORE
    return h_s, h_t, labels, head_s, head_t


def grads(loss, tensors):
    return [g.clone() for g in torch.autograd.grad(loss, tensors)]


def compare(h_s, h_t, labels, head_s, head_t, params, *, chunk_size, exact, **kw):
    """objective (fused, chunked) against `naive`: loss, Σ CE, KD_mb and the gradients of h_s and `params`."""
    n = count_valid(labels)
    parts = objective(h_s, h_t, labels, n_global=n, student_head=head_s, teacher_head=head_t,
                      chunk_size=chunk_size, **kw)
    fused = grads(parts.loss, [h_s, *params])
    loss, ce, kd_mean = naive(h_s, h_t, labels, student_head=head_s, teacher_head=head_t, **kw)
    reference = grads(loss, [h_s, *params])
    if exact:
        assert torch.equal(parts.loss, loss)
        assert parts.ce_sum == ce.item() and parts.kd_mean == kd_mean.item()
        for name, mine, theirs in zip(["h_s", *range(len(params))], fused, reference):
            assert torch.equal(mine, theirs), f"gradient {name}: max |Δ| {(mine - theirs).abs().max().item():.3g}"
    else:
        tol = dict(rtol=1e-2, atol=1e-2) if h_s.dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts.loss, loss, **tol)
        assert parts.ce_sum == pytest.approx(ce.item(), rel=1e-5)
        assert parts.kd_mean == pytest.approx(kd_mean.item(), rel=1e-5)
        for mine, theirs in zip(fused, reference):
            torch.testing.assert_close(mine.float(), theirs.float(), **{**tol, "atol": tol["atol"] * theirs.abs().max().item()})
    assert any(g.abs().sum() > 0 for g in fused)


CASES = {  # kd_ratio, divergence, AdaKD's kept ratio (None: no policy), head rows beyond V, bias
    "fkl": (1.0, "fkl", None, 0, False),
    "rkl": (1.0, "rkl", None, 0, False),
    "akl": (1.0, "akl", None, 0, False),
    "fkl mixed with CE": (0.5, "fkl", None, 0, False),
    "sft": (0.0, None, None, 0, False),
    "fkl+adakd, every token kept": (1.0, "fkl", 1.0, 0, False),
    "rkl+adakd, 60% kept, CE mixed": (0.5, "rkl", 0.6, 0, False),
    "padded vocabulary, bias": (0.5, "akl", 0.6, 7, True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk_size", [None, 1000, 7])
def test_fused_equals_autograd_on_full_logits(plugins, case, chunk_size):
    kd_ratio, div, ratio, pad, bias = CASES[case]
    h_s, h_t, labels, head_s, head_t = inputs(rows=V + pad, bias=bias)
    policy = None
    if ratio is not None:  # τ detached, as `naive` has it (tests/unit/test_adakd_release.py: with its gradient)
        policy = plugins["adakd"].obj(total_steps=10, tau_grad=False)
        policy.ratio = ratio
    compare(h_s, h_t, labels, head_s, head_t, list(head_s.parameters()), chunk_size=chunk_size,
            exact=chunk_size != 7, vocab_size=V, kd_ratio=kd_ratio, divergence=plugins[div].obj if div else None,
            policy=policy)


@pytest.mark.parametrize("chunk_size", [1000, 7])
def test_bf16_hidden_states_and_heads(plugins, chunk_size):
    h_s, h_t, labels, head_s, head_t = inputs(dtype=torch.bfloat16)
    policy = plugins["adakd"].obj(total_steps=10, tau_grad=False)
    policy.ratio = 0.7
    compare(h_s, h_t, labels, head_s, head_t, [head_s.weight], chunk_size=chunk_size, exact=chunk_size != 7,
            vocab_size=V, kd_ratio=1.0, divergence=plugins["fkl"].obj, policy=policy)


@pytest.mark.parametrize("chunk_size", [1000, 7])
def test_generic_heads_a_function_and_a_zero3_style_linear_head(plugins, chunk_size):
    """A head given as a function (autograd differentiates it, its weight found in its graph) and a
    LinearHead (what models.Heads hands over for a ZeRO-3 head's gathered weight)."""
    h_s, h_t, labels, head_s, head_t = inputs()
    for student in (lambda h: h @ head_s.weight.T, LinearHead(head_s.weight)):
        compare(h_s, h_t, labels, student, head_t, [head_s.weight], chunk_size=chunk_size, exact=chunk_size != 7,
                vocab_size=V, kd_ratio=0.5, divergence=plugins["fkl"].obj)


def test_lora_head(plugins):
    """A peft LoRA-wrapped head: its adapters get autograd's gradients, its frozen base weight none."""
    from peft import LoraConfig, inject_adapter_in_model

    h_s, h_t, labels, head_s, head_t = inputs()
    model = torch.nn.ModuleDict({"lm_head": head_s})
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["lm_head"]), model)
    lora = model["lm_head"]
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_()  # peft starts B at 0, which would zero A's gradient
    params = [p for p in lora.parameters() if p.requires_grad]
    assert len(params) == 2 and not lora.base_layer.weight.requires_grad
    for chunk_size, exact in ((1000, True), (7, False)):
        compare(h_s, h_t, labels, lora, head_t, params, chunk_size=chunk_size, exact=exact, vocab_size=V,
                kd_ratio=1.0, divergence=plugins["rkl"].obj)
    assert lora.base_layer.weight.grad is None


def test_tied_head_of_a_gpt2_model(plugins):
    """GPT-2's head is its input embedding: the embedding's gradient sums both uses, as autograd's does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from kdbench.models import LastHidden

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    student = LastHidden(lm)
    assert student.head.weight is lm.transformer.wte.weight
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE
    z_t = torch.randn(B, T, V, generator=g)
    n = count_valid(labels)
    results = []
    for fused in (True, False):
        lm.zero_grad()
        hidden = student(ids, torch.ones_like(ids))
        if fused:
            loss = objective(hidden, z_t, labels, vocab_size=V, kd_ratio=1.0, n_global=n,
                             divergence=plugins["fkl"].obj, student_head=student.head, chunk_size=1000).loss
        else:
            loss = naive(hidden, z_t, labels, student_head=student.head, teacher_head=None, vocab_size=V,
                         kd_ratio=1.0, divergence=plugins["fkl"].obj)[0]
        loss.backward()
        results.append({k: p.grad.clone() for k, p in lm.named_parameters()})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_floored_student_logits_get_no_gradient(plugins):
    """A student logit at −inf is floored at NEG_FLOOR (and gets no gradient), as with clamp_min."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(B, T, V, generator=g)
    s[0, 10, 3] = float("-inf")
    s[2, 12, 7] = -3e30
    s.requires_grad_()
    t = torch.randn(B, T, V, generator=g)
    _, _, labels, _, _ = inputs()
    compare(s, t, labels, None, None, [], chunk_size=None, exact=True, vocab_size=V, kd_ratio=0.5,
            divergence=plugins["fkl"].obj)
    parts = objective(s, t, labels, vocab_size=V, kd_ratio=1.0, n_global=count_valid(labels),
                      divergence=plugins["fkl"].obj)
    (d,) = torch.autograd.grad(parts.loss, s)
    assert d[0, 10, 3] == 0 and d[2, 12, 7] == 0 and d[0, 10].abs().sum() > 0


@pytest.mark.parametrize("tau_grad", [False, True])
def test_no_chunk_is_recomputed_and_nothing_logit_sized_is_kept_for_backward(plugins, tau_grad):
    """Each chunk's student logits are computed once in the forward pass (plus once in a token
    policy's statistics pass) and never again in backward; what autograd keeps for backward is the
    gradients (hidden-state and weight sized), no (tokens × vocab) tensor. With AdaKD's gradient
    through τ, the median token's row alone is computed once more, to pass it ∂L/∂median."""
    h_s, h_t, labels, head_s, head_t = inputs()
    calls = []

    def head(h):
        calls.append(len(h))
        return h @ head_s.weight.T
    saved = []
    policy = plugins["adakd"].obj(total_steps=10, tau_grad=tau_grad)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        parts = objective(h_s, h_t, labels, vocab_size=V, kd_ratio=1.0, n_global=count_valid(labels),
                          divergence=plugins["fkl"].obj, policy=policy, student_head=head, teacher_head=head_t,
                          chunk_size=8)
    n = count_valid(labels)
    median_row = [1] if tau_grad else []
    assert calls == [8] * (n // 8) + [n % 8] + [8] * (n // 8) + [n % 8] + median_row  # statistics, the loss
    assert max(saved) <= max(8 * V, V * D) < n * V  # a chunk's logits, the head weight; never all logits
    saved.clear()
    calls.clear()
    parts.loss.backward()
    assert calls == [] and saved == []
    assert h_s.grad.abs().sum() > 0 and head_s.weight.grad.abs().sum() > 0


def test_backward_of_a_scaled_loss_scales_the_gradients_and_runs_once(plugins):
    h_s, h_t, labels, head_s, head_t = inputs()
    kw = dict(vocab_size=V, kd_ratio=0.5, n_global=count_valid(labels), divergence=plugins["akl"].obj,
              student_head=head_s, teacher_head=head_t, chunk_size=10)
    once = grads(objective(h_s, h_t, labels, **kw).loss, [h_s, head_s.weight])
    thrice = grads(3 * objective(h_s, h_t, labels, **kw).loss, [h_s, head_s.weight])
    for a, b in zip(once, thrice):
        torch.testing.assert_close(3 * a, b)
    loss = objective(h_s, h_t, labels, **kw).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="back-propagated twice"):
        loss.backward()


def test_no_grad_gives_the_same_values_and_no_graph(plugins):
    h_s, h_t, labels, head_s, head_t = inputs()
    policy = plugins["adakd"].obj(total_steps=10)
    kw = dict(vocab_size=V, kd_ratio=0.5, n_global=count_valid(labels), divergence=plugins["fkl"].obj,
              policy=policy, student_head=head_s, teacher_head=head_t, chunk_size=10)
    with_grad = objective(h_s, h_t, labels, **kw)
    with torch.no_grad():
        without = objective(h_s, h_t, labels, **kw)
    assert without.loss.grad_fn is None and with_grad.loss.grad_fn is not None
    assert torch.equal(without.loss, with_grad.loss)
    assert (without.ce_sum, without.kd_mean) == (with_grad.ce_sum, with_grad.kd_mean)
