"""DSKD with cross-model attention (methods/dskd.py): its formula against a plain computation on small
random tensors, gradients reaching the projectors; the harness hands it each example's whole
response (`alignment="attention"`) and its value is DSKD's per-token normalisation; the registry's
checks of an attention plugin."""

import math

import pytest
import torch

from kdbench.crosstok.data import build_modules, collate_pair, encode_pair
from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE, UNIT_KEYS, cross_objective
from kdbench.registry import SEQUENCE_INPUTS, discover, read_method_file
from kdbench.sft_data import encode_example
from tests.conftest import REPO
from tests.unit.test_crosstok_data import tiny  # noqa: F401 (the fixture: records, Unigram student, BPE teacher)

DSKD = discover(REPO / "methods")["dskd"]


def plain_terms(z_s, z_t, h_s, h_t, es_in, es_tgt, et_in, et_tgt, y, w_s, w_t, proj, T):
    """DSKD's formula written out row by row: explicit softmaxes, sums and the projectors' W x + b."""
    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    def softmax(x):
        e = torch.exp(x - x.max())
        return e / e.sum()

    def kl(p_logits, q_logits):
        p, q = softmax(p_logits / T), softmax(q_logits / T)
        return (p * (torch.log(p) - torch.log(q))).sum()

    keys = torch.cat([et_in, et_tgt], 1)
    keys = keys / keys.flatten().std()
    queries = lin(proj.query, torch.cat([es_in, es_tgt], 1))
    scores = torch.stack([torch.stack([queries[i] @ keys[j] for j in range(len(keys))]) for i in range(len(queries))])
    scores = scores / math.sqrt(keys.shape[1])
    values_t = lin(proj.t2s, h_t / h_t.flatten().std() + et_tgt / et_tgt.flatten().std())
    values_s = lin(proj.s2t, h_s)
    student_rows, teacher_rows = [], []
    for i in range(len(h_s)):
        z = w_s @ sum(a * v for a, v in zip(softmax(scores[i]), values_t))
        ce = -torch.log(softmax(z)[y[i]])
        agree = float(int(z.argmax()) == int(y[i]))
        student_rows.append(ce + agree * kl(z.detach(), z_s[i]))
    for j in range(len(h_t)):
        z = w_t @ sum(a * v for a, v in zip(softmax(scores[:, j]), values_s))
        teacher_rows.append(kl(z_t[j], z))
    return torch.stack(student_rows), torch.stack(teacher_rows)


