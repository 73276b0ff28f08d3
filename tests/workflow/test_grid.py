"""The paper grid (config/config.yaml): on a fresh clone with no data its dry run lists every job
(preparation, training, evaluation, tables), a named table builds only its own cells, a selection
narrows the grid, and table names cannot shadow workflow rules."""

import re
import time

import pytest
import yaml

from kdbench.config import rule_names
from tests.conftest import run_cli, workflow_copy

PAPER = "config/config.yaml"
QWEN = "qwen2-1.5b_from_qwen2-7b"
DSKD_PAIRS = ["gpt2-base_from_qwen1.5-1.8b", "tinyllama-1.1b_from_mistral-7b"]  # the crosstok table's


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """A fresh clone: no data, no results. The DAG is built from the config alone (the models are
    never loaded and the data releases never read at DAG time, so no network and no files needed)."""
    return workflow_copy(tmp_path_factory.mktemp("paper"))


def dry_run(root, *args, target=()):
    """`snakemake -n [target]` → ({rule: job count}, seconds)."""
    start = time.perf_counter()
    done = run_cli("snakemake", "-n", *target, "--configfile", PAPER, *args, cwd=root)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    stats = done.stdout.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}, seconds


def expected_cells(cfg, selection=None):
    """Training runs and evaluations the config asks for, counted straight from the YAML."""
    sel = selection or {}
    runs, evals = set(), set()
    for t in cfg["tables"]:
        pairs = [p for p in t["pairs"] if p in sel.get("pairs", t["pairs"])]
        methods = [m for m in t["methods"] if m in sel.get("methods", t["methods"])]
        sets = [x for x in t.get("sets", ["dolly", "selfinst", "vicuna", "sni", "unni"]) if x in sel.get("sets", [x])]
        if not (pairs and methods and sets):
            continue
        for p in pairs:
            runs |= {(p, m) for m in methods} | {(p, "teacher")}  # every paper pair has a teacher SFT stage
            evals |= {(p, m, x) for m in [*methods, "teacher"] for x in sets}
    return runs, evals


def test_the_full_paper_grid_dry_runs_with_every_job(paper):
    cfg = yaml.safe_load((paper / PAPER).read_text())
    counts, seconds = dry_run(paper)
    runs, evals = expected_cells(cfg)
    assert counts["train"] == len(runs) == 90  # 85 student runs + 5 teacher SFT runs
    assert counts["evaluate"] == len(evals) == 404
    assert counts["tables"] == sum(len(t["pairs"]) for t in cfg["tables"]) and counts["combine_table"] == 8
    assert counts["claims"] == counts["plots"] == 5 and counts["init_model"] == 10
    assert counts["vocab_map"] == 2  # one per cross-tokenizer pair (the crosstok table)
    assert counts["prepare_data"] == 7  # train, valid and the five sets, from the public releases
    assert "tokenizer" not in counts and "data" not in counts  # the real pairs bring tokenizers; no generated data
    print(f"paper grid dry run: {sum(counts.values())} jobs in {seconds:.1f} s")


def test_a_named_table_builds_only_its_cells(paper):
    cfg = yaml.safe_load((paper / PAPER).read_text())
    table3 = next(t for t in cfg["tables"] if t["name"] == "table3")
    counts, _ = dry_run(paper, target=["table3"])
    assert counts["train"] == len(table3["methods"]) + 1  # + the Qwen2 teacher's SFT
    assert counts["evaluate"] == (len(table3["methods"]) + 1) * len(table3["sets"])
    assert counts["tables"] == counts["combine_table"] == 1 and "claims" not in counts
    assert counts["prepare_data"] == 2 + len(table3["sets"])  # train, valid and its own sets


def test_a_selection_narrows_every_table(paper):
    cfg = yaml.safe_load((paper / PAPER).read_text())
    sel = {"pairs": [QWEN], "methods": ["rkl", "rkl+adakd", "sft"], "sets": ["dolly", "unni"]}
    counts, _ = dry_run(paper, "--config", f"pairs=[{QWEN}]", "methods=[rkl,rkl+adakd,sft]", "sets=[dolly,unni]")
    runs, evals = expected_cells(cfg, sel)
    assert counts["train"] == len(runs) == 4 and counts["evaluate"] == len(evals) == 8
    assert counts["prepare_data"] == 4  # train, valid, dolly, unni
    # table1, design, table2, table3, table4, table5 keep a cell; the EGAD table has none and is dropped
    assert counts["combine_table"] == 6


