"""The bad-input catalogue: every way a user can get a grid wrong fails at `snakemake -n` (before any
job), naming the problem and the file (and key or line), with no traceback. And two invocations on
one results directory: the second is refused by Snakemake's lock while the first completes.

Each catalogue case writes its own config file (and pair, data or model files) under `cases/<id>/`
of one shared workflow copy, so the cases do not interfere. Wall times are printed (run with `-s`
to see them); docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from kdbench.errors import KDBenchError
from tests.conftest import BIN, grid_config, run_cli, workflow_copy

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"
GOOD = {"instruction": "Copy the input.", "input": "a b", "output": "a b"}


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    root = workflow_copy(tmp_path_factory.mktemp("bad_inputs"))
    (root / "cases").mkdir()
    return root


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny random GPT-2 directories whose tokenizers were trained apart (300 vs 400 tokens)."""
    from transformers import AutoTokenizer

    from kdbench.datagen import generate
    from kdbench.models import build_random
    from kdbench.tokenizer import train_tokenizer

    base = tmp_path_factory.mktemp("models")
    train = generate(base / "data", seed=0, n_train=200, n_valid=5, n_eval=5)["train"]
    dirs = {}
    for role, vocab in (("teacher", 400), ("student", 300)):
        out = base / role
        train_tokenizer([train], out, vocab_size=vocab)
        tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
        build_random("gpt2", {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}, tok, 0).save_pretrained(out)
        dirs[role] = out
    return dirs


def _pair(root: Path) -> dict:
    return yaml.safe_load((root / "config/pairs" / f"{PAIR}.yaml").read_text())


def _write_pair(root: Path, name: str, pair: dict | str) -> str:
    text = pair if isinstance(pair, str) else yaml.safe_dump(pair)
    (root / "config/pairs" / f"{name}.yaml").write_text(text)
    return f"config/pairs/{name}.yaml"


def _files_source(case: Path, broken: bytes | None = None) -> dict:
    """`data.source: files` with a valid train/valid and a dolly file holding `broken` (if given)."""
    import json

    good = (json.dumps(GOOD) + "\n").encode()
    for name in ("train", "valid", "dolly"):
        (case / f"{name}.jsonl").write_bytes(good * 16)  # a micro-batch (16) fits the training set
    if broken is not None:
        (case / "dolly.jsonl").write_bytes(broken)
    rel = case.name
    return {"source": "files", "train": f"cases/{rel}/train.jsonl", "valid": f"cases/{rel}/valid.jsonl",
            "sets": {"dolly": f"cases/{rel}/dolly.jsonl"}}


# Each case: id → edit(cfg, ctx) that changes the grid config dict (and may write files) and returns
# the message fragments expected; `{cfg}` in a fragment is the case's config file, `{case}` its folder.
# ctx: root (workflow copy), case (its folder, cases/<id>), models (the two model directories).

def c_unknown_top_key(cfg, ctx):
    cfg["epochs"] = 3
    return ["{cfg}", "key '(top level)'", "'epochs' was unexpected"]


def c_unknown_nested_key(cfg, ctx):
    cfg["evaluation"]["max_new_token"] = 8
    return ["{cfg}", "key 'evaluation'", "'max_new_token' was unexpected", "allowed here:"]


def c_wrong_type(cfg, ctx):
    cfg["evaluation"]["batch_size"] = "big"
    return ["{cfg}", "key 'evaluation.batch_size'", "'big' is not of type 'integer'"]


def c_negative_seed(cfg, ctx):
    cfg["seeds"] = [-1]
    return ["{cfg}", "key 'seeds.0'", "-1 is less than the minimum of 0"]


def c_unknown_set(cfg, ctx):
    cfg["sets"] = ["alpaca"]
    return ["{cfg}", "key 'sets.0'", "'alpaca' is not one of"]


def c_unknown_data_source(cfg, ctx):
    cfg["data"]["source"] = "hub"
    return ["{cfg}", "key 'data.source'", "'hub' is not one of ['generated', 'releases', 'files']"]


def c_unknown_method_data_source(cfg, ctx):
    cfg["method_defs"] = {"fkl-online": {"divergence": "fkl", "source": "online"}}
    cfg["methods"] = ["fkl-online"]
    return ["{cfg}", "key 'method_defs.fkl-online.source'", "'online' is not one of"]


