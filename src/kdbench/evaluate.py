"""Evaluate a causal LM on an instruction set: generate responses, score ROUGE-L and exact match.

The protocol is the MiniLLM / DistiLLM / AdaKD one (docs/METHODS.md §5): the shared prompt template,
prompts truncated to their last 256 tokens, sampling with top-k 0, top-p 1.0, temperature 1.0,
256 new tokens, decoding seeds 10-50, ROUGE-L F-measure (rouge-score, Porter stemmer) maximised
over an example's references, averaged over examples, ×100; exact match alongside.

One model load serves every set and decoding seed of a job, decoded together in full batches, each
response sampled from its own seeded stream (:mod:`kdbench.engines`; transformers' ``generate`` or,
with ``engine: vllm``, vLLM). The protocol comes from ``--protocol results/eval_protocol.yaml``
(:mod:`kdbench.eval_protocol`). ``kdbench evaluate`` (:func:`main`) writes per set a result JSON
(summary, protocol, provenance) and a per-sample predictions jsonl; ``kdbench aggregate`` turns
the result JSONs into tables.

Resume: each finished decoding seed is kept (atomically) in ``<out>.partial/seed<N>.json`` with a
fingerprint of its inputs (sha256 of the model weights and the data file, the protocol, the set),
as soon as its last response is generated (the rows of one seed are decoded before the next's).
A rerun after a crash or kill reuses the seeds whose fingerprint matches and generates only the
rest; the folder is deleted once the final outputs are written.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import kdbench
from kdbench import eval_protocol, spec, testhooks
from kdbench.atomic import write_json
from kdbench.engines import hf, row_seed
from kdbench.errors import KDBenchError
from kdbench.eval_protocol import int_at_least
from kdbench.gpus import pinned
from kdbench.jsonl import read_jsonl, write_jsonl_atomic
from kdbench.models import DTYPES
from kdbench.prompts import render_prompt
from kdbench.provenance import git_state


@contextlib.contextmanager
def _unimportable(*names: str):
    """Inside the block, `import <name>` fails with ImportError for each name not imported yet (a
    None entry in sys.modules, Python's own way to block an import); afterwards it works again."""
    blocked = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked))
    try:
        yield
    finally:
        for name in blocked:
            del sys.modules[name]


# rouge-score stems with nltk's Porter stemmer, and importing nltk loads its scikit-learn classifier
# wrapper and scipy's statistics too (1.4 s of CPU, a tenth of a tiny evaluation job). Both are
# optional to nltk (each imported under `try: ... except ImportError`) and unused by the stemmer.
with _unimportable("sklearn", "scipy.stats"):
    from nltk.stem import porter
    from rouge_score import rouge_scorer, tokenize, tokenizers

PROTOCOL_VERSION = 2  # 2: each response sampled from its own seeded stream (kdbench.engines)
METRIC = "rougeL-F x100, porter stemmer, max over refs"
DEFAULT_SEEDS = spec.defaults(spec.Evaluation)["decoding_seeds"]
# Generation settings of the paper protocol (kdbench.spec.Protocol); ``evaluate_set``'s ``protocol`` overrides any of them.
DEFAULT_PROTOCOL: dict[str, Any] = spec.defaults(spec.Protocol)


