"""MinED's vocabulary map and loss against independent computations: the map equals a brute-force
edit-distance search (pure Python Levenshtein, each token's text by its tokenizer's own decoder) on
the workflow's generated BPE and Unigram tokenizers, the `mined` units add FuseLLM's "soft" matches
(the teacher token maps to the student's) to the same-string ones, and the loss equals a replay of
FuseLLM's `transform_step_logits` (soft) and data collator on small tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdbench.crosstok import vocab
from kdbench.crosstok.align import levenshtein, strip_markers
from kdbench.crosstok.data import encode_pair
from kdbench.registry import load_method_file
from tests.conftest import REPO
from tests.unit.test_crosstok_data import tiny  # noqa: F401  (the fixture: generated data and both tokenizers)
from tests.unit.test_crosstok_vocab import decoded_text

MINED = load_method_file(REPO / "methods/mined.py")


@pytest.fixture(scope="module")
def workflow_pair(tiny):
    """The workflow's generated tokenizers (a Unigram/Metaspace student, a byte-level BPE teacher) and records."""
    records, student, teacher = tiny
    return student, teacher, records


def _texts(tokenizer) -> dict[int, bytes]:
    """Each non-special token's bytes by the tokenizer's own decoder; a token that is not UTF-8 alone,
    which the decoder cannot show, is its byte: `<0xNN>` (byte fallback) or through the GPT-2 byte table."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = {ch: b for b, ch in bytes_to_unicode().items()}
    out = {}
    for token, i in tokenizer.get_vocab().items():
        if i in vocab.special_ids(tokenizer):
            continue
        text = decoded_text(tokenizer, token)
        if "\ufffd" not in text:
            out[i] = text.encode()
        else:
            out[i] = bytes([int(token[3:5], 16)]) if token.startswith("<0x") else bytes(table[c] for c in token)
    return out


def test_the_map_is_the_brute_force_nearest_student_token(workflow_pair):
    student, teacher, _ = workflow_pair
    s_texts, t_texts = _texts(student), _texts(teacher)
    s_ids = sorted(s_texts)
    t_ids, s_got, exact = vocab.mined_map(student, teacher)
    assert t_ids.tolist() == sorted(t_texts)
    n_exact = 0
    for t, s in zip(t_ids.tolist(), s_got.tolist()):
        a = t_texts[t].decode("latin-1")
        distances = [levenshtein(a, s_texts[j].decode("latin-1")) for j in s_ids]
        best = s_ids[int(np.argmin(distances))]  # FuseLLM's min(): the first of least distance, ids in order
        assert s == best, (teacher.convert_ids_to_tokens(t), student.convert_ids_to_tokens(s))
        n_exact += min(distances) == 0
    assert exact == n_exact and 50 < exact < len(t_ids)  # `Ġthe` and `▁the` are one text; many tokens are not
    common_s, common_t = vocab.common_vocab(student, teacher)
    assert dict(zip(t_ids.tolist(), s_got.tolist())).items() >= dict(zip(common_t.tolist(), common_s.tolist())).items()


def test_the_vocab_map_report_counts_exact_and_edit_distance_matches(workflow_pair, tmp_path):
    arrays, report = vocab.build(*workflow_pair[:2])
    vocab.save(tmp_path / "v.safetensors", arrays, report)
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["mined_exact"] + saved["mined_edit_distance"] == saved["mined_mapped"] == len(arrays["mined_teacher"])
    assert saved["mined_exact_share"] == round(saved["mined_exact"] / saved["mined_mapped"], 4)
    assert saved["mined_seconds"] >= 0 and saved["mined_cpu_seconds"] >= 0


def test_mined_units_add_the_positions_whose_teacher_token_maps_to_the_student_token(workflow_pair):
    student, teacher, records = workflow_pair
    t_ids, s_ids, _ = vocab.mined_map(student, teacher)
    to_student = dict(zip(t_ids.tolist(), s_ids.tolist()))
    added = 0
    for record in records:
        hard = encode_pair(record, student, teacher, 512, "minillm", "mined")["units"]
        e = encode_pair(record, student, teacher, 512, "minillm", "mined", to_student)
        assert set(hard) <= set(e["units"]) and e["units"][-1] == hard[-1]  # then eos <-> eos
        for (i,), (j,) in e["units"][:-1]:
            s_id, t_id = e["input_ids"][i + 1], e["teacher_input_ids"][j + 1]
            same = strip_markers(student.convert_ids_to_tokens(s_id)) == strip_markers(teacher.convert_ids_to_tokens(t_id))
            assert same or to_student[t_id] == s_id
            added += not same
    assert added > 0


def fusellm_target(teacher_logp: np.ndarray, to_student: dict[int, int], top_k: int) -> dict[int, float]:
    """FuseLLM's per-step target: the top-k teacher tokens in order, each mapped, a repeated or an
    unmapped one skipped, then the softmax of the kept logits scattered to student ids."""
    order = np.argsort(-teacher_logp)[:top_k]
    ids, logits = [], []
    for t in order.tolist():
        s = to_student.get(t)
        if s is not None and s not in ids:
            ids.append(s)
            logits.append(teacher_logp[t])
    if not ids:
        return {}
    e = np.exp(np.array(logits) - max(logits))
    return dict(zip(ids, e / e.sum()))


@pytest.mark.parametrize("top_k", [1, 3, 10, 12])
def test_the_loss_is_the_cross_entropy_to_fusellm_s_mapped_top_k(top_k):
    g = torch.Generator().manual_seed(top_k)
    v_s, v_t, n = 6, 12, 8
    student_logp = (torch.randn(n, v_s, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    teacher_logp = (torch.randn(n, v_t, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    teacher_logp[0, 11] = 5.0  # teacher id 11 has no student token (a special one): the top-1 row is empty
    to_student = {t: (3 * t) % 5 for t in range(11)}  # collisions: 0, 5, 10 -> 0; 1, 6 -> 3; ...
    got = MINED.obj(student_logp, teacher_logp, mined_teacher=torch.tensor(list(to_student)),
                    mined_student=torch.tensor(list(to_student.values())), top_k=top_k)
    for i in range(n):
        target = fusellm_target(teacher_logp[i].numpy(), to_student, top_k)
        expected = -sum(w * student_logp[i, s].item() for s, w in target.items())
        assert got[i].item() == pytest.approx(expected, abs=1e-12), (i, target)
    assert got[0].item() == 0 if top_k == 1 else got[0].item() > 0


def test_one_vocabulary_and_every_token_kept_is_the_cross_entropy_to_the_teacher():
    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(4, 9, generator=g, dtype=torch.float64).log_softmax(-1) for _ in range(2))
    same = torch.arange(9)
    got = MINED.obj(s, t, mined_teacher=same, mined_student=same, top_k=9)
    assert torch.allclose(got, -(t.exp() * s).sum(-1))
    s.requires_grad_(True)
    MINED.obj(s, t, mined_teacher=same, mined_student=same).sum().backward()
    assert s.grad.abs().sum() > 0


def test_a_mined_run_loads_the_map_and_an_artifact_without_it_is_refused(workflow_pair, tmp_path):
    from kdbench.crosstok import data
    from kdbench.errors import KDBenchError

    student, teacher, _ = workflow_pair
    teacher.save_pretrained(tmp_path / "teacher")
    arrays, report = vocab.build(student, teacher)
    vocab.save(tmp_path / "v.safetensors", arrays, report)
    run = {"method": {"divergence": {"path": str(REPO / "methods/mined.py"), "hp": {}}}, "pair_file": "pair.yaml",
           "teacher_tokenizer": str(tmp_path / "teacher"), "vocab_map": str(tmp_path / "v.safetensors")}
    cross = data.load(run, student, "cpu")
    assert cross.alignment == "mined" and sorted(cross.arrays) == ["mined_student", "mined_teacher"]
    assert cross.mined_map == dict(zip(arrays["mined_teacher"].tolist(), arrays["mined_student"].tolist()))
    old = {k: v for k, v in arrays.items() if not k.startswith("mined_")}  # an artifact built before the map
    vocab.save(tmp_path / "old.safetensors", old, report)
    with pytest.raises(KDBenchError, match=r"old.safetensors: no mined_teacher, mined_student array.*rule vocab_map"):
        data.load(run | {"vocab_map": str(tmp_path / "old.safetensors")}, student, "cpu")


@pytest.mark.parametrize("key, hp, kd_to_ce", [("xtoken", {}, True), ("xtoken", {"dynamic_loss_scaling": False}, False),
                                              ("dskd", {"modules_lr": 0.01}, False)])
def test_the_harness_keeps_its_own_hyper_parameters_from_the_method(workflow_pair, tmp_path, key, hp, kd_to_ce):
    """`dynamic_loss_scaling` and `modules_lr` reach the harness (CrossTok), not the method's function."""
    from kdbench.crosstok import data
    from kdbench.registry import HARNESS_HP, read_method_file

    student, teacher, _ = workflow_pair
    teacher.save_pretrained(tmp_path / "teacher")
    arrays, report = vocab.build(student, teacher)
    vocab.save(tmp_path / "v.safetensors", arrays, report)
    method = read_method_file(REPO / f"methods/{key}.py")
    run = {"method": {"divergence": {"path": str(method.path), "hp": method.bind(hp, "test")}}, "pair_file": "pair.yaml",
           "teacher_tokenizer": str(tmp_path / "teacher"), "vocab_map": str(tmp_path / "v.safetensors")}
    cross = data.load(run, student, "cpu")
    assert cross.kd_to_ce is kd_to_ce and not set(cross.hp) & set(HARNESS_HP)
    assert set(cross.hp) == set(method.params) - set(HARNESS_HP)
