"""No config value is ever interpreted by a shell: a tiny grid whose results directory, data files
and lm-eval task file all sit under names holding spaces, quotes, `$(...)`, backticks and `;` runs
to its tables, and none of the commands hidden in those names ran. Then the finished checkout,
copied elsewhere, re-plans nothing and resumes from its checkpoints (relocatable results)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import grid_config, local_arc_task, run_cli, workflow_copy

PAIR = "gpt2-quoted-s_from_gpt2-quoted-t"
# Each would leave a file named PWNED<n> in the job's working directory if a shell ran it.
ODD = """odd 'q' "d" $(touch PWNED1) `touch PWNED2` ; touch PWNED3"""


def _odd_grid(root: Path) -> dict:
    """The grid config: results, data (source: files) and one lm-eval task YAML under ODD names."""
    from kdbench.datagen import generate

    data = generate(root / f"data {ODD}", seed=0, n_train=120, n_valid=4, n_eval=4)
    local_arc_task(root)  # root/mc/arc_local.{yaml,jsonl}: moved under an odd folder
    tasks = root / f"tasks {ODD}"
    tasks.mkdir()
    (tasks / "arc_local.jsonl").write_bytes((root / "mc/arc_local.jsonl").read_bytes())
    task = yaml.safe_load((root / "mc/arc_local.yaml").read_text())
    task["dataset_kwargs"]["data_files"]["test"] = f"tasks {ODD}/arc_local.jsonl"
    (tasks / "arc_local.yaml").write_text(yaml.safe_dump(task))

    pair = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    pair["teacher"]["sft"]["steps"] = 6
    pair["training"].update(steps=4, micro_batch_size=4, log_every=2, checkpoint_every=2)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    cfg = grid_config(root, pairs=[PAIR], methods=["fkl"], sets=["dolly"])
    rel = {name: str(Path(path).relative_to(root)) for name, path in data.items()}
    cfg["results"] = f"res {ODD}"
    cfg["data"] = {"source": "files", "train": rel["train"], "valid": rel["valid"], "sets": {"dolly": rel["dolly"]}}
    cfg["evaluation"].update(decoding_seeds=[10], max_new_tokens=4, lm_eval_tasks=[f"tasks {ODD}/arc_local.yaml"])
    return cfg


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """The odd grid, run to its tables; returns (checkout, the run's log)."""
    root = workflow_copy(tmp_path_factory.mktemp("checkout"))
    (root / "odd.yaml").write_text(yaml.safe_dump(_odd_grid(root)))
    done = run_cli("snakemake", "--cores", "2", "--configfile", "odd.yaml", cwd=root, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return root, log


def test_odd_names_reach_every_job_as_plain_words(odd):
    root, log = odd
    assert sorted(p.name for p in root.parent.rglob("PWNED*") if p.is_file()) == [], "a shell ran a config value"
    for rule in ("teacher_states", "train", "evaluate_run", "lm_eval", "tables", "lm_eval_table", "plots"):
        assert f"rule {rule}:" in log, rule  # each shell line met the odd names

    res = root / f"res {ODD}"
    table = pd.read_csv(res / "tables/main.csv").set_index(["method", "set"])
    for method in ("teacher", "fkl"):  # each cell is its evaluation's mean over the decoding seeds
        seed = 0 if method == "teacher" else 1
        result = json.loads((res / f"evals/{PAIR}/{method}/seed{seed}/dolly.json").read_text())
        scores = [s["rougeL"] for s in result["per_seed"].values()]
        assert table.loc[(method, "dolly"), "mean"] == pytest.approx(sum(scores) / len(scores))
    lm = pd.read_csv(res / f"tables/lm_eval/{PAIR}.csv")
    assert set(lm["method"]) == {"teacher", "fkl"} and "arc_local" in set(lm["task"])
    assert re.search(r"^\| teacher ", (res / "tables/main.md").read_text(), re.M)


def test_a_copied_checkout_replans_nothing_and_its_checkpoints_resume(odd, tmp_path):
    """The finished checkout copied elsewhere (files, results and Snakemake's records, times kept):
    the dry run there has nothing to do, the run config (and so the checkpoint fingerprint) is the
    same, and a run whose model is lost resumes there from the checkpoint written here."""
    from kdbench.checkpoints import fingerprint

    root, _ = odd
    moved = tmp_path / "moved checkout"
    shutil.copytree(root, moved, symlinks=True)
    dry = run_cli("snakemake", "-n", "--configfile", "odd.yaml", cwd=moved)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]

    run_dir = moved / f"res {ODD}/runs/{PAIR}/fkl/seed1"
    resolved = run_cli("kdbench", "resolve", "odd.yaml", PAIR, "fkl", "1", cwd=moved)
    assert resolved.returncode == 0, resolved.stderr[-2000:]
    run = yaml.safe_load(resolved.stdout)
    assert run == yaml.safe_load((run_dir / "run.yaml").read_text())  # resolved there == written here
    assert (run_dir / "checkpoints" / fingerprint(run) / "step00000002" / "kdbench_complete.json").is_file()
    shutil.rmtree(run_dir / "model")
    again = run_cli("snakemake", "--cores", "1", "--configfile", "odd.yaml", "--",
                    str((run_dir / "model").relative_to(moved)), cwd=moved, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "resuming" in (run_dir / "train.log").read_text() and "at step 2" in (run_dir / "train.log").read_text()


def test_the_report_captions_each_item_with_its_source(odd):
    """`snakemake --report`: every item has its caption (workflows/report/*.rst), the pair filled in."""
    root, _ = odd
    done = run_cli("snakemake", "--configfile", "odd.yaml", "--report", "report.html", cwd=root)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    html = (root / "report.html").read_text(errors="replace")
    captions = {"table": "every pair of the grid stacked", "significance": "by a paired bootstrap over the evaluation",
                "claims": "measured over every run of the grid", "plot_latf": "the share of tokens the token policy kept",
                "plot_curves": "the cross-entropy against the labels", "plot_tau": "the per-token distillation temperature",
                "plot_published": "one panel per evaluation set", "lm_eval": "each lm-eval task of"}
    assert sorted(captions) == sorted(p.stem for p in (root / "workflows/report").glob("*.rst"))
    for name, words in captions.items():
        assert words in (root / f"workflows/report/{name}.rst").read_text() and words in html, name
    assert "{{ snakemake" not in html and f"{PAIR}</span></tt>: the training loss" in html
