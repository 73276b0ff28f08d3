"""Cross-tokenizer pairs in the grid: a tokenizer per role, the plugin kind `crosstok`, and each
refusal before any job (a same-vocabulary method on a cross-tokenizer pair, a cross-tokenizer method
on a one-tokenizer pair, a missing tokenizer), with the pair file and key in the message."""

import shutil

import pytest
import yaml

from kdbench.config import Grid
from kdbench.errors import KDBenchError
from kdbench.registry import read_method_file

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"
PLUGIN = '''
import torch
from kdbench.registry import crosstok


@crosstok(alignment="{alignment}"{space})
def {key}(student_logp, teacher_logp, *, common_student, common_teacher, kd_ratio=0.5, beta: float = 1.0):
    """A test plugin."""
    return beta * (student_logp[:, common_student].exp() - teacher_logp[:, common_teacher].exp()).abs().sum(-1)
'''


def _plugin(folder, key, alignment="pairs", space=None):
    (folder / f"{key}.py").write_text(PLUGIN.format(key=key, alignment=alignment,
                                                    space=f", space={space!r}" if space else ""))


@pytest.fixture
def work(repo, tmp_path):
    """A workflow directory with two test cross-tokenizer plugins (ctk composes with a policy, ctu not)
    and the tiny GPT-2 pair, plus `cross`: that pair with a Unigram student."""
    for folder in ("config", "methods", "workflows"):
        shutil.copytree(repo / folder, tmp_path / folder)
    _plugin(tmp_path / "methods", "ctk", space="common")
    _plugin(tmp_path / "methods", "ctu", alignment="position")
    spec = yaml.safe_load((repo / "config/pairs" / f"{PAIR}.yaml").read_text())
    spec["student"]["tokenizer"] = {"generated": "unigram"}
    (tmp_path / "config/pairs/cross.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def _grid(repo, work, pairs, methods):
    cfg = yaml.safe_load((repo / "config/tiny.yaml").read_text())
    cfg["tables"] = [{"name": "main", "pairs": pairs, "methods": methods}]
    cfg["teacher_cache"] = False  # no cross-tokenizer run reads stored teacher states
    return Grid(cfg, "test.yaml", work)


def test_the_registry_reads_a_crosstok_plugin_without_running_it(work):
    m = read_method_file(work / "methods/ctk.py")
    assert m.kind == "crosstok" and m.params == {"beta": 1.0}  # artifact arrays and kd_ratio are not hyper-parameters
    assert m.crosstok == {"alignment": "pairs", "space": "common", "needs": ["common_student", "common_teacher"],
                          "kd_ratio": 0.5, "modules": None}
    (work / "methods/bad.py").write_text(PLUGIN.format(key="bad", alignment="diagonal", space=""))
    with pytest.raises(KDBenchError, match=r"bad.py: crosstok bad: @crosstok\(alignment=\.\.\., space=\.\.\.\) takes"):
        read_method_file(work / "methods/bad.py")


def test_a_cross_tokenizer_run_reads_both_tokenizers_and_the_vocab_map(repo, work):
    g = _grid(repo, work, ["cross"], ["sft", "ctk"])
    assert g.cross_tokenizer("cross")
    run = g.resolve_run("cross", "ctk", 1)
    assert run["tokenizer"] == "results/tokenizer-unigram" and run["teacher_tokenizer"] == "results/tokenizer"
    assert run["vocab_map"] == "results/vocab_maps/cross/vocab_map.safetensors"
    assert run["method"]["kd_ratio"] == 0.5 and run["method"]["divergence"]["hp"] == {"beta": 1.0}
    assert "vocab_map" not in g.resolve_run("cross", "sft", 1)  # no teacher, nothing to align
    teacher_sft = g.resolve_run("cross", "teacher", 0)
    assert teacher_sft["tokenizer"] == "results/tokenizer" and "vocab_map" not in teacher_sft
    assert "vocab_map" not in _grid(repo, work, [PAIR], ["fkl"]).resolve_run(PAIR, "fkl", 1)  # as before


def test_a_same_vocabulary_method_on_a_cross_tokenizer_pair_is_refused(repo, work):
    with pytest.raises(KDBenchError) as err:
        _grid(repo, work, ["cross"], ["ctk", "fkl"])
    message = str(err.value)
    assert message.startswith(str(work / "config/pairs/cross.yaml"))
    assert "different tokenizers (teacher: generated bpe, student: generated unigram)" in message
    assert "method 'fkl' cannot distil" in message and "would run: ctk, ctu, dskd, gold, mined, simple_ctkd, uld, xtoken, xtoken_hkl" in message


def test_a_cross_tokenizer_method_on_a_one_tokenizer_pair_is_refused(repo, work):
    with pytest.raises(KDBenchError, match=rf"^{work}/config/pairs/{PAIR}.yaml: teacher and student read one "
                                           r"tokenizer .*cross-tokenizer method 'ctk' has nothing to align"):
        _grid(repo, work, [PAIR], ["fkl", "ctk"])


def test_a_policy_composes_only_where_the_plugin_names_its_space(repo, work):
    g = _grid(repo, work, ["cross"], ["ctk+adakd", "simple_ctkd+adakd", "xtoken+adakd"])
    assert [p["key"] for p in g.method("simple_ctkd+adakd")["policies"]] == ["adakd"]
    with pytest.raises(KDBenchError, match=r"label 'ctu\+adakd': token policy 'adakd' cannot act on cross-tokenizer "
                                           r"method 'ctu': .*composes with: ctk, simple_ctkd, xtoken\."):
        _grid(repo, work, ["cross"], ["ctu+adakd"])
    for label in ("uld+adakd", "gold+adakd", "xtoken_hkl+adakd", "mined+adakd", "dskd+adakd"):
        with pytest.raises(KDBenchError, match=rf"label '{label.replace('+', '.')}': token policy 'adakd' cannot act"):
            _grid(repo, work, ["cross"], [label])
    with pytest.raises(KDBenchError, match=r"label 'simple_ctkd\+egad': token policy 'egad' takes the models' hidden "
                                           r"sizes for a feature loss"):
        _grid(repo, work, ["cross"], ["simple_ctkd+egad"])
    _plugin(work / "methods", "nospace", space="teacher")  # space teacher without the projection arrays
    with pytest.raises(KDBenchError, match=r"nospace.py: crosstok nospace: space='teacher' .*projection_indices"):
        _grid(repo, work, ["cross"], ["ctk"])


@pytest.mark.parametrize("role, tokenizer, init, needle", [
    ("student", {"path": "no/such/dir"}, None,
     r"key 'student.tokenizer.path': no tokenizer in no/such/dir \(a directory with tokenizer.json"),
    ("teacher", {"generated": "unigram"}, {"init": "pretrained", "path": "openai-community/gpt2"},
     r"key 'teacher.tokenizer': a pretrained model reads its own, saved beside its weights"),
    ("student", {"generated": "wordpiece"}, None, r"key 'student.tokenizer.generated': 'wordpiece' is not one of"),
    ("student", {"generated": "bpe", "path": "x"}, None, r"key 'student.tokenizer'"),
])
def test_a_bad_or_missing_tokenizer_names_the_pair_file_and_key(repo, work, role, tokenizer, init, needle):
    path = work / "config/pairs/cross.yaml"
    spec = yaml.safe_load(path.read_text())
    spec[role] = {**(init or spec[role]), "tokenizer": tokenizer}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(KDBenchError, match=rf"^{path}: {needle}"):
        _grid(repo, work, ["cross"], ["ctk"])


def test_a_tokenizer_directory_is_taken_as_it_is(repo, work, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text("{}")
    path = work / "config/pairs/cross.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["student"]["tokenizer"] = {"path": str(tmp_path / "tok")}
    path.write_text(yaml.safe_dump(spec))
    g = _grid(repo, work, ["cross"], ["ctk"])
    assert g.resolve_run("cross", "ctk", 1)["tokenizer"] == str(tmp_path / "tok")


def test_a_cross_tokenizer_plugins_range_checks_run_before_any_job(repo, work):
    from kdbench import preflight

    cfg = yaml.safe_load((repo / "config/tiny.yaml").read_text()) | {"teacher_cache": False}
    cfg["tables"] = [{"name": "main", "pairs": ["cross"], "methods": ["gold", "xtoken", "gold-b2"]}]
    cfg["method_defs"] = {"gold-b2": {"divergence": "gold", "hp": {"beta": 2.0}}}
    g = Grid(cfg, "test.yaml", work)
    with pytest.raises(KDBenchError, match=r"label 'gold-b2'.*gold: beta 2.0 must be in \[0, 1\]"):
        preflight.check(preflight.request(g))
    cfg["tables"][0]["methods"] = ["dskd-t0"]
    cfg["method_defs"] = {"dskd-t0": {"divergence": "dskd", "hp": {"temperature": 0}}}
    with pytest.raises(KDBenchError, match=r"label 'dskd-t0'.*dskd: temperature = 0 must be > 0"):  # on toy sequences
        preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))
    for lr in (0, -1e-3, "fast"):  # the projectors' learning rate, which the harness reads, not the function
        cfg["method_defs"] = {"dskd-t0": {"divergence": "dskd", "hp": {"modules_lr": lr}}}
        with pytest.raises(KDBenchError, match=rf"label 'dskd-t0'.*modules_lr = {lr!r} must be a number > 0"):
            preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))
    cfg["method_defs"] = {"dskd-t0": {"divergence": "dskd", "hp": {"modules_lr": None}}}  # the run's rate
    preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))
    cfg["method_defs"] = {"dskd-t0": {"divergence": "xtoken", "hp": {"dynamic_loss_scaling": "yes"}}}
    with pytest.raises(KDBenchError, match=r"label 'dskd-t0'.*dynamic_loss_scaling = 'yes' must be true or false"):
        preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))
    cfg["method_defs"] = {}
    cfg["tables"][0]["methods"] = ["gold", "xtoken", "xtoken_hkl", "uld", "mined", "dskd", "simple_ctkd+adakd"]
    preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))  # the defaults pass