def c_duplicate_label(cfg, ctx):
    cfg["methods"] = ["fkl", "rkl", "fkl"]
    return ["{cfg}", "key 'methods'", "'fkl' is listed twice"]


def c_unknown_method(cfg, ctx):
    cfg["methods"] = ["fkl", "fkk"]
    return ["{cfg}", "label 'fkk'", "unknown method 'fkk'. Known:"]


def c_unknown_policy(cfg, ctx):
    cfg["methods"] = ["fkl+adakdd"]
    return ["{cfg}", "label 'fkl+adakdd'", "adakdd"]


def c_reserved_label(cfg, ctx):
    cfg["methods"] = ["teacher"]
    return ["{cfg}", "label 'teacher'", "reserved for the teacher's row"]


def c_table_named_like_a_rule(cfg, ctx):
    cfg["tables"][0]["name"] = "train"
    return ["{cfg}", "key 'tables.0' (train)", "'train' is the name of a workflow rule"]


def c_duplicate_table(cfg, ctx):
    cfg["tables"].append(dict(cfg["tables"][0]))
    return ["{cfg}", "key 'tables.1' (main)", "table name 'main' is used twice"]


def c_selection_in_no_table(cfg, ctx):
    cfg["methods"] = ["rkl"]
    return ["{cfg}", "key 'methods'", "'rkl' is in no table (main)"]


def c_unknown_pair(cfg, ctx):
    cfg["pairs"] = ["gpt2-tyni-s_from_gpt2-tiny-t"]
    return ["{cfg}", "key 'pairs'", "unknown pair 'gpt2-tyni-s_from_gpt2-tiny-t'", "Known pairs:"]


def c_label_slash(cfg, ctx):
    cfg["methods"] = ["fkl/../../etc"]
    return ["{cfg}", "key 'methods.0'", "'fkl/../../etc' does not match"]


def c_label_dotdot(cfg, ctx):
    cfg["methods"] = [".."]
    return ["{cfg}", "key 'methods.0'", "'..' does not match"]


def c_label_semicolon(cfg, ctx):
    cfg["methods"] = ["fkl;rm -rf ~"]
    return ["{cfg}", "key 'methods.0'", "'fkl;rm -rf ~' does not match"]


def c_label_subshell(cfg, ctx):
    cfg["methods"] = ["fkl$(touch pwned)"]
    return ["{cfg}", "key 'methods.0'", "does not match"]


def c_pair_name_path(cfg, ctx):
    cfg["pairs"] = ["../../etc/passwd"]
    return ["{cfg}", "key 'pairs.0'", "'../../etc/passwd' does not match"]


def c_method_def_label_shell(cfg, ctx):
    cfg["method_defs"] = {"x`id`": {"divergence": "fkl"}}
    return ["{cfg}", "key 'method_defs'", "'x`id`' does not match"]


def c_unknown_hyperparameter(cfg, ctx):
    cfg["method_defs"] = {"fkl-t2": {"divergence": "fkl", "hp": {"temprature": 2.0}}}
    cfg["methods"] = ["fkl-t2"]
    return ["{cfg}", "label 'fkl-t2'", "unknown hyper-parameter(s) temprature for divergence 'fkl'", "It accepts"]


def c_policy_hp_out_of_range(cfg, ctx):
    cfg["policy_defs"] = {"adakd-rmin": {"policy": "adakd", "hp": {"r_min": 1.5}}}
    cfg["tables"][0]["methods"] = ["fkl+adakd-rmin"]  # a valid grid: the range is checked before the first job
    return ["{cfg}", "label 'fkl+adakd-rmin'", "r_min = 1.5 is outside its range (0, 1]"]


def c_kd_ratio_out_of_range(cfg, ctx):
    cfg["method_defs"] = {"fkl-mix": {"divergence": "fkl", "kd_ratio": 1.5}}
    cfg["methods"] = ["fkl-mix"]
    return ["{cfg}", "key 'method_defs.fkl-mix.kd_ratio'", "1.5 is greater than the maximum of 1"]


def c_unknown_source_hp(cfg, ctx):
    cfg["method_defs"] = {"gkd-x": {"divergence": "js", "source": "on_policy_mixed", "source_hp": {"q": 0.5}}}
    cfg["methods"] = ["gkd-x"]
    return ["{cfg}", "label 'gkd-x'", "unknown source_hp q for data source 'on_policy_mixed'"]


