"""Peak memory and time of ONE forward+backward of the KD loss from final hidden states:
kdbench's chunked (fused) path versus a naive full-logits implementation, at several token counts
and chunk sizes side by side.

- chunked: `kdbench.losses.objective` given the hidden states, both output heads and `chunk_size`;
  per chunk it computes both heads' logits once, the loss and its gradient with respect to the
  student hidden states and head weight right away (the gradient in the forward pass, as fused
  linear-cross-entropy losses do), then frees the chunk; backward only hands the gradients over.
  A token policy's statistics come from a no-grad first pass over the chunks.
- naive: kdbench.reference_loss, what a straightforward training loop does: both models' full
  (tokens × vocab) logits (h_s @ W_s^T with grad, h_t @ W_t^T without), full log_softmax of each,
  the per-token divergence over the whole tensors; with AdaKD also the Hellinger difficulty, top-r selection and IDTS
  temperatures on the full tensors, then the tempered log-softmaxes of the kept tokens. The plugin
  functions themselves are reused, so only the materialisation differs, not the formula.

The loss is the pure KD objective (kd_ratio = 1) over every token of one sequence; the gradient
flows to the student hidden states and the student head weight, the teacher has no grad. AdaKD uses
the plugin's defaults at the start of training (LATF ratio r = 1: every token kept). `objective`
also returns Σ CE for logging: at weight 0 it is read off the student's log-softmax, without a
gradient; the naive path computes it without a gradient too (one more log-softmax, not kept).

Each (token count, variant, implementation, chunk size) runs in its own process (`--worker
VARIANT IMPL`), so each peak is that computation's alone: the worker builds the inputs, records its
RSS, runs one timed forward+backward (no warm-up: one at full size is expensive) and reports the
peak RSS (`ru_maxrss`) as an absolute value and as the increment over the RSS after building the
inputs. The naive path does not depend on the chunk size, so it runs once per token count. A worker
runs under an address-space limit (`--mem-limit-gb`, via RLIMIT_AS), so a computation that does not
fit fails with an allocation error instead of pushing the machine into the OOM killer; a worker
that dies either way is reported in the table.

    python benchmarks/kd_loss.py           # check; 1,536 and 4,096 tokens x chunks 256 and 1,024, all variants
    python benchmarks/kd_loss.py --tokens 1536 --variants fkl fkl+adakd              # a subset
    python benchmarks/kd_loss.py --tokens 256 --vocab 32000 --chunk-size 64 128     # quick
    python benchmarks/kd_loss.py --check   # only the agreement check (a few seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from kdbench.losses import objective
from kdbench.reference_loss import reference_loss
from kdbench.registry import Method, discover

REPO = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO / "methods"
DIVERGENCES = ("fkl", "rkl", "akl")
VARIANTS = tuple(f"{d}{suffix}" for d in DIVERGENCES for suffix in ("", "+adakd"))
IMPLS = ("naive", "chunked")
THREADS = 2
TOTAL_STEPS = 1000  # AdaKD's schedule length; one step at its initial state does not depend on it
PROGRESS = 0.0  # training progress passed to the policy (start of training)
MIB = 2**20
# The naive path holds ~7 (fkl, rkl) to ~13 (akl) (tokens × vocab) fp32 tensors at once: at 4,096
# tokens (2,376 MiB each) even fkl exceeds 18 GiB; at 1,536 tokens akl needs ~14 GiB.
DEFAULT_TOKENS = (1536, 4096)
DEFAULT_CHUNKS = (256, 1024)
# glibc serves allocations below its (adaptive, up to 32 MiB) mmap threshold from heaps it keeps
# after a free, so at small sizes RSS would count dead tensors; a fixed 1 MiB threshold returns
# every tensor of 1 MiB or more to the OS when freed (at the default size they all are anyway).
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MIB)}


@dataclass(frozen=True)
class Shape:
    """Problem size. Student and teacher share the hidden size; the heads have no vocabulary padding."""

    tokens: int
    vocab: int
    hidden: int
    chunk_size: int


CHECK_SHAPE = Shape(tokens=48, vocab=500, hidden=32, chunk_size=20)  # 3 chunks, the last one partial


@dataclass
class Inputs:
    """One sequence of `tokens + 1` positions; after the next-token shift every target is valid."""

    h_s: torch.Tensor  # (1, tokens + 1, hidden) student final hidden states, requires grad
    h_t: torch.Tensor  # (1, tokens + 1, hidden) teacher final hidden states
    labels: torch.Tensor  # (1, tokens + 1) token ids
    student_head: torch.nn.Linear  # hidden → vocab, requires grad
    teacher_head: torch.nn.Linear  # hidden → vocab, frozen


def make_inputs(shape: Shape, seed: int = 0) -> Inputs:
    """Random hidden states and heads scaled so that the logits have unit variance (in place, so
    building them allocates nothing beyond the tensors themselves)."""
    g = torch.Generator().manual_seed(seed)
    positions = shape.tokens + 1

    def head(requires_grad: bool) -> torch.nn.Linear:
        layer = torch.nn.utils.skip_init(torch.nn.Linear, shape.hidden, shape.vocab, bias=False)
        with torch.no_grad():
            layer.weight.normal_(0.0, shape.hidden**-0.5, generator=g)
        return layer.requires_grad_(requires_grad)

    return Inputs(
        h_s=torch.randn(1, positions, shape.hidden, generator=g).requires_grad_(),
        h_t=torch.randn(1, positions, shape.hidden, generator=g),
        labels=torch.randint(0, shape.vocab, (1, positions), generator=g),
        student_head=head(requires_grad=True),
        teacher_head=head(requires_grad=False),
    )


def method_parts(plugins: dict[str, Method], variant: str) -> tuple[Callable[..., torch.Tensor], Any]:
    """The divergence function of `variant` ("fkl", "akl+adakd", ...) and a fresh policy or None; a
    policy's temperatures held constant (AdaKD's `tau_grad` off), as in kdbench.reference_loss."""
    name, _, policy = variant.partition("+")
    if not policy:
        return plugins[name].obj, None
    detached = {"tau_grad": False} if "tau_grad" in plugins[policy].params else {}
    return plugins[name].obj, plugins[policy].obj(total_steps=TOTAL_STEPS, **detached)


def chunked_loss(inputs: Inputs, divergence: Callable[..., torch.Tensor], policy: Any,
                 shape: Shape) -> torch.Tensor:
    """kdbench's loss from hidden states: heads applied `chunk_size` tokens at a time."""
    return objective(
        inputs.h_s, inputs.h_t, inputs.labels, vocab_size=shape.vocab, kd_ratio=1.0, n_global=shape.tokens,
        divergence=divergence, policy=policy, progress=PROGRESS, student_head=inputs.student_head,
        teacher_head=inputs.teacher_head, chunk_size=shape.chunk_size,
    ).loss


