"""The per-pair vocabulary artifact (kdbench.crosstok.vocab) against independent computations: token
bytes reproduce the text, the common sub-vocabulary equals the one found with each tokenizer's own
decoder, the X-Token projection equals a dense numpy build, the exact maps equal hand-worked
cases, and `kdbench vocab-map` writes the file and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kdbench.cli import main as cli
from kdbench.crosstok import vocab
from tests.unit.test_crosstok_align import byte_level_bpe, smollm2, texts, unigram_metaspace


def byte_fallback_unigram() -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece Unigram with byte fallback (`<0xNN>` for every byte) and a few words."""
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    pieces += [(w, -2.0) for w in ["▁the", "▁cat", "▁sat", "▁on", "▁", "t", "h", "e", "c", "a", "s", "o", "n", "▁mat"]]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TOKENIZERS = {"bpe": byte_level_bpe, "unigram": unigram_metaspace, "fallback": byte_fallback_unigram,
              "smollm2": smollm2}


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_token_bytes_concatenate_to_the_text(name):
    """Whatever the convention (`Ġ`, `▁`, `<0xNN>`), the normalised bytes of a tokenization are the text's
    bytes (a SentencePiece tokenizer adds one leading space)."""
    tokenizer = TOKENIZERS[name]()
    table = vocab.token_bytes(tokenizer)
    unseen = ["the cat sat on the mat: 42 € ünïcödé\n"] if name != "unigram" else []  # it has no byte fallback
    for text in texts() + unseen:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        joined = b"".join(table[i] for i in ids)
        assert joined in (text.encode(), b" " + text.encode()), (name, text)
    assert not vocab.special_ids(tokenizer) & table.keys()


def decoded_text(tokenizer, token: str) -> str:
    """A token's text by the tokenizer's own decoder, after a dummy first token (which takes the
    leading-space stripping of SentencePiece decoders)."""
    return tokenizer.backend_tokenizer.decoder.decode(["x", token])[1:]


@pytest.mark.parametrize("pair", [("unigram", "bpe"), ("fallback", "bpe"), ("unigram", "smollm2")])
def test_common_vocab_equals_matching_by_each_tokenizer_s_own_decoder(pair):
    student, teacher = (TOKENIZERS[n]() for n in pair)

    def by_text(tokenizer):
        out = {}
        for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            text = decoded_text(tokenizer, token)
            if i not in vocab.special_ids(tokenizer) and "\ufffd" not in text:
                out.setdefault(text, i)
        return out

    s, t = by_text(student), by_text(teacher)
    expected = sorted((s[x], t[x]) for x in s.keys() & t.keys())
    got = list(zip(*(a.tolist() for a in vocab.common_vocab(student, teacher))))
    s_bytes, t_bytes = vocab.token_bytes(student), vocab.token_bytes(teacher)
    extra = set(got) - set(expected)  # byte-for-byte matches a decoder cannot show: partial UTF-8 bytes
    assert set(expected) <= set(got) and all(not _utf8(s_bytes[a]) and s_bytes[a] == t_bytes[b] for a, b in extra)
    assert len(expected) > 20
    if pair[0] == "fallback":
        assert extra  # <0xC3> and byte-level Ã are the same byte


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def dense_projection(student, teacher, top_k: int, runtime_top_k: int):
    """The X-Token projection as a dense (V_s, V_t) matrix, texts from each tokenizer's own decoder."""
    m = np.zeros((len(student), len(teacher)), dtype=np.float64)
    for source, target, forward in ((student, teacher, True), (teacher, student, False)):
        for token, i in sorted(source.get_vocab().items(), key=lambda kv: kv[1]):
            text = decoded_text(source, token)
            if i in vocab.special_ids(source) or "\ufffd" in text:
                continue
            pieces = target(text, add_special_tokens=False)["input_ids"][:vocab.TOKENS_TO_CUT]
            if not pieces or set(pieces) & vocab.special_ids(target):
                continue
            w = np.array([0.9 * 0.1**k for k in range(len(pieces))])
            for piece, weight in zip(pieces, w / w.sum()):
                m[(i, piece) if forward else (piece, i)] += weight

    def cut(row, k):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        out = np.zeros_like(row)
        out[order] = row[order]
        out[out <= 0] = 0
        return out / out.sum() if out.sum() else out

    m = np.array([cut(cut(row / row.sum(), top_k), runtime_top_k) if row.sum() else row for row in m])
    for s, t in zip(*vocab.common_vocab(student, teacher)):
        m[s] = 0
        m[s, t] = 1
    return m


