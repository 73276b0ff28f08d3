"""The whole default flow on a smaller grid: data → tokenizer → teacher SFT → sft/fkl/fkl+adakd →
evaluation → the main table, through the real Snakefile and the `kdbench` console script."""

import json
import os
import re
import shutil

import pandas as pd
import pytest
import yaml

from tests.conftest import grid_config, local_arc_task, run_cli, workflow_copy

PAIR = "gpt2-micro-s_from_gpt2-micro-t"
SETS = ["dolly", "selfinst", "vicuna", "sni", "unni"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A partial grid first (sft and fkl), then the whole grid on the same results directory."""
    root = workflow_copy(tmp_path_factory.mktemp("flow"))
    pair = yaml.safe_load((root / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml").read_text())
    pair["teacher"]["sft"]["steps"] = 60
    pair["training"].update(steps=30, micro_batch_size=8, log_every=5, sample_max_new_tokens=16, checkpoint_every=10)
    (root / f"config/pairs/{PAIR}.yaml").write_text(yaml.safe_dump(pair))
    cfg = grid_config(root, pairs=[PAIR], methods=["sft", "fkl", "fkl+adakd"])
    cfg["data"].update(n_train=400, n_eval=6)
    cfg["evaluation"].update(decoding_seeds=[10, 20], max_new_tokens=12)
    (root / "smoke.yaml").write_text(yaml.safe_dump(cfg))
    partial = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", "--config", "methods=[sft,fkl]",
                      cwd=root, timeout=1200)
    assert partial.returncode == 0, partial.stderr[-4000:]
    PARTIAL["table"] = (root / "results/tables/main.md").read_text()
    PARTIAL["mtimes"] = _mtimes(root)
    full = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", cwd=root, timeout=1200)
    assert full.returncode == 0, full.stderr[-4000:]
    PARTIAL["full_log"] = full.stdout + full.stderr
    return root


PARTIAL: dict = {}


def trained_methods(log):
    """The method label of every train job a Snakemake log lists."""
    return re.findall(r"rule train:.*?wildcards: pair=[^,]+, method=([^,]+),", log, re.S)


def _mtimes(root):
    """Modification times of every training and evaluation output."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for d in ("runs", "evals")
            for p in (root / "results" / d).rglob("*") if p.is_file()}


