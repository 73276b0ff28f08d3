"""Prompt templates shared by training and evaluation.

`build_prompt` renders the MiniLLM / DistiLLM / AdaKD template (docs/METHODS.md §5), the protocol's
prompt for every model. `build_chat_prompt` is the chat variant for chat-tuned models (Qwen2,
SmolLM2-Instruct and the like): the same instruction and input as one user turn, rendered by the
tokenizer's own chat template with the assistant header appended. `render_prompt` picks one by the
grid's `evaluation.prompt_format`, which training and evaluation share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdbench.errors import KDBenchError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def build_prompt(instruction: str, input: str = "") -> str:
    """Render one example's prompt; an empty or missing input selects the no-input variant."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def build_chat_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str, input: str = "") -> str:
    """Render one example as a chat prompt: a single user message holding the instruction, followed
    by a blank line and the input when there is one, passed through ``tokenizer.apply_chat_template``
    with ``add_generation_prompt=True`` (so the text ends with the assistant header). Whatever the
    template adds by itself (Qwen2's default system message) is kept. The tokenizer must have a
    chat template."""
    if not tokenizer.chat_template:
        raise KDBenchError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; use the plain MiniLLM prompt "
            "(build_prompt) for this model, or load the tokenizer of its chat/instruct variant"
        )
    content = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


PROMPT_FORMATS = ("minillm", "chat")


def render_prompt(prompt_format: str, tokenizer: PreTrainedTokenizerBase, instruction: str, input: str = "") -> str:
    """One example's prompt in `prompt_format`: "minillm" (`build_prompt`) or "chat" (`build_chat_prompt`)."""
    if prompt_format == "chat":
        return build_chat_prompt(tokenizer, instruction, input)
    if prompt_format == "minillm":
        return build_prompt(instruction, input)
    raise KDBenchError(f"prompt format {prompt_format!r}; known: {', '.join(PROMPT_FORMATS)}")


def template_tokens(tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> int:
    """The tokens `tokenizer` gives `prompt_format`'s prompt with an empty instruction and no input:
    the template alone, which every training example's prompt holds (as `sft_data.encode_example`
    encodes it: no special tokens added)."""
    return len(tokenizer(render_prompt(prompt_format, tokenizer, ""), add_special_tokens=False)["input_ids"])


def check_prompt_room(template: int, max_lengths: dict[str, int], where: str, whose: str) -> None:
    """Each `max_length` (key → value) must hold the prompt template (`template` tokens) and one
    response token: below that every example is cut inside its prompt, so no token is trained on.
    `whose` says which tokenizer counted the template, for the message."""
    for key, length in max_lengths.items():
        if length <= template:
            raise KDBenchError(f"{where}: key '{key}': {length} leaves no room for a response: the prompt template "
                               f"alone (an empty instruction) is {template} tokens of {whose}, and real instructions "
                               f"add more; give at least {template + 1}, better several times that.")