class _StemmedTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer with its Porter stemmer (`DefaultTokenizer(use_stemmer=True)`:
    `tokenize.tokenize(text, PorterStemmer())`), with each word's stem memoised. Stemming is a pure
    function of the word, so the scores are the same; it was most of an evaluation job's time, as
    every reference is scored once per decoding seed and small vocabularies repeat their words."""

    def __init__(self):
        self.stem = functools.lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)

    def tokenize(self, text: str) -> list[str]:
        return tokenize.tokenize(text, self)


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_StemmedTokenizer())


def rouge_l(prediction: str, references: list[str]) -> float:
    """ROUGE-L F-measure ×100 of ``prediction``, the maximum over ``references`` (Porter stemming)."""
    return 100.0 * max(_ROUGE.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def _normalize_answer(text: str, keep_articles: bool) -> str:
    """Lowercase, drop punctuation (and, SQuAD's way, the articles a/an/the), collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    if not keep_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str], *, keep_articles: bool = True) -> float:
    """100 if the normalised prediction equals any normalised reference, else 0. The normalisation is
    the MiniLLM / DistiLLM / AdaKD lineage's (`rouge_metric.py`: SQuAD's "without removing the
    articles"); keep_articles=False is SQuAD v1.1's own."""
    pred = _normalize_answer(prediction, keep_articles)
    return 100.0 if any(pred == _normalize_answer(ref, keep_articles) for ref in references) else 0.0


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (its eos token) when it has none; batching needs one."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise KDBenchError(
            f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token; "
            "batched generation needs one: set tokenizer.pad_token and save the tokenizer again"
        )
    tokenizer.pad_token = tokenizer.eos_token


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int] | None:
    """Every id that ends a response: the tokenizer's eos plus those of the model's generation config
    (chat models list several); None when neither names one."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None) or None


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    seed: int,
    synced_gpus: bool = False,
    **protocol: Any,
) -> list[str]:
    """Generate one response per prompt, in the order of ``prompts``, under ``protocol`` (the
    settings of kdbench.spec.Protocol; each one not given takes its default, an unknown one is an
    error; ``prompt_format`` is the caller's, the prompts are already rendered). Response ``i`` is
    sampled from its own stream, seeded by ``row_seed(seed, i, prompts[i])`` (kdbench.engines), so
    it depends on its seed, position and prompt, not on the batch it shares.
    ``synced_gpus``: every rank keeps stepping until all are done (a ZeRO-3 model on several ranks:
    each forward is collective); not a protocol setting."""
    rows = [(prompt, row_seed(seed, i, prompt)) for i, prompt in enumerate(prompts)]
    return generate_rows(model, tokenizer, rows, resolve_protocol(protocol), synced_gpus=synced_gpus)


def generate_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, int]],
                  settings: dict[str, Any], *, groups: list[int] | None = None, synced_gpus: bool = False,
                  on_rows: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """One response per ``(prompt, row seed)`` of ``rows`` (any mix of sets and decoding seeds), in
    their order, decoded in full batches of ``batch_size``: rows sorted as lm-eval's
    ``HFLM.generate_until`` sorts its requests (by untruncated prompt length, longest first, so
    memory problems show in the first batch, then by prompt text), after their ``groups`` entry
    when given (one per decoding seed: each seed's rows finish together, and early, for resume). Prompts longer than ``max_prompt_tokens`` lose their beginning (the
    response header at the end must survive). Generation stops at eos; only the new tokens are
    decoded, special tokens skipped, whitespace stripped. Sets ``tokenizer.padding_side`` and
    ``truncation_side`` to ``"left"`` and the pad token to eos when the tokenizer has none.
    ``on_rows(indices, responses)`` is called after each batch with ``rows``' indices."""
    _ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    prompts = [prompt for prompt, _ in rows]
    # lm-eval's sort key (its tok_encode); a prompt over the model's length is only measured here
    untruncated = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    groups = groups or [0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: (groups[i], -len(untruncated[i]), prompts[i], rows[i][1]))
    kwargs = _generate_kwargs(model, tokenizer, settings, synced_gpus)

    def mapped(batch: list[int], texts: list[str]) -> None:
        if on_rows is not None:
            on_rows([order[i] for i in batch], texts)

    model.eval()
    sorted_responses = hf.generate(model, tokenizer, [prompts[i] for i in order], [rows[i][1] for i in order],
                                   settings, kwargs, on_batch=mapped)
    responses = [""] * len(rows)
    for position, i in enumerate(order):
        responses[i] = sorted_responses[position]
    return responses


def _generate_kwargs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: dict[str, Any],
                     synced_gpus: bool) -> dict[str, Any]:
    """``model.generate``'s settings. Every one is passed explicitly, so a model's own
    generation_config (often tuned sampling or a repetition penalty) cannot silently change the protocol."""
    return dict(  # sampling: kdbench.engines.hf's per-response sampler picks the tokens greedy search takes
        max_new_tokens=settings["max_new_tokens"],
        no_repeat_ngram_size=settings["no_repeat_ngram_size"],
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_eos_token_ids(model, tokenizer),
        synced_gpus=synced_gpus,
    )


