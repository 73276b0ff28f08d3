"""GPU pinning: concurrent jobs claim disjoint GPUs through kernel-released locks, and a job keeps
the GPUs a scheduler gave it (CUDA_VISIBLE_DEVICES) instead of choosing others."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench import gpus
from kdbench.errors import KDBenchError
from kdbench.gpus import claim, gpu_count, gpu_pool, pinned

SCHEDULER_VARS = ("CUDA_VISIBLE_DEVICES", *gpus.SCHEDULER_JOBS)


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node with 4 GPUs (KDBENCH_GPUS), nothing set by a scheduler, locks under tmp_path."""
    for var in SCHEDULER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KDBENCH_GPUS", "4")
    monkeypatch.setattr(gpus, "LOCK_DIR", tmp_path)
    return tmp_path


def test_claims_are_disjoint_and_released(tmp_path):
    ids = ["0", "1", "2"]
    with claim(2, ids, lock_dir=tmp_path) as first:
        assert first == ["0", "1"]
        with claim(1, ids, lock_dir=tmp_path) as second:
            assert second == ["2"]
            with pytest.raises(KDBenchError, match="no 1 free GPUs within 0.2 s"):
                with claim(1, ids, lock_dir=tmp_path, poll=0.05, timeout=0.2):
                    pass
    with claim(3, ids, lock_dir=tmp_path) as all_three:  # everything was released
        assert all_three == ids


def test_a_killed_holder_releases_its_gpus(tmp_path):
    code = ("import sys; from pathlib import Path; from kdbench.gpus import claim\n"
            f"with claim(2, ['0', '1'], lock_dir=Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(KDBenchError):
        with claim(1, ["0", "1"], lock_dir=tmp_path, poll=0.05, timeout=0.2):
            pass
    holder.kill()
    holder.wait()
    with claim(2, ["0", "1"], lock_dir=tmp_path, timeout=2) as ids:
        assert ids == ["0", "1"]


def test_asking_for_more_gpus_than_the_node_has(node):
    with pytest.raises(KDBenchError, match=r"the run \(training.gpus\) asks for 5 GPUs but this node gives 4"):
        with pinned(5, "the run (training.gpus)"):
            pass
    assert gpu_count() == 4


def test_on_one_node_each_job_sees_only_its_claimed_gpus(node):
    with pinned(2) as first:
        assert first == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        del os.environ["CUDA_VISIBLE_DEVICES"]  # a concurrent job: another process, started without it
        with pinned(1) as second:  # the next free GPU
            assert second == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored


def test_a_machine_without_gpus_runs_on_the_cpu_untouched(node, monkeypatch):
    monkeypatch.setenv("KDBENCH_GPUS", "0")
    with pinned(4) as ids:
        assert ids == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # the user hid every GPU
    with pinned(1) as ids:
        assert ids == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "-1"


def test_a_scheduler_job_keeps_the_gpus_it_was_given(node, monkeypatch):
    """SLURM gave this job GPUs 5 and 7 (of a node whose GPU 0 another kdbench run holds):
    the job uses exactly those, CUDA_VISIBLE_DEVICES untouched, and waits on no lock outside its allocation."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with claim(4, ["0", "1", "5", "7"], lock_dir=node):  # every GPU of the node-wide lock folder is held
        with pinned(2, poll=0.05, timeout=1) as ids:
            assert ids == ["5", "7"] and os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert gpu_pool() == (["5", "7"], node / "slurm-4242", "CUDA_VISIBLE_DEVICES=5,7")


def test_jobs_of_another_allocation_with_the_same_device_ids_do_not_wait(node, monkeypatch):
    """Under cgroups every SLURM job sees its one GPU as `0`: two allocations must not share a lock."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    with pinned(1) as first:
        monkeypatch.setenv("SLURM_JOB_ID", "2")
        with pinned(1, poll=0.05, timeout=0.5) as second:
            assert first == second == ["0"]


def test_jobs_sharing_one_allocation_split_it(node, monkeypatch):
    """A local `snakemake` inside `salloc --gpus=3`: its jobs share the allocation's GPUs disjointly."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,6")
    with pinned(1) as first:
        assert first == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,6")  # what the second job inherits
        with pinned(2) as second:
            assert second == ["3", "6"] and os.environ["CUDA_VISIBLE_DEVICES"] == "3,6"
        with pytest.raises(KDBenchError, match=r"asks for 4 GPUs but CUDA_VISIBLE_DEVICES=2,3,6 gives 3"):
            with pinned(4):
                pass


def test_a_user_restricted_run_claims_only_among_the_listed_gpus(node, monkeypatch):
    """`CUDA_VISIBLE_DEVICES=1,3 snakemake ...` outside a scheduler: the node-wide locks of GPUs 1 and 3."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with claim(1, ["1"], lock_dir=node):  # another run on this node holds GPU 1
        with pinned(1) as ids:
            assert ids == ["3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,3"
    uuids = "GPU-8d1c3e1a-0000,MIG-GPU-8d1c/1/0"  # UUIDs and MIG instances are ids too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuids)
    with pinned(2) as ids:
        assert ids == uuids.split(",")
    assert sorted(p.name for p in Path(node).glob("gpu*MIG*")) == ["gpuMIG-GPU-8d1c_1_0.lock"]


def test_an_evaluation_job_claims_its_gpu_as_training_does(node, tmp_path):
    """`kdbench evaluate` on a node whose GPU 0 another job holds runs on GPU 1 and records it."""
    import json

    from kdbench.evaluate import main
    from tests.unit.test_evaluate import _model, _tokenizer, _write_set

    tokenizer = _tokenizer()
    model_dir = tmp_path / "model"
    _model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "toy.json"
    with claim(1, ["0"], lock_dir=node):
        assert main(["--model", str(model_dir), "--data", str(_write_set(tmp_path / "toy.jsonl")), "--set", "toy",
                     "--run", "r", "--seeds", "10", "--max-new-tokens", "2", "--out", str(out),
                     "--predictions", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads(out.read_text())["cuda_visible_devices"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
