"""`teacher_cache: true` plans a teacher_states job only for runs that can read its states
(dataset-source students with a teacher), never for SFT or an on-policy source; a grid in which no
run can read them is refused before any job (kdbench.runs.check_teacher_cache)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import grid_config, run_cli, workflow_copy

pytestmark = pytest.mark.workflow
PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"


def _jobs(dry_output: str) -> list[tuple[str, str | None, str]]:
    """(rule, method wildcard, the job's block) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", dry_output, flags=re.M):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            method = re.search(r"wildcards: .*method=([^,\n]+)", block)
            jobs.append((rule.group(1), method.group(1) if method else None, block))
    return jobs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return workflow_copy(tmp_path_factory.mktemp("teacher_cache"))


def test_states_are_planned_only_for_the_runs_that_read_them(root):
    grid = {**grid_config(root, pairs=[PAIR], methods=["sft", "fkl", "gkd"], sets=["dolly"]), "teacher_cache": True}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    dry = run_cli("snakemake", "-n", "--configfile", "grid.yaml", cwd=root, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = _jobs(dry.stdout + dry.stderr)
    train = {method: block for rule, method, block in jobs if rule == "train"}
    assert set(train) == {"teacher", "sft", "fkl", "gkd"}  # the teacher's SFT run too
    assert "teacher_states/" in train.pop("fkl")  # its input: the stored states
    assert [m for m, block in train.items() if "teacher_states/" in block] == []
    assert [rule for rule, _, _ in jobs].count("teacher_states") == 1
    # a selection of SFT alone plans no states (the grid's tables still hold a run that reads them)
    only_sft = run_cli("snakemake", "-n", "--configfile", "grid.yaml", "--config", "methods=[sft]", cwd=root,
                       timeout=300)
    assert only_sft.returncode == 0, only_sft.stderr[-3000:]
    assert "teacher_states" not in {rule for rule, _, _ in _jobs(only_sft.stdout + only_sft.stderr)}


def test_a_cache_no_run_can_read_is_refused_before_any_job(root):
    grid = {**grid_config(root, pairs=[PAIR], methods=["sft", "gkd"], sets=["dolly"]), "teacher_cache": True}
    (root / "nothing.yaml").write_text(yaml.safe_dump(grid))
    dry = run_cli("snakemake", "-n", "--configfile", "nothing.yaml", cwd=root, timeout=300)
    out = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert re.search(r"nothing\.yaml\S*( config/variants\.yaml)?: key 'teacher_cache': true, but no run of the grid "
                     "can read stored teacher states", out), out[-2000:]
    assert f"sft (on {PAIR}): it trains without a teacher" in out
    assert f"gkd (on {PAIR}): its micro-batches come from the on_policy_mixed source" in out
    grid["teacher_cache"] = False
    (root / "nothing.yaml").write_text(yaml.safe_dump(grid))
    assert run_cli("snakemake", "-n", "--configfile", "nothing.yaml", cwd=root, timeout=300).returncode == 0
