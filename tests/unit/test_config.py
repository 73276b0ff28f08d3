"""Grid configs fail before any job, with a message naming the file, the key and the fix."""

import copy

import pytest
import yaml

from kdbench import preflight
from kdbench.config import Grid, load_grid
from kdbench.errors import KDBenchError
from kdbench.spec import SETS

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"


@pytest.fixture
def tiny(repo):
    """The default config as one table given by the top-level axes (tables: tests/unit/test_grid_tables.py)."""
    cfg = yaml.safe_load((repo / "config" / "tiny.yaml").read_text())
    del cfg["tables"]
    return cfg | {"pairs": [PAIR], "methods": ["sft", "fkl", "fkl+adakd"], "seeds": [1],
                  "sets": ["dolly", "selfinst", "vicuna", "sni", "unni"]}


def grid(cfg, repo):
    return Grid(cfg, "test.yaml", repo)


def checked(cfg, workdir):
    """The grid with kdbench.preflight's checks run as well (here in-process), as before a first job."""
    g = Grid(cfg, "test.yaml", workdir)
    preflight.check(preflight.request(g))
    return g


def test_the_default_grid_is_valid(repo):
    g = load_grid(repo / "config" / "tiny.yaml", workdir=repo)
    assert g.runs(table="main") == [(PAIR, m, 1) for m in ("sft", "fkl", "fkl+adakd")]
    design = [f"{b}{p}" for b in ("fkl", "rkl", "skl", "akl", "egad") for p in ("", "+adakd")]
    assert [m for _, m, _ in g.runs(table="design", pair=PAIR)] == design
    assert len(g.runs()) == 1 + 3 * len(design)  # sft; fkl and fkl+adakd of main are design cells too


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(methds=["fkl"]), r"key '\(top level\)': Additional properties are not allowed \('methds'"),
    (lambda c: c["evaluation"].update(max_new_token=8), "key 'evaluation'.*max_new_token"),
    (lambda c: c.update(methods=["fkl", "fkk"]), "label 'fkk': unknown method 'fkk'. Known: .*fkl.*sft"),
    (lambda c: c.update(methods=["fkl+adakdd"]), "unknown token policy 'adakdd'. Known: adakd"),
    (lambda c: c.update(methods=["sft+adakd"]), "a token policy needs a distillation loss"),
    (lambda c: c.update(methods=["fkl", "fkl"]), "key 'methods': 'fkl' is listed twice"),
    (lambda c: c.update(methods=["../fkl"]), "key 'methods.0': '../fkl' does not match"),
    (lambda c: c.update(methods=["fkl;rm"]), "key 'methods.0'"),
    (lambda c: c.update(methods=["teacher"]), "reserved for the teacher"),
    (lambda c: c.update(pairs=["nope_from_nowhere"]), "unknown pair 'nope_from_nowhere'.*Known pairs: .*gpt2-tiny"),
    (lambda c: c.update(seeds=["one"]), "key 'seeds.0': 'one' is not of type 'integer'"),
    (lambda c: c.update(sets=["dolly", "mmlu"]), "key 'sets.1'"),
    (lambda c: c["evaluation"].update(max_new_tokens=-3), "key 'evaluation.max_new_tokens': -3 is less than"),
    (lambda c: c.update(method_defs={"skl05": {"divergence": "fkl", "hp": {"alpha": 0.5}}}, methods=["skl05"]),
     r"unknown hyper-parameter\(s\) alpha for divergence 'fkl'"),
    (lambda c: c.update(policy_defs={"a2": {"policy": "adakd", "hp": {"gamma": 1}}}, methods=["fkl+a2"]),
     r"unknown hyper-parameter\(s\) gamma for token_policy 'adakd'.*accepts: beta, eps"),
    (lambda c: c.update(method_defs={"gkd": {"divergence": "js", "source": "on_policy_mixed",
                                             "source_hp": {"prob": 0.5}}}, methods=["gkd"]),
     "unknown source_hp prob for data source 'on_policy_mixed'. It accepts: p"),
    (lambda c: c.update(method_defs={"d": {"divergence": "srkl", "init_from": "sftt"}}, methods=["d"]),
     "label 'sftt': unknown method 'sftt'"),
    (lambda c: c.update(methods=["sft"]),  # config/tiny.yaml sets teacher_cache: true
     r"key 'teacher_cache': true, but no run of the grid can read stored teacher states \(sft \(on .*\): it trains "
     "without a teacher"),
])
def test_bad_configs_name_the_problem(tiny, repo, edit, needle):
    cfg = copy.deepcopy(tiny)
    edit(cfg)
    with pytest.raises(KDBenchError, match=needle) as err:
        grid(cfg, repo)
    assert str(err.value).startswith("test.yaml")


