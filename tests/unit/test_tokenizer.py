"""The locally trained byte-level BPE tokenizer: round trip, size, special tokens, HF loading, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kdbench.datagen import generate
from kdbench.errors import KDBenchError
from kdbench.jsonl import read_jsonl
from kdbench.prompts import build_prompt
from kdbench.tokenizer import EOS_TOKEN, PAD_TOKEN, corpus_texts, main, train_tokenizer

VOCAB_SIZE = 1000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths = generate(tmp_path_factory.mktemp("data"), seed=0, n_train=1000, n_valid=50, n_eval=50)
    return [paths["train"], paths["sni"]]  # sni: list outputs, every reference is trained on


@pytest.fixture(scope="module")
def tok_dir(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus, out, vocab_size=VOCAB_SIZE)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)


def test_corpus_covers_every_reference(corpus: list[Path]) -> None:
    records = [r for path in corpus for r in read_jsonl(path)]
    n_texts = sum(len(r["output"]) if isinstance(r["output"], list) else 1 for r in records)
    texts = list(corpus_texts(corpus))
    assert len(texts) == n_texts
    sni = read_jsonl(corpus[1])[0]
    assert build_prompt(sni["instruction"], sni["input"]) + sni["output"][-1] in texts


def test_round_trip_on_the_corpus(tok, corpus: list[Path]) -> None:
    for text in corpus_texts(corpus):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    odd = "Ünïcode 🙂\n\n\ttabs  and   spaces ### Response:\n"
    assert tok.decode(tok(odd)["input_ids"]) == odd


def test_prompt_tokens_are_a_prefix_of_prompt_plus_response(tok, corpus: list[Path]) -> None:
    """So the response starts at a token boundary and label masking by prompt length is exact."""
    for record in read_jsonl(corpus[0])[:300]:
        prompt = build_prompt(record["instruction"], record["input"])
        prompt_ids = tok(prompt)["input_ids"]
        full_ids = tok(prompt + record["output"])["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(tok(prompt)["input_ids"][-4:]) == "### Response:\n"


def test_vocab_size_is_respected(tok, corpus: list[Path], tmp_path: Path) -> None:
    assert 500 < len(tok) <= VOCAB_SIZE
    train_tokenizer(corpus, tmp_path, vocab_size=300)
    assert len(AutoTokenizer.from_pretrained(tmp_path)) <= 300


def test_special_tokens_and_config(tok, tok_dir: Path) -> None:
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    assert tok.eos_token_id == tok.bos_token_id == tok.unk_token_id == eos_id == 0
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == 1
    assert tok.model_max_length == 1024
    assert tok("a cat")["input_ids"][0] != eos_id and tok("a cat")["input_ids"][-1] != eos_id  # nothing added
    assert tok(EOS_TOKEN)["input_ids"] == [eos_id]
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_left_padding_for_batched_generation(tok) -> None:
    tok.padding_side = "left"
    try:
        batch = tok(["Sort these words.", "cat"], padding=True)
    finally:
        tok.padding_side = "right"
    short_ids, short_mask = batch["input_ids"][1], batch["attention_mask"][1]
    n_pad = short_mask.count(0)
    assert n_pad > 0 and short_mask == [0] * n_pad + [1] * (len(short_mask) - n_pad)
    assert short_ids[:n_pad] == [tok.pad_token_id] * n_pad
    assert tok.decode(short_ids, skip_special_tokens=True) == "cat"


def test_response_words_are_mostly_single_tokens(tok, corpus: list[Path]) -> None:
    words = [w for r in read_jsonl(corpus[0]) for w in r["output"].split()]
    tokens_per_word = sum(len(tok(" " + w)["input_ids"]) for w in words) / len(words)
    assert tokens_per_word <= 2.0


def test_training_is_deterministic(corpus: list[Path], tok_dir: Path, tmp_path: Path) -> None:
    train_tokenizer(corpus, tmp_path, vocab_size=VOCAB_SIZE)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


def test_bad_arguments_are_user_errors(corpus: list[Path], tmp_path: Path) -> None:
    with pytest.raises(KDBenchError, match="vocab_size=100 is too small"):
        train_tokenizer(corpus, tmp_path, vocab_size=100)
    with pytest.raises(KDBenchError, match="no training data"):
        train_tokenizer([], tmp_path)
    with pytest.raises(KDBenchError, match="missing.jsonl: file not found"):
        train_tokenizer([tmp_path / "missing.jsonl"], tmp_path)


def test_cli(corpus: list[Path], tmp_path: Path) -> None:
    assert main(["--data", str(corpus[0]), str(corpus[1]), "--vocab-size", "400", "--out", str(tmp_path)]) == 0
    assert len(AutoTokenizer.from_pretrained(tmp_path)) <= 400


def test_unigram_kind_is_metaspace_with_byte_fallback(corpus: list[Path], tmp_path: Path) -> None:
    """The second generated kind (cross-tokenizer pairs): `▁` word markers where the BPE has `Ġ`, any
    text representable through `<0xNN>` byte tokens, and every corpus text decoded back as it was."""
    main(["--data", *map(str, corpus), "--vocab-size", "600", "--kind", "unigram", "--out", str(tmp_path)])
    uni = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert uni.is_fast and uni.eos_token == EOS_TOKEN and uni.pad_token == PAD_TOKEN
    assert any(t.startswith("▁") for t in uni.get_vocab()) and "<0xF0>" in uni.get_vocab()
    assert not any(t.startswith("Ġ") for t in uni.get_vocab())
    for text in list(corpus_texts(corpus))[:200]:
        assert uni.decode(uni(text)["input_ids"]) == text
    odd = "Ünïcode 🙂\n\ttabs  and   spaces"
    assert uni.decode(uni(odd)["input_ids"]) == odd
    with pytest.raises(KDBenchError, match="kind 'wordpiece'"):
        train_tokenizer(corpus, tmp_path / "x", kind="wordpiece")
