"""The TokenPolicy protocol (checked by the registry), Composed, AdaKD's pure plan, and the shared
base formulas of kdbench.formulas against independent computations."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import formulas
from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE, TokenPlan, count_valid, objective
from kdbench.policies import MEMBERS, Composed, TokenPolicy, missing_members
from kdbench.registry import discover, load_method_file
from tests.conftest import REPO, plan_of

POLICY = '''
import torch
from kdbench.losses import TokenPlan
from kdbench.registry import token_policy

@token_policy
class Half:
    """doc"""
    def __init__(self, *, total_steps: int):
        pass
{members}
'''
STUB = {
    "token_stats": "    def token_stats(self, s, t, labels=None):\n        return {'x': s[:, 0]}\n",
    "plan": "    def plan(self, stats, progress):\n        return TokenPlan.uniform(stats['x'].numel())\n",
    "feature_loss": "    def feature_loss(self, h_s, h_t):\n        return None\n",
    "observe": "    def observe(self, kd_loss):\n        pass\n",
    "state_dict": "    def state_dict(self):\n        return {}\n",
    "load_state_dict": "    def load_state_dict(self, state):\n        pass\n",
    "log_scalars": "    def log_scalars(self):\n        return {'half': 0.5}\n",
}


def logp(x):
    return F.log_softmax(x.float(), -1)


def pair(seed, n=24, v=17):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2


# --- the protocol -------------------------------------------------------------------------------------

def test_members_are_the_protocols():
    declared = {name for name, value in vars(TokenPolicy).items() if callable(value) and not name.startswith("_")}
    assert declared == set(MEMBERS)


def test_shipped_policies_and_the_template_implement_the_protocol(plugins, tmp_path):
    shutil.copy(REPO / "methods/_template_policy.py", tmp_path / "mine.py")
    mine = discover(tmp_path)["mine"]
    for method in (plugins["adakd"], plugins["egad"], mine):
        assert missing_members(method.obj) == []
        assert isinstance(method.instantiate({}, total_steps=10, student_dim=4, teacher_dim=4), TokenPolicy)


@pytest.mark.parametrize("missing", [["log_scalars"], ["feature_loss", "observe"], list(MEMBERS)])
def test_a_policy_missing_members_is_an_error_naming_file_and_members(tmp_path, missing):
    members = "".join(body for name, body in STUB.items() if name not in missing) or "    pass\n"
    (tmp_path / "half.py").write_text(POLICY.format(members=members))
    with pytest.raises(KDBenchError) as err:
        discover(tmp_path)
    message = str(err.value)
    assert "half.py" in message and "Half" in message
    assert all(name in message for name in missing)
    assert not any(name in message.split("lacks")[1].split("(")[0] for name in set(MEMBERS) - set(missing))


def test_a_complete_stub_policy_loads(tmp_path):
    (tmp_path / "half.py").write_text(POLICY.format(members="".join(STUB.values())))
    assert discover(tmp_path)["half"].kind == "token_policy"


def test_composed_refuses_an_object_that_is_not_a_policy():
    with pytest.raises(TypeError, match="log_scalars"):
        Composed([object()])


def test_the_template_policy_trains_in_the_harness(tmp_path):
    shutil.copy(REPO / "methods/_template_policy.py", tmp_path / "mine.py")
    policy = Composed([discover(tmp_path)["mine"].instantiate({"threshold": 0.3}, total_steps=10)])
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 9, 11, generator=g, requires_grad=True), torch.randn(2, 9, 11, generator=g) * 3
    labels = torch.randint(0, 11, (2, 9), generator=g)
    labels[:, :2] = IGNORE
    fkl = load_method_file(REPO / "methods/fkl.py").obj
    parts = objective(s, t, labels, vocab_size=11, kd_ratio=1.0, n_global=count_valid(labels),
                      divergence=fkl, policy=policy, progress=0.5)
    parts.loss.backward()
    assert torch.isfinite(parts.loss) and 1 <= parts.n_selected <= count_valid(labels)
    assert policy.log_scalars() == {}
    policy.observe(parts.kd_mean)
    assert policy.log_scalars() == {"my_loss_ema": pytest.approx(parts.kd_mean)}
    assert json.loads(json.dumps(policy.state_dicts())) == [{"ema": parts.kd_mean}]


# --- Composed -----------------------------------------------------------------------------------------

class Fixed:
    """A stub policy with a given plan and log scalars."""

    def __init__(self, weight, tau, feature=None, scalars=None):
        self.weight, self.tau, self.feature, self.scalars, self.seen = weight, tau, feature, scalars or {}, []

    def token_stats(self, student_logp, teacher_logp, labels=None):
        return {"n": torch.zeros(student_logp.shape[0])}

    def plan(self, stats, progress):
        n = stats["n"].numel()
        feature = None if self.feature is None else torch.full((n,), self.feature)
        return TokenPlan.shared(torch.full((n,), self.weight), torch.full((n,), self.tau), feature_weight=feature)

    def feature_loss(self, student_hidden, teacher_hidden):
        return None if self.feature is None else torch.ones(student_hidden.shape[0])

    def observe(self, kd_loss):
        self.seen.append(kd_loss)

    def state_dict(self):
        return {"seen": list(self.seen)}

    def load_state_dict(self, state):
        self.seen = list(state["seen"])

    def log_scalars(self):
        return dict(self.scalars)


def test_composed_multiplies_plans_and_merges_log_scalars():
    a = Fixed(0.5, 2.0, feature=1.5, scalars={"latf_ratio": 0.7, "a": 1})
    b = Fixed(0.4, 0.5, scalars={"latf_ratio": 0.2, "b": 3.0})
    both = Composed([a, b])
    s, t = pair(1, n=6)
    plan = plan_of(both, logp(s), logp(t), 0.3)
    assert torch.allclose(plan.weight, torch.full((6,), 0.2))
    assert torch.allclose(plan.tau_student, torch.ones(6)) and torch.allclose(plan.tau_teacher, torch.ones(6))
    assert torch.allclose(plan.scale, torch.full((6,), 4.0 * 0.25))
    assert torch.allclose(plan.feature_weight, torch.full((6,), 1.5))
    assert both.log_scalars() == {"latf_ratio": 0.7, "a": 1.0, "latf_ratio/1": 0.2, "b": 3.0}
    assert all(isinstance(v, float) for v in both.log_scalars().values())
    assert both.feature_loss(torch.zeros(3, 2), torch.zeros(3, 2)).shape == (3,)
    both.observe(2.5)
    assert both.state_dicts() == [{"seen": [2.5]}, {"seen": [2.5]}]
    assert not hasattr(both, "ratio")


def test_composed_feature_loss_none_and_two_owners():
    h = torch.zeros(3, 2)
    assert Composed([Fixed(1, 1), Fixed(1, 1)]).feature_loss(h, h) is None
    with pytest.raises(ValueError, match="at most one"):
        Composed([Fixed(1, 1, feature=1.0), Fixed(1, 1, feature=1.0)]).feature_loss(h, h)


def test_one_policy_composed_is_that_policy(plugins):
    adakd = plugins["adakd"].obj(total_steps=10)
    s, t = pair(2)
    alone, composed = plan_of(adakd, logp(s), logp(t), 0.4), plan_of(Composed([adakd]), logp(s), logp(t), 0.4)
    for field in ("weight", "tau_student", "tau_teacher", "scale"):
        assert torch.equal(getattr(alone, field), getattr(composed, field))
    assert Composed([adakd]).log_scalars() == {"latf_ratio": 1.0}
    assert Composed([plugins["egad"].obj(total_steps=10)]).log_scalars() == {}


# --- AdaKD: a pure plan -------------------------------------------------------------------------------

@pytest.mark.parametrize("hp", [{}, {"schedule": "linear"}, {"schedule": "cosine", "r1": 0.5},
                                {"schedule": "fixed", "r_fixed": 0.6}, {"temperature": "ctkd"},
                                {"temperature": "logit_std"}, {"indicator": "js"}])
def test_adakd_plan_is_pure(plugins, hp):
    policy = plugins["adakd"].obj(total_steps=20, beta=0.0, warmup=0.0, **hp)
    for loss in (10.0, 5.0, 4.0):  # move LATF's r off 1 first
        policy.observe(loss)
    s, t = pair(3, n=40)
    before = json.dumps(policy.state_dict())
    scalars = policy.log_scalars()
    first, second = plan_of(policy, logp(s), logp(t), 0.6), plan_of(policy, logp(s), logp(t), 0.6)
    for field in ("weight", "tau_student", "tau_teacher", "scale"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert json.dumps(policy.state_dict()) == before and policy.log_scalars() == scalars
    assert first.weight.sum() == max(1, math.floor(40 * policy.kept_ratio(0.6)))


def test_adakd_log_scalars_follow_the_observed_step(plugins):
    policy = plugins["adakd"].obj(total_steps=10, schedule="linear", r0=1.0, r1=0.5)
    assert policy.log_scalars() == {"latf_ratio": 1.0}
    for step in range(4):  # the harness: plan at step/total, then observe
        plan_of(policy, *(logp(x) for x in pair(step)), step / 10)
        policy.observe(1.0)
        assert policy.log_scalars() == {"latf_ratio": pytest.approx(policy.kept_ratio(step / 10))}
    latf = plugins["adakd"].obj(total_steps=10, beta=0.0, warmup=0.0, delta=0.5)
    latf.observe(10.0)
    latf.observe(5.0)
    assert latf.log_scalars() == {"latf_ratio": 0.5} == {"latf_ratio": latf.kept_ratio(0.0)}


def test_adakd_has_no_feature_loss(plugins):
    assert plugins["adakd"].obj(total_steps=3).feature_loss(torch.zeros(2, 4), torch.zeros(2, 4)) is None


# --- the shared formulas ------------------------------------------------------------------------------

def np_pair(seed):
    s, t = pair(seed, n=12, v=23)
    ls, lt = logp(s), logp(t)
    return ls, lt, ls.double().exp().numpy(), lt.double().exp().numpy()


def test_forward_and_reverse_kl_match_torch_kl_div_and_numpy():
    ls, lt, q, p = np_pair(5)
    fkl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    rkl = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(formulas.forward_kl(ls, lt), fkl)
    torch.testing.assert_close(formulas.reverse_kl(ls, lt), rkl)
    np.testing.assert_allclose(formulas.forward_kl(ls, lt).double().numpy(), (p * np.log(p / q)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(formulas.reverse_kl(ls, lt).double().numpy(), (q * np.log(q / p)).sum(-1), rtol=1e-5)
    assert formulas.forward_kl(ls, lt).shape == (12,)  # per token: no reduction


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_log_mixture_and_skew_kl_match_numpy(alpha):
    ls, lt, q, p = np_pair(6)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(formulas.log_mixture(ls, lt, alpha, 1 - alpha).double().numpy(),
                                   np.log(alpha * p + (1 - alpha) * q), rtol=1e-5, atol=1e-6)
    m_skl, m_srkl = alpha * p + (1 - alpha) * q, (1 - alpha) * p + alpha * q
    np.testing.assert_allclose(formulas.skew_forward_kl(ls, lt, alpha).double().numpy(),
                               (p * np.log(p / m_skl)).sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(formulas.skew_reverse_kl(ls, lt, alpha).double().numpy(),
                               (q * np.log(q / m_srkl)).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_js_matches_numpy_with_its_floor(lam):
    ls, lt, q, p = np_pair(7)
    log_m = np.log(np.maximum((1 - lam) * p + lam * q, 1e-8))
    want = lam * (q * (np.log(q) - log_m)).sum(-1) + (1 - lam) * (p * (np.log(p) - log_m)).sum(-1)
    np.testing.assert_allclose(formulas.js(ls, lt, lam).double().numpy(), want, rtol=1e-5, atol=1e-6)
    assert formulas.JS_LOG_FLOOR == math.log(1e-8)
    floored = torch.full((1, 3), -40.0).log_softmax(-1)  # uniform: m = 1/3 > 1e-8, the floor is inactive
    assert formulas.js(floored, floored, lam).abs().item() < 1e-6


def test_the_plugins_and_adakds_indicators_are_the_formulas(plugins):
    ls, lt, _, _ = np_pair(8)
    pairs = [("fkl", {}, formulas.forward_kl(ls, lt)), ("rkl", {}, formulas.reverse_kl(ls, lt)),
             ("skl", {"alpha": 0.1}, formulas.skew_forward_kl(ls, lt, 0.1)),
             ("srkl", {"alpha": 0.1}, formulas.skew_reverse_kl(ls, lt, 0.1)),
             ("js", {"lam": 0.9}, formulas.js(ls, lt, 0.9))]
    for key, hp, want in pairs:
        assert torch.equal(plugins[key].obj(ls, lt, **hp), want), key
    for indicator, want in (("fkl", formulas.forward_kl(ls, lt)), ("rkl", formulas.reverse_kl(ls, lt)),
                            ("js", formulas.js(ls, lt, 0.5))):
        got = plugins["adakd"].obj(total_steps=1, indicator=indicator).difficulty(ls, lt)
        assert torch.equal(got, want.clamp_min(0)), indicator
    adakd_module = sys.modules[plugins["adakd"].obj.__module__]
    assert not {"forward_kl", "reverse_kl", "js_divergence"} & set(vars(adakd_module))