def test_a_policys_own_range_checks_run_before_any_job(tiny, repo):
    """AdaKD's r_min range is its constructor's: the pre-flight check builds each bound policy."""
    cfg = {**tiny, "policy_defs": {"a2": {"policy": "adakd", "hp": {"r_min": 1.5}}}, "methods": ["fkl+a2"]}
    grid(cfg, repo)  # the DAG binds the names without importing the plugin
    with pytest.raises(KDBenchError, match=r"^test.yaml: key 'methods', label 'fkl\+a2': AdaKD: r_min = 1.5 is outside"):
        checked(cfg, repo)


def test_bad_pair_file_names_its_file(tiny, repo, tmp_path):
    import shutil

    for name in ("config", "methods", "workflows"):
        shutil.copytree(repo / name, tmp_path / name)
    pair = tmp_path / "config" / "pairs" / f"{PAIR}.yaml"
    spec = yaml.safe_load(pair.read_text())
    spec["training"]["lr"] = -0.1
    pair.write_text(yaml.safe_dump(spec))
    with pytest.raises(KDBenchError, match=rf"{PAIR}.yaml: key 'training.lr': -0.1 is less than or equal to"):
        Grid(tiny, "test.yaml", tmp_path)
    pair.write_text("family: gpt2\nteacher: [unclosed\n")
    with pytest.raises(KDBenchError, match=f"{PAIR}.yaml: not valid YAML"):
        Grid(tiny, "test.yaml", tmp_path)


def test_layers_prune_loaded_models_only(tiny, repo, tmp_path):
    import shutil

    for name in ("config", "methods", "workflows"):
        shutil.copytree(repo / name, tmp_path / name)
    pair = tmp_path / "config" / "pairs" / f"{PAIR}.yaml"
    spec = yaml.safe_load(pair.read_text())
    spec["student"]["layers"] = [0]
    pair.write_text(yaml.safe_dump(spec))
    with pytest.raises(KDBenchError, match=rf"{PAIR}.yaml: key 'student.layers': layers prunes a loaded model; "
                                           r"a random-init model is sized by student.config"):
        Grid(tiny, "test.yaml", tmp_path)


def test_the_smollm2_grid_resolves_to_local_models_and_chat_prompts(repo):
    """config/smollm2.yaml: the converted teacher and the student cut from it bring their own
    tokenizer (not the generated one); training uses the chat prompts evaluation uses."""
    g = load_grid(repo / "config" / "smollm2.yaml", repo / "config" / "variants.yaml", workdir=repo)
    pair = "smollm2-pruned_from_smollm2-135m"
    assert g.runs() == [(pair, m, 1) for m in (
        "sft", "fkl", "fkl+adakd", "fkl+adakd-tau-detached", "rkl", "rkl+adakd", "rkl+adakd-tau-detached")]
    run = g.resolve_run(pair, "rkl+adakd", 1)
    assert run["student"] == run["tokenizer"] == f"results/models/{pair}/student-init"
    assert run["teacher"] == g.teacher_path(pair) == f"results/models/{pair}/teacher-init"
    assert run["prompt_format"] == "chat" and run["lora"] is None
    assert g.resolve_run(pair, "sft", 1)["teacher"] is None


def test_cli_overrides_arrive_as_strings(tiny, repo):
    cfg = {**tiny, "seeds": ["1", "2"], "methods": "fkl"}
    assert grid(cfg, repo).runs() == [(PAIR, "fkl", 1), (PAIR, "fkl", 2)]


