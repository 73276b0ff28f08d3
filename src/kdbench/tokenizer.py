"""Tokenizers trained locally on instruction data and saved in Hugging Face format: a byte-level BPE
(kind `bpe`, the default every random-init model gets) and a SentencePiece-style Unigram (kind
`unigram`, for cross-tokenizer pairs: `▁` word markers where the BPE has `Ġ`).

The embedded default cannot download a tokenizer, so one is trained with the `tokenizers` library on
the exact text the models see: each record's prompt (`kdbench.prompts.build_prompt`) followed by its
output (every reference when ``output`` is a list). It is GPT-2 style: byte-level pre-tokenization
and decoding, so ``decode(encode(text)) == text`` for any text (newlines included), with no bos
added on encoding (the training code appends eos after each response itself). The Unigram kind is
Llama/SentencePiece style: Metaspace pre-tokenization (`▁` for a space, one prepended to the text),
byte fallback (`<0x00>`..`<0xFF>` in the vocabulary, so any text is represented) and the matching
decoder (which drops the prepended space: a text that starts with a space loses it, as SentencePiece's).

Special tokens: ``<|endoftext|>`` (id 0) is bos, eos and unk; ``<|pad|>`` (id 1) is a distinct pad
token, so masking padding can never mask a real end of sequence. ``padding_side`` is saved as
``"right"`` (training); batched generation sets ``tokenizer.padding_side = "left"`` and passes the
attention mask. ``model_max_length`` is 1024. The result of ``save_pretrained`` loads offline with
``transformers.AutoTokenizer.from_pretrained(out_dir)``. Training is deterministic: the same files
and vocabulary size give identical ``tokenizer.json`` files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kdbench.errors import KDBenchError
from kdbench.jsonl import read_jsonl
from kdbench.prompts import build_prompt

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
MODEL_MAX_LENGTH = 1024
# Every byte gets a token, plus the special tokens; below that BPE cannot represent arbitrary text.
MIN_VOCAB_SIZE = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
KINDS = ("bpe", "unigram")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # the Unigram kind's byte fallback


def corpus_texts(files: Sequence[Path]) -> Iterator[str]:
    """Yield prompt + output for every record of `files`, once per reference when output is a list."""
    for path in files:
        for record in read_jsonl(path):
            prompt = build_prompt(record["instruction"], record["input"])
            outputs = record["output"] if isinstance(record["output"], list) else [record["output"]]
            for output in outputs:
                yield prompt + output


def train_tokenizer(files: Sequence[Path], out_dir: Path, vocab_size: int = 1000, kind: str = "bpe") -> None:
    """Train a tokenizer of `kind` (bpe or unigram) of at most `vocab_size` tokens on `files` and save
    it to `out_dir`."""
    if not files:
        raise KDBenchError("tokenizer: no training data given; pass one or more jsonl files with --data.")
    if kind not in KINDS:
        raise KDBenchError(f"tokenizer: kind {kind!r} is not one of {', '.join(KINDS)}.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise KDBenchError(
            f"tokenizer: vocab_size={vocab_size!r} is too small; a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} tokens (256 bytes + {len(SPECIAL_TOKENS)} special). Use e.g. 1000."
        )
    from transformers import PreTrainedTokenizerFast  # here: kdbench.validate reads pre_tokenizer at DAG time

    texts = list(corpus_texts([Path(f) for f in files]))
    backend = (_bpe if kind == "bpe" else _unigram)(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 records its own class name (TokenizersBackend), which 4.x (the declared floor)
    # cannot resolve; the 4.x name loads in both.
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    """How a generated tokenizer of `kind` splits text before its model runs (no token ever spans
    two pieces: kdbench.validate counts the prompt template's pieces as a lower bound before any job)."""
    if kind == "bpe":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)


def _bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer("bpe")
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return backend


def _unigram(texts: list[str], vocab_size: int) -> Tokenizer:
    """A Unigram model trained for `vocab_size` less the byte tokens, which are then added (lowest
    score, so a byte is used only where no piece covers a character) and byte fallback switched on.
    The trainer keeps every character of the corpus as a piece, so a small `vocab_size` may end a
    little larger (the corpus's characters + the special and byte tokens)."""
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizer("unigram")
    pieces = max(vocab_size - len(BYTE_TOKENS), len(set("".join(texts))) + len(SPECIAL_TOKENS) + 1)
    trainer = trainers.UnigramTrainer(vocab_size=pieces, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token=EOS_TOKEN, show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    spec = json.loads(backend.to_str())
    model = spec["model"]
    have, low = {piece for piece, _ in model["vocab"]}, min(score for _, score in model["vocab"]) - 1.0
    model["vocab"] += [[token, low] for token in BYTE_TOKENS if token not in have]
    model["byte_fallback"] = True
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return backend


def main(argv: list[str] | None = None) -> int:
    """``kdbench tokenizer``: train the tokenizer on jsonl files and save it."""
    parser = argparse.ArgumentParser(prog="kdbench tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", type=Path, help="jsonl files to train on")
    parser.add_argument("--vocab-size", type=int, default=1000, help="maximum vocabulary size (default 1000)")
    parser.add_argument("--kind", choices=KINDS, default="bpe", help="byte-level BPE (default) or Unigram (Metaspace)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the tokenizer files")
    args = parser.parse_args(argv)
    train_tokenizer(args.data, args.out, vocab_size=args.vocab_size, kind=args.kind)
    print(f"tokenizer: {args.out}")
    return 0
