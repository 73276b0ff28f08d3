"""The plugin registry: discovery by path, one method per file, hyper-parameter binding."""

from pathlib import Path

import pytest

from kdbench.errors import KDBenchError
from kdbench.registry import discover, lookup

PLUGIN = '''
import torch
from kdbench.registry import divergence

@divergence
def {name}(student_logp, teacher_logp, *, alpha: float = 0.5):
    """doc"""
    return alpha * (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
'''


def test_discovers_the_shipped_methods_by_kind(plugins):
    assert plugins["fkl"].kind == "divergence"
    assert plugins["adakd"].kind == "token_policy"
    assert not any(k.startswith("_") for k in plugins)
    assert all(len(m.version) == 12 for m in plugins.values())


def test_new_file_is_a_new_method_keyed_by_its_stem(tmp_path: Path):
    (tmp_path / "halfkl.py").write_text(PLUGIN.format(name="anything"))
    (tmp_path / "_template.py").write_text("raise RuntimeError('templates are not imported')")
    methods = discover(tmp_path)
    assert list(methods) == ["halfkl"]
    assert methods["halfkl"].defaults == {"alpha": 0.5}


def test_version_changes_when_the_file_changes(tmp_path: Path):
    path = tmp_path / "m.py"
    path.write_text(PLUGIN.format(name="m"))
    before = discover(tmp_path)["m"].version
    path.write_text(PLUGIN.format(name="m").replace("0.5", "0.25"))
    assert discover(tmp_path)["m"].version != before


@pytest.mark.parametrize("body, needle", [
    ("x = 1\n", "found 0"),
    (PLUGIN.format(name="a") + PLUGIN.format(name="b"), "found 2"),
    ("import nonexistent_module_xyz\n", "failed to import"),
])
def test_malformed_plugin_files_name_themselves(tmp_path: Path, body, needle):
    (tmp_path / "bad.py").write_text(body)
    with pytest.raises(KDBenchError, match=needle) as err:
        discover(tmp_path)
    assert "bad.py" in str(err.value)


def test_bind_fills_defaults_and_rejects_unknown_names(plugins, tmp_path: Path):
    (tmp_path / "m.py").write_text(PLUGIN.format(name="m"))
    m = discover(tmp_path)["m"]
    assert m.bind({}, "here") == {"alpha": 0.5}
    assert m.bind({"alpha": 0.1}, "here") == {"alpha": 0.1}
    with pytest.raises(KDBenchError, match=r"here: unknown hyper-parameter\(s\) alpah .*accepts: alpha"):
        m.bind({"alpah": 0.1}, "here")
    adakd = plugins["adakd"]
    assert "total_steps" not in adakd.defaults  # supplied by the harness, not by config
    assert adakd.bind({"c": 1.0}, "x")["c"] == 1.0


def test_lookup_lists_the_known_methods_of_that_kind(plugins):
    with pytest.raises(KDBenchError, match=r"unknown divergence 'fkk'\. Known: .*\bfkl\b"):
        lookup(plugins, "fkk", "divergence", "cfg")
    with pytest.raises(KDBenchError, match="unknown token policy 'fkl'. Known: adakd"):
        lookup(plugins, "fkl", "token_policy", "cfg")
