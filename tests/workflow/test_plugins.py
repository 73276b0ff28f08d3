"""A new method is one file: dropped into methods/, it appears in the grid with no other edit."""

import shutil

import pytest

from tests.conftest import run_cli, workflow_copy


def test_a_new_method_file_joins_the_dry_run(tmp_path):
    root = workflow_copy(tmp_path)
    shutil.copy(root / "methods/_template.py", root / "methods/halfkl.py")
    text = (root / "methods/halfkl.py").read_text().replace("def my_divergence(", "def halfkl(")
    (root / "methods/halfkl.py").write_text(text)
    dry = run_cli("snakemake", "-n", "--config", "extra_methods=[halfkl,halfkl+adakd]", cwd=root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    for label in ("halfkl", "halfkl+adakd"):  # in every table of the default: each of its pairs trains it
        for pair in ("gpt2-tiny-s_from_gpt2-tiny-t", "qwen2-tiny-s_from_qwen2-tiny-t", "llama-tiny-s_from_llama-tiny-t"):
            assert f"pair={pair}, method={label}, seed=1" in out
    bad = run_cli("snakemake", "-n", "--config", "extra_methods=[halfkl]",
                  "method_defs={halfkl: {divergence: halfkl, hp: {alpah: 0.1}}}", cwd=root)
    assert bad.returncode != 0 and "unknown hyper-parameter(s) alpah" in bad.stdout + bad.stderr


def test_every_method_and_variant_is_selectable_by_name(repo):
    """config/methods.yaml names every shipped method and AdaKD/EGAD variant; the dry run lists each run."""
    import yaml

    labels = [m for t in yaml.safe_load((repo / "config/methods.yaml").read_text())["tables"] for m in t["methods"]]
    dry = run_cli("snakemake", "-n", "--configfile", "config/methods.yaml", cwd=repo)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    missing = [label for label in labels if f"method={label}, seed=1" not in out]
    assert not missing
    from kdbench.registry import discover

    plugins = discover(repo / "methods")
    assert {k for k in plugins} <= {label.split("+")[0] for label in labels} | {"adakd"}


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_execution_profiles_build_the_dag(repo, tmp_path, profile):
    root = workflow_copy(tmp_path)
    dry = run_cli("snakemake", "-n", "--profile", f"workflows/profiles/{profile}", cwd=root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "train" in dry.stdout + dry.stderr
