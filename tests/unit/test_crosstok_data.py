"""A cross-tokenizer run's data and loss: each aligned row pair predicts tokens with the same text on
both sides, rows are flat indices into each side's padded batch, and `cross_objective` is the
plain formula (CE over every response token, the method's mean over aligned rows), chunked or not."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from kdbench.crosstok import vocab
from kdbench.crosstok.data import collate_pair, encode_pair, response_units
from kdbench.crosstok.losses import merge_group, simple_ctkd
from kdbench.datagen import generate
from kdbench.jsonl import read_jsonl
from kdbench.losses import IGNORE, UNIT_KEYS, cross_objective
from kdbench.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("xdata")
    paths = generate(root / "data", seed=0, n_train=60, n_valid=5, n_eval=5)
    for kind in ("bpe", "unigram"):
        train_tokenizer([paths["train"]], root / kind, vocab_size=500, kind=kind)
    return read_jsonl(paths["train"])[:6], *(AutoTokenizer.from_pretrained(root / k) for k in ("unigram", "bpe"))


def test_aligned_rows_predict_the_same_text_on_both_sides(tiny):
    records, student, teacher = tiny
    for alignment in ("pairs", "chunks", "mined"):
        for record in records:
            e = encode_pair(record, student, teacher, 512, "minillm", alignment)
            n_s, n_t = len(e["input_ids"]), len(e["teacher_input_ids"])
            assert e["units"] and e["units"][-1] == ((n_s - 2,), (n_t - 2,))  # eos ↔ eos
            for rows_s, rows_t in e["units"][:-1]:
                s_text = student.decode([e["input_ids"][i + 1] for i in rows_s]).replace("▁", " ")
                t_text = teacher.decode([e["teacher_input_ids"][j + 1] for j in rows_t])
                assert s_text.strip() == t_text.strip() and e["labels"][rows_s[0] + 1] != IGNORE
                assert alignment == "chunks" or len(rows_s) == len(rows_t) == 1
    mined = encode_pair(records[0], student, teacher, 512, "minillm", "mined")["units"]
    pairs = encode_pair(records[0], student, teacher, 512, "minillm", "pairs")["units"]
    assert len(set(mined) & set(pairs)) > 0.5 * len(pairs)  # same strings at the same place: mostly the exact pairs
    chunks = encode_pair(records[0], student, teacher, 512, "minillm", "chunks")["units"]
    assert any(len(s) > 1 or len(t) > 1 for s, t in chunks)  # several tokens of a side over one text


def test_position_alignment_pairs_the_ith_tokens_and_truncation_drops_units(tiny):
    records, student, teacher = tiny
    e = encode_pair(records[0], student, teacher, 512, "minillm", "position")
    s_start = e["labels"].index(next(x for x in e["labels"] if x != IGNORE))
    first = e["units"][0][0][0]
    body = e["units"][:-1]  # then the end of sequence of each side
    assert first == s_start - 1 and [u[0][0] - first for u in body] == [u[1][0] - body[0][1][0] for u in body] \
        == list(range(len(body)))
    short = encode_pair(records[0], student, teacher, s_start + 3, "minillm", "position")
    assert len(short["units"]) == 3 and all(u[0][0] < s_start + 3 for u in short["units"])
    with pytest.raises(Exception, match="alignment 'dtw' is not wired"):
        response_units(None, None, "dtw")


def test_rows_index_the_flattened_padded_batch(tiny):
    records, student, teacher = tiny
    examples = [encode_pair(r, student, teacher, 512, "minillm", "chunks") for r in records[:3]]
    mb = collate_pair(examples, student.pad_token_id, teacher.pad_token_id)
    width, first = mb["input_ids"].shape[1], len(examples[0]["units"])
    assert torch.equal(mb["student_tokens"], mb["input_ids"].flatten()[mb["student_rows"] + 1])
    assert (mb["student_tokens"] != student.pad_token_id).all()
    assert int(mb["student_units"][-1]) + 1 == sum(len(e["units"]) for e in examples)
    assert mb["student_rows"].numel() == sum(len(u[0]) for e in examples for u in e["units"])
    k = int(torch.searchsorted(mb["student_units"], torch.tensor(first)))
    assert divmod(int(mb["student_rows"][k]), width) == (1, examples[1]["units"][0][0][0])
    assert mb["teacher_attention_mask"].sum() == sum(len(e["teacher_input_ids"]) for e in examples)


def _merged(logp, units, tokens, n_units, mean_probs):
    """One row per unit: "mean" (student: mean probability, teacher: mean log-probability), or GOLD's
    observed merge through kdbench.crosstok.losses.merge_group (mean_probs None)."""
    out = []
    for u in range(n_units):
        rows = logp[units == u]
        if mean_probs is None:
            out.append(merge_group(rows.exp(), tokens[units == u].tolist()).log())
        else:
            out.append(rows.exp().mean(0).log() if mean_probs else rows.mean(0))
    return torch.stack(out)


def _plain(z_s, z_t, mb, fn, arrays, n_global, kd_ratio, observed=False):
    """The loss written out, every unit's rows merged."""
    valid = mb["labels"][:, 1:] != IGNORE
    ce = F.cross_entropy(z_s[:, :-1][valid], mb["labels"][:, 1:][valid], reduction="sum")
    logp_s = F.log_softmax(z_s.flatten(0, 1)[mb["student_rows"]], -1)
    logp_t = F.log_softmax(z_t.flatten(0, 1)[mb["teacher_rows"]], -1)
    n_units = int(mb["student_units"][-1]) + 1
    rows_s = _merged(logp_s, mb["student_units"], mb["student_tokens"], n_units, None if observed else True)
    rows_t = _merged(logp_t, mb["teacher_units"], mb["teacher_tokens"], n_units, None if observed else False)
    kd = fn(rows_s, rows_t, **arrays).mean()
    n = int(valid.sum())
    return (1 - kd_ratio) * ce / n_global + kd_ratio * kd * n / n_global


