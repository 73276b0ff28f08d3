"""The workflow on a real SLURM (a one-node cluster, tests/cluster/slurm_up.sh) through
`snakemake --profile workflows/profiles/slurm`, the profile as shipped plus tests/cluster/profile
(status by squeue, short polling). A tiny grid (the tiny GPT-2 pair, sft and fkl, one set):

- its table is byte-identical to the one the local profile makes;
- every GPU job is submitted to the `gpu` partition with `--gpus` and computes with the GPUs SLURM
  gave it (CUDA_VISIBLE_DEVICES kept, never chosen by the job); cheap steps never queue;
- a training job cancelled by `scancel` mid-training is resubmitted (the profile's retries) and
  resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
import yaml

from tests.conftest import BIN, REPO, grid_config, run_cli, workflow_copy

pytestmark = pytest.mark.cluster
PAIR = "gpt2-slurm-s_from_gpt2-slurm-t"
CANCELLED = "fkl"  # the run whose training job is scancel'ed
TRAIN_JOB = f"rule_train_wildcards_{PAIR}_{CANCELLED}_1"  # its SLURM job's comment (the plugin's: rule and wildcards)
TABLES = ("main.md", "main.csv", f"main/{PAIR}/main.md", f"main/{PAIR}/main.csv")
LOCAL_RULES = ("resolve_run", "eval_protocol", "teacher_states_spec", "tables", "combine_table", "claims", "plots")


def tiny_grid(root):
    pair = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    del pair["teacher"]["sft"]  # the random teacher is enough to distil from (one training job less)
    pair["training"].update(steps=40, micro_batch_size=8, log_every=1, checkpoint_every=10)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    cfg = grid_config(root, pairs=[PAIR], methods=["sft", CANCELLED], sets=["dolly"])
    cfg["data"].update(n_train=300, n_eval=6)
    cfg["evaluation"].update(decoding_seeds=[10, 20], max_new_tokens=12)
    (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
    return root


def squeue(env, *fields):
    """Every job the test cluster knows (finished ones too: MinJobAge=3600), as dicts of `fields`."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-O", ",".join(f"{f}:|" for f in fields)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, (v.strip() for v in line.split("|")))) for line in out.splitlines() if line.strip()]


def snakemake(root, env, *profiles):
    """`snakemake --profile …` on the grid in `root`, in the background; output in root/snakemake.log."""
    with (root / "snakemake.log").open("w") as log:
        return subprocess.Popen(["snakemake", *(a for p in profiles for a in ("--profile", p)), "--configfile", "grid.yaml"],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    """The grid with the local profile and, at the same time, on SLURM, where one training job is
    cancelled after its first checkpoint."""
    started = time.monotonic()
    local, root = (tiny_grid(workflow_copy(tmp_path_factory.mktemp(name))) for name in ("local", "slurm"))
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, **slurm, "PATH": f"{BIN}{os.pathsep}{slurm['PATH']}",
           "KDBENCH_GPU_LOCKS": str(root / "gpu-locks")}  # job ids repeat across test clusters: locks of their own
    flows = {"slurm": snakemake(root, env, "workflows/profiles/slurm", str(REPO / "tests/cluster/profile")),
             "local": snakemake(local, {**os.environ, "PATH": path}, "workflows/profiles/local")}
    run_dir = root / f"results/runs/{PAIR}/{CANCELLED}/seed1"
    cancelled, took, saved = None, {}, 0
    try:
        deadline = time.monotonic() + 1500
        while len(took) < 2 and time.monotonic() < deadline:
            took.update({k: time.monotonic() - started for k, f in flows.items() if k not in took and f.poll() is not None})
            if cancelled is None and list(run_dir.glob("checkpoints/*/step00000010/kdbench_complete.json")):
                running = [j["JobID"] for j in squeue(env, "JobID", "Comment", "State")
                           if j["Comment"] == TRAIN_JOB and j["State"] == "RUNNING"]
                if running and not (run_dir / "model").exists():
                    subprocess.run(["scancel", running[0]], env=env, check=True)
                    cancelled = running[0]
                    saved = max(completed_steps(run_dir))  # training runs on while scancel lands (50 steps/s)
            time.sleep(0.2)
    finally:
        for flow in flows.values():
            if flow.poll() is None:
                flow.terminate()
                flow.wait(timeout=60)
    for name, where in (("local", local), ("slurm", root)):
        assert flows[name].returncode == 0, f"{name} run:\n" + (where / "snakemake.log").read_text()[-6000:]
    assert cancelled, "never saw the training job running after its first checkpoint"
    return {"local": local, "slurm": root, "env": env, "cancelled": cancelled, "took": took, "saved": saved}


