"""Two data-parallel ranks on the CPU (gloo) through the real DeepSpeed launcher (`kdbench train
--cpu-ranks 2`): rank 0 alone writes metrics.jsonl, and its statistics are those of every rank's
micro-batches (selected tokens summed, temperatures' mean, min and max over both ranks), checked
against what each rank's losses report (a test hook, tests/smoke/multirank_hooks.py). Validation
selection (`select: valid_rougeL`) runs on both ranks and leaves one best-weights file, no
temporary file."""

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import prepare_run, run_cli, workflow_copy

PAIR = "gpt2-ranks-s_from_gpt2-ranks-t"
LABEL = "fkl+adakd"
RUN = f"results/runs/{PAIR}/{LABEL}/seed1"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = workflow_copy(tmp_path_factory.mktemp("ranks"))

    def edit(pair):
        del pair["teacher"]["sft"]  # the random teacher is enough to distil from
        pair["training"].update(steps=3, micro_batch_size=2, gradient_accumulation_steps=2, log_every=1,
                                checkpoint_every=0, select="valid_rougeL", select_every=2, select_examples=2,
                                sample_max_new_tokens=8)
    prepare_run(root, PAIR, LABEL, edit, n_train=40)
    parts = root / "parts"
    parts.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("KDBENCH_TEST_HOOKS", str(Path(__file__).with_name("multirank_hooks.py")))
    mp.setenv("KDBENCH_RECORD_PARTS", str(parts))
    mp.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU ranks on a GPU machine too
    try:
        done = run_cli("kdbench", "train", f"{RUN}/run.yaml", "--cpu-ranks", "2", "--threads", "1", cwd=root)
    finally:
        mp.undo()
    assert done.returncode == 0, done.stderr[-4000:]
    return root, parts


def test_rank0_alone_writes_metrics_with_statistics_over_both_ranks(two_ranks):
    root, parts = two_ranks
    records = [json.loads(line) for line in (root / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]  # one writer: each step once
    per_rank = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(parts.glob("*.jsonl"))}
    assert sorted(per_rank) == ["rank0", "rank1"] and all(len(v) == 3 * 2 for v in per_rank.values())
    for record in records:
        mine = defaultdict(list)
        for rank, micro in per_rank.items():
            for m in micro:
                if m["step"] == record["step"]:
                    mine[rank].append(m)
        tokens = {rank: sum(m["tokens"] for m in ms) for rank, ms in mine.items()}
        selected = {rank: sum(m["selected"] for m in ms) for rank, ms in mine.items()}
        taus = [t for ms in mine.values() for m in ms for t in m["tau"]]
        assert record["tokens"] == sum(tokens.values()) and isinstance(record["tokens"], int)
        assert record["selected"] == sum(selected.values()) and min(selected.values()) > 0
        assert max(selected.values()) < record["selected"]  # one rank's count is not the step's
        assert record["tau_mean"] == pytest.approx(sum(taus) / len(taus), rel=1e-6)
        assert (record["tau_min"], record["tau_max"]) == pytest.approx((min(taus), max(taus)), rel=1e-6)
        assert all(math.isfinite(record[k]) for k in ("loss", "ce", "kd_loss"))
    assert [r["step"] for r in records if "valid_rougeL" in r] == [1, 2]


def test_both_ranks_finish_with_one_model_and_no_temporary_file(two_ranks):
    root, _ = two_ranks
    run_dir = root / RUN
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["selected"]["rule"] == "valid_rougeL" and provenance["selected"]["step"] in (2, 3)
    assert (run_dir / "model/model.safetensors").is_file() and (run_dir / "best_trainable.safetensors").is_file()
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".model.tmp"))
