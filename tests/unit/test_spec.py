"""kdbench.spec: each training, generation and evaluation default is stated once, and the schemas,
run.yaml and the evaluation protocol all take it from there."""

import re
from pathlib import Path

import pytest

from kdbench import spec
from kdbench.config import Grid, load_schema, load_yaml, schema_path
from kdbench.errors import KDBenchError
from kdbench.spec import Evaluation, Method, Protocol, Training, defaults

REPO = Path(__file__).resolve().parents[2]
SPEC_CLASSES = (Training, Protocol, Evaluation, Method)


def _names(cls):
    return set(cls.__dataclass_fields__)


def test_the_schemas_take_their_settings_from_the_spec(repo):
    pair, grid = load_schema(repo, "pair"), load_schema(repo, "config")
    training = pair["$defs"]["training"]["properties"]
    assert set(training) == _names(Training)
    assert training["log_every"] == {"type": "integer", "minimum": 1, "default": 10,
                                     "description": "steps between metrics.jsonl records"}
    assert training["schedule"]["enum"] == ["cosine", "linear", "constant"]
    assert "default" not in training["steps"] and "default" not in training["global_batch_size"]
    assert pair["properties"]["training"]["required"] == ["steps", "micro_batch_size", "lr", "max_length", "deepspeed"]
    evaluation = grid["properties"]["evaluation"]["properties"]
    assert set(evaluation) == _names(Evaluation)
    assert evaluation["decoding_seeds"]["items"] == {"type": "integer", "minimum": 0}
    assert all(prop["description"] for prop in (*training.values(), *evaluation.values()))


def test_no_schema_file_restates_a_spec_setting(repo):
    """The schema files on disk leave these sections' properties to kdbench.spec."""
    pair, grid = load_yaml(schema_path(repo, "pair")), load_yaml(schema_path(repo, "config"))
    assert "properties" not in pair["$defs"]["training"]
    assert "required" not in pair["properties"]["training"]
    assert "properties" not in grid["properties"]["evaluation"]


def _sources():
    files = [*REPO.glob("src/kdbench/**/*.py"), *REPO.glob("methods/*"), *REPO.glob("workflows/rules/*.smk"),
             REPO / "Snakefile", *REPO.glob("benchmarks/*.py")]
    return [f for f in files if f.is_file() and f.name != "spec.py"]


def test_no_code_restates_a_default():
    """A `.get("<setting>", <fallback>)` of a spec setting anywhere in the code is a second copy of
    its default (the one place is kdbench/spec.py)."""
    names = set().union(*(set(defaults(cls)) for cls in SPEC_CLASSES)) - {"label"}
    key = "|".join(sorted(names))
    getter = re.compile(rf"""\.get\(\s*["']({key})["']\s*,""")
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in _sources()
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             if getter.search(line)]
    assert found == []


def test_the_protocol_defaults_are_the_specs():
    from kdbench import evaluate

    assert evaluate.DEFAULT_PROTOCOL == defaults(Protocol)
    assert evaluate.DEFAULT_SEEDS == [10, 20, 30, 40, 50] == defaults(Evaluation)["decoding_seeds"]
    shared = _names(spec.Generation)
    assert {k: v for k, v in defaults(Evaluation).items() if k in shared} == \
        {k: v for k, v in defaults(Protocol).items() if k in shared}
    args = evaluate._parser().parse_args(["--model", "m", "--data", "d.jsonl", "--set", "dolly", "--out", "o.json",
                                        "--predictions", "p.jsonl"])
    from kdbench import eval_protocol  # no --protocol file, no flag: the spec's defaults

    assert eval_protocol.from_args(args) == {k: v for k, v in defaults(Evaluation).items() if k in eval_protocol.KEYS}


def test_run_yaml_training_is_the_pair_over_the_defaults(repo):
    cfg = load_yaml(repo / "config/tiny.yaml")
    del cfg["tables"]
    pair = "gpt2-tiny-s_from_gpt2-tiny-t"
    g = Grid(cfg | {"pairs": [pair], "methods": ["fkl"], "seeds": [1], "sets": ["dolly"]}, "tiny.yaml", repo)
    run = g.resolve_run(pair, "fkl", 1)
    given = g.pairs[pair]["training"]
    assert run["training"] == {**defaults(Training), **given, "gradient_accumulation_steps":
                               run["training"]["gradient_accumulation_steps"]}
    typed = Training.of(run["training"])
    assert typed.lr == given["lr"] and typed.log_every == run["training"]["log_every"]
    teacher = g.resolve_run(pair, "teacher", 0)["method"]
    assert teacher == Method(label="teacher", kd_ratio=0.0).as_dict()
    assert teacher["source"] == "off_policy" and teacher["policies"] == [] and teacher["init_from"] is None


def test_a_bad_run_section_names_the_setting_and_the_file():
    base = {"steps": 2, "micro_batch_size": 1, "lr": 1e-3, "max_length": 16, "deepspeed": "ds.json"}
    with pytest.raises(KDBenchError, match=r"runs/x/run.yaml: training settings unknown \['stepz'\]"):
        Training.of({**base, "stepz": 3}, "runs/x/run.yaml")
    with pytest.raises(KDBenchError, match=r"missing \['lr'\]"):
        Training.of({k: v for k, v in base.items() if k != "lr"})
    assert Training.of(base).sample_max_new_tokens == 256  # an older run.yaml gets the newer defaults


def test_a_pair_file_out_of_range_is_caught_by_the_generated_schema(repo):
    from kdbench.config import check_schema

    pair = load_yaml(repo / "config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml")
    pair["training"]["log_every"] = 0
    with pytest.raises(KDBenchError, match=r"key 'training.log_every': 0 is less than the minimum of 1"):
        check_schema(pair, load_schema(repo, "pair"), "p.yaml")
    del pair["training"]["lr"]
    pair["training"]["log_every"] = 5
    with pytest.raises(KDBenchError, match=r"'lr' is a required property"):
        check_schema(pair, load_schema(repo, "pair"), "p.yaml")