def test_table_has_every_method_and_set_filled(flow):
    table = (flow / "results/tables/main.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["teacher", "sft", "fkl", "fkl+adakd"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        cell = r"\d+\.\d\d ± \d+\.\d\d"  # ours only: no published numbers beside a tiny pair
        assert len(cells) == 6 and all(re.fullmatch(cell, c) for c in cells), row
    csv = pd.read_csv(flow / "results/tables/main.csv")
    assert set(csv["set"]) == {*SETS, "Avg"} and (csv.loc[csv["set"] != "Avg", "n"] == 2).all()


def test_each_run_trained_and_recorded_provenance(flow):
    for method in ("sft", "fkl", "fkl+adakd"):
        run = flow / f"results/runs/{PAIR}/{method}/seed1"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        late = sum(m["loss"] for m in metrics[-3:]) / 3
        assert late < 0.9 * metrics[0]["loss"], (method, metrics[0]["loss"], late)
        assert metrics[-1]["tokens_per_s"] > 0
        prov = json.loads((run / "provenance.json").read_text())
        assert prov["run"]["method"] == method and prov["packages"]["deepspeed"]
        assert (run / "model" / "model.safetensors").is_file()
    adakd = [json.loads(line) for line in (flow / f"results/runs/{PAIR}/fkl+adakd/seed1/metrics.jsonl").open()]
    assert all("latf_ratio" in m and 0.607 <= m["tau_min"] <= m["tau_max"] <= 1.649 for m in adakd)
    resolved = yaml.safe_load((flow / f"results/runs/{PAIR}/fkl+adakd/seed1/run.yaml").read_text())
    assert [p["key"] for p in resolved["method"]["policies"]] == ["adakd"]


def test_the_students_read_one_shared_teacher_states_file(flow):
    """teacher_cache (on in config/tiny.yaml): fkl, trained in the partial grid, and fkl+adakd, added
    by the full one, read the same stored teacher states for all 30 micro-batches; SFT has none."""
    files = sorted((flow / f"results/teacher_states/{PAIR}/seed1").glob("*.safetensors"))
    assert len(files) == 1 and files[0].with_suffix(".yaml").is_file()
    for method in ("fkl", "fkl+adakd"):
        used = json.loads((flow / f"results/runs/{PAIR}/{method}/seed1/provenance.json").read_text())["teacher_states"]
        assert used == {"file": str(files[0].relative_to(flow)), "used": True, "hits": 30, "misses": 0, "checked": 1}
    assert json.loads((flow / f"results/runs/{PAIR}/sft/seed1/provenance.json").read_text())["teacher_states"] is None
    assert "rule teacher_states:" not in PARTIAL["full_log"]  # the partial grid's file served fkl+adakd too


def test_a_partial_grid_draws_the_whole_table_with_missing_cells_marked(flow):
    rows = {line.split("|")[1].strip(): line for line in PARTIAL["table"].splitlines() if line.startswith("| ")}
    assert re.search(r"\d+\.\d\d ±", rows["fkl"])
    cells = [c.strip() for c in rows["fkl+adakd"].split("|")[2:-1]]
    assert len(cells) == 6 and set(cells) == {"–"}  # not run yet: marked, not dropped


def test_the_full_grid_after_a_partial_one_reuses_every_finished_cell(flow):
    before, after = PARTIAL["mtimes"], _mtimes(flow)
    assert before and all(after[path] == mtime for path, mtime in before.items())
    assert trained_methods(PARTIAL["full_log"]) == ["fkl+adakd"]


def test_editing_a_method_file_reruns_only_its_runs(flow):
    plugin = flow / "methods/adakd.py"
    text, stat = plugin.read_bytes(), plugin.stat()
    try:
        plugin.write_bytes(text + b"\n# edited\n")
        dry = run_cli("snakemake", "-n", "--configfile", "smoke.yaml", cwd=flow)
    finally:
        plugin.write_bytes(text)
        os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert trained_methods(dry.stdout) == ["fkl+adakd"]


def test_second_invocation_has_nothing_to_do(flow):
    again = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", cwd=flow)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_bad_config_fails_before_any_job(flow):
    bad = run_cli("snakemake", "-n", "--configfile", "smoke.yaml", "--config", "methods=[fkl,fkk]", cwd=flow)
    assert bad.returncode != 0
    assert "unknown method 'fkk'. Known:" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr + bad.stdout


def test_lm_eval_tables_every_seed_and_reruns_when_task_data_change(flow):
    """evaluation.lm_eval_tasks: a kdbench task and a stock multiple-choice task on a local file, on
    the teacher and fkl; the table has every cell, the sampled task every decoding seed with the scores
    of the run's own evaluation, the report shows it, and editing the local data reruns exactly the
    lm-eval jobs."""
    local_arc_task(flow)
    (flow / "lm_eval.yaml").write_text(yaml.safe_dump({"evaluation": {"lm_eval_tasks": ["kdbench_gen_dolly",
                                                                                        "mc/arc_local.yaml"]}}))
    args = ("--configfile", "smoke.yaml", "lm_eval.yaml", "--config", "methods=[fkl]")
    done = run_cli("snakemake", "--cores", "2", *args, "--", "lm_eval_all", cwd=flow)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((flow / f"results/lm_eval/{PAIR}/fkl/seed1.json").read_text())
    dolly, arc = result["tasks"]["kdbench_gen_dolly"], result["tasks"]["arc_local"]
    assert list(dolly["per_seed"]) == ["10", "20"] and dolly["generation_kwargs"]["max_gen_toks"] == 12
    assert list(arc["per_seed"]) == ["10"] and arc["decoding"] == "scored"
    ours = json.loads((flow / f"results/evals/{PAIR}/fkl/seed1/dolly.json").read_text())["per_seed"]
    assert {seed: score["rougeL"] for seed, score in dolly["per_seed"].items()} == pytest.approx(
        {seed: ours[seed]["rougeL"] for seed in ("10", "20")}, abs=1e-9)  # the same samples as kdbench evaluate
    table = (flow / f"results/tables/lm_eval/{PAIR}.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["teacher", "fkl"]
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", c.strip()) for r in rows for c in r.split("|")[2:-1]), table
    csv = pd.read_csv(flow / f"results/tables/lm_eval/{PAIR}.csv").set_index(["method", "task"])
    assert csv.loc[("fkl", "kdbench_gen_dolly"), "n"] == 2 and csv.loc[("teacher", "arc_local"), "n"] == 1
    report = run_cli("snakemake", *args, "--report", "lm_eval.html", "--", "lm_eval_all", cwd=flow)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"{PAIR}.md" in (flow / "lm_eval.html").read_text(errors="replace")

    data = flow / "mc/arc_local.jsonl"
    text, stat = data.read_bytes(), data.stat()
    try:
        data.write_bytes(text.replace(b"Tuesday", b"Monday"))
        dry = run_cli("snakemake", "-n", *args, "--", "lm_eval_all", cwd=flow)
    finally:
        data.write_bytes(text)
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):", dry.stdout, re.M)
    assert sorted(jobs) == ["lm_eval", "lm_eval", "lm_eval_all", "lm_eval_table"], jobs


def test_published_numbers_significance_claims_plots_and_report(flow):
    tables = flow / "results/tables/main" / PAIR
    main = (tables / "main.md").read_text()
    assert "published" not in main  # no paper numbers (nor their header) beside a tiny pair on generated data
    assert (tables / "main.tex").read_text().lstrip().startswith("\\begin{table}")
    significance = (tables / "significance.md").read_text()
    assert "fkl+adakd" in significance and "bootstrap" in significance.lower()
    assert "not measured" in (flow / f"results/tables/claims/{PAIR}/claims.md").read_text()  # the ablation runs are not in this grid
    for png in ("latf_ratio", "training_curves", "temperature", "ours_vs_published"):
        data = (flow / f"results/plots/{PAIR}/{png}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    report = run_cli("snakemake", "--configfile", "smoke.yaml", "--report", "report.html", cwd=flow)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (flow / "report.html").read_text(errors="replace")
    assert "significance.md" in html and "latf_ratio.png" in html


def test_seqkd_plugin_rule_trains_on_teacher_responses(flow):
    """methods/seqkd.smk adds a teacher-generation step; the `seqkd` label trains on its output."""
    target = f"results/runs/{PAIR}/seqkd/seed1/model"
    done = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", "--config", "extra_methods=[seqkd]",
                   "--", target, cwd=flow)
    assert done.returncode == 0, done.stderr[-3000:]
    data = [json.loads(line) for line in (flow / f"results/data/seqkd/{PAIR}/train.jsonl").read_text().splitlines()]
    original = [json.loads(line) for line in (flow / "results/data/train.jsonl").read_text().splitlines()]
    assert len(data) > len(original) // 2
    assert sum(d["output"] != o["output"] for d, o in zip(data, original)) > 0  # the teacher's words, not the data's
    resolved = yaml.safe_load((flow / f"results/runs/{PAIR}/seqkd/seed1/run.yaml").read_text())
    assert resolved["data"]["train"] == f"results/data/seqkd/{PAIR}/train.jsonl" and resolved["teacher"] is None


# --- faults inside the grid: the table after the fault equals the undisturbed one --------------------

def _tables(root):
    """The smoke grid's tables (the lm-eval tables come from the lm-eval test's own config, which a
    rerun of the smoke grid does not rebuild)."""
    tables = root / "results/tables"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(tables.rglob("*"))
            if p.is_file() and p.suffix in {".md", ".csv", ".tex"} and not p.is_relative_to(tables / "lm_eval")}