def naive_loss(inputs: Inputs, divergence: Callable[..., torch.Tensor], policy: Any) -> torch.Tensor:
    """The same KD loss from both models' full logits and log-softmaxes (tokens × vocab each):
    kdbench.reference_loss, the objective written plainly."""
    return reference_loss(inputs.h_s, inputs.h_t, inputs.labels, student_head=inputs.student_head,
                          teacher_head=inputs.teacher_head, vocab_size=inputs.student_head.out_features, kd_ratio=1.0,
                          divergence=divergence, policy=policy, progress=PROGRESS)[0]


def loss_of(impl: str, inputs: Inputs, plugins: dict[str, Method], variant: str, shape: Shape) -> torch.Tensor:
    """The KD loss of `variant` ("fkl", "akl+adakd", ...) by implementation `impl` (naive or chunked)."""
    divergence, policy = method_parts(plugins, variant)
    if impl == "naive":
        return naive_loss(inputs, divergence, policy)
    return chunked_loss(inputs, divergence, policy, shape)


def check(plugins: dict[str, Method], shape: Shape = CHECK_SHAPE) -> None:
    """Assert that the naive and chunked implementations give the same loss and the same gradients
    (student hidden states and head weight) for every variant, at a small size."""
    for variant in VARIANTS:
        results = []
        for impl in IMPLS:
            inputs = make_inputs(shape)
            loss = loss_of(impl, inputs, plugins, variant, shape)
            loss.backward()
            results.append((loss.detach(), inputs.h_s.grad, inputs.student_head.weight.grad))
        for name, naive, chunked in zip(("loss", "grad h_s", "grad W_s"), *results):
            torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-6 * float(naive.abs().max()),
                                       msg=lambda m, v=variant, n=name: f"{v}: {n} differs, chunked vs naive: {m}")


