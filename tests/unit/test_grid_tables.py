"""Tables in a grid config: the runs are the union of the tables' cells, the top-level axes select a
sub-grid, extra_methods joins open tables, and malformed tables fail with the table named."""

import copy

import pytest
import yaml

from kdbench.config import Grid
from kdbench.errors import KDBenchError

GPT2, QWEN, LLAMA = "gpt2-tiny-s_from_gpt2-tiny-t", "qwen2-tiny-s_from_qwen2-tiny-t", "llama-tiny-s_from_llama-tiny-t"


@pytest.fixture
def cfg(repo):
    tiny = yaml.safe_load((repo / "config/tiny.yaml").read_text())
    tiny["tables"] = [
        {"name": "t1", "pairs": [GPT2, QWEN], "methods": ["fkl", "fkl+adakd"]},
        {"name": "t2", "pairs": [QWEN], "methods": ["rkl", "fkl"], "sets": ["dolly", "sni"], "seeds": [1, 2],
         "extra_methods": False},
    ]
    return tiny


def grid(cfg, repo):
    return Grid(cfg, "grid.yaml", repo)


def test_runs_are_the_union_of_the_tables_cells(cfg, repo):
    g = grid(cfg, repo)
    assert g.runs() == [(GPT2, "fkl", 1), (GPT2, "fkl+adakd", 1), (QWEN, "fkl", 1), (QWEN, "fkl+adakd", 1),
                        (QWEN, "rkl", 1), (QWEN, "rkl", 2), (QWEN, "fkl", 2)]
    assert g.runs(table="t2") == [(QWEN, m, s) for m in ("rkl", "fkl") for s in (1, 2)]
    assert set(g.pairs) == {GPT2, QWEN}
    # the teacher row of every pair, on the sets of each table it is in; t1's sets default to all five
    evals = g.evals(pair=QWEN)
    assert [(m, x) for _, m, _, x in evals if m == "teacher"] == [
        ("teacher", x) for x in ("dolly", "selfinst", "vicuna", "sni", "unni")]
    assert (QWEN, "rkl", 2, "sni") in evals and (QWEN, "rkl", 2, "vicuna") not in evals
    assert len(evals) == len(set(evals))


def test_top_level_axes_select_a_sub_grid_and_keep_the_full_layout(cfg, repo):
    g = grid(cfg | {"methods": ["fkl"], "seeds": [1], "sets": ["dolly"]}, repo)
    assert g.runs() == [(GPT2, "fkl", 1), (QWEN, "fkl", 1)]
    assert {x for *_, x in g.evals()} == {"dolly"}
    assert g.tables["t1"]["all"]["methods"] == ["fkl", "fkl+adakd"]  # the table is drawn whole, cells missing
    only_t2 = grid(cfg | {"methods": ["rkl"]}, repo)
    assert list(only_t2.tables) == ["t2"] and set(only_t2.pairs) == {QWEN}


def test_extra_methods_join_the_open_tables_only(cfg, repo):
    g = grid(cfg | {"extra_methods": ["skl", "skl+adakd"]}, repo)
    assert g.tables["t1"]["methods"] == ["fkl", "fkl+adakd", "skl", "skl+adakd"]
    assert g.tables["t2"]["methods"] == ["rkl", "fkl"]


def test_without_tables_the_axes_are_one_table_main(cfg, repo):
    plain = {k: v for k, v in cfg.items() if k != "tables"} | {
        "pairs": [GPT2], "methods": ["fkl"], "seeds": [3], "sets": ["unni"]}
    g = grid(plain, repo)
    assert list(g.tables) == ["main"] and g.runs() == [(GPT2, "fkl", 3)]


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["tables"][1].update(name="t1"), r"key 'tables.1' \(t1\): table name 't1' is used twice"),
    (lambda c: c["tables"][0].update(name="train"), "'train' is the name of a workflow rule"),
    (lambda c: c["tables"][0].update(name="seqkd_data"), "'seqkd_data' is the name of a workflow rule"),  # methods/seqkd.smk
    (lambda c: c["tables"][0].update(name="bad/name"), r"key 'tables.0.name': 'bad/name' does not match"),
    (lambda c: c["tables"][0].update(methods=["fkl", "fkl"]), r"key 'tables.0' \(t1\): key 'methods': 'fkl' is listed twice"),
    (lambda c: c["tables"][0].update(methods=["fkk"]), "unknown method 'fkk'"),
    (lambda c: c["tables"][0].update(colour="red"), r"key 'tables.0'.*'colour' was unexpected"),
    (lambda c: c["tables"][0].update(sets=["mmlu"]), r"key 'tables.0.sets.0'"),
    (lambda c: c["tables"][0].pop("name"), r"key 'tables.0': 'name' is a required property"),
    (lambda c: c.update(tables=[]), r"key 'tables': \[\] should be non-empty"),
    (lambda c: c.update(methods=["skl"]), "key 'methods': 'skl' is in no table .* extra_methods"),
    (lambda c: c.update(pairs=[LLAMA]), f"key 'pairs': '{LLAMA}' is in no table"),
    (lambda c: c.update(pairs=["nope_from_nowhere"]), "unknown pair 'nope_from_nowhere'"),
    (lambda c: c.update(methods=["rkl"], pairs=[GPT2]), "the selection .* leaves no cell in any table"),
    (lambda c: c.pop("tables"), "key 'pairs' is required when the config has no 'tables'"),
])
def test_malformed_tables_name_the_table_and_key(cfg, repo, edit, needle):
    bad = copy.deepcopy(cfg)
    edit(bad)
    with pytest.raises(KDBenchError, match=needle) as err:
        grid(bad, repo)
    assert str(err.value).startswith("grid.yaml")


def test_kdbench_check_summarises_a_valid_grid(repo, monkeypatch, capsys):
    from kdbench.check import main

    monkeypatch.chdir(repo)
    assert main(["config/tiny.yaml", "config/variants.yaml"]) == 0
    out = capsys.readouterr().out
    # 31 student runs; 3 teachers + 31 runs on 5 sets = 170 evaluations
    assert "ok — 31 runs, 170 evaluations, tables main, design; pairs" in out and LLAMA in out


def test_a_plugin_rule_name_is_guarded_without_a_core_edit(cfg, repo, tmp_path):
    """A new methods/*.smk rule (here `distil_cache`) is a name a table may not take, read from the
    plugin file itself (kdbench.config.rule_names): no core file lists it."""
    from kdbench.config import rule_names

    from tests.conftest import workflow_copy

    root = workflow_copy(tmp_path)
    assert not any("distil_cache" in p.read_text() for p in (repo / "src/kdbench").rglob("*.py"))
    (root / "methods" / "distil_cache.smk").write_text(
        "rule distil_cache:\n    output:\n        'cache.txt'\n    shell:\n        'touch {output}'\n")
    assert {"distil_cache", "seqkd_data", "train"} <= rule_names(root)
    bad = copy.deepcopy(cfg)
    bad["tables"][0]["name"] = "distil_cache"
    with pytest.raises(KDBenchError, match="'distil_cache' is the name of a workflow rule"):
        grid(bad, root)