def _random_batch(tiny, alignment, seed, share):
    """Three examples' pair batch, random float64 logits for each side, the common-vocabulary arrays
    and N_global: this micro-batch's tokens times `share` (the step's other micro-batches)."""
    records, student, teacher = tiny
    arrays, _ = vocab.build(student, teacher)
    common = {k: torch.as_tensor(arrays[k]) for k in ("common_student", "common_teacher")}
    mb = collate_pair([encode_pair(r, student, teacher, 512, "minillm", alignment) for r in records[:3]],
                      student.pad_token_id, teacher.pad_token_id)
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(*mb["input_ids"].shape, len(student), generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(*mb["teacher_input_ids"].shape, len(teacher), generator=g, dtype=torch.float64)
    return mb, z_s, z_t, common, share * int((mb["labels"][:, 1:] != IGNORE).sum())


@pytest.mark.parametrize("alignment", ["pairs", "chunks", "groups"])
def test_cross_objective_is_the_plain_formula_chunked_or_not(tiny, alignment):
    _, student, teacher = tiny
    mb, z_s, z_t, common, n_global = _random_batch(tiny, alignment, 0, 2)  # another micro-batch as large
    observed = alignment == "groups"
    expected = _plain(z_s, z_t, mb, simple_ctkd, common, n_global, 0.5, observed)
    want = torch.autograd.grad(expected, z_s)[0]
    for chunk in (None, 7):
        parts = cross_objective(z_s, z_t, mb["labels"], {k: mb[k] for k in UNIT_KEYS}, method=simple_ctkd,
                                hparams={}, arrays=common, student_vocab=len(student), teacher_vocab=len(teacher),
                                kd_ratio=0.5, n_global=n_global, chunk_size=chunk,
                                merge="observed" if observed else "mean")
        assert torch.allclose(parts.loss, expected) and parts.n_selected == int(mb["student_units"][-1]) + 1
        assert torch.allclose(torch.autograd.grad(parts.loss, z_s)[0], want)


class _Uniform:
    """A token policy whose plan changes nothing (weights, temperatures, scales 1)."""

    def token_stats(self, student_logp, teacher_logp, labels):
        assert student_logp.shape == teacher_logp.shape and labels is None  # one distribution pair, one space
        return {"n": torch.zeros(len(student_logp))}

    def plan(self, stats, progress):
        from kdbench.losses import TokenPlan

        return TokenPlan.uniform(len(stats["n"]))


def _cross_loss(tiny, alignment, policy=None, space=None, method=simple_ctkd, chunk=None, seed=0):
    records, student, teacher = tiny
    arrays, _ = vocab.build(student, teacher)
    names = ("common_student", "common_teacher") if method is simple_ctkd else ("projection_indices", "projection_weights")
    arrays = {k: torch.as_tensor(arrays[k]) for k in names}
    mb = collate_pair([encode_pair(r, student, teacher, 512, "minillm", alignment) for r in records[:3]],
                      student.pad_token_id, teacher.pad_token_id)
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(*mb["input_ids"].shape, len(student), generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(*mb["teacher_input_ids"].shape, len(teacher), generator=g, dtype=torch.float64)
    n = int((mb["labels"][:, 1:] != IGNORE).sum())
    parts = cross_objective(z_s, z_t, mb["labels"], {k: mb[k] for k in UNIT_KEYS}, method=method, hparams={},
                            arrays=arrays, student_vocab=len(student), teacher_vocab=len(teacher), kd_ratio=0.5,
                            n_global=n, chunk_size=chunk, policy=policy, progress=0.5, space=space)
    return parts, torch.autograd.grad(parts.loss, z_s)[0]


def test_a_uniform_plan_changes_nothing(tiny):
    plain, grad = _cross_loss(tiny, "pairs", chunk=7)
    under, grad_under = _cross_loss(tiny, "pairs", policy=_Uniform(), space="common")
    assert torch.allclose(plain.loss, under.loss) and torch.allclose(grad, grad_under)
    assert under.n_selected == plain.n_selected and torch.equal(under.temperature, torch.ones(plain.n_selected))


@pytest.mark.parametrize("alignment, space, method", [("pairs", "common", simple_ctkd), ("chunks", "teacher", None)])
def test_adakd_composes_in_the_plugins_space(tiny, repo, alignment, space, method):
    """AdaKD's plan on the space's distributions: temperatures and selection act (τ ≠ 1), and its
    `tau_grad` changes the gradient, not the value (the gradient through τ, as kdbench.reference_loss)."""
    from kdbench.crosstok.losses import xtoken_pkl
    from kdbench.policies import Composed
    from kdbench.registry import load_method_file

    adakd = load_method_file(repo / "methods/adakd.py")
    method = method or (lambda s, t, **a: xtoken_pkl(s, t, a["projection_indices"], a["projection_weights"]))
    results = {}
    for tau_grad in (True, False):
        policy = Composed([adakd.instantiate({"tau_grad": tau_grad}, total_steps=10)])
        results[tau_grad] = _cross_loss(tiny, alignment, policy=policy, space=space, method=method)
    (with_grad, g_with), (detached, g_detached) = results[True], results[False]
    plain, _ = _cross_loss(tiny, alignment, method=method)
    assert torch.isfinite(with_grad.loss) and torch.allclose(with_grad.loss, detached.loss)
    assert not torch.allclose(g_with, g_detached) and not torch.allclose(with_grad.loss, plain.loss)
    assert (with_grad.temperature != 1).any() and with_grad.n_selected <= plain.n_selected


@pytest.mark.parametrize("alignment, chunk", [("pairs", None), ("chunks", 7)])
def test_dynamic_loss_scaling_scales_the_kd_term_to_the_cross_entropy(tiny, alignment, chunk):
    """NeMo-RL's dynamic_loss_scaling (`kd_to_ce`): loss = (1 − r)·CE + r·sg(CE_mean/KD_mean)·KD,
    against the plain formula's two terms (its value is the CE term's; the KD gradient scaled)."""
    _, student, teacher = tiny
    mb, z_s, z_t, common, n_global = _random_batch(tiny, alignment, 1, 3)
    ce_term, kd_term = (_plain(z_s, z_t, mb, simple_ctkd, common, n_global, r) for r in (0.0, 1.0))  # CE/N, n·KD/N
    scale = (ce_term / kd_term).detach()  # = CE_mean / KD_mean
    assert not torch.isclose(scale, torch.ones((), dtype=scale.dtype), rtol=0.05)  # the scaling does something here
    expected = 0.4 * ce_term + 0.6 * scale * kd_term
    results = {}
    for on in (True, False):
        parts = cross_objective(z_s, z_t, mb["labels"], {k: mb[k] for k in UNIT_KEYS}, method=simple_ctkd,
                                hparams={}, arrays=common, student_vocab=len(student), teacher_vocab=len(teacher),
                                kd_ratio=0.6, n_global=n_global, chunk_size=chunk, kd_to_ce=on)
        results[on] = parts, torch.autograd.grad(parts.loss, z_s)[0]
    (scaled, g_scaled), (plain, g_plain) = results[True], results[False]
    assert torch.allclose(scaled.loss, expected) and torch.allclose(scaled.loss, ce_term)  # value: CE's
    assert torch.allclose(g_scaled, torch.autograd.grad(expected, z_s)[0])
    assert not torch.allclose(g_scaled, g_plain)
    assert scaled.kd_mean == pytest.approx(plain.kd_mean)  # logged unscaled


@pytest.mark.parametrize("key", ["simple_ctkd", "xtoken"])
@pytest.mark.parametrize("alignment", ["pairs", "chunks"])
def test_on_one_tokenizer_a_cross_tokenizer_method_is_forward_kl(tiny, repo, key, alignment):
    """Both sides on the same (BPE) tokenizer: every response position is its own unit, the common
    vocabulary and X-Token's projection are the identity on the non-special tokens, so through the
    whole cross-tokenizer path (both encodings, flat rows, merge, vocab_map) simple_ctkd and xtoken
    are the same-vocabulary harness's forward KL (`objective` with methods/fkl.py), value and
    gradient. The special tokens, outside the map, get logits −30 on both sides (mass ~1e-13)."""
    from kdbench.losses import objective
    from kdbench.registry import discover, loss_hp

    records, _, tok = tiny
    plugins = discover(repo / "methods")
    method = plugins[key]
    arrays, report = vocab.build(tok, tok)
    assert report["common"] == report["student_rows_projected"] == len(tok) - len(tok.all_special_ids)
    mb = collate_pair([encode_pair(r, tok, tok, 512, "minillm", alignment) for r in records[:3]],
                      tok.pad_token_id, tok.pad_token_id)
    assert torch.equal(mb["input_ids"], mb["teacher_input_ids"])
    g = torch.Generator().manual_seed(3)
    z_s, z_t = (torch.randn(*mb["input_ids"].shape, len(tok), generator=g, dtype=torch.float64) for _ in range(2))
    for z in (z_s, z_t):
        z[..., tok.all_special_ids] = -30.0
    z_s.requires_grad_(True)
    n = int((mb["labels"][:, 1:] != IGNORE).sum())
    want = objective(z_s, z_t, mb["labels"], vocab_size=len(tok), kd_ratio=0.5, n_global=n,
                     divergence=plugins["fkl"].obj)
    got = cross_objective(z_s, z_t, mb["labels"], {k: mb[k] for k in UNIT_KEYS}, method=method.obj,
                          hparams=loss_hp(method.defaults), arrays={k: torch.as_tensor(arrays[k]) for k in method.crosstok["needs"]},
                          student_vocab=len(tok), teacher_vocab=len(tok), kd_ratio=0.5, n_global=n, chunk_size=16)
    assert got.n_selected == n  # one unit per response token and the end of sequence
    rel = 1e-9 if key == "simple_ctkd" else 1e-6  # X-Token's 1e-10 floors (r̃ + 1e-10, log(r̃ + 1e-10))
    assert got.kd_mean == pytest.approx(want.kd_mean, rel=rel) and torch.allclose(got.loss, want.loss, rtol=rel)
    torch.testing.assert_close(torch.autograd.grad(got.loss, z_s)[0], torch.autograd.grad(want.loss, z_s)[0],
                               rtol=100 * rel, atol=1e-10)