def _references(example: Any, where: str) -> list[str]:
    """Validate one eval-set record and return its references (``output`` as a list).

    A record is ``{"instruction": str, "input": str (optional), "output": str | list[str]}``;
    ``where`` names the record in the error message.
    """
    if not isinstance(example, dict):
        raise KDBenchError(f"{where}: expected a JSON object, got {type(example).__name__}")
    if not isinstance(example.get("instruction"), str):
        raise KDBenchError(f"{where}: 'instruction' must be a string (keys found: {sorted(example)})")
    if not isinstance(example.get("input", ""), str):
        raise KDBenchError(f"{where}: 'input' must be a string; use \"\" when the example has none")
    output = example.get("output")
    references = [output] if isinstance(output, str) else output
    if not isinstance(references, list) or not references or not all(isinstance(r, str) for r in references):
        raise KDBenchError(f"{where}: 'output' must be a string or a non-empty list of strings, got {output!r}")
    return references


def resolve_protocol(protocol: dict[str, Any]) -> dict[str, Any]:
    """The paper defaults updated with ``protocol``; an unknown key is an error."""
    unknown = sorted(set(protocol) - set(DEFAULT_PROTOCOL))
    if unknown:
        raise KDBenchError(f"unknown evaluation protocol settings {unknown}; known: {sorted(DEFAULT_PROTOCOL)}")
    return {**DEFAULT_PROTOCOL, **protocol}