def completed_steps(run_dir):
    return [int(p.parent.name.removeprefix("step")) for p in run_dir.glob("checkpoints/*/step*/kdbench_complete.json")]


def test_the_slurm_table_is_byte_identical_to_the_local_one(runs):
    for name in TABLES:
        local, slurm = (runs[k] / "results/tables" / name for k in ("local", "slurm"))
        assert slurm.read_bytes() == local.read_bytes(), name
    rows = [line for line in (runs["slurm"] / "results/tables/main.md").read_text().splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["teacher", "sft", CANCELLED]
    print(f"cluster test: local run {runs['took']['local']:.0f} s, SLURM run {runs['took']['slurm']:.0f} s (side by side)")


def test_gpu_jobs_get_gpus_from_slurm_and_keep_them(runs):
    jobs = squeue(runs["env"], "JobID", "Comment", "Partition", "tres-per-job", "State")
    gpu_jobs = [j for j in jobs if j["Comment"].startswith(("rule_train", "rule_teacher_states", "rule_evaluate"))]
    assert {j["Comment"].split("_wildcards")[0] for j in gpu_jobs} == {"rule_train", "rule_teacher_states", "rule_evaluate_run"}
    assert all(j["Partition"] == "gpu" and "gpu:1" in j["tres-per-job"] for j in gpu_jobs), gpu_jobs
    cpu_jobs = [j for j in jobs if j not in gpu_jobs]
    assert cpu_jobs and all(j["Partition"] == "cpu" and "gpu" not in j["tres-per-job"] for j in cpu_jobs), cpu_jobs
    submitted = {j["Comment"].split("_wildcards")[0].removeprefix("rule_") for j in jobs}
    assert not submitted & set(LOCAL_RULES), submitted  # cheap steps never queue
    for root, given in ((runs["slurm"], {"0", "1"}), (runs["local"], {None})):  # local: no GPU on this machine
        for method, seed in (("sft", 1), (CANCELLED, 1)):
            device = json.loads((root / f"results/runs/{PAIR}/{method}/seed{seed}/provenance.json").read_text())["device"]
            assert device["cuda_visible_devices"] in given, (method, device)
            assert device["cuda_visible_devices"] == device["scheduler_gpus"], (method, device)
        for method, seed in (("teacher", 0), ("sft", 1), (CANCELLED, 1)):
            evaluation = json.loads((root / f"results/evals/{PAIR}/{method}/seed{seed}/dolly.json").read_text())
            assert evaluation["cuda_visible_devices"] in given, (method, evaluation)


def test_a_scancelled_training_job_is_resubmitted_and_resumes(runs):
    states = {j["JobID"]: j["State"] for j in squeue(runs["env"], "JobID", "State")}
    assert states[runs["cancelled"]] == "CANCELLED"
    trains = [j for j in squeue(runs["env"], "JobID", "Comment", "State") if j["Comment"] == TRAIN_JOB]
    assert sorted(j["State"] for j in trains) == ["CANCELLED", "COMPLETED"]  # one resubmission
    train_log = (runs["slurm"] / f"results/runs/{PAIR}/{CANCELLED}/seed1/train.log").read_text()
    resumed = [int(s) for s in re.findall(r"kdbench: resuming \S+ at step (\d+)", train_log)]
    # from the last checkpoint complete when scancel was sent, or one the job finished before it died
    assert len(resumed) == 1 and runs["saved"] <= resumed[0] < 40 and resumed[0] % 10 == 0, (runs["saved"], train_log[-2000:])
    metrics = (runs["slurm"] / f"results/runs/{PAIR}/{CANCELLED}/seed1/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(40))  # none lost with the cancelled job's outputs
