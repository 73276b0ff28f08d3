"""Grid configs fail before any job, with a message naming the file, the key and the fix."""

import copy

import pytest
import yaml

from kdbench.config import Grid, load_grid
from kdbench.errors import KDBenchError

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
    (lambda c: c.update(policy_defs={"a2": {"policy": "adakd", "hp": {"r_min": 1.5}}}, methods=["fkl+a2"]),
     r"label 'fkl\+a2': AdaKD: r_min = 1.5 is outside its range"),
])
def test_bad_configs_name_the_problem(tiny, repo, edit, needle):
    cfg = copy.deepcopy(tiny)
    edit(cfg)
    with pytest.raises(KDBenchError, match=needle) as err:
        grid(cfg, repo)
    assert str(err.value).startswith("test.yaml")


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
    assert g.runs() == [(pair, m, 1) for m in ("sft", "fkl", "fkl+adakd", "rkl", "rkl+adakd")]
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
    g = grid({**tiny, "methods": ["distillm", "gkd+adakd"], "method_defs": {
        "distillm": {"divergence": "srkl", "source": "adaptive_replay", "init_from": "sft"},
        "gkd": {"divergence": "js", "source": "on_policy_mixed"}}}, repo)
    distillm = g.resolve_run(PAIR, "distillm", 2)
    assert distillm["student"] == f"results/runs/{PAIR}/sft/seed2/model"
    assert distillm["method"]["source"] == "adaptive_replay" and distillm["method"]["divergence"]["hp"] == {"alpha": 0.1}
    gkd = g.resolve_run(PAIR, "gkd+adakd", 2)["method"]
    assert gkd["source"] == "on_policy_mixed" and gkd["divergence"]["hp"] == {"lam": 0.9}
    assert [p["key"] for p in gkd["policies"]] == ["adakd"]


def test_every_training_default_is_a_documented_pair_key(repo):
    from kdbench.config import TRAINING_DEFAULTS, load_yaml, schema_path

    schema = load_yaml(schema_path(repo, "pair"))
    allowed = set(schema["$defs"]["training"]["properties"])
    assert set(TRAINING_DEFAULTS) <= allowed
    readme = (repo / "config/README.md").read_text()
    assert [k for k in allowed if f"`training.{k}`" not in readme and f"`{k}`" not in readme] == []


def test_data_files_are_checked_before_any_job(tiny, repo, tmp_path):
    good = '{"instruction": "Sort: b a", "input": "", "output": "a b"}\n'
    for name in ("train", "valid", "dolly"):
        (tmp_path / f"{name}.jsonl").write_text(good * 3)
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
