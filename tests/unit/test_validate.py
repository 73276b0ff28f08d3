"""kdbench.validate's checks of the files a pair points at, called directly (the bad-input catalogue,
tests/workflow/test_bad_inputs.py, runs them through Snakemake)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from kdbench.errors import KDBenchError
from kdbench.validate import check_gguf


def _fake_package(root: Path, first_bytes: bytes) -> dict:
    """An installed distribution `kdbench-fake-gguf` (a dist-info folder on sys.path) shipping one
    .gguf file that starts with `first_bytes`; the `init: gguf` spec that names it."""
    (root / "kdbench_fake_gguf").mkdir()
    (root / "kdbench_fake_gguf/model.gguf").write_bytes(first_bytes + b"\0" * 60)
    info = root / "kdbench_fake_gguf-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-fake-gguf\nVersion: 0.1\n")
    (info / "RECORD").write_text("kdbench_fake_gguf/model.gguf,,\nkdbench_fake_gguf-0.1.dist-info/METADATA,,\n")
    return {"init": "gguf", "gguf": {"package": "kdbench-fake-gguf", "file": "kdbench_fake_gguf/model.gguf"}}


def test_a_packaged_gguf_that_is_not_gguf_is_refused_naming_the_package(tmp_path, monkeypatch):
    spec = _fake_package(tmp_path, b"PK\x03\x04")  # a zip, say, renamed
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.metadata.version("kdbench-fake-gguf") == "0.1"
    with pytest.raises(KDBenchError) as err:
        check_gguf(spec, "teacher", "config/pairs/p.yaml")
    assert str(err.value).startswith("config/pairs/p.yaml: key 'teacher.gguf.file' (in package kdbench-fake-gguf): ")
    assert "kdbench_fake_gguf/model.gguf is not a GGUF file (it starts with b'PK\\x03\\x04'" in str(err.value)


def test_a_packaged_gguf_with_the_magic_passes(tmp_path, monkeypatch):
    spec = _fake_package(tmp_path, b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_gguf(spec, "student", "config/pairs/p.yaml")


def test_a_local_gguf_is_checked_as_before(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a gguf")
    with pytest.raises(KDBenchError, match=r"p.yaml: key 'student.gguf.file': .*m.gguf is not a GGUF file"):
        check_gguf({"init": "gguf", "gguf": {"file": str(fake)}}, "student", "p.yaml")


def test_the_generated_tokenizer_s_template_bound_holds_for_any_training_data(tmp_path):
    """The DAG-time bound (pre-tokenizer pieces, no tokenizer read) is at most what a generated
    tokenizer gives the template, whatever its vocabulary; the job-start count is that tokenizer's."""
    from transformers import AutoTokenizer

    from kdbench.datagen import generate
    from kdbench.prompts import template_tokens
    from kdbench.tokenizer import train_tokenizer
    from kdbench.validate import generated_template_tokens

    train = generate(tmp_path / "data", seed=0, n_train=200, n_valid=5, n_eval=5)["train"]
    assert generated_template_tokens("bpe") == 29  # byte-level pieces: words, spaces, punctuation
    assert generated_template_tokens("unigram") == 18  # Metaspace pieces: words with their `▁`
    for kind in ("bpe", "unigram"):
        bound = generated_template_tokens(kind)
        for vocab in (300, 1000):
            train_tokenizer([train], tmp_path / f"{kind}{vocab}", vocab_size=vocab, kind=kind)
            counted = template_tokens(AutoTokenizer.from_pretrained(tmp_path / f"{kind}{vocab}"), "minillm")
            assert bound <= counted, (kind, vocab, counted)


def test_a_max_length_without_room_for_a_response_is_refused_naming_the_minimum():
    from kdbench.prompts import check_prompt_room

    check_prompt_room(29, {"training.max_length": 30}, "p.yaml", "the generated tokenizer")  # one response token
    with pytest.raises(KDBenchError) as err:
        check_prompt_room(29, {"training.max_length": 128, "teacher.sft.max_length": 29}, "p.yaml", "the tokenizer")
    assert str(err.value).startswith("p.yaml: key 'teacher.sft.max_length': 29 leaves no room for a response: the "
                                     "prompt template alone (an empty instruction) is 29 tokens of the tokenizer")
    assert "give at least 30" in str(err.value)


def test_each_role_s_max_length_is_named_where_it_is_given():
    from kdbench.validate import max_lengths

    pair = {"training": {"steps": 1, "micro_batch_size": 1, "lr": 1e-3, "max_length": 64, "deepspeed": "ds.json"},
            "teacher": {"init": "random", "sft": {"steps": 2}}, "student": {"init": "random"}}
    assert max_lengths(pair, "student") == {"training.max_length": 64}
    assert max_lengths(pair, "teacher") == {"training.max_length": 64}  # inherited: the key to change is training's
    pair["teacher"]["sft"]["max_length"] = 32
    assert max_lengths(pair, "teacher") == {"teacher.sft.max_length": 32}
    del pair["teacher"]["sft"]
    assert max_lengths(pair, "teacher") == {}  # no SFT run of the teacher
