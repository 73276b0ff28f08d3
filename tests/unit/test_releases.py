"""The one table of public releases (kdbench.releases): data/README.md shows it word for word, the
paper grid names every release in it, and a grid with `data.source: releases` plans its preparation
jobs from the config alone, listing what is missing in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdbench import releases
from kdbench.config import load_grid
from kdbench.errors import KDBenchError
from tests.conftest import REPO, workflow_copy

README = (REPO / "data" / "README.md").read_text(encoding="utf-8")
PAPER = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("fmt", releases.FORMATS)
def test_data_readme_shows_every_release_as_the_table_has_it(fmt: str) -> None:
    for row in releases.readme_rows(fmt):
        assert row in README, f"data/README.md lacks the row {row}"


def test_data_readme_commands_are_the_rules_commands() -> None:
    paths = PAPER["data"]["releases"]["raw"]
    for name in releases.PREPARED:
        args = releases.prepare_job("raw", name, paths)[1]
        assert f"| `{name}.jsonl` | `kdbench prepare-eval {args} --out results/data/real/{name}.jsonl` |" in README


@pytest.mark.parametrize("fmt", releases.FORMATS)
def test_the_paper_grid_names_every_release(fmt: str) -> None:
    assert list(PAPER["data"]["releases"][fmt]) == list(releases.RELEASES[fmt])


def paper_grid(root: Path, *extra: Path):
    return load_grid(root / "config/tiny.yaml", root / "config/variants.yaml", root / "config/config.yaml", *extra,
                     workdir=root)


def test_a_fresh_clone_plans_the_data_and_lists_what_is_missing(tmp_path: Path) -> None:
    root = workflow_copy(tmp_path)
    grid = paper_grid(root)  # no data at all: the grid still resolves
    assert grid.data_files == {name: f"results/data/real/{name}.jsonl" for name in releases.PREPARED}
    assert grid.resolve_run("qwen2-1.5b_from_qwen2-7b", "rkl", 1)["data"] == {
        "train": "results/data/real/train.jsonl", "valid": "results/data/real/valid.jsonl"}
    missing = grid.missing_releases()
    raw = releases.RELEASES["raw"]
    assert len(missing) == len(raw) == 6
    for line, (key, release) in zip(missing, raw.items()):
        assert line.startswith(f"data.releases.raw.{key}: {PAPER['data']['releases']['raw'][key]} not found")
        assert release.expected in line and release.where in line
    assert grid.prepare_job("vicuna") == ({}, "--set vicuna --format raw --source data/raw/vicuna/question.jsonl "
                                              "--references data/raw/vicuna/answer_gpt35.jsonl")
    (root / "data/raw/vicuna").mkdir(parents=True)
    (root / "data/raw/vicuna/question.jsonl").write_text("{}\n")
    grid = paper_grid(root)
    assert grid.prepare_job("vicuna")[0] == {"vicuna": "data/raw/vicuna/question.jsonl"}
    assert len(grid.missing_releases()) == 5 and not any("question.jsonl not found" in m for m in grid.missing_releases())


def test_minillm_format_and_a_selection_need_only_their_releases(tmp_path: Path) -> None:
    root = workflow_copy(tmp_path)
    (root / "sel.yaml").write_text(yaml.safe_dump({"sets": ["dolly", "sni"]}))
    grid = paper_grid(root, root / "config/minillm-data.yaml", root / "sel.yaml")
    assert grid.prepared == ["train", "valid", "dolly", "sni"]
    assert [m.split(":")[0] for m in grid.missing_releases()] == ["data.releases.minillm.dolly",
                                                                 "data.releases.minillm.sni"]
    assert grid.prepare_job("train")[1] == "--set dolly --format minillm --source data/minillm/dolly --split train"


def test_release_keys_are_checked(tmp_path: Path) -> None:
    root = workflow_copy(tmp_path)
    cfg = yaml.safe_load((root / "config/config.yaml").read_text())
    cfg["data"]["releases"]["raw"]["dolly_v2"] = cfg["data"]["releases"]["raw"].pop("dolly")
    (root / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(KDBenchError, match=r"key 'data.releases.raw': unknown release 'dolly_v2'; the raw releases "
                                           r"are dolly, selfinst, vicuna, vicuna_references, sni, unni"):
        paper_grid(root)
    del cfg["data"]["releases"]["raw"]["dolly_v2"]
    (root / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(KDBenchError, match=r"key 'data.releases.raw.dolly': required: the path of "
                                           r"`databricks-dolly-15k.jsonl`"):
        paper_grid(root)


def test_a_hub_release_has_no_input_file() -> None:
    paths = {**PAPER["data"]["releases"]["raw"], "dolly": "hub:databricks/databricks-dolly-15k"}
    assert releases.prepare_job("raw", "train", paths) == (
        {}, "--set dolly --format raw --hub databricks/databricks-dolly-15k --split train")
    assert releases.missing("raw", paths, ["dolly"], REPO) == []  # the hub is asked only when the job runs