def test_the_crosstok_table_distils_dskds_pairs_across_tokenizers(paper):
    """DSKD's two cross-tokenizer pairs (hub ids, cross_tokenizer: true): each pair's vocab_map is built
    from the two models' initial directories (their own tokenizers) and is an input of its
    cross-tokenizer runs only; every cell is evaluated on the five sets."""
    crosstok = next(t for t in yaml.safe_load((paper / PAPER).read_text())["tables"] if t["name"] == "crosstok")
    assert crosstok["pairs"] == DSKD_PAIRS
    counts, _ = dry_run(paper, target=["crosstok"])
    cells = len(crosstok["methods"]) + 1  # + the teacher's SFT run and row
    assert counts["vocab_map"] == 2 and counts["init_model"] == 4
    assert counts["train"] == 2 * cells and counts["evaluate"] == 2 * cells * 5
    assert counts["tables"] == 2 and counts["combine_table"] == 1
    done = run_cli("snakemake", "-n", "-p", "--configfile", PAPER, "--", "crosstok", cwd=paper)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = done.stdout.split("\nrule ")
    for pair in DSKD_PAIRS:
        models = f"results/models/{pair}"
        assert (f"kdbench vocab-map --student {models}/student-init --teacher {models}/teacher-init "
                f"--out results/vocab_maps/{pair}/vocab_map.safetensors") in done.stdout
        train = {re.search(r"method=([\w+.-]+)", j)[1]: j.split("output:")[0] for j in jobs
                 if j.startswith("train:") and f"pair={pair}," in j}
        assert sorted(train) == sorted([*crosstok["methods"], "teacher"])
        mapped = {m for m, job in train.items() if f"results/vocab_maps/{pair}/vocab_map.safetensors" in job}
        assert mapped == set(crosstok["methods"]) - {"sft"}  # sft and the teacher's SFT align nothing
        assert all(f"{models}/teacher-init" in train[m] for m in mapped)  # the teacher's own tokenizer too
    tables = [line for line in done.stdout.splitlines() if "kdbench aggregate" in line and "--out-md" in line]
    assert len(tables) == 2 and not any("--reference" in c for c in tables)  # no published numbers: see the pair files


@pytest.mark.parametrize("label", ["fkl", "rkl+adakd"])
def test_a_same_vocabulary_method_on_dskds_pairs_is_refused_before_any_job(paper, label):
    cfg = yaml.safe_load((paper / PAPER).read_text())
    crosstok = next(t for t in cfg["tables"] if t["name"] == "crosstok")
    crosstok["methods"].append(label)
    (paper / "same-vocab.yaml").write_text(yaml.safe_dump(cfg))
    for command in (("snakemake", "-n", "--configfile", "same-vocab.yaml"), ("kdbench", "check", "same-vocab.yaml")):
        done = run_cli(*command, cwd=paper)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert f"config/pairs/{DSKD_PAIRS[0]}.yaml: teacher and student read different tokenizers" in done.stderr
        assert f"method '{label}' cannot distil this pair" in done.stderr and "would run: " in done.stderr


def test_table_names_cannot_shadow_a_rule(repo):
    listed = run_cli("snakemake", "--list-rules", cwd=repo)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tables = {t["name"] for t in yaml.safe_load((repo / "config/tiny.yaml").read_text())["tables"]}
    rules = {line.split()[0] for line in listed.stdout.splitlines() if line and not line[0].isspace()} - tables
    assert rules and rules == rule_names(repo), rules ^ rule_names(repo)


def test_published_numbers_beside_the_paper_pairs_only(paper):
    """The tables rule passes the paper's numbers for the paper pairs on the paper data (each table
    its own published table), and none for the tiny default on generated data."""
    def table_commands(*args):
        done = run_cli("snakemake", "-n", "-p", "--forceall", *args, cwd=paper)
        assert done.returncode == 0, done.stderr[-3000:]
        return [line for line in done.stdout.splitlines() if "kdbench aggregate" in line and "--out-md" in line]

    paper_runs = table_commands("--configfile", PAPER, "--", "table1", "table3")
    assert len(paper_runs) == 3  # table1 × 2 pairs, table3 × Qwen2
    assert sum("--reference-table table1 --family Qwen2" in c for c in paper_runs) == 1
    assert sum("--reference-table table1 --family OpenLLaMA2" in c for c in paper_runs) == 1
    assert sum("--reference-table table3 --family Qwen2" in c for c in paper_runs) == 1
    tiny = table_commands("--", "main")
    assert tiny and not any("--reference" in c for c in tiny)


def test_lm_eval_on_the_paper_grid_reads_the_paper_data(paper):
    """evaluation.lm_eval_tasks: [kdbench_real]: one lm-eval job per model (the teacher's too) and a
    table per pair, each job's inputs the five results/data/real files the paper grid's prepare_data jobs write."""
    (paper / "lm.yaml").write_text(yaml.safe_dump({"evaluation": {"lm_eval_tasks": ["kdbench_real"]}}))
    selection = ("--config", f"pairs=[{QWEN}]", "methods=[rkl]")  # all five sets: kdbench_real reads each
    counts, _ = dry_run(paper, "lm.yaml", *selection)
    assert counts["lm_eval"] == 2 and counts["lm_eval_table"] == 1  # the teacher and rkl
    done = run_cli("snakemake", "-n", "--configfile", PAPER, "lm.yaml", *selection, "--",
                   f"results/lm_eval/{QWEN}/rkl/seed1.json", cwd=paper)
    assert done.returncode == 0, done.stderr[-3000:]
    inputs = re.search(r"rule lm_eval:\n\s+input: (.*)", done.stdout).group(1).split(", ")
    sets = [f"results/data/real/{x}.jsonl" for x in ("dolly", "selfinst", "vicuna", "sni", "unni")]
    assert sorted(sets) == sorted(i for i in inputs if i.startswith("results/data/real/"))
    assert any(i.endswith("evaluation/tasks/kdbench_real_sni.yaml") for i in inputs)
