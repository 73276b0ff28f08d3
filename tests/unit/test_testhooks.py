"""kdbench.testhooks: a no-op without KDBENCH_TEST_HOOKS, the hook file's function with it."""

import pytest

from kdbench import testhooks
from kdbench.errors import KDBenchError


@pytest.fixture(autouse=True)
def _fresh_cache():
    testhooks._load.cache_clear()
    yield
    testhooks._load.cache_clear()


def test_without_a_hook_file_a_point_returns_its_value(monkeypatch):
    monkeypatch.delenv(testhooks.ENV, raising=False)
    assert testhooks.point("demo.scaled", 3.0, step=1) == 3.0


def test_a_hook_file_replaces_the_value_by_name(monkeypatch, tmp_path):
    hooks = tmp_path / "hooks.py"
    hooks.write_text("def demo_scaled(loss, *, step):\n    return loss * 10 if step == 2 else loss\n")
    monkeypatch.setenv(testhooks.ENV, str(hooks))
    assert testhooks.point("demo.scaled", 3.0, step=2) == 30.0
    assert testhooks.point("demo.scaled", 3.0, step=1) == 3.0
    assert testhooks.point("evaluate.seed_written", "v", seed=0) == "v"  # no such hook: unchanged


def test_a_missing_hook_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(testhooks.ENV, str(tmp_path / "absent.py"))
    with pytest.raises(KDBenchError, match="absent.py: no such hook file"):
        testhooks.point("train.step", step=0)
