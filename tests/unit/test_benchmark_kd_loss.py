"""The KD-loss benchmark's naive and chunked implementations compute the same loss and gradients."""

import importlib.util
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def kd_loss():
    """benchmarks/kd_loss.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("kdbench_benchmarks_kd_loss", REPO / "benchmarks" / "kd_loss.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_naive_and_chunked_agree_for_every_variant(kd_loss, plugins):
    kd_loss.check(plugins, kd_loss.Shape(tokens=24, vocab=300, hidden=16, chunk_size=10))


def test_check_catches_a_naive_path_that_ignores_the_token_policy(kd_loss, plugins, monkeypatch):
    naive = kd_loss.naive_loss
    monkeypatch.setattr(kd_loss, "naive_loss", lambda inputs, divergence, policy: naive(inputs, divergence, None))
    with pytest.raises(AssertionError, match=r"\+adakd"):
        kd_loss.check(plugins, kd_loss.Shape(tokens=24, vocab=300, hidden=16, chunk_size=10))