def test_resolved_runs(tiny, repo):
    g = grid({**tiny, "policy_defs": {"adakd-c1": {"policy": "adakd", "hp": {"c": 1.0}}},
              "methods": ["sft", "fkl+adakd", "fkl+adakd-c1"]}, repo)
    sft = g.resolve_run(PAIR, "sft", 1)
    assert sft["teacher"] is None and sft["method"]["kd_ratio"] == 0.0 and sft["method"]["divergence"] is None
    assert sft["run"]["dir"] == f"results/runs/{PAIR}/sft/seed1"
    run = g.resolve_run(PAIR, "fkl+adakd-c1", 3)
    assert run["teacher"] == f"results/runs/{PAIR}/teacher/seed0/model"
    assert run["method"]["divergence"]["key"] == "fkl" and run["method"]["kd_ratio"] == 1.0
    [policy] = run["method"]["policies"]
    assert policy["hp"]["c"] == 1.0 and policy["hp"]["beta"] == 0.99
    egad = grid({**tiny, "methods": ["egad+adakd"]}, repo).resolve_run(PAIR, "egad+adakd", 1)["method"]
    assert egad["divergence"]["key"] == "fkl"  # a policy used as the base runs over its base_divergence
    assert [p["key"] for p in egad["policies"]] == ["egad", "adakd"]
    teacher = g.resolve_run(PAIR, "teacher", 0)
    assert teacher["student"] == f"results/models/{PAIR}/teacher-init"
    assert teacher["training"]["steps"] == g.pairs[PAIR]["teacher"]["sft"]["steps"]


def test_gkd_and_distillm_distil_with_reverse_kl_under_adakd(repo):
    """config/variants.yaml as shipped: GKD/DistiLLM keep JSD/SRKL alone and their data source under
    AdaKD, where the loss is reverse KL with its defaults (as the AdaKD release's scripts run them)."""
    g = load_grid(repo / "config" / "tiny.yaml", repo / "config" / "variants.yaml", workdir=repo)
    for base, alone, source in (("gkd", ("js", {"lam": 0.9}), "on_policy_mixed"),
                                ("distillm", ("srkl", {"alpha": 0.1}), "adaptive_replay")):
        plain, adakd = g.method(base), g.method(f"{base}+adakd")
        assert (plain["divergence"]["key"], plain["divergence"]["hp"]) == alone and not plain["policies"]
        assert (adakd["divergence"]["key"], adakd["divergence"]["hp"]) == ("rkl", {})
        assert plain["source"] == adakd["source"] == source and [p["key"] for p in adakd["policies"]] == ["adakd"]
        assert plain["init_from"] == adakd["init_from"] == ("sft" if base == "distillm" else None)


def test_distillm_starts_from_the_sft_run(tiny, repo):
    g = grid({**tiny, "teacher_cache": False, "methods": ["distillm", "gkd+adakd"], "method_defs": {
        "distillm": {"divergence": "srkl", "source": "adaptive_replay", "init_from": "sft"},
        "gkd": {"divergence": "js", "source": "on_policy_mixed"}}}, repo)
    distillm = g.resolve_run(PAIR, "distillm", 2)
    assert distillm["student"] == f"results/runs/{PAIR}/sft/seed2/model"
    assert distillm["method"]["source"] == "adaptive_replay" and distillm["method"]["divergence"]["hp"] == {"alpha": 0.1}
    gkd = g.resolve_run(PAIR, "gkd+adakd", 2)["method"]
    assert gkd["source"] == "on_policy_mixed" and gkd["divergence"]["hp"] == {"lam": 0.9}
    assert [p["key"] for p in gkd["policies"]] == ["adakd"]


def test_every_training_setting_is_a_documented_pair_key(repo):
    from kdbench.config import load_schema
    from kdbench.spec import Training, defaults

    allowed = set(load_schema(repo, "pair")["$defs"]["training"]["properties"])
    assert set(defaults(Training)) <= allowed
    readme = (repo / "config/README.md").read_text()
    assert [k for k in allowed if f"`training.{k}`" not in readme and f"`{k}`" not in readme] == []


