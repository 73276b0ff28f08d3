"""A cross-tokenizer pair in the workflow: `snakemake -n` plans both generated tokenizers, the pair's
vocab_map as an input of its cross-tokenizer runs only, and refuses a same-vocabulary method on it
before any job."""

import re

import pytest
import yaml

from tests.conftest import grid_config, run_cli, workflow_copy

CROSS = "gpt2-tiny-unigram-s_from_gpt2-tiny-t"
PLUGIN = '''
import torch
from kdbench.registry import crosstok


@crosstok(alignment="pairs", space="common")
def ctk_test(student_logp, teacher_logp, *, common_student, common_teacher, kd_ratio=0.5):
    """A test plugin."""
    return (student_logp[:, common_student].exp() - teacher_logp[:, common_teacher].exp()).abs().sum(-1)
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("crosstok"))
    (root / "methods/ctk_test.py").write_text(PLUGIN)
    return root


def dry_run(root, methods):
    cfg = grid_config(root, pairs=[CROSS], methods=methods, sets=["dolly"]) | {"teacher_cache": False}
    (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
    return run_cli("snakemake", "-n", "-p", "--configfile", "grid.yaml", cwd=root)


def test_the_vocab_map_is_an_input_of_the_cross_tokenizer_runs_only(root):
    done = dry_run(root, ["sft", "ctk_test"])
    assert done.returncode == 0, done.stderr[-3000:]
    stats = done.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    assert counts["tokenizer"] == counts["tokenizer_unigram"] == counts["vocab_map"] == 1
    assert counts["train"] == 3  # the teacher's SFT, sft, ctk_test
    assert f"kdbench vocab-map --student results/tokenizer-unigram --teacher results/tokenizer --out " \
           f"results/vocab_maps/{CROSS}/vocab_map.safetensors" in done.stdout
    jobs = done.stdout.split("\nrule ")
    train = {re.search(r"wildcards: .*method=([\w+.-]+)", j)[1]: j for j in jobs if j.startswith("train:")}
    assert "vocab_map.safetensors" in train["ctk_test"].split("output:")[0]
    assert "vocab_map" not in train["sft"] and "vocab_map" not in train["teacher"]
    init = [j for j in jobs if j.startswith("init_model:")]
    assert any("role=student" in j and "results/tokenizer-unigram" in j for j in init)


def test_a_same_vocabulary_method_is_refused_before_any_job(root):
    done = dry_run(root, ["ctk_test", "fkl"])
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"config/pairs/{CROSS}.yaml: teacher and student read different tokenizers" in done.stderr
    assert "method 'fkl' cannot distil this pair" in done.stderr and "would run: ctk_test" in done.stderr
