"""The plugin registry: discovery by path, one method per file, hyper-parameter binding."""

from pathlib import Path

import pytest

from kdbench.errors import KDBenchError
from kdbench.registry import (ARTIFACT_ARRAYS, CROSSTOK_KD_RATIO, HARNESS_ARGS, SEQUENCE_INPUTS, discover, load_method_file,
                              lookup)

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
    ("def broken(:\n", "not valid Python, line 1"),
    (PLUGIN.format(name="m").replace("0.5", "ALPHA"), "default of hyper-parameter 'alpha' .* is not a literal"),
])
def test_malformed_plugin_files_name_themselves(tmp_path: Path, body, needle):
    (tmp_path / "bad.py").write_text(body)
    with pytest.raises(KDBenchError, match=needle) as err:
        discover(tmp_path)
    assert "bad.py" in str(err.value)


def test_discovery_reads_the_files_and_imports_a_plugin_only_when_its_object_is_asked_for(tmp_path: Path):
    """The DAG binds labels without running plugin files (no torch); the job, or the pre-flight
    check, imports the file, and an import error names it."""
    (tmp_path / "bad.py").write_text("import nonexistent_module_xyz\n" + PLUGIN.format(name="bad"))
    bad = discover(tmp_path)["bad"]
    assert bad.bind({}, "here") == {"alpha": 0.5}
    with pytest.raises(KDBenchError, match=r"bad.py failed to import: ModuleNotFoundError"):
        bad.obj
    with pytest.raises(KDBenchError, match=r"bad.py failed to import"):
        load_method_file(tmp_path / "bad.py")
    (tmp_path / "bad.py").write_text(PLUGIN.format(name="bad"))
    assert callable(load_method_file(tmp_path / "bad.py").obj)


@pytest.mark.parametrize("signature, needle", [
    ("s, t, *, alpha: float = 0.5", r"positional parameters must be exactly \(student_logp, teacher_logp\), got \(s, t\)"),
    ("student_logp, teacher_logp, alpha=0.5", r"got \(student_logp, teacher_logp, alpha\); .*keyword-only, after `\*`"),
    ("student_logp, teacher_logp, *args", r"got \(student_logp, teacher_logp, \*args\)"),
])
def test_a_divergence_takes_the_two_inputs_then_keyword_only_hyper_parameters(tmp_path: Path, signature, needle):
    (tmp_path / "m.py").write_text(PLUGIN.replace("student_logp, teacher_logp, *, alpha: float = 0.5", signature)
                                   .format(name="m"))
    with pytest.raises(KDBenchError, match=needle) as err:
        discover(tmp_path)
    assert "m.py: divergence m" in str(err.value)


def test_a_hyper_parameter_without_default_must_be_given(tmp_path: Path):
    (tmp_path / "m.py").write_text(PLUGIN.replace("alpha: float = 0.5", "alpha: float").format(name="m"))
    m = discover(tmp_path)["m"]
    assert m.bind({"alpha": 0.2}, "here") == {"alpha": 0.2} and m.defaults == {}
    with pytest.raises(KDBenchError, match=r"here: divergence 'm' \(.*m.py\) needs hyper-parameter\(s\) alpha"):
        m.bind({}, "here")


def test_the_signature_read_from_the_file_is_the_imported_ones(plugins):
    """What discovery reads without importing (defaults, base_divergence) is what the import gives."""
    import inspect

    for method in plugins.values():
        target = method.obj.__init__ if inspect.isclass(method.obj) else method.obj
        imported = {n: p.default for n, p in inspect.signature(target).parameters.items()
                    if p.kind == p.KEYWORD_ONLY and n not in HARNESS_ARGS}
        if method.kind == "crosstok":  # the artifact arrays it takes and its kd_ratio are not hyper-parameters
            assert method.crosstok["needs"] == [n for n in ARTIFACT_ARRAYS if n in imported], method.key
            assert method.crosstok["kd_ratio"] == imported.pop(CROSSTOK_KD_RATIO), method.key
            assert {k: method.crosstok[k] for k in ("alignment", "space", "modules")} == method.obj.crosstok, method.key
            imported = {n: v for n, v in imported.items() if n not in ARTIFACT_ARRAYS + SEQUENCE_INPUTS}
        assert method.params == imported, method.key
        assert method.base_divergence == getattr(method.obj, "base_divergence", None)
    assert plugins["egad"].base_divergence == "fkl"
    assert plugins["simple_ctkd"].crosstok["needs"] == ["common_student", "common_teacher"]


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


def test_a_policy_label_alone_runs_over_its_base_divergence(repo, tmp_path: Path):
    """A token policy's optional `base_divergence` (methods/_template_policy.py shows it) is the
    divergence of the label `<key>` alone; `<divergence>+<key>` names its own."""
    import shutil

    from kdbench.labels import Labels

    shutil.copy(repo / "methods/rkl.py", tmp_path)
    shutil.copy(repo / "methods/fkl.py", tmp_path)
    template = (repo / "methods/_template_policy.py").read_text()
    (tmp_path / "mine.py").write_text(template.replace('base_divergence = "fkl"', 'base_divergence = "rkl"'))
    labels = Labels({}, {}, discover(tmp_path), "cfg")
    alone, over_fkl = labels.method("mine"), labels.method("fkl+mine")
    assert alone["divergence"]["key"] == "rkl" and [p["key"] for p in alone["policies"]] == ["mine"]
    assert over_fkl["divergence"]["key"] == "fkl"
    (tmp_path / "mine.py").write_text(template.replace('    base_divergence = "fkl"', "    pass"))
    assert Labels({}, {}, discover(tmp_path), "cfg").method("mine")["divergence"]["key"] == "fkl"
