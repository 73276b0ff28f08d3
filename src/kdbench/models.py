"""Model construction and loading with the standard Hugging Face API.

A model spec in a pair file is either `{init: random, config: {...}}` (a tiny random-init model of a
real family, built from its transformers config: the embedded default and the tests) or
`{init: pretrained, path: <hub id or local dir>, revision: <pinned>}` (the paper pairs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import yaml

from kdbench.errors import KDBenchError

FAMILIES = {"gpt2": "gpt2", "qwen2": "qwen2", "llama": "llama"}  # pair family → transformers model_type


def build_random(family: str, config: dict[str, Any], tokenizer, seed: int):
    """A random-init causal LM of `family`, its vocabulary and special tokens taken from `tokenizer`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in FAMILIES:
        raise KDBenchError(f"unknown model family '{family}'; known: {', '.join(FAMILIES)}")
    cfg = AutoConfig.for_model(
        FAMILIES[family],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


class LastHidden(torch.nn.Module):
    """A causal LM without its output head: forward returns the final hidden states (B, T, D).
    `kdbench.losses` applies `head` chunk by chunk, so full (tokens × vocab) logits never exist."""

    def __init__(self, lm, extras: list[torch.nn.Module] = ()):
        super().__init__()
        self.lm = lm
        self.extras = torch.nn.ModuleList(extras)  # token-policy modules trained with the student (EGAD's W)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def head(self) -> torch.nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def hidden_size(self) -> int:
        return self.head.weight.shape[1]


def load_causal_lm(path: str, revision: str | None = None, dtype: torch.dtype | None = None):
    """Load a causal LM from a local directory (or a hub id where a hub is reachable); no remote code."""
    from transformers import AutoModelForCausalLM

    local = Path(path)
    if not local.exists() and (path.startswith((".", "/")) or "results/" in path):
        raise KDBenchError(f"model directory {path} does not exist; was the rule that writes it run?")
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=dtype, trust_remote_code=False, use_safetensors=True)
    except OSError as exc:
        raise KDBenchError(f"cannot load model '{path}': {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """`kdbench init-model`: write the initial weights of a pair's teacher or student."""
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(prog="kdbench init-model", description=main.__doc__)
    ap.add_argument("--pair", required=True, help="pair file, config/pairs/<student>_from_<teacher>.yaml")
    ap.add_argument("--role", required=True, choices=["teacher", "student"])
    ap.add_argument("--tokenizer", required=True, help="tokenizer directory")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    pair = yaml.safe_load(Path(args.pair).read_text())
    spec = pair[args.role]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if spec["init"] == "random":
        model = build_random(pair["family"], spec.get("config", {}), tokenizer, spec.get("seed", 0))
    else:
        model = load_causal_lm(spec["path"], spec.get("revision"))
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.role} of {Path(args.pair).stem}: {n_params:,} parameters → {args.out}")
    return 0
