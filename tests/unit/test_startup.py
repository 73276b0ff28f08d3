"""What a job loads before its work: torch's extension folder (DeepSpeed's JIT-built CPU op) is the
environment's own, so two environments of one user do not rebuild it in turn."""

import os
import sys

import pytest

from kdbench import cli


def test_each_environment_builds_its_extensions_in_its_own_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    with pytest.raises(SystemExit):  # `kdbench data --help`: the variable is set before the command's module runs
        cli.main(["data", "--help"])
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(cli.extensions_dir())
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env-a"))
    (tmp_path / "env-a").mkdir()
    assert cli.extensions_dir() == tmp_path / "env-a" / "torch_extensions"  # writable: inside the environment
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only environment: one folder per prefix
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read_only_a = cli.extensions_dir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env-b"))
    assert read_only_a.parent == cli.extensions_dir().parent == tmp_path / "cache" / "kdbench"
    assert read_only_a != cli.extensions_dir()


def test_a_users_extensions_folder_is_kept(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    with pytest.raises(SystemExit):
        cli.main(["data", "--help"])
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")