def _inputs(n_s=4, n_t=6, d_s=3, d_t=5, v_s=7, v_t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(z_s=r(n_s, v_s).requires_grad_(), z_t=r(n_t, v_t), h_s=r(n_s, d_s).requires_grad_(), h_t=r(n_t, d_t),
                es_in=r(n_s, d_s), es_tgt=r(n_s, d_s), et_in=r(n_t, d_t), et_tgt=r(n_t, d_t),
                y=torch.randint(0, v_s, (n_s,), generator=g), w_s=r(v_s, d_s), w_t=r(v_t, d_t))


def _dskd(x, proj):
    """The plugin on `_inputs`' tensors, at its default temperature (2)."""
    return DSKD.obj(x["z_s"], x["z_t"], student_hidden=x["h_s"], teacher_hidden=x["h_t"],
                    student_input_embeds=x["es_in"], student_target_embeds=x["es_tgt"], teacher_input_embeds=x["et_in"],
                    teacher_target_embeds=x["et_tgt"], student_targets=x["y"], student_head=x["w_s"],
                    teacher_head=x["w_t"], modules=proj)


def test_dskd_equals_a_plain_computation_and_trains_its_projectors():
    x = _inputs()
    torch.manual_seed(0)
    proj = build_modules(DSKD, 3, 5).double()
    with torch.no_grad():  # t2s logits ≈ W_s b_t2s on every row: its argmax is the target on the first two
        proj.t2s.weight.mul_(0.01)
        proj.t2s.bias.mul_(5)
    x["y"][:2] = (x["w_s"] @ proj.t2s.bias).argmax()
    got = _dskd({**x, "z_s": torch.log_softmax(x["z_s"], -1), "z_t": torch.log_softmax(x["z_t"], -1)}, proj)
    want = plain_terms(*x.values(), proj, 2.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(sum(v.sum() for v in out), [x["z_s"], x["h_s"], *proj.parameters()])
             for out in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    named = dict(zip(["z_s", "h_s"] + [n for n, _ in proj.named_parameters()], grads[0]))
    assert [n for n in named if not named[n].abs().sum() > 0] == []  # every projector and the student learn
    with pytest.raises(ValueError, match="temperature = 0"):
        DSKD.obj(*got, **{k: None for k in SEQUENCE_INPUTS}, temperature=0)


def test_the_harness_hands_each_whole_response_and_normalises_per_student_token(tiny):
    """cross_objective over a padded batch of 3 examples equals, loss and gradients, a loop over the
    examples' response rows found from each side's own labels, divided by the student's token count."""
    records, student, teacher = tiny
    records = records[:3]
    examples = [encode_pair(r, student, teacher, 512, "minillm", "attention") for r in records]
    mb = collate_pair(examples, student.pad_token_id, teacher.pad_token_id)
    torch.manual_seed(0)
    d_s, d_t, v_s, v_t = 4, 6, len(student), len(teacher)
    heads = torch.nn.Linear(d_s, v_s, bias=False).double(), torch.nn.Linear(d_t, v_t, bias=False).double()
    embeds = torch.nn.Embedding(v_s, d_s).double(), torch.nn.Embedding(v_t, d_t).double()
    h_s = torch.randn(*mb["input_ids"].shape, d_s, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(*mb["teacher_input_ids"].shape, d_t, dtype=torch.float64)
    proj = build_modules(DSKD, d_s, d_t).double()
    n = int((mb["labels"] != IGNORE).sum())
    assert mb["student_rows"].numel() == n  # every student response token is in its example's unit
    parts = cross_objective(h_s, h_t, mb["labels"], {k: mb[k] for k in UNIT_KEYS}, method=DSKD.obj, hparams={},
                            arrays={}, student_vocab=v_s, teacher_vocab=v_t, kd_ratio=0.5, n_global=n,
                            student_head=heads[0], teacher_head=heads[1], merge="attention", embeddings=embeds,
                            modules=proj)
    ce, kd = 0.0, 0.0
    with torch.no_grad():
        w_s, w_t = heads[0].weight, heads[1].weight
    for b, (record, e) in enumerate(zip(records, examples)):
        t_labels = encode_example(record, teacher, 512, "minillm")["labels"]
        rs = [k - 1 for k, label in enumerate(e["labels"]) if label != IGNORE]
        rt = [k - 1 for k, label in enumerate(t_labels) if label != IGNORE]
        ids_s, ids_t = torch.tensor(e["input_ids"]), torch.tensor(e["teacher_input_ids"])
        z_s, z_t = heads[0](h_s[b, rs]), heads[1](h_t[b, rt])
        y = ids_s[[k + 1 for k in rs]]
        ce = ce + torch.nn.functional.cross_entropy(z_s, y, reduction="sum")
        with torch.no_grad():
            es = embeds[0](ids_s[rs]), embeds[0](y)
            et = embeds[1](ids_t[rt]), embeds[1](ids_t[[k + 1 for k in rt]])
        values = plain_terms(z_s, z_t, h_s[b, rs], h_t[b, rt], *es, *et, y, w_s, w_t, proj, 2.0)
        kd = kd + values[0].sum() + values[1].sum()
    want = 0.5 * ce / n + 0.5 * kd / n
    torch.testing.assert_close(parts.loss, want)
    assert parts.n_selected == n and parts.kd_mean == pytest.approx(float(kd.detach() / n))
    params = [h_s, *proj.parameters()]
    for a, b in zip(torch.autograd.grad(parts.loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b)


def test_truncation_keeps_what_is_left_of_each_side(tiny):
    records, student, teacher = tiny
    full = encode_pair(records[0], student, teacher, 512, "minillm", "attention")["units"]
    start = full[0][0][0] + 1  # the first response token's position
    short = encode_pair(records[0], student, teacher, start + 3, "minillm", "attention")["units"]
    assert len(full) == len(short) == 1 and short[0][0] == full[0][0][:3] and 0 < len(short[0][1]) <= len(full[0][1])


ATTENTION = '''
import torch
from kdbench.registry import crosstok


def build(student_dim, teacher_dim):
    return torch.nn.Linear(student_dim, teacher_dim)


@crosstok(alignment="{alignment}"{modules})
def att(student_logp, teacher_logp, *, {inputs}, kd_ratio=0.5{lr}):
    """A test plugin."""
'''
INPUTS = ("student_hidden, teacher_hidden, student_input_embeds, student_target_embeds, teacher_input_embeds, "
          "teacher_target_embeds, student_targets, student_head, teacher_head, modules")


@pytest.mark.parametrize("alignment, modules, inputs, lr, error", [
    ("attention", ', modules="build"', INPUTS, "", None),
    ("attention", ', modules="build"', INPUTS, ", modules_lr=0.001", None),  # a hyper-parameter the harness reads
    ("attention", "", INPUTS, "", None),  # no trainable modules: `modules` is None
    ("attention", "", INPUTS, ", modules_lr=0.001", "`modules_lr` is the learning rate of the modules"),
    ("attention", ', modules="build"', INPUTS.replace(", student_head", ""), "", "take student_head as keyword-only"),
    ("pairs", ', modules="build"', "modules", "", r"modules='build'\) needs alignment=\"attention\""),
    ("attention", ', modules="missing"', INPUTS, "", "a top-level function missing"),
])
def test_the_registry_checks_an_attention_plugin(tmp_path, alignment, modules, inputs, lr, error):
    path = tmp_path / "att.py"
    path.write_text(ATTENTION.format(alignment=alignment, modules=modules, inputs=inputs, lr=lr))
    if error is None:
        m = read_method_file(path)
        assert m.params == ({"modules_lr": 0.001} if lr else {}) and m.crosstok["modules"] == ("build" if modules else None)
        assert m.crosstok["needs"] == []  # the sequence inputs are the harness's, not the vocab_map's
    else:
        with pytest.raises(KDBenchError, match=rf"att.py: crosstok att: .*{error}"):
            read_method_file(path)


def test_bf16_projectors_take_fp32_inputs():
    """Under DeepSpeed bf16 the engine casts the projectors with the student; the harness's inputs stay fp32."""
    x = {k: v.detach().float() if v.is_floating_point() else v for k, v in _inputs().items()}
    torch.manual_seed(0)
    proj = build_modules(DSKD, 3, 5)
    want, got = _dskd(x, proj), _dskd(x, proj.bfloat16())
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