def test_a_policy_that_needs_labels_is_refused_over_a_cross_tokenizer_method(repo, work):
    from kdbench import preflight

    cfg = yaml.safe_load((repo / "config/tiny.yaml").read_text()) | {"teacher_cache": False}
    cfg["tables"] = [{"name": "main", "pairs": ["cross"], "methods": ["simple_ctkd+adakd-ce"]}]
    cfg["policy_defs"] = {"adakd-ce": {"policy": "adakd", "hp": {"indicator": "ce"}}}
    with pytest.raises(KDBenchError, match=r"label 'simple_ctkd\+adakd-ce': over a cross-tokenizer method the token "
                                           r"policy gets no labels .* refuses: .*"):
        preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))


def _loaded(work, teacher: dict, student: dict, **extra) -> None:
    spec = yaml.safe_load((work / "config/pairs/cross.yaml").read_text())
    spec.update(teacher=teacher, student=student, **extra)
    (work / "config/pairs/cross.yaml").write_text(yaml.safe_dump(spec))


def test_two_loaded_models_are_declared_cross_tokenizer(repo, work):
    hub = ({"init": "pretrained", "path": "org/teacher"}, {"init": "pretrained", "path": "org/student"})
    _loaded(work, *hub, cross_tokenizer=True)
    g = _grid(repo, work, ["cross"], ["simple_ctkd"])
    run = g.resolve_run("cross", "simple_ctkd", 1)
    assert (run["tokenizer"], run["teacher_tokenizer"]) == ("results/models/cross/student-init",
                                                           "results/models/cross/teacher-init")
    with pytest.raises(KDBenchError, match=r"different tokenizers \(teacher: its model's own, student: its model's "
                                           r"own\), so method 'fkl' cannot distil"):
        _grid(repo, work, ["cross"], ["fkl"])
    _loaded(work, *hub, cross_tokenizer=False)  # the default: one family's models share one tokenizer
    assert not _grid(repo, work, ["cross"], ["fkl"]).cross_tokenizer("cross")
    _loaded(work, hub[0], {"init": "teacher", "layers": [0]}, cross_tokenizer=True)
    with pytest.raises(KDBenchError, match=r"cross.yaml: key 'cross_tokenizer': it declares two loaded models"):
        _grid(repo, work, ["cross"], ["simple_ctkd"])