def rss_mib() -> float:
    """The process's current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(variant: str, impl: str, shape: Shape, mem_limit_gb: float) -> dict[str, float]:
    """One forward+backward at `shape` in this process; its time and peak memory."""
    limit = int(mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(THREADS)
    plugins = discover(METHODS_DIR)
    inputs = make_inputs(shape)
    base = rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = loss_of(impl, inputs, plugins, variant, shape)
    forward_end, forward_peak = time.perf_counter(), peak_rss_mib()
    loss.backward()
    end = time.perf_counter()
    return {"loss": loss.item(), "forward_s": forward_end - start, "backward_s": end - forward_end,
            "cpu_s": time.process_time() - cpu_start, "base_mib": base, "forward_peak_mib": forward_peak,
            "peak_mib": peak_rss_mib()}


def run_worker(variant: str, impl: str, shape: Shape, mem_limit_gb: float) -> dict[str, Any]:
    """`worker` in a subprocess of this script; its result, or {"error": why it died}."""
    size = [f"--{k.replace('_', '-')}={v}" for k, v in asdict(shape).items()]
    cmd = [sys.executable, __file__, "--worker", variant, impl, *size, f"--mem-limit-gb={mem_limit_gb}"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, **WORKER_ENV})
    if proc.returncode == 0:
        return json.loads(proc.stdout.splitlines()[-1])
    if "can't allocate memory" in proc.stderr:
        return {"error": f"OOM (> {mem_limit_gb:g} GiB limit)"}
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode}" + (" (OOM killer?)" if proc.returncode == -9 else "")}
    last = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
    return {"error": f"failed (rc {proc.returncode}): {last[0][:80]}"}


def _metrics(result: dict[str, Any]) -> dict[str, float] | None:
    """Absolute peak, increment over the post-inputs RSS (MiB), wall and CPU seconds; None if it died."""
    if "error" in result:
        return None
    return {"peak": result["peak_mib"], "delta": result["peak_mib"] - result["base_mib"],
            "s": result["forward_s"] + result["backward_s"], "cpu": result["cpu_s"]}


def _seconds(m: dict | None) -> str:
    return "–" if m is None else f"{m['s']:.1f} ({m['cpu']:.1f})"


def _memory(result: dict[str, Any]) -> str:
    m = _metrics(result)
    return result["error"] if m is None else f"{m['peak']:,.0f} ({m['delta']:,.0f})"


def _ratio(mine: dict | None, naive: dict | None, *keys: str) -> str:
    return " / ".join(f"{mine[key] / naive[key]:.2f}" for key in keys) if mine and naive else "–"


Results = dict[tuple[int, str, str, int | None], dict[str, Any]]  # (tokens, variant, impl, chunk) → worker result


def summary_table(results: Results, tokens: int, variants: list[str], chunks: list[int]) -> str:
    """One row per variant at `tokens`: the naive path's peak (Δ) and wall (CPU) seconds, then per
    chunk size the chunked path's, with its Δ and its wall / CPU time as multiples of the naive
    path's (below 1: chunked is better)."""
    rows = []
    for variant in variants:
        naive = results[tokens, variant, "naive", None]
        m_naive = _metrics(naive)
        row = [variant, _memory(naive), _seconds(m_naive)]
        diffs = []
        for chunk in chunks:
            chunked = results[tokens, variant, "chunked", chunk]
            m = _metrics(chunked)
            row += [_memory(chunked), _ratio(m, m_naive, "delta"), _seconds(m), _ratio(m, m_naive, "s", "cpu")]
            if m and m_naive:
                diffs.append(abs(chunked["loss"] - naive["loss"]) / abs(naive["loss"]))
        rows.append(row + [f"{max(diffs):.1e}" if diffs else "–"])
    headers = ["method", "naive peak (Δ) MiB", "naive s (CPU s)"]
    for chunk in chunks:
        headers += [f"chunk {chunk} peak (Δ) MiB", "Δ × naive", f"chunk {chunk} s (CPU s)", "time × naive (wall / CPU)"]
    return tabulate(rows, headers + ["loss rel. diff"], tablefmt="github", disable_numparse=True)


