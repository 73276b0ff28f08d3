"""The teacher's stored hidden states (kdbench.teacher_states, `teacher_cache`): a run that reads them
trains to the same bits as one whose teacher runs live; states of other micro-batches, or states
that differ from the live teacher, are not used."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdbench.teacher_states import states_path
from tests.conftest import prepare_run, run_cli, workflow_copy

PAIR = "gpt2-states-s_from_gpt2-states-t"
RUN = f"results/runs/{PAIR}/fkl+adakd/seed1"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("states"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        pair["training"].update(steps=12, micro_batch_size=4, log_every=1)
    run = prepare_run(root, PAIR, "fkl+adakd", edit)
    return root, run


def train(root, run_dir=RUN):
    done = run_cli("kdbench", "train", f"{run_dir}/run.yaml", "--threads", "1", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(root / run_dir / "model/model.safetensors")
    metrics = [json.loads(line) for line in (root / run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in metrics:
        record.pop("tokens_per_s")
    provenance = json.loads((root / run_dir / "provenance.json").read_text())
    for name in ("model", "checkpoints"):  # the next run starts afresh
        shutil.rmtree(root / run_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "provenance.json"):
        (root / run_dir / name).unlink()
    return weights, metrics, provenance, done.stderr


def write_states(root, run, *extra):
    path = states_path(run)
    done = run_cli("kdbench", "teacher-states", f"{RUN}/run.yaml", str(path), "--threads", "1", *extra, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / path


def test_stored_states_train_the_same_bits_as_the_live_teacher(prepared):
    root, run = prepared
    live_w, live_m, live_p, _ = train(root)
    assert live_p["teacher_states"] is None
    path = write_states(root, run)
    stored = load_file(path)
    assert stored["digests"].shape == (12, 16) and stored["offsets"][-1] == stored["states"].shape[0]
    assert stored["states"].shape[1] == 128  # the teacher's hidden size, response rows only

    cached_w, cached_m, cached_p, log = train(root)
    assert cached_p["teacher_states"] == {"file": str(states_path(run)), "used": True, "hits": 12, "misses": 0,
                                          "checked": 1}
    assert "hidden states come from" in log
    assert cached_m == live_m
    assert cached_w.keys() == live_w.keys() and all(torch.equal(cached_w[k], live_w[k]) for k in live_w)
    moved = load_file(root / f"results/models/{PAIR}/student-init/model.safetensors")
    assert any(not torch.equal(moved[k], live_w[k]) for k in live_w)  # training moved the weights

    # States of only the first 5 micro-batches: the other 7 run the teacher live, to the same bits.
    path.unlink()
    write_states(root, run, "--micro-batches", "5")
    part_w, part_m, part_p, _ = train(root)
    assert (part_p["teacher_states"]["hits"], part_p["teacher_states"]["misses"]) == (5, 7)
    assert part_m == live_m and all(torch.equal(part_w[k], live_w[k]) for k in live_w)

    # States that differ from the live teacher (here: perturbed) are checked on the first hit and dropped.
    wrong = load_file(path)
    wrong["states"] = wrong["states"] + 1e-3
    save_file(wrong, path, metadata={"threads": "1", "device": "cpu"})
    bad_w, bad_m, bad_p, log = train(root)
    assert bad_p["teacher_states"]["used"] is False and "differs from the live teacher" in log
    assert bad_m == live_m and all(torch.equal(bad_w[k], live_w[k]) for k in live_w)
    path.unlink()


def test_teacher_states_refuses_a_run_without_a_teacher(prepared, tmp_path):
    root, _ = prepared
    resolved = run_cli("kdbench", "resolve", "grid.yaml", PAIR, "sft", "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    (tmp_path / "run.yaml").write_text(resolved.stdout)
    done = run_cli("kdbench", "teacher-states", str(tmp_path / "run.yaml"), str(tmp_path / "s.safetensors"), cwd=root)
    assert done.returncode == 1 and "cannot use stored teacher states" in done.stderr, done.stderr
    assert not (tmp_path / "s.safetensors").exists()
