"""Generation engines (kdbench.engines): the row seeds, the vLLM engine's requests (built without
vLLM), and `kdbench evaluate --engine vllm` writing the same result files through an engine object."""

import json

import pytest

from kdbench.engines import row_seed
from kdbench.engines.vllm import requests
from kdbench.errors import KDBenchError
from kdbench.evaluate import DEFAULT_PROTOCOL, resolve_protocol


def test_row_seeds_are_stable_and_distinct() -> None:
    assert row_seed(10, 0, "p") == row_seed(10, 0, "p") < 2**63
    assert len({row_seed(s, i, p) for s in (10, 20) for i in (0, 1) for p in ("p", "q")}) == 8


def test_vllm_requests_carry_the_protocol_and_each_rows_seed() -> None:
    settings = resolve_protocol({"max_new_tokens": 7})
    built = requests([[5, 6, 7], [8]], [111, 222], settings, eos_ids=[0, 2])
    assert [prompt for prompt, _ in built] == [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [8]}]
    first, second = (kwargs for _, kwargs in built)
    assert first == {"n": 1, "temperature": DEFAULT_PROTOCOL["temperature"], "top_p": DEFAULT_PROTOCOL["top_p"],
                     "top_k": -1, "seed": 111, "max_tokens": 7, "repetition_penalty": 1.0, "stop_token_ids": [0, 2],
                     "skip_special_tokens": True}  # HF's top-k 0 (off) is vLLM's -1
    assert second["seed"] == 222 and second["max_tokens"] == 7
    assert requests([[1]], [3], {**settings, "top_k": 50}, [0])[0][1]["top_k"] == 50
    greedy = requests([[1]], [3], {**settings, "do_sample": False}, [0])[0][1]
    assert greedy["temperature"] == 0.0 and greedy["seed"] is None and "top_p" not in greedy
    with pytest.raises(KDBenchError, match="no_repeat_ngram_size 6"):
        requests([[1]], [3], {**settings, "no_repeat_ngram_size": 6}, [0])


class FakeEngine:
    """Stands in for kdbench.engines.vllm.Engine: answers each row with its prompt's last word."""

    device = "cuda (vllm)"
    seen: list = []

    def __init__(self, model_dir, dtype):
        assert dtype == "fp32"  # the protocol's default reaches the engine
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(eos_token_id=0)

    def generate_rows(self, tokenizer, rows, settings, *, eos_ids, groups=None, synced_gpus=False, on_rows=None):
        FakeEngine.seen.append((rows, settings, eos_ids))
        texts = [prompt.split()[-4] for prompt, _ in rows]  # "... Say red now\n\n### Response:\n"
        on_rows(list(range(len(rows))), texts)
        return texts


def test_evaluate_with_engine_vllm_writes_the_same_files(tmp_path, monkeypatch) -> None:
    from kdbench import evaluate
    from kdbench.engines import vllm
    from tests.unit.test_evaluate import _model, _tokenizer

    model_dir = tmp_path / "model"
    tokenizer = _tokenizer()
    _model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    monkeypatch.setattr(vllm, "Engine", FakeEngine)
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w} now", "output": w}) + "\n" for w in ("red", "blue")))
    protocol = tmp_path / "eval_protocol.yaml"
    protocol.write_text("engine: vllm\ndecoding_seeds: [10, 20]\nmax_new_tokens: 4\n")
    out = tmp_path / "toy.json"
    assert evaluate.main(["--model", str(model_dir), "--data", str(data), "--set", "toy", "--protocol", str(protocol),
                          "--out", str(out), "--predictions", str(tmp_path / "toy.predictions.jsonl")]) == 0
    [(rows, settings, eos_ids)] = FakeEngine.seen  # both seeds in one call, seeded as the hf engine seeds them
    assert [seed for _, seed in rows] == [row_seed(s, i, p) for s in (10, 20) for i, (p, _) in enumerate(rows[:2])]
    assert settings["max_new_tokens"] == 4 and 0 in eos_ids
    result = json.loads(out.read_text())
    assert result["protocol"]["engine"] == "vllm" and result["device"] == "cuda (vllm)"
    assert list(result["per_seed"]) == ["10", "20"] and result["rougeL_mean"] == pytest.approx(100.0)
