"""Each grid default is stated once (the schema, or kdbench.spec for `evaluation`) and is the one in
effect: a grid file with one table and nothing else resolves to every default config/README.md
documents; config/tiny.yaml is read only when no config file is given; pair files get their
schema's defaults filled in."""

import re

import yaml

from kdbench.config import workflow_grid
from kdbench.spec import SETS

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"


def documented_defaults(repo) -> dict:
    """The grid table of config/README.md: key → its default cell, a YAML value in backticks."""
    text = (repo / "config/README.md").read_text()
    section = text.split("## Grid config")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([a-z_.]+)` \| .* \| `([^`|]+)` \|$", section, re.M)
    return {key: yaml.safe_load(value) for key, value in rows}


def flat(config: dict, prefix: str = "") -> list[str]:
    """The key paths of a config's leaves (a mapping's entries, not a list's)."""
    return [path for key, value in config.items() for path in
            (flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"])]


def at(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def test_a_one_table_grid_resolves_every_documented_default(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    grid_file = tmp_path / "one.yaml"
    grid_file.write_text(yaml.safe_dump({"tables": [{"name": "t", "pairs": [PAIR], "methods": ["fkl"]}]}))
    grid = workflow_grid(grid_file)
    documented = documented_defaults(repo)
    assert {key: at(grid.config, key) for key in documented} == documented
    leaves = {key for key in flat(grid.config) if key.split(".")[0] not in ("tables", "method_defs", "policy_defs")}
    assert leaves == set(documented)  # every key the grid fills in is documented with its value
    assert grid.tables["t"]["seeds"] == [1] and grid.tables["t"]["sets"] == list(SETS)  # a table's own defaults
    assert grid.tables["t"]["title"] == "t" and "fkl" in grid.method("fkl")["label"]
    run = grid.resolve_run(PAIR, "fkl", 1)
    assert run["prompt_format"] == "minillm" and grid.teacher_states(PAIR, "fkl", 1) is None


def test_the_default_grid_is_read_only_without_a_config_file(repo, monkeypatch):
    """config/tiny.yaml is the grid of bare `snakemake`; under --configfile its keys are not read."""
    monkeypatch.chdir(repo)
    tiny = yaml.safe_load((repo / "config/tiny.yaml").read_text())
    bare = workflow_grid()
    assert list(bare.tables) == [t["name"] for t in tiny["tables"]]
    assert bare.config["teacher_cache"] is True and bare.config["evaluation"]["max_new_tokens"] == 32
    paper = workflow_grid(repo / "config/config.yaml", require_data=False)
    assert paper.config["teacher_cache"] is False and paper.config["evaluation"]["max_new_tokens"] == 256
    assert paper.config["evaluation"]["job"] == "set" and "design" in paper.tables
    assert paper.method("gkd")["source"] == "on_policy_mixed"  # config/variants.yaml: read under every grid


def test_the_snakefile_reads_tiny_only_without_a_configfile(repo):
    """The Snakefile's own configfile directives, as workflow_grid mirrors them."""
    snakefile = (repo / "Snakefile").read_text()
    assert re.search(r"if not workflow\.configfiles:\n\n    configfile: DEFAULT_CONFIG", snakefile)
    assert re.search(r"for shared_config in SHARED_CONFIGS:\n\n    configfile: shared_config", snakefile)


def test_pair_files_get_their_schema_defaults(repo, monkeypatch):
    monkeypatch.chdir(repo)
    from kdbench.pairs import load_pair

    pair = load_pair(repo / "config/pairs" / f"{PAIR}.yaml", repo)
    raw = yaml.safe_load((repo / "config/pairs" / f"{PAIR}.yaml").read_text())
    assert "dtype" not in raw["teacher"] and pair["teacher"]["dtype"] == "fp32"
    assert pair["teacher"]["zero3"] is False and pair["teacher"]["offload"] == "none"
    assert pair["student"]["trust_remote_code"] is False and pair["student"]["seed"] == 0
    assert pair["resources"]["train"] == {"runtime": 60, "mem_mb": 4000, "cpus": 1}
    assert "sft" in pair["teacher"] and pair["teacher"]["sft"] == raw["teacher"]["sft"]  # training sections: as given
    assert pair["training"] == raw["training"]


def test_the_set_names_are_one_constant(repo):
    """kdbench.spec.SETS is the one list of the five sets; the schema, the generator, the releases and
    the preparation take it from there."""
    from kdbench import datagen, evalsets, releases
    from kdbench.schemas import load_schema

    schema = load_schema(repo, "config")
    assert schema["$defs"]["sets"]["items"]["enum"] == list(SETS)
    assert datagen.EVAL_SETS is SETS and evalsets.SETS is SETS and releases.PREPARED == ("train", "valid", *SETS)
    files = [*repo.glob("src/kdbench/**/*.py"), *repo.glob("workflows/**/*.smk"), *repo.glob("workflows/schemas/*")]
    spelled = [str(f.relative_to(repo)) for f in files if re.search(r"dolly.{1,6}selfinst.{1,6}vicuna", f.read_text())]
    assert spelled == ["src/kdbench/spec.py"]