def c_pair_negative_lr(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["training"]["lr"] = -0.001
    cfg["tables"][0]["pairs"] = [name := "neg-lr_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'training.lr'", "-0.001 is less than or equal to the minimum of 0"]


def c_pair_unknown_key(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["training"]["epochs"] = 3
    cfg["tables"][0]["pairs"] = [name := "epochs_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'training'", "'epochs' was unexpected"]


def c_pair_malformed_yaml(cfg, ctx):
    cfg["tables"][0]["pairs"] = [name := "broken-yaml_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, "family: gpt2\nteacher: {init: random\nstudent: [\n")
    return [file, "not valid YAML", "line 3"]


def c_pair_missing_deepspeed(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["training"]["deepspeed"] = "config/deepspeed/zero9.json"
    cfg["tables"][0]["pairs"] = [name := "no-ds_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'training.deepspeed'", "zero9.json not found"]


def c_data_missing_file(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"])
    (ctx["case"] / "dolly.jsonl").unlink()
    return ["{cfg}", "key 'data' (dolly)", "{case}/dolly.jsonl: file not found"]


def c_data_key_missing(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"])
    del cfg["data"]["sets"]
    return ["{cfg}", "key 'data.sets.dolly' is required with data.source 'files'"]


def c_data_empty_file(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b"")
    return ["{cfg}", "{case}/dolly.jsonl: the file has no records"]


def c_data_broken_line(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b'{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "out\n')
    return ["{cfg}", "{case}/dolly.jsonl, line 3: not valid JSON"]


def c_data_missing_field(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    return ["{cfg}", "{case}/dolly.jsonl, line 2: the record has no \"output\" field"]


def c_data_not_utf8(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    return ["{cfg}", "{case}/dolly.jsonl, line 2: byte 21 of the line is not valid UTF-8"]


def c_data_empty_reference(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": " "}\n')
    return ["{cfg}", "key 'data' (dolly)", "{case}/dolly.jsonl, line 2: the reference \"output\" is empty"]


def c_data_empty_reference_in_a_list(cfg, ctx):
    cfg["data"] = _files_source(ctx["case"], b'{"instruction": "a", "output": ["b", ""]}\n')
    return ["{cfg}", "{case}/dolly.jsonl, line 1: the reference \"output\" is empty"]


def c_model_missing_local_dir(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["teacher"] = {"init": "pretrained", "path": str(ctx["case"] / "no-such-model")}
    cfg["tables"][0]["pairs"] = [name := "missing-dir_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'teacher.path'", "no local model directory", "no-such-model"]


def c_model_tokenizer_mismatch(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["teacher"] = {"init": "pretrained", "path": str(ctx["models"]["teacher"])}
    pair["student"] = {"init": "pretrained", "path": str(ctx["models"]["student"])}
    pair["training"]["max_length"] = 64  # the models' positions: only the tokenizers are wrong here
    cfg["tables"][0]["pairs"] = [name := "mismatch_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "the teacher and student tokenizers differ", "the student's 300"]


def c_model_config_misspelt_student_key(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["student"]["config"]["n_layerz"] = pair["student"]["config"].pop("n_layer")
    cfg["tables"][0]["pairs"] = [name := "layerz_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'student.config.n_layerz'", "GPT2Config (family gpt2) has no setting 'n_layerz'",
            "Did you mean 'n_layer'"]


def c_model_config_misspelt_teacher_key(cfg, ctx):
    pair = yaml.safe_load((ctx["root"] / "config/pairs/qwen2-tiny-s_from_qwen2-tiny-t.yaml").read_text())
    pair["teacher"]["config"]["num_key_value_head"] = pair["teacher"]["config"].pop("num_key_value_heads")
    cfg["tables"][0]["pairs"] = [name := "qwen2-kv_from_qwen2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'teacher.config.num_key_value_head'", "Qwen2Config (family qwen2) has no setting",
            "Did you mean 'num_key_value_heads'"]


def c_model_config_wrong_type(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["student"]["config"]["n_head"] = "two"
    cfg["tables"][0]["pairs"] = [name := "heads-str_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'student.config.n_head'", "GPT2Config refuses it", "expected int, got str"]


def c_model_config_sets_the_vocabulary(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["teacher"]["config"]["vocab_size"] = 50257
    cfg["tables"][0]["pairs"] = [name := "vocab_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'teacher.config.vocab_size'", "kdbench sets vocab_size from the tokenizer"]


def c_model_config_beside_a_pretrained_model(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["student"] = {"init": "pretrained", "path": str(ctx["models"]["student"]), "config": {"n_layer": 1}}
    pair["teacher"] = {"init": "pretrained", "path": str(ctx["models"]["student"])}
    cfg["tables"][0]["pairs"] = [name := "pretrained-config_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'student.config'", "a pretrained model is built as its checkpoint's config.json says"]


def c_lm_eval_unknown_task(cfg, ctx):
    cfg["evaluation"]["lm_eval_tasks"] = ["kdbench_gen_dolly", "kdbench_gen_dolyl"]
    return ["{cfg}", "key 'evaluation.lm_eval_tasks'", "unknown lm-eval task 'kdbench_gen_dolyl'", "lm_eval --tasks list"]


def c_lm_eval_data_nobody_writes(cfg, ctx):
    cfg["evaluation"]["lm_eval_tasks"] = ["kdbench_real_vicuna"]  # the paper grid's file, absent here
    return ["{cfg}", "key 'evaluation.lm_eval_tasks'", "kdbench_real_vicuna reads results/data/real/vicuna.jsonl",
            "this grid does not write (its data: results/data/train.jsonl"]


def c_duplicate_decoding_seeds(cfg, ctx):
    cfg["evaluation"]["decoding_seeds"] = [10, 20, 10]
    return ["{cfg}", "key 'evaluation.decoding_seeds'", "seed 10 is listed twice"]


def c_results_empty(cfg, ctx):
    cfg["results"] = ""
    return ["{cfg}", "key 'results'", "empty"]


def c_results_root(cfg, ctx):
    cfg["results"] = "/"
    return ["{cfg}", "key 'results'", "'/' is a folder above the checkout"]


def c_results_checkout(cfg, ctx):
    cfg["results"] = "."
    return ["{cfg}", "key 'results'", "'.' is the checkout itself"]


def c_results_in_sources(cfg, ctx):
    cfg["results"] = "src/out"
    return ["{cfg}", "key 'results'", "'src/out' lies inside the checkout's src/ folder"]


def c_plugin_named_like_a_label(cfg, ctx):
    ctx["temporary"](ctx["root"] / "methods/gkd.py", (ctx["root"] / "methods/fkl.py").read_text())
    return ["methods/gkd.py: the plugin's key 'gkd'", "key 'method_defs'", "rename the file"]


def c_plugin_rules_unbalanced(cfg, ctx):
    ctx["temporary"](ctx["root"] / "methods/broken.smk", 'rule broken:\n    output: ("x"\n    shell: "echo"\n')
    return ["methods/broken.smk, line 4", "EOF in multi-line statement"]


def c_plugin_rules_indentation(cfg, ctx):
    ctx["temporary"](ctx["root"] / "methods/broken.smk", 'rule broken:\n    output: "x"\n  shell: "echo"\n')
    return ["methods/broken.smk, line 3", "unindent does not match"]


def c_claims_unknown_label(cfg, ctx):
    claims = ctx["root"] / "evaluation/reference/claims.yaml"
    ctx["temporary"](claims, claims.read_text().replace("full: rkl+adakd", "full: rkl+adkd"))
    return ["evaluation/reference/claims.yaml: key 'runs.full'", "'rkl+adkd' is not a method label",
            "Did you mean 'rkl+adakd'"]


def c_pair_duplicate_key(cfg, ctx):
    cfg["tables"][0]["pairs"] = [name := "dup-key_from_gpt2-tiny-t"]
    text = (ctx["root"] / "config/pairs" / f"{PAIR}.yaml").read_text().replace("  max_length: 128\n", "  max_length: 128\n  max_length: 64\n")
    assert text.count("max_length") == 2, "the GPT-2 tiny pair's max_length line changed: update this case"
    file = _write_pair(ctx["root"], name, text)
    return [file, "key 'max_length' is given twice", "line"]


def _deepspeed_pair(cfg, ctx, name: str, text: str) -> str:
    """A pair whose training.deepspeed is the case's own file holding `text`; returns the pair file."""
    (ctx["case"] / "ds.json").write_text(text)
    pair = _pair(ctx["root"])
    pair["training"]["deepspeed"] = f"cases/{ctx['case'].name}/ds.json"
    cfg["tables"][0]["pairs"] = [name]
    return _write_pair(ctx["root"], name, pair)


def c_deepspeed_zero4(cfg, ctx):
    file = _deepspeed_pair(cfg, ctx, "zero4_from_gpt2-tiny-t", '{"zero_optimization": {"stage": 4}}')
    return [file, "key 'training.deepspeed'", "zero_optimization.stage is 4", "ZeRO stages are 0, 1, 2, 3"]


def c_deepspeed_invalid_json(cfg, ctx):
    file = _deepspeed_pair(cfg, ctx, "ds-json_from_gpt2-tiny-t", '{"zero_optimization": {"stage": 2,}}')
    return [file, "key 'training.deepspeed'", "ds.json is not valid JSON", "line 1"]


def c_micro_batch_beyond_the_data(cfg, ctx):
    cfg["data"]["n_train"] = 12
    return ["config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml", "key 'training.micro_batch_size'",
            "16 is larger than the training set (12 records", "give at most 12"]


def c_model_dir_without_weights(cfg, ctx):
    empty = ctx["case"] / "model"
    empty.mkdir()
    for file in ctx["models"]["teacher"].iterdir():
        if file.suffix != ".safetensors":
            (empty / file.name).write_bytes(file.read_bytes())
    pair = _pair(ctx["root"])
    pair["teacher"] = {"init": "pretrained", "path": str(empty)}
    pair["student"] = {"init": "pretrained", "path": str(ctx["models"]["teacher"])}
    cfg["tables"][0]["pairs"] = [name := "no-weights_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'teacher.path'", "holds no model weights"]


def c_gguf_not_gguf(cfg, ctx):
    fake = ctx["case"] / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    pair = _pair(ctx["root"])
    pair["student"] = {"init": "gguf", "gguf": {"file": str(fake)}}
    pair["teacher"] = {"init": "gguf", "gguf": {"file": str(fake)}}
    cfg["tables"][0]["pairs"] = [name := "fake-gguf_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'teacher.gguf.file'", "is not a GGUF file"]


def c_student_layers_beyond_teacher(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["teacher"] = {"init": "pretrained", "path": str(ctx["models"]["teacher"])}
    pair["student"] = {"init": "teacher", "layers": [0, 3]}
    cfg["tables"][0]["pairs"] = [name := "layers_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'student.layers'", "3 is beyond the teacher's 1 decoder layers", "0..0"]


def c_max_length_beyond_positions(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["training"]["max_length"] = 1024  # the tiny models have 512 positions
    cfg["tables"][0]["pairs"] = [name := "long_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'training.max_length'", "1024 is beyond the teacher's 512 positions"]


def c_max_length_below_the_prompt(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["training"]["max_length"] = 24  # the minillm template alone: 29 pieces of the generated tokenizer's pre-tokenizer
    cfg["tables"][0]["pairs"] = [name := "short_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'training.max_length': 24 leaves no room for a response", "is 29 tokens of the generated "
            "tokenizer", "give at least 30"]


def c_max_length_below_the_prompt_of_a_local_model(cfg, ctx):
    from transformers import AutoTokenizer

    from kdbench.prompts import template_tokens

    local = ctx["models"]["teacher"]
    template = template_tokens(AutoTokenizer.from_pretrained(local, local_files_only=True), "minillm")
    pair = _pair(ctx["root"])
    pair["teacher"] = pair["student"] = {"init": "pretrained", "path": str(local)}
    pair["training"]["max_length"] = template  # the template fits, but no response token does
    cfg["tables"][0]["pairs"] = [name := "short_from_local"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, f"key 'training.max_length': {template} leaves no room", f"is {template} tokens of the student's "
            f"tokenizer ({local})", f"give at least {template + 1}"]


def c_max_new_tokens_beyond_positions(cfg, ctx):
    cfg["evaluation"]["max_new_tokens"] = 600
    return ["config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml", "evaluation.max_new_tokens 600",
            "the teacher's 512 positions"]


def c_chat_without_template(cfg, ctx):
    cfg["evaluation"]["prompt_format"] = "chat"
    return ["config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml", "key 'teacher'", "prompt_format is chat",
            "tokenizer (generated) has no chat template"]


def c_lora_unknown_module(cfg, ctx):
    pair = _pair(ctx["root"])
    pair["student"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}
    cfg["tables"][0]["pairs"] = [name := "lora-q_from_gpt2-tiny-t"]
    file = _write_pair(ctx["root"], name, pair)
    return [file, "key 'student.lora.target_modules'", "a gpt2 model has no linear layer 'q_proj'", "c_attn"]


def c_teacher_cache_unused(cfg, ctx):
    cfg["teacher_cache"] = True
    cfg["tables"][0]["methods"] = ["sft", "gkd"]
    return ["{cfg}", "key 'teacher_cache': true, but no run of the grid can read stored teacher states",
            f"sft (on {PAIR}): it trains without a teacher", f"gkd (on {PAIR}): its micro-batches come from the "
            "on_policy_mixed source", "Set teacher_cache: false"]


CASES = {name[2:]: fn for name, fn in list(globals().items()) if name.startswith("c_")}
# `kdbench check` lists an absent data file instead of failing (the config itself is valid); the
# workflow refuses it. Every other case fails the same way in both.
ABSENT_DATA = {"data_missing_file"}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    if TIMES:
        print("\nsnakemake wall time per bad input, to its refusal (s):")
        for name, seconds in TIMES.items():
            print(f"  {name:<28} {seconds:5.2f}")


def _dry_run(root: Path, *configfiles: str, real: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """`snakemake -n`, or with `real` a run (what needs transformers, kdbench.preflight, is checked
    before its first job, never by a dry run)."""
    start = time.perf_counter()
    done = run_cli("snakemake", *(("--cores", "1") if real else ("-n",)), "--configfile", *configfiles, cwd=root,
                   timeout=300)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_before_any_job(wf, model_dirs, name, monkeypatch, capsys):
    """Snakemake's dry run fails naming the problem; `kdbench check` on the same file fails the same way."""
    case = wf / "cases" / name
    case.mkdir()
    cfg = grid_config(wf, pairs=[PAIR], methods=["fkl"], sets=["dolly"])
    with _temporary_files() as temporary:
        expected = [f.format(cfg=f"cases/{name}/config.yaml", case=f"cases/{name}")
                    for f in CASES[name](cfg, {"root": wf, "case": case, "models": model_dirs, "temporary": temporary})]
        _check_case(wf, name, cfg, expected, monkeypatch, capsys)


@contextlib.contextmanager
def _temporary_files():
    """`temporary(path, text)` writes a file of the shared workflow copy (a plugin, the claims file)
    for one case; each is restored (or removed) afterwards, so the other cases never see it."""
    saved: dict[Path, bytes | None] = {}

    def temporary(path: Path, text: str) -> None:
        saved.setdefault(path, path.read_bytes() if path.exists() else None)
        path.write_text(text)

    try:
        yield temporary
    finally:
        for path, data in saved.items():
            path.unlink() if data is None else path.write_bytes(data)


def _check_case(wf: Path, name: str, cfg: dict, expected: list[str], monkeypatch, capsys) -> None:
    from kdbench.check import main as check

    cfg_file = f"cases/{name}/config.yaml"
    (wf / cfg_file).write_text(yaml.safe_dump(cfg))
    done, seconds = _dry_run(wf, cfg_file, real=True)  # a bad input: it stops before any job
    TIMES[name] = seconds
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-2000:]
    assert "kdbench: config error:" in out, out[-2000:]
    for fragment in expected:
        assert fragment in out, (fragment, out[-2000:])
    assert "Traceback" not in out, out[-3000:]
    assert not (wf / "results").exists() and not (wf / "pwned").exists()
    monkeypatch.chdir(wf)
    if name in ABSENT_DATA:
        assert check([cfg_file]) == 0 and f"cases/{name}/dolly.jsonl" in capsys.readouterr().out.split("not made yet")[1]
        return
    with pytest.raises(KDBenchError) as err:
        check([cfg_file])
    assert [f for f in expected if f not in str(err.value)] == [], str(err.value)


def test_the_good_base_config_passes(wf):
    """The catalogue's base config is valid: each case fails only because of its own edit."""
    cfg = grid_config(wf, pairs=[PAIR], methods=["fkl"], sets=["dolly"])
    (wf / "cases/good.yaml").write_text(yaml.safe_dump(cfg))
    done, seconds = _dry_run(wf, "cases/good.yaml")
    TIMES["(valid base config)"] = seconds
    assert done.returncode == 0, done.stderr[-2000:]


def test_grid_config_file_errors(wf):
    """The grid config file itself is parsed by Snakemake before the Snakefile runs, so kdbench cannot
    reword that error: Snakemake refuses malformed YAML without a traceback but names neither file nor
    line. `kdbench check` (the same checks as the workflow) names both, and covers the cases where
    Snakemake prints a traceback (a config file that is missing or not UTF-8); so does `kdbench run`,
    which reads each --configfile the same way before it hands the same arguments to Snakemake."""
    bad = wf / "cases/malformed.yaml"
    bad.write_text("pairs: [a\nmethods: {\n")
    done, seconds = _dry_run(wf, "cases/malformed.yaml")
    TIMES["(grid config: malformed YAML)"] = seconds
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Config file is not valid JSON or YAML" in out and "Traceback" not in out
    (wf / "cases/latin1.yaml").write_bytes(b"methods: [caf\xe9]\n")
    for file, needle in (("cases/malformed.yaml", "not valid YAML"), ("cases/latin1.yaml", "not UTF-8 text"),
                         ("cases/absent.yaml", "file not found")):
        check = run_cli(str(BIN / "kdbench"), "check", file, cwd=wf)
        assert check.returncode == 1 and f"{file}: {needle}" in check.stderr, check.stderr
        assert "Traceback" not in check.stderr
    check = run_cli(str(BIN / "kdbench"), "check", "cases/malformed.yaml", cwd=wf)
    assert "line 2" in check.stderr
    (wf / "cases/list.yaml").write_text("- fkl\n")
    (wf / "cases/good.yaml").write_text(yaml.safe_dump(grid_config(wf, pairs=[PAIR], methods=["fkl"], sets=["dolly"])))
    for file, needle in (("cases/malformed.yaml", "not valid YAML"), ("cases/latin1.yaml", "not UTF-8 text"),
                         ("cases/absent.yaml", "file not found"), ("cases/list.yaml", "a grid config is a mapping")):
        start = time.perf_counter()
        run = run_cli(str(BIN / "kdbench"), "run", "-n", "--configfile", "cases/good.yaml", file, cwd=wf)
        TIMES[f"(kdbench run: {needle})"] = time.perf_counter() - start
        assert run.returncode == 1 and f"kdbench run: error: {file}: {needle}" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and "Job stats" not in run.stdout
    assert "line 2" in run_cli(str(BIN / "kdbench"), "run", "--configfiles=cases/malformed.yaml", cwd=wf).stderr
    good = run_cli(str(BIN / "kdbench"), "run", "-n", "--configfile", "cases/good.yaml", "--", "results/tokenizer", cwd=wf)
    assert good.returncode == 0 and "Job stats" in good.stdout and "tokenizer" in good.stdout, good.stderr[-2000:]
    bad = run_cli(str(BIN / "kdbench"), "run", "-n", "--configfile", "cases/good.yaml", "--config", "methods=[fkk]", cwd=wf)
    assert bad.returncode == 1 and "unknown method 'fkk'" in bad.stderr  # then Snakemake checks the grid as always


# --- two invocations on one results directory ---------------------------------------------------------

def test_second_invocation_is_refused_while_the_first_holds_the_directory(tmp_path):
    root = workflow_copy(tmp_path)
    pair = _pair(root)
    pair["teacher"]["sft"]["steps"] = 20
    pair["training"].update(steps=10, micro_batch_size=4, log_every=5)
    _write_pair(root, "lock-s_from_lock-t", pair)
    cfg = grid_config(root, pairs=["lock-s_from_lock-t"], methods=["fkl"], sets=["dolly"])
    cfg["data"].update(n_train=200, n_valid=10, n_eval=4)
    cfg["evaluation"].update(decoding_seeds=[10], max_new_tokens=4)
    (root / "small.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/runs/lock-s_from_lock-t/fkl/seed1/model"  # tokenizer, teacher SFT, one KD run

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = subprocess.Popen(["snakemake", "--cores", "1", target, "--configfile", "small.yaml"], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        locks = root / ".snakemake/locks"
        deadline = time.monotonic() + 60
        while not (locks.is_dir() and any(locks.iterdir())) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the second could start: " + first.stdout.read()[-2000:]
        second = run_cli("snakemake", "--cores", "1", target, "--configfile", "small.yaml", cwd=root, timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode != 0 and "LockException" in out and "Directory cannot be locked" in out, out[-2000:]
        log, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log[-3000:]
    assert (root / target / "model.safetensors").is_file()
    again = run_cli("snakemake", "-n", target, "--configfile", "small.yaml", cwd=root)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
