"""A cross-tokenizer run's data and loss: each aligned row pair predicts tokens with the same text on
both sides, rows are flat indices into each side's padded batch, and `cross_objective` is the
plain formula (CE over every response token, the method's mean over aligned rows), chunked or not."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from kdbench.crosstok import vocab
from kdbench.crosstok.data import collate_pair, encode_pair, response_pairs
from kdbench.crosstok.losses import simple_ctkd
from kdbench.datagen import generate
from kdbench.jsonl import read_jsonl
from kdbench.losses import IGNORE, cross_objective
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
    for record in records:
        e = encode_pair(record, student, teacher, 512, "minillm", "pairs")
        assert e["rows"] and e["rows"][-1] == (len(e["input_ids"]) - 2, len(e["teacher_input_ids"]) - 2)  # eos ↔ eos
        for i, j in e["rows"][:-1]:
            s_text = student.decode([e["input_ids"][i + 1]]).replace("▁", " ")
            t_text = teacher.decode([e["teacher_input_ids"][j + 1]])
            assert s_text.strip() == t_text.strip() and e["labels"][i + 1] != IGNORE


def test_position_alignment_pairs_the_ith_tokens_and_truncation_drops_pairs(tiny):
    records, student, teacher = tiny
    e = encode_pair(records[0], student, teacher, 512, "minillm", "position")
    s_start = e["labels"].index(next(x for x in e["labels"] if x != IGNORE))
    assert e["rows"][0][0] == s_start - 1 and [i - e["rows"][0][0] for i, _ in e["rows"]] == list(range(len(e["rows"])))
    short = encode_pair(records[0], student, teacher, s_start + 3, "minillm", "position")
    assert len(short["rows"]) == 3 and all(i < s_start + 3 for i, _ in short["rows"])
    with pytest.raises(Exception, match="alignment 'chunks' is not wired"):
        response_pairs(None, None, "chunks")


def test_rows_index_the_flattened_padded_batch(tiny):
    records, student, teacher = tiny
    examples = [encode_pair(r, student, teacher, 512, "minillm", "pairs") for r in records[:3]]
    mb = collate_pair(examples, student.pad_token_id, teacher.pad_token_id)
    width = mb["input_ids"].shape[1]
    assert mb["student_rows"].numel() == sum(len(e["rows"]) for e in examples)
    b, i = divmod(int(mb["student_rows"][len(examples[0]["rows"])]), width)
    assert (b, i) == (1, examples[1]["rows"][0][0])
    assert mb["teacher_attention_mask"].sum() == sum(len(e["teacher_input_ids"]) for e in examples)


def test_cross_objective_is_the_plain_formula_chunked_or_not(tiny):
    records, student, teacher = tiny
    arrays, _ = vocab.build(student, teacher)
    common = {k: torch.as_tensor(arrays[k]) for k in ("common_student", "common_teacher")}
    mb = collate_pair([encode_pair(r, student, teacher, 512, "minillm", "pairs") for r in records[:3]],
                      student.pad_token_id, teacher.pad_token_id)
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(*mb["input_ids"].shape, len(student), generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(*mb["teacher_input_ids"].shape, len(teacher), generator=g, dtype=torch.float64)
    valid = mb["labels"][:, 1:] != IGNORE
    n = int(valid.sum())
    ce = F.cross_entropy(z_s[:, :-1][valid], mb["labels"][:, 1:][valid], reduction="sum")
    kd = simple_ctkd(F.log_softmax(z_s.flatten(0, 1)[mb["student_rows"]], -1),
                     F.log_softmax(z_t.flatten(0, 1)[mb["teacher_rows"]], -1), **common).mean()
    expected = 0.5 * ce / (2 * n) + 0.5 * kd * n / (2 * n)  # n_global = 2n: another micro-batch of the step
    want = torch.autograd.grad(expected, z_s)[0]
    for chunk in (None, 7):
        parts = cross_objective(z_s, z_t, mb["labels"], mb["student_rows"], mb["teacher_rows"], method=simple_ctkd,
                                hparams={}, arrays=common, student_vocab=len(student), teacher_vocab=len(teacher),
                                kd_ratio=0.5, n_global=2 * n, chunk_size=chunk)
        assert torch.allclose(parts.loss, expected) and parts.n_selected == mb["student_rows"].numel()
        assert torch.allclose(torch.autograd.grad(parts.loss, z_s)[0], want)