def test_preflight_holds_cross_tokenizer_to_the_files(repo, work, tmp_path):
    from transformers import AutoTokenizer

    from kdbench import preflight
    from kdbench.datagen import generate
    from kdbench.models import build_random
    from kdbench.tokenizer import train_tokenizer

    data = generate(tmp_path / "data", seed=0, n_train=40, n_valid=5, n_eval=5)["train"]
    dirs = {}
    for role, kind in (("teacher", "bpe"), ("student", "unigram")):
        train_tokenizer([data], tmp_path / role, vocab_size=400, kind=kind)
        tok = AutoTokenizer.from_pretrained(tmp_path / role)
        build_random("gpt2", {"n_layer": 1, "n_embd": 16, "n_head": 2}, tok, 0).save_pretrained(tmp_path / role)
        dirs[role] = {"init": "pretrained", "path": str(tmp_path / role)}
    cfg = yaml.safe_load((repo / "config/tiny.yaml").read_text()) | {"teacher_cache": False}
    cfg["tables"] = [{"name": "main", "pairs": ["cross"], "methods": ["simple_ctkd"]}]
    _loaded(work, dirs["teacher"], dirs["student"], cross_tokenizer=True)
    preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))  # two tokenizers, as declared
    _loaded(work, dirs["teacher"], dirs["teacher"], cross_tokenizer=True)
    with pytest.raises(KDBenchError, match=r"key 'cross_tokenizer': true, but the teacher and the student read one"):
        preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))
    cfg["tables"][0]["methods"] = ["fkl"]
    _loaded(work, dirs["teacher"], dirs["student"], cross_tokenizer=False)
    with pytest.raises(KDBenchError, match=r"tokenizers differ: .* or declare the pair cross_tokenizer: true"):
        preflight.check(preflight.request(Grid(cfg, "test.yaml", work)))


def test_xtoken_scales_its_kl_to_the_cross_entropy_as_nemo_rl_and_xtoken_fixed_does_not(repo, work):
    """NeMo-RL's recipe (dynamic_loss_scaling true) is the default; its fixed 1·KL + 0.1·CE is a label."""
    cfg = yaml.safe_load((repo / "config/tiny.yaml").read_text()) | {"teacher_cache": False}
    cfg["method_defs"] = yaml.safe_load((repo / "config/variants.yaml").read_text())["method_defs"]  # as shipped
    cfg["tables"] = [{"name": "main", "pairs": ["cross"], "methods": ["xtoken", "xtoken-fixed", "xtoken_hkl",
                                                                    "xtoken_hkl-fixed"]}]
    g = Grid(cfg, "test.yaml", work)
    for key in ("xtoken", "xtoken_hkl"):
        default, fixed = g.labels.method(key), g.labels.method(f"{key}-fixed")
        assert default["kd_ratio"] == 0.5 and default["divergence"]["hp"]["dynamic_loss_scaling"] is True
        assert fixed["kd_ratio"] == pytest.approx(1 / 1.1) and fixed["divergence"]["hp"]["dynamic_loss_scaling"] is False
