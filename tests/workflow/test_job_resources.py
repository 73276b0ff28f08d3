"""Every rule that puts a model on a GPU declares a `gpu` resource (what Snakemake's --resources and
the SLURM plugin's --gpus read) and its job claims its GPUs through kdbench.gpus, as training does.

The rules are enumerated from the workflow itself (core rules and method plugins); a rule loads a
model to a GPU when its shell command runs a kdbench command whose module can use CUDA, or its
script loads a model. A new rule of either kind without `gpu` fails here."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from kdbench.cli import COMMANDS

pytestmark = pytest.mark.workflow
GPU_RULES = {"train", "teacher_states", "evaluate", "evaluate_run", "lm_eval", "seqkd_data"}  # what the enumeration must find


REPORTS_DEVICES = {"env"}  # names CUDA to list the devices, loads no model


def gpu_commands() -> set[str]:
    """kdbench commands whose module can put a model on a GPU (it names CUDA, or loads a model
    through kdbench.evaluate.load_model, which places it on the GPU)."""
    return {name for name, (module, _) in COMMANDS.items() if name not in REPORTS_DEVICES
            and any(k in inspect.getsource(importlib.import_module(module)).lower() for k in ("cuda", "load_model("))}


@pytest.fixture(scope="module")
def workflow(repo):
    """The parsed workflow (Snakemake's API; its Workflow object is the only place rules are listed)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        return api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                            snakefile=repo / "Snakefile", workdir=repo)._workflow


@pytest.fixture(scope="module")
def rules(workflow):
    return {rule.name: rule for rule in workflow.rules}


def loads_a_model_to_a_gpu(rule, commands: set[str]) -> bool:
    if rule.shellcmd:
        return any(re.search(rf"\bkdbench {re.escape(c)}(?![\w-])", rule.shellcmd) for c in commands)
    if rule.script:
        source = (Path(rule.basedir) / rule.script).read_text()
        return "load_model(" in source or "cuda" in source
    return False


def gpu_claim_source(rule) -> str:
    """The code the rule's job runs: its script, or the kdbench command module of its shell command."""
    if rule.script:
        return (Path(rule.basedir) / rule.script).read_text()
    command = re.search(r"\bkdbench ([a-z-]+)", rule.shellcmd).group(1)
    return inspect.getsource(importlib.import_module(COMMANDS[command][0]))


def test_the_gpu_commands_are_the_model_loading_ones():
    assert gpu_commands() == {"train", "teacher-states", "evaluate", "lm-eval"}


def test_every_rule_that_loads_a_model_to_a_gpu_declares_gpu_and_claims_it(rules):
    commands = gpu_commands()
    found = {name for name, rule in rules.items() if loads_a_model_to_a_gpu(rule, commands)}
    assert found == GPU_RULES
    for name in sorted(found):
        rule = rules[name]
        assert "gpu" in rule.resources, f"rule {name} loads a model to a GPU but declares no `gpu` resource"
        declared = rule.resources["gpu"]  # a number, or a function of the job (train: training.gpus)
        assert declared.is_evaluable() or declared.value >= 1, (name, declared)
        assert "pinned(" in gpu_claim_source(rule), f"rule {name}'s job does not claim its GPUs (kdbench.gpus.pinned)"


def test_cheap_rules_run_locally_and_cpu_rules_declare_no_gpu(workflow, rules):
    local = {name for name, rule in rules.items() if name in workflow._localrules or rule.norun}
    targets = {"all", "lm_eval_all", "main", "design"}  # rules without a job (main, design: config/tiny.yaml's tables)
    assert local == {"resolve_run", "eval_protocol", "teacher_states_spec", "tables", "combine_table", "claims", "plots", *targets}
    for name, rule in rules.items():
        if name not in GPU_RULES:
            assert "gpu" not in rule.resources, f"rule {name} declares a GPU it never uses"


def test_the_slurm_profile_asks_for_what_each_pair_needs(repo, tmp_path):
    """A dry run through the SLURM profile: a 7B pair's jobs ask for more than a tiny pair's, GPU
    jobs go to the GPU partition with the pair's GPUs, and nothing passes --gres by hand."""
    import yaml

    from tests.conftest import grid_config, run_cli, workflow_copy

    root = workflow_copy(tmp_path)
    qwen, tiny = "qwen2-1.5b_from_qwen2-7b", "gpt2-tiny-s_from_gpt2-tiny-t"
    grid = {**grid_config(root, pairs=[qwen, tiny], methods=["fkl"], sets=["dolly"]), "teacher_cache": True}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    dry = run_cli("snakemake", "-n", "--profile", "workflows/profiles/slurm", "--configfile", "grid.yaml", cwd=root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:)", dry.stdout + dry.stderr, flags=re.M):
        rule = re.match(r"rule (\w+):", block)  # a cluster job (a local rule's job reads `localrule`)
        wildcards = re.search(r"wildcards: pair=([^,\n]+)(?:, method=([^,\n]+))?", block)
        resources = re.search(r"resources: (.*)", block)
        if rule and wildcards and resources:
            res = dict(kv.split("=", 1) for kv in resources.group(1).split(", "))
            jobs[(rule.group(1), wildcards.group(1), wildcards.group(2))] = res
    big, small = jobs[("train", qwen, "fkl")], jobs[("train", tiny, "fkl")]
    assert (big["gpu"], big["runtime"], big["mem_mb"], big["cpus_per_task"]) == ("4", "1440", "256000", "16")
    assert (small["gpu"], small["runtime"], small["mem_mb"], small["cpus_per_task"]) == ("1", "60", "4000", "1")
    for (rule, pair, _), res in jobs.items():
        assert res["slurm_partition"] == ("gpu" if rule in GPU_RULES else "cpu"), (rule, pair, res)
        assert "slurm_extra" not in res
    # teacher_cache: the teacher's states are computed where the students train (the tiny pair: 1 GPU)
    assert jobs[("teacher_states", tiny, None)]["gpu"] == "1"
    assert jobs[("teacher_states", tiny, None)]["slurm_partition"] == "gpu"
    assert int(jobs[("evaluate_run", qwen, "fkl")]["mem_mb"]) > int(jobs[("evaluate_run", tiny, "fkl")]["mem_mb"])
    assert jobs[("init_model", qwen, None)]["mem_mb"] == "64000"


def test_a_pair_sets_some_job_resources_and_a_misspelt_key_fails_before_any_job(repo, tmp_path):
    import shutil

    import yaml

    from kdbench.config import Grid
    from kdbench.errors import KDBenchError

    for name in ("config", "methods", "workflows"):
        shutil.copytree(repo / name, tmp_path / name)
    pair = "gpt2-tiny-s_from_gpt2-tiny-t"
    path = tmp_path / f"config/pairs/{pair}.yaml"
    spec = yaml.safe_load(path.read_text())
    cfg = yaml.safe_load((tmp_path / "config/tiny.yaml").read_text())
    del cfg["tables"]
    cfg.update(pairs=[pair], methods=["fkl"], seeds=[1], sets=["dolly"])
    path.write_text(yaml.safe_dump({**spec, "resources": {"train": {"mem_mb": 123}}}))
    grid = Grid(cfg, "grid.yaml", tmp_path)
    assert grid.job_resources(pair, "train") == {"runtime": 60, "mem_mb": 123, "cpus": 1}
    assert grid.job_resources(pair, "evaluate") == {"runtime": 60, "runtime_per_1k": 2, "mem_mb": 4000, "cpus": 1}
    path.write_text(yaml.safe_dump({**spec, "resources": {"train": {"memory": 1}}}))
    with pytest.raises(KDBenchError, match=r"key 'resources.train': .*'memory' was unexpected.*allowed here: cpus, mem_mb, runtime"):
        Grid(cfg, "grid.yaml", tmp_path)


def test_an_evaluation_job_asks_for_time_by_the_size_of_its_sets(repo, tmp_path):
    """Through the SLURM profile: the pair's `runtime` per set plus `runtime_per_1k` per 1,000
    sampled responses (examples × decoding seeds), read from the set files themselves."""
    import json

    import yaml

    from tests.conftest import grid_config, run_cli, workflow_copy

    root = workflow_copy(tmp_path)
    rows = {"train": 30, "valid": 5, "dolly": 40, "vicuna": 400}
    for name, n in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"instruction": f"Say {i}", "output": str(i)}) + "\n"
                                                   for i in range(n)))
    pair = "gpt2-tiny-s_from_gpt2-tiny-t"
    spec = yaml.safe_load((root / f"config/pairs/{pair}.yaml").read_text())
    spec["resources"] = {"evaluate": {"runtime": 10, "runtime_per_1k": 4}}
    (root / f"config/pairs/{pair}.yaml").write_text(yaml.safe_dump(spec))
    for job, expected in (("set", {"dolly": 10 + 1, "vicuna": 10 + 8}), ("run", {None: 2 * 10 + 9})):
        grid = grid_config(root, pairs=[pair], methods=["fkl"], seeds=[1], sets=["dolly", "vicuna"])
        grid["data"] = {"source": "files", "train": "train.jsonl", "valid": "valid.jsonl",
                        "sets": {"dolly": "dolly.jsonl", "vicuna": "vicuna.jsonl"}}
        grid["evaluation"] = {**grid.get("evaluation", {}), "job": job, "decoding_seeds": [1, 2, 3, 4, 5]}
        (root / "grid.yaml").write_text(yaml.safe_dump(grid))
        dry = run_cli("snakemake", "-n", "--profile", "workflows/profiles/slurm", "--configfile", "grid.yaml", cwd=root)
        assert dry.returncode == 0, dry.stderr[-3000:]
        asked = {}
        for block in re.split(r"^(?=(?:local)?rule \w+:)", dry.stdout + dry.stderr, flags=re.M):
            if re.match(r"rule evaluate(_run)?:", block) and "method=fkl" in block:
                eval_set = re.search(r"set=(\w+)", block)
                asked[eval_set and eval_set.group(1)] = int(re.search(r"runtime=(\d+)", block).group(1))
        # 40 × 5 = 200 responses: 0.8 min, rounded up; 400 × 5 = 2,000: 8 min; both in one job: 2,200: 9 min
        assert asked == expected, (job, asked)