def test_a_training_job_killed_mid_grid_resumes_and_the_tables_are_unchanged(flow):
    """SIGKILL of one training job mid-run: the other jobs go on (--keep-going), nothing downstream
    of the killed run is made; the rerun resumes it from its checkpoint and the tables are
    byte-identical to the undisturbed run's."""
    undisturbed = _tables(flow)
    run_dir, evals = flow / f"results/runs/{PAIR}/fkl+adakd/seed1", flow / f"results/evals/{PAIR}/fkl+adakd"
    shutil.rmtree(run_dir / "model"), shutil.rmtree(run_dir / "checkpoints"), shutil.rmtree(evals)
    (run_dir / "metrics.jsonl").unlink()
    shutil.rmtree(flow / f"results/evals/{PAIR}/sft")  # independent work the grid must still do
    shutil.rmtree(flow / "results/tables")  # mid-grid: no table yet
    killed = run_cli("env", "KDBENCH_FAULT_KILL_AT_STEP=15", "snakemake", "--cores", "2", "--keep-going",
                     "--configfile", "smoke.yaml", cwd=flow, timeout=1200)
    assert killed.returncode != 0
    assert (flow / f"results/evals/{PAIR}/sft/seed1/dolly.json").is_file()  # the grid went on
    assert not (run_dir / "model").exists() and not evals.exists()
    resumed = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", cwd=flow, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in (run_dir / "train.log").read_text() and "at step 10" in (run_dir / "train.log").read_text()
    assert _tables(flow) == undisturbed


def test_aggregation_killed_half_way_leaves_no_table_and_the_rerun_rebuilds_it(flow):
    undisturbed = _tables(flow)
    shutil.rmtree(flow / "results/tables")
    killed = run_cli("env", "KDBENCH_FAULT_KILL_IN=aggregate", "snakemake", "--cores", "2", "--keep-going",
                     "--configfile", "smoke.yaml", cwd=flow)
    assert killed.returncode != 0
    pair_tables = flow / f"results/tables/main/{PAIR}"
    assert not (pair_tables / "main.md").exists() and not (pair_tables / "main.csv").exists()  # no half table
    assert not (flow / "results/tables/main.md").exists()
    again = run_cli("snakemake", "--cores", "2", "--configfile", "smoke.yaml", cwd=flow)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _tables(flow) == undisturbed


def test_one_job_per_set_scores_what_one_job_per_run_scored(flow):
    """`evaluation.job: set` (the paper grid's) and `run` (the default's) are two schedules of the
    same evaluation: one set evaluated alone gives the scores the per-run job wrote."""
    result = flow / f"results/evals/{PAIR}/sft/seed1/dolly.json"
    per_run = json.loads(result.read_text())
    result.unlink()
    alone = run_cli("snakemake", "--cores", "1", "--configfile", "smoke.yaml", "--config", "evaluation={job: set}",
                    "--", str(result.relative_to(flow)), cwd=flow)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "rule evaluate:" in alone.stdout + alone.stderr and "evaluate_run" not in alone.stdout + alone.stderr
    per_set = json.loads(result.read_text())
    assert per_set["per_seed"] == per_run["per_seed"] and per_set["rougeL_mean"] == per_run["rougeL_mean"]
