"""The teacher's stored hidden states (kdbench.teacher_states, `teacher_cache`): a run that reads them
trains to the same bits as one whose teacher runs live; states of other micro-batches, or states
that differ from the live teacher, are not used."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdbench.teacher_states import content_digest, states_path
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
    assert stored["state_digests"].shape == (12, 16)
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

    # States that differ from the live teacher, with digests that fit them (as another machine would write):
    # checked on the first hit and dropped; the run trains to the live teacher's bits.
    wrong = load_file(path)
    wrong["states"] = wrong["states"] + 1e-3
    write_consistent(wrong, path)
    bad_w, bad_m, bad_p, log = train(root)
    assert bad_p["teacher_states"]["used"] is False and "differs from the live teacher" in log
    assert bad_m == live_m and all(torch.equal(bad_w[k], live_w[k]) for k in live_w)
    path.unlink()


def write_consistent(tables, path):
    """Save `tables` with the content digest of each micro-batch's states recomputed."""
    offsets = tables["offsets"].tolist()
    tables["state_digests"] = torch.stack([torch.frombuffer(bytearray(content_digest(tables["states"][a:b])), dtype=torch.uint8)
                                           for a, b in zip(offsets, offsets[1:])])
    save_file(tables, path, metadata={"threads": "1", "device": "cpu"})


def test_a_damaged_states_file_is_caught_on_first_use_and_removed(prepared):
    """One stored micro-batch scaled by 1.05 (its digests left as written): the run stops at the first
    use of that micro-batch with a message naming the file, which is removed so that the workflow
    recomputes it. A truncated file: the same, at the run's start, with no safetensors traceback."""
    root, run = prepared
    path = write_states(root, run)
    tables = load_file(path)
    offsets = tables["offsets"].tolist()
    third = slice(offsets[3], offsets[4])  # the 4th micro-batch: steps 0-2 use the stored states first
    tables["states"][third] = tables["states"][third] * 1.05
    save_file(tables, path, metadata={"threads": "1", "device": "cpu"})
    done = run_cli("kdbench", "train", f"{RUN}/run.yaml", "--threads", "1", cwd=root)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"teacher states {path.relative_to(root)} are damaged" in done.stderr
    assert "stored micro-batch 3 " in done.stderr and "Traceback" not in done.stderr
    assert not path.exists()
    assert [json.loads(line)["step"] for line in (root / RUN / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    whole = write_states(root, run).read_bytes()
    path.write_bytes(whole[:len(whole) // 2])  # a truncated file
    done = run_cli("kdbench", "train", f"{RUN}/run.yaml", "--threads", "1", cwd=root)
    assert done.returncode == 1 and "are damaged: it is unreadable" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not path.exists()
    shutil.rmtree(root / RUN / "checkpoints", ignore_errors=True)


def test_teacher_states_refuses_a_run_without_a_teacher(prepared, tmp_path):
    root, _ = prepared
    resolved = run_cli("kdbench", "resolve", "grid.yaml", PAIR, "sft", "1", cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    (tmp_path / "run.yaml").write_text(resolved.stdout)
    done = run_cli("kdbench", "teacher-states", str(tmp_path / "run.yaml"), str(tmp_path / "s.safetensors"), cwd=root)
    assert done.returncode == 1 and "cannot use stored teacher states" in done.stderr, done.stderr
    assert not (tmp_path / "s.safetensors").exists()