def evaluate_set(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[dict], *,
                 set_name: str, seeds: list[int], protocol: dict[str, Any],
                 synced_gpus: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`evaluate_sets` of one set: its ``(summary, predictions)``."""
    return evaluate_sets(model, tokenizer, {set_name: examples}, seeds=seeds, protocol=protocol,
                         synced_gpus=synced_gpus)[set_name]


def evaluate_sets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, list[dict]],
    *,
    seeds: list[int],
    protocol: dict[str, Any],
    done: dict[str, dict[int, dict[str, Any]]] | None = None,
    on_seed: Callable[[str, int, dict[str, Any]], None] | None = None,
    synced_gpus: bool = False,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Score ``model`` on every eval set of ``sets`` (name -> examples) under every decoding seed,
    without reloading it: all the responses still to generate are decoded together, in full batches
    (:func:`generate_rows`, the rows of one seed after another's).

    Returns ``{set: (summary, predictions)}``. ``summary`` holds ``set``, ``n_examples``, the
    resolved ``protocol`` (generation settings, ``metric``, ``protocol_version``), ``per_seed``
    (``{"10": {"rougeL": .., "exact_match": ..}, ..}``, means over examples), ``rougeL_mean``,
    ``rougeL_std`` (sample std over seeds, 0 for one seed) and ``exact_match_mean``.
    ``predictions`` has one record per (seed, example): ``seed, idx, prompt, prediction,
    references, rougeL, exact_match``.

    Resume: ``done[set]`` maps a seed already scored to its record ``{"scores": per_seed entry,
    "predictions": its prediction records}``, which is used instead of generating again;
    ``on_seed(set, seed, record)`` is called with the record of each (set, seed) generated here, as
    soon as its last response is. ``synced_gpus`` is passed to :func:`generate_rows` (checkpoint
    selection in a ZeRO-3 training job).
    """
    if not seeds:
        raise KDBenchError("no decoding seeds given; the paper protocol uses 10 20 30 40 50")
    settings = resolve_protocol(protocol)
    inputs = {name: _set_inputs(name, examples, tokenizer, settings) for name, examples in sets.items()}
    records = {name: dict((done or {}).get(name, {})) for name in sets}
    todo = [(name, seed) for seed in seeds for name in sets if seed not in records[name]]
    rows, owners, groups = [], [], []
    for group, (name, seed) in enumerate(todo):
        prompts = inputs[name][0]
        rows += [(prompt, row_seed(seed, i, prompt)) for i, prompt in enumerate(prompts)]
        owners += [(name, seed, i) for i in range(len(prompts))]
        groups += [seeds.index(seed)] * len(prompts)
    responses: dict[tuple[str, int], list[str | None]] = {key: [None] * len(inputs[key[0]][0]) for key in todo}

    def collect(indices: list[int], texts: list[str]) -> None:
        for i, text in zip(indices, texts):
            name, seed, idx = owners[i]
            responses[name, seed][idx] = text
            if all(r is not None for r in responses[name, seed]) and seed not in records[name]:
                records[name][seed] = _scored(seed, inputs[name][0], responses[name, seed], inputs[name][1])
                if on_seed is not None:
                    on_seed(name, seed, records[name][seed])

    if rows and hasattr(model, "generate_rows"):  # another engine than transformers' (kdbench.engines)
        model.generate_rows(tokenizer, rows, settings, eos_ids=_eos_token_ids(model, tokenizer), groups=groups,
                            on_rows=collect)
    elif rows:
        generate_rows(model, tokenizer, rows, settings, groups=groups, synced_gpus=synced_gpus, on_rows=collect)
    return {name: _summary(name, len(sets[name]), settings, {seed: records[name][seed] for seed in seeds})
            for name in sets}


def _set_inputs(name: str, examples: list[dict], tokenizer: PreTrainedTokenizerBase,
                settings: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One set's rendered prompts and references (each record validated)."""
    if not examples:
        raise KDBenchError(f"eval set {name!r} has no examples")
    references = [_references(ex, f"{name} example {i}") for i, ex in enumerate(examples)]
    prompts = [render_prompt(settings["prompt_format"], tokenizer, ex["instruction"], ex.get("input", ""))
               for ex in examples]
    return prompts, references


def _summary(name: str, n_examples: int, settings: dict[str, Any],
             records: dict[int, dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One set's summary (per-seed scores, their mean and std) and its prediction records."""
    per_seed = {str(seed): record["scores"] for seed, record in records.items()}
    seed_rouge = [s["rougeL"] for s in per_seed.values()]
    summary = {
        "set": name,
        "n_examples": n_examples,
        "protocol": {**settings, "metric": METRIC, "protocol_version": PROTOCOL_VERSION},
        "per_seed": per_seed,
        "rougeL_mean": statistics.fmean(seed_rouge),
        "rougeL_std": statistics.stdev(seed_rouge) if len(seed_rouge) > 1 else 0.0,
        "exact_match_mean": statistics.fmean(s["exact_match"] for s in per_seed.values()),
    }
    return summary, [p for record in records.values() for p in record["predictions"]]


def _scored(seed: int, prompts: list[str], responses: list[str], references: list[list[str]]) -> dict[str, Any]:
    """One seed's record: mean ROUGE-L and exact match, and a prediction record per example."""
    rouge = [rouge_l(r, refs) for r, refs in zip(responses, references)]
    em = [exact_match(r, refs) for r, refs in zip(responses, references)]
    return {"scores": {"rougeL": statistics.fmean(rouge), "exact_match": statistics.fmean(em)},
            "predictions": [{"seed": seed, "idx": idx, "prompt": prompt, "prediction": responses[idx],
                             "references": references[idx], "rougeL": rouge[idx], "exact_match": em[idx]}
                            for idx, prompt in enumerate(prompts)]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench evaluate",
        description="Generate responses on one eval set under several decoding seeds and score ROUGE-L / exact match.",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="directory written by save_pretrained (model + tokenizer)"
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True,
        help="eval set jsonl: {instruction, input, output} per line; several sets share one model load"
    )
    parser.add_argument("--set", nargs="+", required=True, dest="set_name",
                        help="eval set name recorded in the result, one per --data")
    parser.add_argument("--run", default="", help="free-text label of the evaluated run, recorded in the result")
    eval_protocol.add_arguments(parser)
    parser.add_argument("--limit", type=int_at_least(1), help="evaluate only the first N examples")
    parser.add_argument("--threads", type=int_at_least(1), help="torch CPU threads")
    parser.add_argument("--out", type=Path, nargs="+", required=True, help="result JSON, one per --data")
    parser.add_argument("--predictions", type=Path, nargs="+", required=True,
                        help="per-sample predictions jsonl, one per --data")
    return parser


def load_model(model_dir: Path, engine: str = "hf", dtype: str = "fp32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load tokenizer and model from a local directory in ``dtype`` (the protocol's
    ``evaluation.dtype``, never the library's default), on the GPU when there is one; with ``engine``
    vllm, the model is served by vLLM (kdbench.engines.vllm) instead."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if engine == "vllm":
            from kdbench.engines.vllm import Engine

            return Engine(model_dir, dtype), tokenizer
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=DTYPES[dtype])
    except (OSError, ValueError) as err:
        raise KDBenchError(
            f"cannot load a model and tokenizer from {model_dir}: {err}\n"
            "Expected a directory written by save_pretrained (config, weights and tokenizer files)."
        ) from err
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_inputs(model_dir: Path, data: Path, set_name: str, protocol: dict[str, Any], limit: int | None,
                       engine: str = "hf", dtype: str = "fp32") -> dict:
    """What a kept seed result depends on: the model's weight files (sha256 each), the data file
    (sha256), the set, the protocol (resolved, with the protocol version), ``--limit``, the engine
    (other than hf) and the dtype (other than fp32); the result file keeps them as its provenance."""
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin"})
    return {"weights": {p.name: _sha256(p) for p in weights}, "data": _sha256(data), "set": set_name,
            "protocol": {**resolve_protocol(protocol), "protocol_version": PROTOCOL_VERSION}, "limit": limit,
            **({"engine": engine} if engine != "hf" else {}), **({"dtype": dtype} if dtype != "fp32" else {})}


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _kept_seeds(partial: Path, inputs_key: str, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """The seed records in ``partial`` made from the same inputs; anything else there is removed."""
    done: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        path = partial / f"seed{seed}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("fingerprint") == inputs_key and record.get("seed") == seed:
            done[seed] = record
    keep = {f"seed{seed}.json" for seed in done}
    for path in partial.glob("seed*.json"):  # another model, data file or protocol: generate again
        if path.name not in keep:
            path.unlink()
    return done


def main(argv: list[str] | None = None) -> int:
    """``kdbench evaluate``: evaluate one model on one or more eval sets (the model is loaded once);
    raises KDBenchError for user errors, before any generation."""
    args = _parser().parse_args(argv)
    if not args.model.is_dir():
        raise KDBenchError(f"--model {args.model}: no such directory; pass a directory written by save_pretrained")
    counts = {len(args.data), len(args.set_name), len(args.out), len(args.predictions)}
    if len(counts) != 1:
        raise KDBenchError(f"give one --set, --out and --predictions per --data (got {len(args.data)} --data, "
                           f"{len(args.set_name)} --set, {len(args.out)} --out, {len(args.predictions)} --predictions)")
    for data in args.data:
        if not data.is_file():
            raise KDBenchError(f"--data {data}: no such file; pass the eval set as a jsonl file")
    if len(set(args.set_name)) != len(args.set_name):
        raise KDBenchError(f"--set names a set twice ({' '.join(args.set_name)}); give each set once")
    sets = [read_jsonl(data)[: args.limit] for data in args.data]  # checks every record, naming file and line
    settings = eval_protocol.from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    with pinned(1, "evaluation"):  # a GPU of its own (kdbench.gpus), as training jobs get
        model, tokenizer = load_model(args.model, settings["engine"], settings["dtype"])
        _evaluate_files(model, tokenizer, sets, args, settings)
    return 0


def _evaluate_files(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sets: list[list[dict[str, Any]]],
                    args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Every set together (:func:`evaluate_sets`): resume from the finished decoding seeds in each
    ``<out>.partial``, then write each set's predictions and result atomically (the result last: it
    is what marks the set done)."""
    protocol = eval_protocol.decoding(settings)
    seeds = settings["decoding_seeds"][:1] if settings["greedy"] else settings["decoding_seeds"]
    files = list(zip(args.set_name, args.data, args.out, args.predictions))
    partials = {name: out.with_name(out.name + ".partial") for name, _, out, _ in files}  # finished seeds
    inputs = {name: fingerprint_inputs(args.model, data, name, protocol, args.limit, settings["engine"],
                                       settings["dtype"])
              for name, data, _, _ in files}
    keys = {name: fingerprint(inputs[name]) for name in inputs}
    done = {name: _kept_seeds(partials[name], keys[name], seeds) for name in keys}
    for name, kept in done.items():
        if kept:
            print(f"{name}: reusing seeds {', '.join(map(str, kept))} from {partials[name]}", file=sys.stderr)

    def keep(name: str, seed: int, record: dict[str, Any]) -> None:
        write_json(partials[name] / f"seed{seed}.json", {"seed": seed, "fingerprint": keys[name], **record})
        testhooks.point("evaluate.seed_written", seed=seed)  # fault-injection tests (kdbench.testhooks)

    start = time.perf_counter()
    results = evaluate_sets(model, tokenizer, dict(zip(args.set_name, sets)), seeds=seeds, protocol=protocol,
                            done=done, on_seed=keep)
    elapsed = time.perf_counter() - start  # the sets are decoded together: the time of all of them
    for name, data, out, predictions_path in files:
        summary, predictions = results[name]
        summary = {**summary, "protocol": {**summary["protocol"], "engine": settings["engine"],
                                           "dtype": settings["dtype"]}}
        # what this result was computed from and by: the checkout's commit, the weights, the data, the protocol
        provenance = {"git": git_state(Path.cwd()), "weights_sha256": inputs[name]["weights"],
                      "data_sha256": inputs[name]["data"], "protocol": inputs[name]["protocol"],
                      "limit": inputs[name]["limit"], "fingerprint": keys[name]}
        _write_result(model, args, data, {**summary, "provenance": provenance}, predictions, out, predictions_path,
                      elapsed)
        shutil.rmtree(partials[name], ignore_errors=True)
        print(f"{name}: ROUGE-L {summary['rougeL_mean']:.2f} ± {summary['rougeL_std']:.2f} over "
              f"{len(seeds)} seed(s), {summary['n_examples']} examples, "
              f"{elapsed:.1f} s (all sets)", file=sys.stderr)


def _write_result(model: PreTrainedModel, args: argparse.Namespace, data: Path, summary: dict[str, Any],
                  predictions: list[dict[str, Any]], out: Path, predictions_path: Path, elapsed: float) -> None:
    """One set's predictions jsonl and result JSON (summary, provenance), the result last."""
    result = {
        "run": args.run,
        "model": str(args.model),
        "data": str(data),
        **summary,
        "versions": {
            "kdbench": kdbench.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "device": str(model.device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "elapsed_s": round(elapsed, 3),
    }
    write_jsonl_atomic(predictions_path, predictions)
    write_json(out, result)
