"""Pair keys for training at paper scale: `training.global_batch_size` (accumulation derived from the
GPU count, checked before any job and at job start), `teacher.zero3` / `teacher.offload` (the teacher
as a ZeRO-3 inference engine) and `training.tensorboard` (checked at job start)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from kdbench.config import Grid, accumulation_steps
from kdbench.errors import KDBenchError
from kdbench.train import _job_settings

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"
REAL = ["qwen2-1.5b_from_qwen2-7b", "openllama2-3b_from_openllama2-7b", "gpt2-base_from_gpt2-xl"]


@pytest.mark.parametrize("global_batch, micro, world, accumulation", [
    (128, 32, 4, 1), (128, 32, 2, 2), (128, 32, 1, 4), (128, 16, 4, 2), (32, 8, 4, 1), (32, 8, 1, 4)])
def test_accumulation_is_derived_from_the_global_batch(global_batch, micro, world, accumulation):
    training = {"global_batch_size": global_batch, "micro_batch_size": micro, "gradient_accumulation_steps": 7}
    assert accumulation_steps(training, world, "p.yaml") == accumulation


def test_without_a_global_batch_the_configured_accumulation_stays():
    assert accumulation_steps({"micro_batch_size": 8, "gradient_accumulation_steps": 3}, 4, "p.yaml") == 3


def test_a_global_batch_that_does_not_divide_names_the_numbers():
    with pytest.raises(KDBenchError) as err:
        accumulation_steps({"global_batch_size": 128, "micro_batch_size": 32}, 3, "config/pairs/p.yaml")
    message = str(err.value)
    assert message.startswith("config/pairs/p.yaml: key 'training.global_batch_size': 128 is not a multiple of "
                              "micro_batch_size 32 × 3 GPU(s) = 96")
    assert "Change global_batch_size to a multiple of 96" in message and "training.gpus" in message


def job(**training) -> dict:
    return {"pair_file": "config/pairs/p.yaml",
            "training": {"micro_batch_size": 8, "gradient_accumulation_steps": 1, **training}}


def test_the_job_derives_the_accumulation_for_its_own_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = job(global_batch_size=32)
    _job_settings(run)
    assert run["training"]["gradient_accumulation_steps"] == 2
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(KDBenchError, match=r"config/pairs/p\.yaml: key 'training.global_batch_size': 32 is not a "
                                           r"multiple of micro_batch_size 8 × 3 GPU\(s\) = 24"):
        _job_settings(job(global_batch_size=32))
    unchanged = job(gradient_accumulation_steps=5)
    _job_settings(unchanged)
    assert unchanged["training"]["gradient_accumulation_steps"] == 5


def test_tensorboard_without_the_package_fails_at_job_start(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # `import tensorboard` now fails
    with pytest.raises(KDBenchError) as err:
        _job_settings(job(tensorboard=True))
    assert str(err.value).startswith("config/pairs/p.yaml: training.tensorboard is true, but the tensorboard "
                                     "package is not installed")
    assert 'pip install -e ".[tensorboard]"' in str(err.value)
    _job_settings(job(tensorboard=False))  # not asked for: no check


# --- before any job: the pair file ---------------------------------------------------------------------

@pytest.fixture
def workdir(repo, tmp_path):
    for name in ("config", "methods", "workflows"):
        shutil.copytree(repo / name, tmp_path / name)
    return tmp_path


def grid_with_pair(workdir, edit, pair=PAIR) -> Grid:
    path = workdir / "config" / "pairs" / f"{pair}.yaml"
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    cfg = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    del cfg["tables"]
    # no teacher_cache (config/tiny.yaml's): a teacher.zero3 edit leaves no run that could read the states
    cfg.update(pairs=[pair], methods=["sft", "fkl"], seeds=[1], sets=["dolly"], teacher_cache=False)
    return Grid(cfg, "test.yaml", workdir)


def training(**keys):
    return lambda p: p["training"].update(keys)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: (p["training"].pop("gradient_accumulation_steps"), p["training"].update(
        gpus=3, micro_batch_size=32, global_batch_size=128)),
     r"key 'training.global_batch_size': 128 is not a multiple of micro_batch_size 32 × 3 GPU\(s\) = 96"),
    (training(global_batch_size=64),
     r"key 'training.gradient_accumulation_steps': training.global_batch_size is given, .*give only one of the two"),
    (lambda p: (p["training"].pop("gradient_accumulation_steps"), p["training"].update(global_batch_size=64),
                p["teacher"]["sft"].update(gradient_accumulation_steps=2)),
     (r"key 'teacher.sft.gradient_accumulation_steps': training.global_batch_size is given and applies to the "
      r"teacher SFT run too.*teacher.sft.global_batch_size for the SFT run")),
    (lambda p: p["teacher"]["sft"].update(micro_batch_size=16, global_batch_size=24),
     r"key 'teacher.sft.global_batch_size': 24 is not a multiple of micro_batch_size 16 × 1 GPU\(s\) = 16"),
    (lambda p: p["teacher"].update(offload="cpu"), r"key 'teacher.offload': .*needs teacher.zero3: true"),
    (lambda p: p["teacher"].update(zero3="yes"), r"key 'teacher.zero3': 'yes' is not of type 'boolean'"),
    (lambda p: p["teacher"].update(zero3=True, offload="nvme"), r"key 'teacher.offload': 'nvme' is not one of"),
    (lambda p: p["student"].update(zero3=True), r"key 'student'.*'zero3' was unexpected"),
    (training(tensorboard="on"), r"key 'training.tensorboard': 'on' is not of type 'boolean'"),
    (training(global_batch_size=0), r"key 'training.global_batch_size': 0 is less than the minimum of 1"),
])
def test_bad_scale_keys_fail_before_any_job(workdir, edit, needle):
    with pytest.raises(KDBenchError, match=needle) as err:
        grid_with_pair(workdir, edit)
    assert str(err.value).startswith(str(workdir / "config" / "pairs" / f"{PAIR}.yaml"))


def test_resolved_runs_carry_the_derived_accumulation_and_the_teacher_engine(workdir):
    def edit(p):
        p["training"].pop("gradient_accumulation_steps", None)
        p["training"].update(global_batch_size=64, gpus=2)  # micro-batch 16 × 2 GPUs × 2
        p["teacher"].update(zero3=True, offload="cpu")
        p["teacher"]["sft"].update(global_batch_size=16)  # inherits micro-batch 16 and 2 GPUs: 32 does not divide 16
    with pytest.raises(KDBenchError, match=r"key 'teacher.sft.global_batch_size': 16 .* 16 × 2 GPU\(s\) = 32"):
        grid_with_pair(workdir, edit)

    def edit_ok(p):
        edit(p)
        p["teacher"]["sft"]["global_batch_size"] = 96  # accumulation 3
    g = grid_with_pair(workdir, edit_ok)
    fkl = g.resolve_run(PAIR, "fkl", 1)
    assert fkl["training"]["gradient_accumulation_steps"] == 2 and fkl["training"]["global_batch_size"] == 64
    assert fkl["teacher_zero3"] == {"offload": "cpu"}
    assert "teacher_zero3" not in g.resolve_run(PAIR, "sft", 1)  # no teacher in the run
    teacher = g.resolve_run(PAIR, "teacher", 0)
    assert teacher["training"]["gradient_accumulation_steps"] == 3 and "teacher_zero3" not in teacher


def test_the_paper_pairs_keep_their_batches_on_any_gpu_count(workdir):
    cfg = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    del cfg["tables"]
    cfg.update(pairs=REAL, methods=["fkl"], seeds=[1], sets=["dolly"])
    g = Grid(cfg, "test.yaml", workdir)
    expected = {"qwen2-1.5b_from_qwen2-7b": (32, 16), "openllama2-3b_from_openllama2-7b": (32, 16),
                "gpt2-base_from_gpt2-xl": (128, 128)}
    for name, (student_batch, teacher_batch) in expected.items():
        for label, batch in (("fkl", student_batch), ("teacher", teacher_batch)):
            tr = g.resolve_run(name, label, 1)["training"]
            assert tr["gpus"] == 4 and tr["global_batch_size"] == batch
            assert tr["micro_batch_size"] * tr["gradient_accumulation_steps"] * 4 == batch
            assert accumulation_steps(tr, 1, name) * tr["micro_batch_size"] == batch  # on one GPU
        assert g.pairs[name]["teacher"]["zero3"] is False  # given, or the default filled in
