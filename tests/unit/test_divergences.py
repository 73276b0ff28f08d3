"""Every registered divergence (docs/METHODS.md §1) against independent float64 NumPy references.

Generic properties run over whatever `methods/` registers as a divergence, so a new plugin is tested
as soon as it has an entry in REFS (a test fails until it has one). Method-specific identities
(limits, special cases, the α-β divergence's closed forms) follow, then golden values and a tiny
training run per method.

Regenerate the golden file from the references (never from the plugins) with
    python tests/unit/test_divergences.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import NEG_FLOOR, count_valid, objective, valid_positions
from kdbench.registry import discover

METHODS_DIR = Path(__file__).resolve().parents[2] / "methods"
GOLDEN = Path(__file__).with_name("golden_divergences.json")
# Collection-time discovery (for parametrisation): a divergence without a REFS entry still gets the
# generic property tests at its signature's defaults, and test_every_registered_divergence... fails.
DEFAULTS = {k: m.defaults for k, m in discover(METHODS_DIR).items() if m.kind == "divergence"}
DIVERGENCES = sorted(DEFAULTS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation (and waits on a
    busy 2-core machine), so run this module single-threaded and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# float64 references, written from the formulas in docs/METHODS.md §1 (p = teacher, q = student)
# ---------------------------------------------------------------------------------------------

def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.maximum(np.asarray(z, dtype=np.float64), NEG_FLOOR)  # the harness floors -inf padding
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a log(a/b), with 0·log(0/b) = 0."""
    safe_a = np.where(a > 0, a, 1.0)
    return np.sum(np.where(a > 0, a * (np.log(safe_a) - np.log(b)), 0.0), -1)


def r_fkl(lq, lp):
    return kl(np.exp(lp), np.exp(lq))


def r_rkl(lq, lp):
    return kl(np.exp(lq), np.exp(lp))


def r_skl(lq, lp, alpha=0.1):
    p, q = np.exp(lp), np.exp(lq)
    return kl(p, alpha * p + (1 - alpha) * q)


def r_srkl(lq, lp, alpha=0.1):
    p, q = np.exp(lp), np.exp(lq)
    return kl(q, (1 - alpha) * p + alpha * q)


def r_sym_kl(lq, lp, lam=0.9):
    return (1 - lam) * r_fkl(lq, lp) + lam * r_rkl(lq, lp)


def r_js(lq, lp, lam=0.9):
    p, q = np.exp(lp), np.exp(lq)
    m = np.maximum((1 - lam) * p + lam * q, 1e-8)
    return lam * kl(q, m) + (1 - lam) * kl(p, m)


def r_tvd(lq, lp):
    return 0.5 * np.abs(np.exp(lp) - np.exp(lq)).sum(-1)


def r_akl(lq, lp, mu=0.5):
    p, q = np.exp(lp), np.exp(lq)
    out = []
    for pi, qi, f, r in zip(p, q, r_fkl(lq, lp), r_rkl(lq, lp)):
        order = np.argsort(-pi, kind="stable")
        ps, qs = pi[order], qi[order]
        head = np.minimum(np.cumsum(ps), 1.0) <= mu
        head[0] = True
        g_head, g_tail = np.abs(ps - qs)[head].sum(), np.abs(ps - qs)[~head].sum()
        w = 0.5 if g_head + g_tail == 0 else g_head / (g_head + g_tail)
        out.append(w * f + (1 - w) * r)
    return np.array(out)


def r_abkd(lq, lp, alpha=0.2, beta=0.7):
    """The AB-divergence of Cichocki, Cruces & Amari (Entropy, 2011) and its four limit cases."""
    p, q = np.exp(lp), np.exp(lq)
    a, b = alpha, beta
    if a == 0 and b == 0:
        return 0.5 * np.sum((np.log(p) - np.log(q)) ** 2, -1)
    if b == 0:
        return np.sum(p**a * np.log(p**a / q**a) - p**a + q**a, -1) / a**2
    if a == 0:
        return np.sum(q**b * np.log(q**b / p**b) - q**b + p**b, -1) / b**2
    if a + b == 0:
        return np.sum((p / q) ** a - np.log((p / q) ** a) - 1, -1) / a**2
    return -np.sum(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b), -1) / (a * b)


