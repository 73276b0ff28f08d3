"""Every registered method trains the tiny GPT-2 pair on CPU: a few optimizer steps through the
harness (hidden states, chunked heads) and the student moves towards the teacher."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.losses import IGNORE, count_valid, objective
from kdbench.models import LastHidden
from kdbench.policies import Composed

V = 64


def tiny_lm(n_layer, n_embd, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=V, n_positions=32))


def method_cases():
    from kdbench.registry import discover
    from tests.conftest import REPO

    plugins = discover(REPO / "methods")
    divergences = [k for k, m in plugins.items() if m.kind == "divergence"]
    policies = [k for k, m in plugins.items() if m.kind == "token_policy"]
    return [(d, []) for d in divergences] + [("fkl", [p]) for p in policies] + [("rkl", policies)]


@pytest.mark.parametrize("divergence, policy_keys", method_cases(),
                         ids=lambda x: "+".join(x) if isinstance(x, list) else x)
def test_method_trains_the_tiny_pair(plugins, divergence, policy_keys):
    torch.set_num_threads(1)
    teacher = LastHidden(tiny_lm(2, 32, 0)).eval().requires_grad_(False)
    student_lm = tiny_lm(1, 16, 1)
    policies = [plugins[k].instantiate({}, total_steps=30, student_dim=16, teacher_dim=32) for k in policy_keys]
    policy = Composed(policies) if policies else None
    student = LastHidden(student_lm, extras=policy.modules() if policy else [])
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (4, 16), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE
    mask = torch.ones_like(ids)
    n = count_valid(labels)
    fn = plugins[divergence].obj

    def plain_divergence():
        with torch.no_grad():
            return objective(student(ids, mask), teacher(ids, mask), labels, vocab_size=V, kd_ratio=1.0, n_global=n,
                             divergence=fn, student_head=student.head, teacher_head=teacher.head).loss.item()

    before = plain_divergence()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for step in range(30):
        opt.zero_grad()
        parts = objective(student(ids, mask), teacher(ids, mask), labels, vocab_size=V, kd_ratio=1.0, n_global=n,
                          divergence=fn, policy=policy, progress=step / 30, student_head=student.head,
                          teacher_head=teacher.head, chunk_size=16)
        parts.loss.backward()
        opt.step()
        if policy is not None:
            policy.observe(parts.kd_mean)
    after = plain_divergence()
    assert after < 0.6 * before, (before, after)