def test_data_files_are_checked_before_any_job(tiny, repo, tmp_path):
    good = '{"instruction": "Sort: b a", "input": "", "output": "a b"}\n'
    for name in ("train", "valid", "dolly"):
        (tmp_path / f"{name}.jsonl").write_text(good * 16)  # a micro-batch (16) fits the training set
    data = {"source": "files", "train": str(tmp_path / "train.jsonl"), "valid": str(tmp_path / "valid.jsonl"),
            "sets": {"dolly": str(tmp_path / "dolly.jsonl")}}
    g = grid({**tiny, "sets": ["dolly"], "data": data}, repo)
    assert g.resolve_run(PAIR, "fkl", 1)["data"]["train"] == str(tmp_path / "train.jsonl")
    assert g.data_files["dolly"] == str(tmp_path / "dolly.jsonl")
    (tmp_path / "dolly.jsonl").write_text(good + '{"instruction": "x", "output": \n')
    with pytest.raises(KDBenchError, match=r"key 'data' \(dolly\): .*dolly.jsonl, line 2"):
        grid({**tiny, "sets": ["dolly"], "data": data}, repo)
    (tmp_path / "dolly.jsonl").write_text(good)
    with pytest.raises(KDBenchError, match=r"key 'data.sets.sni' is required"):
        grid({**tiny, "sets": ["dolly", "sni"], "data": data}, repo)


def test_check_reads_a_grid_as_snakemake_does(repo, tmp_path, monkeypatch, capsys):
    """`kdbench check <file>` merges <file> over the Snakefile's shared config file
    (config/variants.yaml) as `snakemake --configfile <file>` does: the paper grid's `gkd` and
    `distillm` come from variants.yaml, and a label the file redefines is the file's; the default grid
    (config/tiny.yaml) is read only when no file is given."""
    from kdbench.check import main
    from kdbench.config import base_configs, workflow_grid

    monkeypatch.chdir(repo)
    assert main(["config/config.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config/config.yaml: ok — 83 runs, 394 evaluations")
    absent = [p for p in ("data/raw/databricks-dolly-15k.jsonl", "data/raw/core_data.jsonl") if not (repo / p).exists()]
    assert all(p in out.split("still to fetch")[1] for p in absent)  # listed, not an error: the DAG plans without them
    assert base_configs() == ("config/tiny.yaml", "config/variants.yaml")  # the Snakefile's configfile directives
    assert base_configs(["mine.yaml"]) == ("config/variants.yaml",)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"tables": [{"name": "t", "pairs": [PAIR], "methods": ["gkd"], "sets": ["dolly"]}],
                                    "method_defs": {"gkd": {"divergence": "js", "source": "on_policy_mixed",
                                                            "source_hp": {"p": 0.25}}}}))
    grid = workflow_grid(mine)
    assert grid.method("gkd")["source_hp"] == {"p": 0.25}  # the file's own definition wins over variants.yaml
    assert grid.method("distillm")["init_from"] == "sft"  # and every other variants.yaml label is there
    assert grid.config["data"]["source"] == "generated"  # keys the file leaves out take the schemas' defaults
    assert grid.config["teacher_cache"] is False and grid.config["evaluation"]["max_new_tokens"] == 256
    assert workflow_grid().config["teacher_cache"] is True  # no file: the default grid, config/tiny.yaml
    with pytest.raises(KDBenchError, match="mine.yaml: a grid config is a mapping"):
        mine.write_text("- a\n- b\n")
        workflow_grid(mine)


# --- model config keys: checked against the family's transformers config class -----------------------