@dataclass
class Ref:
    fn: Callable[..., np.ndarray]  # (student_logp, teacher_logp, **hp) on float64 log-probabilities
    defaults: dict = field(default_factory=dict)  # docs/METHODS.md's defaults; the plugin must agree
    hps: list = field(default_factory=list)  # further hyper-parameter sets to compare at
    bounded: Callable[[dict], bool] = lambda hp: True  # finite on padding / extreme logits?
    exact_gradient: bool = True  # is the gradient the derivative of the value (no detached parts)?


REFS: dict[str, Ref] = {
    "fkl": Ref(r_fkl),
    "rkl": Ref(r_rkl),
    "skl": Ref(r_skl, {"alpha": 0.1}, [{"alpha": 0.0}, {"alpha": 0.5}, {"alpha": 0.9}, {"alpha": 1.0}]),
    "srkl": Ref(r_srkl, {"alpha": 0.1}, [{"alpha": 0.0}, {"alpha": 0.5}, {"alpha": 0.9}, {"alpha": 1.0}]),
    "sym_kl": Ref(r_sym_kl, {"lam": 0.9}, [{"lam": 0.0}, {"lam": 0.3}, {"lam": 1.0}]),
    "js": Ref(r_js, {"lam": 0.9}, [{"lam": 0.1}, {"lam": 0.5}, {"lam": 0.99}]),
    "tvd": Ref(r_tvd),
    "akl": Ref(r_akl, {"mu": 0.5}, [{"mu": 0.0}, {"mu": 0.2}, {"mu": 0.9}, {"mu": 1.0}],
               exact_gradient=False),  # detached gates: see test_akl_gates_are_detached
    "abkd": Ref(
        r_abkd, {"alpha": 0.2, "beta": 0.7},
        [{"alpha": a, "beta": b} for a, b in
         [(0.5, 0.5), (1.0, 1.0), (2.0, 0.3), (0.1, 1.5), (1.0, 0.0), (0.0, 1.0), (0.3, 0.0), (0.0, 0.4),
          (0.0, 0.0), (0.5, -0.5), (-0.4, 0.4), (-0.2, 0.9)]],
        bounded=lambda hp: hp["alpha"] >= 0 and hp["beta"] >= 0 and (hp["alpha"], hp["beta"]) != (0, 0),
    ),
}


def all_hps(name: str) -> list[dict]:
    return [REFS[name].defaults] + REFS[name].hps if name in REFS else [DEFAULTS[name]]


def cases(bounded_only: bool = False, exact_gradient_only: bool = False) -> list:
    return [pytest.param(name, hp, id=f"{name}-{','.join(f'{k}={v}' for k, v in hp.items()) or 'default'}")
            for name in DIVERGENCES for hp in all_hps(name)
            if not (bounded_only and name in REFS and not REFS[name].bounded(hp))
            and not (exact_gradient_only and name in REFS and not REFS[name].exact_gradient)]


def needs_reference(name: str) -> None:
    if name not in REFS:
        pytest.skip(f"no float64 reference for {name} (test_every_registered_divergence... fails)")


def logp(z: torch.Tensor) -> torch.Tensor:
    """What the harness hands a plugin: fp32, padding floored, log_softmax."""
    return F.log_softmax(z.float().clamp_min(NEG_FLOOR), -1)


