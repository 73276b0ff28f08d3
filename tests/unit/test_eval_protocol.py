"""The evaluation protocol file (kdbench.eval_protocol): what the workflow writes from a grid, what
`kdbench evaluate` and `kdbench lm-eval` read through one parser, and the errors of a bad one."""

import argparse

import pytest
import yaml

from kdbench import eval_protocol
from kdbench.config import Grid
from kdbench.errors import KDBenchError
from kdbench.evaluate import _parser as evaluate_parser
from kdbench.lmeval import _parser as lm_eval_parser
from kdbench.spec import Evaluation, defaults

REQUIRED = {"evaluate": ["--model", "m", "--data", "d.jsonl", "--set", "dolly", "--out", "o.json",
                         "--predictions", "p.jsonl"],
            "lm-eval": ["--model", "m", "--tasks", "t", "--out", "o.json"]}
PARSERS = {"evaluate": evaluate_parser, "lm-eval": lm_eval_parser}


def _settings(command: str, *argv: str) -> dict:
    return eval_protocol.from_args(PARSERS[command]().parse_args([*REQUIRED[command], *argv]))


@pytest.mark.parametrize("command", list(PARSERS))
def test_both_commands_read_the_file_and_flags_override_it(command, tmp_path) -> None:
    path = tmp_path / "eval_protocol.yaml"
    path.write_text(yaml.safe_dump({"decoding_seeds": [1, 2], "max_new_tokens": 9, "greedy": True,
                                    "prompt_format": "chat"}))
    expected = {**{k: defaults(Evaluation)[k] for k in eval_protocol.KEYS}, "decoding_seeds": [1, 2],
                "max_new_tokens": 9, "greedy": True, "prompt_format": "chat"}
    assert _settings(command, "--protocol", str(path)) == expected
    assert _settings(command, "--protocol", str(path), "--max-new-tokens", "3", "--seeds", "7") == {
        **expected, "max_new_tokens": 3, "decoding_seeds": [7]}
    assert eval_protocol.decoding(expected) == {"max_new_tokens": 9, "batch_size": defaults(Evaluation)["batch_size"],
                                                "max_prompt_tokens": defaults(Evaluation)["max_prompt_tokens"],
                                                "do_sample": False, "prompt_format": "chat",
                                                "no_repeat_ngram_size": defaults(Evaluation)["no_repeat_ngram_size"]}


def test_the_workflow_writes_a_grids_protocol_without_its_planning_keys(repo) -> None:
    grid = Grid(yaml.safe_load((repo / "config/tiny.yaml").read_text()), "tiny.yaml", repo)
    written = eval_protocol.of_grid(grid.config["evaluation"])
    assert set(written) == set(eval_protocol.KEYS) and "job" not in written and "lm_eval_tasks" not in written
    assert written["max_new_tokens"] == grid.config["evaluation"]["max_new_tokens"]


@pytest.mark.parametrize("content, message", [
    ({"max_new_token": 8}, "unknown key 'max_new_token'; an evaluation protocol has max_new_tokens,"),
    ({"batch_size": 0}, "key 'batch_size': 0 is less than the minimum of 1"),
    ({"prompt_format": "plain"}, "key 'prompt_format': 'plain' is not one of"),
    ({"engine": "vllm", "no_repeat_ngram_size": 6}, "key 'evaluation.engine': vllm cannot block repeated n-grams"),
    (["max_new_tokens"], "a mapping of settings, got list"),
])
def test_a_bad_protocol_file_names_itself_and_the_key(tmp_path, content, message) -> None:
    path = tmp_path / "eval_protocol.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(KDBenchError, match=str(path).replace(".", r"\.")) as err:
        eval_protocol.read(path)
    assert message in str(err.value)


def test_a_grid_with_vllm_and_ngram_blocking_fails_before_any_job(repo) -> None:
    config = yaml.safe_load((repo / "config/tiny.yaml").read_text())
    config["evaluation"].update(engine="vllm", no_repeat_ngram_size=6)
    with pytest.raises(KDBenchError, match=r"grid\.yaml: key 'evaluation\.engine': vllm .* evaluation\.no_repeat_ngram_size is 6"):
        Grid(config, "grid.yaml", repo)
    config["evaluation"]["no_repeat_ngram_size"] = 0
    assert Grid(config, "grid.yaml", repo).config["evaluation"]["engine"] == "vllm"
    with pytest.raises(KDBenchError, match="the command line: key 'evaluation.engine'"):
        eval_protocol.from_args(argparse.Namespace(protocol=None, engine="vllm", no_repeat_ngram_size=6))
