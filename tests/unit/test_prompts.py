"""kdbench.prompts: the MiniLLM template and the chat variant rendered by a tokenizer's chat template."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kdbench.errors import KDBenchError
from kdbench.prompts import build_chat_prompt, build_prompt

# Qwen2's chat template (ChatML with a default system message).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tok.chat_template = chat_template
    return tok


def test_build_prompt_variants() -> None:
    assert build_prompt("Say hi.").endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    assert "paired with an input" not in build_prompt("Say hi.", "")
    assert build_prompt("Copy.", "a b").endswith("### Instruction:\nCopy.\n\n### Input:\na b\n\n### Response:\n")


def test_chat_prompt_puts_instruction_and_input_in_one_user_turn() -> None:
    tok = _tokenizer(QWEN2_TEMPLATE)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert build_chat_prompt(tok, "Copy the input.", "a b c") == (
        f"{system}<|im_start|>user\nCopy the input.\n\na b c<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_chat_prompt(tok, "Say hi.") == f"{system}<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompt_needs_a_chat_template() -> None:
    with pytest.raises(KDBenchError, match="no chat template"):
        build_chat_prompt(_tokenizer(None), "Say hi.")


def test_training_examples_use_the_grid_prompt_format() -> None:
    """`evaluation.prompt_format` reaches the training examples: a chat run trains on the chat prompt it
    is evaluated with, its labels masking exactly that prompt; an unknown format is named."""
    from kdbench.losses import IGNORE
    from kdbench.sft_data import encode_example

    tok = _tokenizer(QWEN2_TEMPLATE)
    record = {"instruction": "Copy the input.", "input": "a b c", "output": "a b c"}
    for fmt, prompt in (("chat", build_chat_prompt(tok, "Copy the input.", "a b c")),
                        ("minillm", build_prompt("Copy the input.", "a b c"))):
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        example = encode_example(record, tok, 512, fmt)
        assert example["input_ids"][:len(prompt_ids)] == prompt_ids
        assert example["labels"] == [IGNORE] * len(prompt_ids) + example["input_ids"][len(prompt_ids):]
        assert example["input_ids"][-1] == tok.eos_token_id
    assert encode_example(record, tok, 512, "chat") != encode_example(record, tok, 512, "minillm")
    with pytest.raises(KDBenchError, match="prompt format 'alpaca'; known: minillm, chat"):
        encode_example(record, tok, 512, "alpaca")


def test_the_template_is_counted_in_the_format_the_runs_use() -> None:
    from kdbench.prompts import template_tokens

    tok = _tokenizer(QWEN2_TEMPLATE)
    # the word-level tokenizer: one id per word or punctuation run, as its pre-tokenizer splits the text
    assert template_tokens(tok, "minillm") == len(pre_tokenizers.Whitespace().pre_tokenize_str(build_prompt(""))) == 24
    chat = tok(build_chat_prompt(tok, ""), add_special_tokens=False)["input_ids"]
    assert template_tokens(tok, "chat") == len(chat) == 20  # the ChatML turns, its default system message included


def test_a_teacher_states_job_refuses_a_max_length_without_room_before_loading_its_model(tmp_path) -> None:
    """Where the tokenizer is first known at job start (a hub id, a GGUF file), the job checks it
    before it loads any model (here the teacher's directory does not even exist)."""
    from kdbench.datagen import generate
    from kdbench.teacher_states import write
    from kdbench.tokenizer import train_tokenizer

    train = generate(tmp_path / "data", seed=0, n_train=50, n_valid=5, n_eval=5)["train"]
    train_tokenizer([train], tmp_path / "tok", vocab_size=1000)
    what = {"pair": "hub_from_hub", "seed": 1, "teacher": str(tmp_path / "no-model"), "teacher_dtype": "fp32",
            "tokenizer": str(tmp_path / "tok"), "prompt_format": "minillm", "data": str(train), "max_length": 24,
            "micro_batch_size": 2, "micro_batches": 1, "gpus": 0}
    with pytest.raises(KDBenchError, match=r"^config/pairs/hub_from_hub.yaml: key 'training.max_length': 24 leaves no "
                                           r"room for a response: the prompt template alone .* is 30 tokens of the run's "
                                           r"tokenizer \(.*tok\), and real instructions add more; give at least 31"):
        write(what, tmp_path / "states.safetensors", 1)
    assert not (tmp_path / "states.safetensors").exists()