def random_logits(seed: int, n: int = 16, v: int = 64, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


def plugin_values(plugins, name, s, t, **hp) -> np.ndarray:
    return plugins[name].obj(logp(s), logp(t), **hp).double().numpy()


def ref_values(name, s, t, **hp) -> np.ndarray:
    return REFS[name].fn(np_log_softmax(s.double().numpy()), np_log_softmax(t.double().numpy()), **hp)


# ---------------------------------------------------------------------------------------------
# generic properties, over every registered divergence
# ---------------------------------------------------------------------------------------------

def test_every_registered_divergence_has_a_reference_with_its_defaults(plugins):
    registered = sorted(k for k, m in plugins.items() if m.kind == "divergence")
    assert registered == DIVERGENCES
    missing = [k for k in registered if k not in REFS]
    assert not missing, f"add a float64 reference for {missing} to REFS in {Path(__file__).name}"
    for k in registered:
        assert plugins[k].defaults == REFS[k].defaults, f"{k}: defaults differ from docs/METHODS.md §1"


@pytest.mark.parametrize("name, hp", cases())
def test_equals_float64_reference(plugins, name, hp):
    needs_reference(name)
    for seed, scale in [(0, 3.0), (1, 1.0), (2, 6.0)]:
        s, t = random_logits(seed, scale=scale)
        np.testing.assert_allclose(plugin_values(plugins, name, s, t, **hp), ref_values(name, s, t, **hp),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, hp", cases(exact_gradient_only=True))
def test_gradient_equals_finite_differences_of_the_reference(plugins, name, hp):
    """The plugin's gradient w.r.t. the student logits (plugin run in float64) against central
    differences of the float64 reference: catches a detached q (e.g. RKL's weight) or a wrong sign.
    (akl's gates are detached by design; its gradient has its own test.)"""
    needs_reference(name)
    s, t = (x.double() for x in random_logits(10, n=3, v=8, scale=2.0))
    s.requires_grad_(True)
    plugins[name].obj(F.log_softmax(s, -1), F.log_softmax(t, -1), **hp).sum().backward()
    lp, eps, fd = np_log_softmax(t.numpy()), 1e-6, np.zeros(s.shape)
    for i, j in np.ndindex(*s.shape):
        shifted = [s.detach().numpy().copy() for _ in range(2)]
        shifted[0][i, j] += eps
        shifted[1][i, j] -= eps
        up, down = (REFS[name].fn(np_log_softmax(z), lp, **hp).sum() for z in shifted)
        fd[i, j] = (up - down) / (2 * eps)
    np.testing.assert_allclose(s.grad.numpy(), fd, rtol=1e-5, atol=1e-7)


def extreme_logits() -> tuple[torch.Tensor, torch.Tensor]:
    inf = float("inf")
    student = torch.tensor([
        [-1e4, 1e4, 0.0, 5.0, 2.0, -inf],  # opposite extremes; teacher pads column 4
        [0.0, 0.0, 0.0, 5.0, 5.0, 0.0],  # student mass where the teacher pads
        [-inf, -inf, 0.0, 0.0, 1e4, -1e4],  # student pads where the teacher has mass
        [1e4, -1e4, -inf, 0.0, 0.0, 0.0],  # identical, extreme, both padded
        [1e4, 1e4, -1e4, -1e4, 0.0, -inf],
    ])
    teacher = torch.tensor([
        [1e4, -1e4, 0.0, 3.0, -inf, -inf],
        [0.0, 1.0, 2.0, -inf, -inf, 3.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [1e4, -1e4, -inf, 0.0, 0.0, 0.0],
        [-1e4, -1e4, 1e4, 1e4, -inf, 0.0],
    ])
    return student, teacher


@pytest.mark.parametrize("name, hp", cases(bounded_only=True))
def test_finite_values_and_gradients_on_extreme_logits_and_padding(plugins, name, hp):
    s, t = extreme_logits()
    s.requires_grad_(True)
    values = plugins[name].obj(logp(s), logp(t), **hp)
    assert torch.isfinite(values).all(), values
    values.sum().backward()
    assert torch.isfinite(s.grad).all(), s.grad


@pytest.mark.parametrize("name, hp", cases())
def test_zero_when_student_equals_teacher_and_nonnegative_otherwise(plugins, name, hp):
    _, t = random_logits(3, scale=3.0)
    same = plugins[name].obj(logp(t), logp(t), **hp)
    assert same.abs().max().item() < 1e-5
    for seed in (4, 5):
        s, t = random_logits(seed, scale=2.0)
        assert plugins[name].obj(logp(s), logp(t), **hp).min().item() >= -1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
def test_objective_backpropagates_to_the_student_only(plugins, name):
    """Through the harness: vocab padding rows dropped, prompt masked, teacher without grad."""
    g = torch.Generator().manual_seed(6)
    vocab = 12
    student = (torch.randn(2, 7, vocab + 2, generator=g) * 2).requires_grad_(True)
    teacher = torch.randn(2, 7, vocab + 4, generator=g) * 2
    labels = torch.randint(0, vocab, (2, 7), generator=g)
    labels[:, :3] = -100
    n = count_valid(labels)
    parts = objective(student, teacher, labels, vocab_size=vocab, kd_ratio=1.0, n_global=n,
                      divergence=plugins[name].obj, hparams={})
    parts.loss.backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert student.grad[..., vocab:].abs().sum() == 0  # padding rows take no part
    if name in REFS:  # kd_ratio 1: the loss is the mean per-token value over valid positions
        s_valid, _ = valid_positions(student.detach(), labels)
        t_valid, _ = valid_positions(teacher, labels)
        want = ref_values(name, s_valid[:, :vocab], t_valid[:, :vocab], **REFS[name].defaults).mean()
        assert parts.loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_out_of_range_mixture_weights_raise(plugins):
    s, t = random_logits(7, n=2, v=5)
    for name, key in [("skl", "alpha"), ("srkl", "alpha"), ("js", "lam")]:
        for bad in (-0.1, 1.5):
            with pytest.raises(ValueError, match=key):
                plugins[name].obj(logp(s), logp(t), **{key: bad})


# ---------------------------------------------------------------------------------------------
# method-specific identities
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    s, t = random_logits(8, n=12, v=40, scale=2.5)
    return logp(s), logp(t)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=rtol, atol=atol)


def test_skew_and_mixture_endpoints(plugins, pair):
    lq, lp = pair
    d = {k: plugins[k].obj for k in ("fkl", "rkl", "skl", "srkl", "sym_kl")}
    close(d["skl"](lq, lp, alpha=0.0), d["fkl"](lq, lp))
    close(d["srkl"](lq, lp, alpha=0.0), d["rkl"](lq, lp))
    close(d["sym_kl"](lq, lp, lam=0.0), d["fkl"](lq, lp))
    close(d["sym_kl"](lq, lp, lam=1.0), d["rkl"](lq, lp))
    close(d["skl"](lq, lp, alpha=1.0), torch.zeros(len(lq)))
    close(d["srkl"](lq, lp, alpha=1.0), torch.zeros(len(lq)))
    # skew KL is not the symmetric mixture (the naming trap docs/METHODS.md warns about)
    assert not torch.allclose(d["skl"](lq, lp), d["sym_kl"](lq, lp, lam=0.1), rtol=1e-2)


def test_js_endpoints_vanish_and_half_is_the_classic_jsd(plugins, pair):
    lq, lp = pair
    js = plugins["js"].obj
    for lam in (0.0, 1.0):
        assert js(lq, lp, lam=lam).abs().max().item() < 1e-6
    for lam in (1e-3, 1 - 1e-3):
        assert 0 < js(lq, lp, lam=lam).max().item() < 1e-2
    p, q = lp.double().exp().numpy(), lq.double().exp().numpy()
    m = (p + q) / 2
    classic = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    np.testing.assert_allclose(js(lq, lp, lam=0.5).double().numpy(), classic, rtol=1e-5, atol=1e-6)
    assert (classic <= np.log(2)).all()


def test_akl_is_fkl_when_the_head_is_everything(plugins, pair):
    lq, lp = pair
    for mu in (1.0, 3.0):
        close(plugins["akl"].obj(lq, lp, mu=mu), plugins["fkl"].obj(lq, lp))


def test_akl_gates_are_detached(plugins, pair):
    """The gradient is the gate-weighted mix of the FKL and RKL gradients, gates held constant."""
    lq, lp = pair
    s = lq.clone().requires_grad_(True)
    plugins["akl"].obj(s, lp).sum().backward()
    p, q = lp.double().exp().numpy(), lq.double().exp().numpy()
    f, r = r_fkl(lq.double().numpy(), lp.double().numpy()), r_rkl(lq.double().numpy(), lp.double().numpy())
    w = (r_akl(lq.double().numpy(), lp.double().numpy()) - r) / np.where(f - r == 0, 1, f - r)
    # d/dlog q of FKL = −p; of RKL = q (log q − log p + 1)
    want = w[:, None] * (-p) + (1 - w[:, None]) * q * (lq.double().numpy() - lp.double().numpy() + 1)
    np.testing.assert_allclose(s.grad.double().numpy(), want, rtol=1e-4, atol=1e-6)


def test_abkd_contains_fkl_rkl_and_hellinger(plugins, pair):
    lq, lp = pair
    ab = plugins["abkd"].obj
    close(ab(lq, lp, alpha=1.0, beta=0.0), plugins["fkl"].obj(lq, lp))
    close(ab(lq, lp, alpha=0.0, beta=1.0), plugins["rkl"].obj(lq, lp))
    hell2 = ((lp / 2).exp() - (lq / 2).exp()).square().sum(-1)
    close(ab(lq, lp, alpha=0.5, beta=0.5), 2 * hell2)


ABKD_LIMITS = [  # (exact limit, a point 1e-5 from it where the general formula applies)
    *[((a, 0.0), (a, 1e-5)) for a in (0.5, 1.0, 2.0, -0.3)],
    *[((0.0, b), (1e-5, b)) for b in (0.5, 1.0, 2.0, -0.3)],
    *[((a, -a), (a, -a + 1e-5)) for a in (0.5, 1.0, -0.7)],
    ((0.0, 0.0), (1e-5, 2e-5)),
    ((0.0, 0.0), (-1e-5, 3e-5)),
]


@pytest.mark.parametrize("limit, near", ABKD_LIMITS, ids=[f"{lim}" for lim, _ in ABKD_LIMITS])
def test_abkd_limit_closed_forms_continue_the_general_formula(plugins, pair, limit, near):
    lq, lp = (x.double() for x in pair)
    general = r_abkd(lq.numpy(), lp.numpy(), alpha=near[0], beta=near[1])
    assert all(x != 0 for x in (near[0], near[1], near[0] + near[1]))  # really the general branch
    # the reference's closed form, and the plugin's (run in float64), agree with it to O(1e-5)
    closed_ref = r_abkd(lq.numpy(), lp.numpy(), alpha=limit[0], beta=limit[1])
    closed_plugin = plugins["abkd"].obj(lq, lp, alpha=limit[0], beta=limit[1]).numpy()
    np.testing.assert_allclose(closed_ref, general, rtol=1e-3)
    np.testing.assert_allclose(closed_plugin, general, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# golden values and training
# ---------------------------------------------------------------------------------------------

def golden_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20251)
    return np.round(rng.normal(size=(4, 7)) * 3, 3), np.round(rng.normal(size=(4, 7)) * 3, 3)


def write_golden() -> None:
    s, t = golden_inputs()
    lq, lp = np_log_softmax(s), np_log_softmax(t)
    text = json.dumps({
        "note": "Per-token values of each divergence at its docs/METHODS.md §1 defaults on the logits below, "
                "computed in float64 by the NumPy references REFS in test_divergences.py (not by the "
                "plugins): `python tests/unit/test_divergences.py` rewrites this file.",
        "student_logits": s.tolist(),
        "teacher_logits": t.tolist(),
        "defaults": {k: r.defaults for k, r in sorted(REFS.items())},
        "values": {k: r.fn(lq, lp, **r.defaults).tolist() for k, r in sorted(REFS.items())},
    }, indent=1)
    for innermost in (r"\[\s+([^\[\]{}]*?)\s+\]", r"\{\s+([^\[\]{}]*?)\s+\}"):  # one line per row
        text = re.sub(innermost, lambda m: m[0][0] + " ".join(m[1].split()) + m[0][-1], text)
    GOLDEN.write_text(text + "\n")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_golden_values(plugins, name):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden["values"], f"no golden values for {name}: run python {Path(__file__).name}"
    s, t = (torch.tensor(golden[k], dtype=torch.float32) for k in ("student_logits", "teacher_logits"))
    got = plugins[name].obj(logp(s), logp(t), **golden["defaults"][name]).double().numpy()
    np.testing.assert_allclose(got, golden["values"][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_each_divergence_trains_a_linear_student(plugins, name):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(32, 40, generator=g)
    teacher_logp = logp(x @ torch.randn(40, 50, generator=g) * 0.5)
    w = (torch.randn(40, 50, generator=g) * 0.1).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05)
    fn = plugins[name].obj
    history = []
    for _ in range(100):
        loss = fn(logp(x @ w), teacher_logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] <= 0.5 * history[0], (history[0], history[-1])


if __name__ == "__main__":
    write_golden()
    print(f"wrote {GOLDEN}")