def _with_pair(repo, tmp_path, name, edit):
    """A workflow directory whose pair `name` is `edit(pair)` of a shipped tiny pair."""
    import shutil

    for folder in ("config", "methods", "workflows"):
        shutil.copytree(repo / folder, tmp_path / folder, dirs_exist_ok=True)
    spec = yaml.safe_load((repo / "config/pairs" / f"{name}.yaml").read_text())
    edit(spec)
    (tmp_path / "config/pairs" / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "config/pairs" / f"{name}.yaml"


@pytest.mark.parametrize("name, role, right, typo", [
    (PAIR, "student", "n_layer", "n_layerz"),
    (PAIR, "teacher", "n_embd", "n_embdd"),
    ("qwen2-tiny-s_from_qwen2-tiny-t", "student", "num_hidden_layers", "num_hidden_layer"),
    ("llama-tiny-s_from_llama-tiny-t", "teacher", "intermediate_size", "intermediate_sise"),
])
def test_a_misspelt_model_config_key_names_pair_key_and_the_nearest_setting(tiny, repo, tmp_path, name, role,
                                                                           right, typo):
    def misspell(spec):
        spec[role]["config"][typo] = spec[role]["config"].pop(right)

    path = _with_pair(repo, tmp_path, name, misspell)
    with pytest.raises(KDBenchError) as err:
        checked({**tiny, "pairs": [name]}, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: key '{role}.config.{typo}': ") and f"no setting '{typo}'" in message
    assert f"Did you mean '{right}'" in message and "build the model with its default" in message


@pytest.mark.parametrize("role, setting, needle", [
    ("student", {"n_layer": "2"}, r"key 'student.config.n_layer': transformers' GPT2Config refuses it: .*expected int"),
    ("teacher", {"n_embd": 128.0}, r"key 'teacher.config.n_embd': .*expected int, got float"),
    ("student", {"scale_attn_weights": "yes"}, r"key 'student.config.scale_attn_weights': .*expected bool"),
    ("student", {"vocab_size": 500}, r"key 'student.config.vocab_size': kdbench sets vocab_size from the tokenizer"),
    ("teacher", {"foo": 1}, r"key 'teacher.config.foo': .*no setting 'foo'; .*default. \(The settings"),
])
def test_model_config_values_are_checked_against_the_declared_types(tiny, repo, tmp_path, role, setting, needle):
    path = _with_pair(repo, tmp_path, PAIR, lambda spec: spec[role]["config"].update(setting))
    Grid(tiny, "test.yaml", tmp_path)  # the DAG reads no transformers config class
    with pytest.raises(KDBenchError, match=needle) as err:
        checked(tiny, tmp_path)
    assert str(err.value).startswith(str(path))


def test_config_beside_a_pretrained_model_is_refused(tiny, repo, tmp_path):
    """init-model builds a pretrained model from its checkpoint, so `config` there would be ignored."""
    def pretrained(spec):
        spec["student"] = {"init": "pretrained", "path": "openai-community/gpt2", "config": {"n_layer": 2}}

    path = _with_pair(repo, tmp_path, PAIR, pretrained)
    with pytest.raises(KDBenchError, match=rf"{path}: key 'student.config': a pretrained model is built as its "):
        Grid(tiny, "test.yaml", tmp_path)


def test_a_new_family_gets_the_same_check_with_no_code(monkeypatch):
    """The check reads whatever config class the family's model_type names (here Mistral's)."""
    from kdbench import models
    from kdbench.models import check_model_config

    monkeypatch.setitem(models.FAMILIES, "mistral", "mistral")
    check_model_config("mistral", {"num_hidden_layers": 2, "sliding_window": 64, "hidden_size": 64}, "m.yaml",
                       "student.config", vocab_size=1000)
    with pytest.raises(KDBenchError, match=r"m.yaml: key 'student.config.sliding_windw': transformers' MistralConfig "
                                           r"\(family mistral\) has no setting .* Did you mean 'sliding_window'"):
        check_model_config("mistral", {"sliding_windw": 64}, "m.yaml", "student.config", vocab_size=1000)
    with pytest.raises(KDBenchError, match=r"key 'student.config.sliding_window': .*expected int"):
        check_model_config("mistral", {"sliding_window": "wide"}, "m.yaml", "student.config", vocab_size=1000)


def test_check_prints_the_shape_init_model_builds(repo, monkeypatch, capsys, tmp_path):
    """`kdbench check` builds each random-init model on the meta device and prints its shape; a
    setting the config class accepts but the model class refuses fails there, naming pair and key."""
    from kdbench.check import main

    monkeypatch.chdir(repo)
    assert main(["config/tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"  {PAIR} student: 2 layers × 64 hidden, 2 heads, vocab 1,000, 0.20M parameters (196,864)" in out
    assert "  qwen2-tiny-s_from_qwen2-tiny-t teacher: 4 layers × 128 hidden, 4 heads, vocab 1,000" in out
    assert main(["config/config.yaml"]) == 0
    assert "qwen2-1.5b_from_qwen2-7b teacher: Qwen/Qwen2-7B (a hub id" in capsys.readouterr().out
    path = _with_pair(repo, tmp_path, PAIR, lambda spec: spec["student"]["config"].update(activation_function="nope"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KDBenchError, match=rf"{path}: key 'student.config': transformers cannot build this GPT2Config"):
        main(["config/tiny.yaml"])


# --- published numbers: beside the paper's pair on the paper's data only ---------------------------------

def test_published_numbers_only_beside_the_paper_pairs_on_the_paper_data(repo, tmp_path):
    """A table shows the paper's numbers for a pair that names them (pretrained, the paper's
    checkpoints) when the grid runs on given data files; never on generated data, and a random-init
    pair may not name them at all."""
    cfg = yaml.safe_load((repo / "config/config.yaml").read_text())
    record = '{"instruction": "Name a colour.", "input": "", "output": "Red."}\n'
    for name in ("train", "valid", *SETS):
        (tmp_path / f"{name}.jsonl").write_text(record * 32)  # a micro-batch (at most 32) fits the training set
    cfg["data"] = {"source": "files", "train": str(tmp_path / "train.jsonl"), "valid": str(tmp_path / "valid.jsonl"),
                   "sets": {name: str(tmp_path / f"{name}.jsonl") for name in SETS}}
    paper = workflow_grid_of(repo, tmp_path, cfg)
    assert paper.reference("qwen2-1.5b_from_qwen2-7b", "table1") == {"table": "table1", "family": "Qwen2"}
    assert paper.reference("qwen2-1.5b_from_qwen2-7b", "table3") == {"table": "table3", "family": "Qwen2"}
    assert paper.reference("gpt2-base_from_gpt2-xl", "design") == {"table": "minillm_table1", "family": "gpt2"}
    generated = yaml.safe_load((repo / "config/tiny.yaml").read_text())["data"]
    assert workflow_grid_of(repo, tmp_path, {**cfg, "data": generated}).reference("qwen2-1.5b_from_qwen2-7b",
                                                                                 "table1") is None
    tiny = workflow_grid_of(repo, tmp_path, {**cfg, "tables": [{"name": "t", "reference": "table1", "pairs": [PAIR],
                                                                "methods": ["fkl"]}]})
    assert tiny.reference(PAIR, "t") is None  # a table's reference does not make a tiny pair the paper's


def workflow_grid_of(repo, tmp_path, cfg):
    from kdbench.config import workflow_grid

    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(cfg))
    return workflow_grid(tmp_path / "grid.yaml", workdir=repo)


def test_a_random_init_pair_may_not_name_published_numbers(tiny, repo, tmp_path):
    path = _with_pair(repo, tmp_path, PAIR, lambda spec: spec.update(reference={"table": "minillm_table1",
                                                                                 "family": "gpt2"}))
    with pytest.raises(KDBenchError, match=rf"{path}: key 'reference': published numbers belong beside the paper's"):
        Grid(tiny, "test.yaml", tmp_path)


def test_pair_overrides_set_a_pairs_training_for_one_grid(tiny, repo):
    """config/tiny-large.yaml's mechanism: the grid's steps reach the resolved runs (student and
    teacher SFT) while the pair file's other settings stay; a pair no table uses, or a key the
    pair schema does not know, is refused before any job."""
    pair = "gpt2-tiny-s_from_gpt2-tiny-t"
    plain = grid(tiny, repo)
    tiny["pair_overrides"] = {pair: {"training": {"steps": 77}, "teacher": {"sft": {"steps": 99}}}}
    longer = grid(tiny, repo)
    assert longer.resolve_run(pair, "fkl", 1)["training"]["steps"] == 77
    assert longer.resolve_run(pair, "teacher", 0)["training"]["steps"] == 99
    for key in ("lr", "max_length", "micro_batch_size"):
        assert longer.resolve_run(pair, "fkl", 1)["training"][key] == plain.resolve_run(pair, "fkl", 1)["training"][key]
    large = yaml.safe_load((repo / "config/tiny-large.yaml").read_text())["pair_overrides"]
    default_pairs = {p for t in yaml.safe_load((repo / "config/tiny.yaml").read_text())["tables"] for p in t["pairs"]}
    assert set(large) == default_pairs  # the larger grid lengthens every pair of the default
    tiny["pair_overrides"] = {"gpt2-tiny-s_from_gpt2-tiny": {"training": {"steps": 77}}}
    with pytest.raises(KDBenchError, match=r"pair_overrides.gpt2-tiny-s_from_gpt2-tiny'.*Did you mean 'gpt2-tiny-s_from_gpt2-tiny-t'"):
        grid(tiny, repo)
    tiny["pair_overrides"] = {pair: {"training": {"stepz": 77}}}
    with pytest.raises(KDBenchError, match="stepz"):
        grid(tiny, repo)