def detail_table(results: Results) -> str:
    """One row per worker: where the time and the memory go (forward vs backward)."""
    rows = []
    for (tokens, variant, impl, chunk), r in results.items():
        where = [f"{tokens:,}", variant, impl if chunk is None else f"{impl} {chunk}"]
        if "error" in r:
            rows.append(where + [r["error"], "", "", "", "", "", ""])
            continue
        rows.append(where + [f"{r['forward_s']:.1f}", f"{r['backward_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['base_mib']:,.0f}",
                             f"{r['forward_peak_mib'] - r['base_mib']:,.0f}", f"{r['peak_mib'] - r['base_mib']:,.0f}",
                             f"{r['loss']:.6g}"])
    headers = ["tokens", "method", "impl", "forward s", "backward s", "CPU s", "RSS after inputs MiB", "forward peak Δ MiB",
               "peak Δ MiB", "loss"]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def environment(vocab: int, hidden: int, tokens: list[int], chunks: list[int], mem_limit_gb: float) -> str:
    lines = [(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, {THREADS} torch threads per worker, fp32 on CPU"),
             (f"vocab {vocab:,}, hidden {hidden:,} (student and teacher); one head weight "
              f"{vocab * hidden * 4 / MIB:,.0f} MiB; chunk sizes {', '.join(f'{c:,}' for c in chunks)}")]
    lines += [f"tokens {n:,}: one (tokens × vocab) fp32 tensor {n * vocab * 4 / MIB:,.0f} MiB; chunks "
              + ", ".join(f"{-(-n // c)} of {c:,}" for c in chunks) for n in tokens]
    lines.append(f"worker address-space limit {mem_limit_gb:g} GiB; one timed forward+backward per worker, no warm-up")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                        help="valid token counts (default 1536 4096; 4096 does not fit the naive path in 18 GiB)")
    parser.add_argument("--vocab", type=int, default=152_064, help="vocabulary size (default 152064)")
    parser.add_argument("--hidden", type=int, default=1536, help="hidden size of both models (default 1536)")
    parser.add_argument("--chunk-size", type=int, nargs="+", default=list(DEFAULT_CHUNKS),
                        help="chunked path's tokens per chunk (default 256 1024)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="what to measure")
    parser.add_argument("--mem-limit-gb", type=float, default=18.0,
                        help="address-space limit of each worker in GiB (default 18)")
    parser.add_argument("--check", action="store_true", help="only run the small-size agreement check")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "IMPL"),
                        help="internal: measure one (variant, implementation) and print JSON")
    args = parser.parse_args(argv)
    if args.worker and (args.worker[0] not in VARIANTS or args.worker[1] not in IMPLS):
        parser.error(f"--worker takes a variant in {VARIANTS} and an implementation in {IMPLS}")
    if args.worker and (len(args.tokens) > 1 or len(args.chunk_size) > 1):
        parser.error("--worker measures one size: give one --tokens and one --chunk-size")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        shape = Shape(args.tokens[0], args.vocab, args.hidden, args.chunk_size[0])
        print(json.dumps(worker(*args.worker, shape, args.mem_limit_gb)))
        return
    torch.set_num_threads(THREADS)
    check(discover(METHODS_DIR))
    print(f"check: naive and chunked agree (loss, grads) for {', '.join(VARIANTS)} at {CHECK_SHAPE}", flush=True)
    if args.check:
        return
    print(environment(args.vocab, args.hidden, args.tokens, args.chunk_size, args.mem_limit_gb), flush=True)
    results: Results = {}
    for tokens in args.tokens:
        for variant in args.variants:  # the naive worker beside the chunked ones: ratios from one stretch of time
            for impl, chunk in [("naive", None)] + [("chunked", c) for c in args.chunk_size]:
                shape = Shape(tokens, args.vocab, args.hidden, chunk or args.chunk_size[0])
                results[tokens, variant, impl, chunk] = r = run_worker(variant, impl, shape, args.mem_limit_gb)
                status = r.get("error") or (f"peak {r['peak_mib']:,.0f} MiB (Δ {r['peak_mib'] - r['base_mib']:,.0f}), "
                                            f"{r['forward_s'] + r['backward_s']:.1f} s, {r['cpu_s']:.1f} CPU s")
                print(f"  {tokens} {variant} {impl}{'' if chunk is None else f' {chunk}'}: {status}",
                      file=sys.stderr, flush=True)
    for tokens in args.tokens:
        print(f"\n{tokens:,} tokens\n\n" + summary_table(results, tokens, args.variants, args.chunk_size))
    print("\n" + detail_table(results))


if __name__ == "__main__":
    main()