def test_xtoken_projection_equals_a_dense_build():
    student, teacher = unigram_metaspace(), byte_level_bpe()
    common = vocab.common_vocab(student, teacher)
    indices, weights = vocab.xtoken_projection(student, teacher, common, top_k=8, runtime_top_k=3)
    got = np.zeros((len(student), len(teacher)))
    for s in range(len(student)):
        for t, w in zip(indices[s], weights[s]):
            if t >= 0:
                got[s, t] = w
    expected = dense_projection(student, teacher, top_k=8, runtime_top_k=3)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    rows = got.sum(1)
    assert np.allclose(rows[rows > 0], 1) and (got > 0).sum(1).max() == 3
    assert (weights[:, :-1] >= weights[:, 1:]).all()  # sorted, largest first


def test_exact_maps_strict_and_relaxed_on_a_hand_worked_projection():
    """Rows: 0 pinned to 5; 1 pinned to 5 too (collision: lowest student wins in both modes); 2 has
    weight 1.0 but a second entry (strict: no); 3 has top 0.7 (relaxed only); 4 has 0.9 on teacher 6
    and beats row 3's 0.7 there (relaxed); 5 has 0.5 (no)."""
    indices = np.array([[5, -1], [5, -1], [7, 8], [6, 2], [6, 1], [3, 4]])
    weights = np.array([[1.0, 0], [1.0, 0], [1.0, 1e-9], [0.7, 0.3], [0.9, 0.1], [0.5, 0.5]], dtype=np.float32)
    strict = vocab.exact_map(indices, weights, relaxed=False)
    relaxed = vocab.exact_map(indices, weights, relaxed=True)
    assert [a.tolist() for a in strict] == [[0], [5]]
    assert [a.tolist() for a in relaxed] == [[0, 2, 4], [5, 7, 6]]


def test_vocab_map_command_writes_the_artifact_and_its_report(tmp_path, capsys):
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    unigram_metaspace().save_pretrained(student_dir)
    byte_level_bpe().save_pretrained(teacher_dir)
    out = tmp_path / "map" / "vocab_map.safetensors"
    assert cli(["vocab-map", "--student", str(student_dir), "--teacher", str(teacher_dir), "--out", str(out)]) == 0
    arrays, report = vocab.load(out), json.loads(out.with_suffix(".json").read_text())
    common = vocab.common_vocab(unigram_metaspace(), byte_level_bpe())
    np.testing.assert_array_equal(arrays["common_student"], common[0])
    assert arrays["projection_indices"].shape == (len(unigram_metaspace()), vocab.RUNTIME_TOP_K)
    assert report["common"] == len(common[0]) and report["overlap_ratio"] == round(len(common[0]) / 300, 4)
    assert report["build_seconds"] >= 0 and report["student_vocab"] == 300
    capsys.readouterr()
    assert cli(["vocab-map", "--student", str(tmp_path / "nope"), "--teacher", str(teacher_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--student" in err and "nope" in err and "no tokenizer there" in err


def test_a_tokenizer_against_itself_shares_every_token_but_the_special_ones():
    tokenizer = byte_level_bpe()
    common_s, common_t = vocab.common_vocab(tokenizer, tokenizer)
    text_ids = sorted(set(range(len(tokenizer))) - vocab.special_ids(tokenizer))
    assert common_s.tolist() == common_t.tolist() == text_ids
    indices, weights = vocab.xtoken_projection(tokenizer, tokenizer, (common_s, common_t))
    assert indices[text_ids, 0].tolist() == text_ids and (weights[text_ids, 0] == 1).all()
    assert (indices[:, 1:] == -1).all()
