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
