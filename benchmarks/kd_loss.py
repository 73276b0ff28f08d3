"""Peak memory and time of ONE forward+backward of the KD loss from final hidden states:
kdbench's chunked path versus a naive full-logits implementation.

- chunked: `kdbench.losses.objective` given the hidden states, both output heads and `chunk_size`;
  logits exist `chunk_size` tokens at a time and are recomputed in backward (activation
  checkpointing), and a token policy's statistics come from a no-grad first pass over the chunks.
- naive: what a straightforward training loop does: both models' full (tokens × vocab) logits
  (h_s @ W_s^T with grad, h_t @ W_t^T without), full log_softmax of each, the per-token divergence
  over the whole tensors; with AdaKD also the Hellinger difficulty, top-r selection and IDTS
  temperatures on the full tensors, then the tempered log-softmaxes of the kept tokens. The plugin
  functions themselves are reused, so only the materialisation differs, not the formula.

The loss is the pure KD objective (kd_ratio = 1) over every token of one sequence; the gradient
flows to the student hidden states and the student head weight, the teacher has no grad. AdaKD uses
the plugin's defaults at the start of training (LATF ratio r = 1: every token kept). Note that
`objective` always computes the cross-entropy term too (here with weight 0), so the chunked numbers
include it; the naive path computes only the KD term.

Each (variant, implementation) runs in its own process (`--worker VARIANT IMPL`), so each peak is
that computation's alone: the worker builds the inputs, records its RSS, runs one timed
forward+backward (no warm-up: one at full size is expensive) and reports the peak RSS
(`ru_maxrss`) as an absolute value and as the increment over the RSS after building the inputs.
A worker runs under an address-space limit (`--mem-limit-gb`, via RLIMIT_AS), so a computation that
does not fit fails with an allocation error instead of pushing the machine into the OOM killer; a
worker that dies either way is reported in the table.

    python benchmarks/kd_loss.py                      # the agreement check, then all 12 workers
    python benchmarks/kd_loss.py --tokens 256 --vocab 32000 --variants fkl fkl+adakd   # quick
    python benchmarks/kd_loss.py --check              # only the agreement check (a few seconds)
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
import torch.nn.functional as F
from tabulate import tabulate

from kdbench.losses import objective, valid_positions
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
DEFAULT_TOKENS = 1536
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
    """The divergence function of `variant` ("fkl", "akl+adakd", ...) and a fresh policy or None."""
    name, _, policy = variant.partition("+")
    return plugins[name].obj, plugins[policy].obj(total_steps=TOTAL_STEPS) if policy else None


def chunked_loss(inputs: Inputs, divergence: Callable[..., torch.Tensor], policy: Any,
                 shape: Shape) -> torch.Tensor:
    """kdbench's loss from hidden states: heads applied `chunk_size` tokens at a time."""
    return objective(
        inputs.h_s, inputs.h_t, inputs.labels, vocab_size=shape.vocab, kd_ratio=1.0, n_global=shape.tokens,
        divergence=divergence, policy=policy, progress=PROGRESS, student_head=inputs.student_head,
        teacher_head=inputs.teacher_head, chunk_size=shape.chunk_size,
    ).loss


def naive_loss(inputs: Inputs, divergence: Callable[..., torch.Tensor], policy: Any) -> torch.Tensor:
    """The same KD loss from both models' full logits and log-softmaxes (tokens × vocab each)."""
    h_s, targets = valid_positions(inputs.h_s, inputs.labels)
    h_t, _ = valid_positions(inputs.h_t, inputs.labels)
    z_s = inputs.student_head(h_s)
    with torch.no_grad():
        z_t = inputs.teacher_head(h_t)
    if policy is None:
        return divergence(F.log_softmax(z_s, -1), F.log_softmax(z_t, -1)).mean()
    with torch.no_grad():
        stats = policy.token_stats(F.log_softmax(z_s, -1), F.log_softmax(z_t, -1), targets)
        plan = policy.plan(stats, PROGRESS)
    kept = plan.weight > 0
    values = divergence(F.log_softmax(z_s[kept] / plan.tau_student[kept, None], -1),
                        F.log_softmax(z_t[kept] / plan.tau_teacher[kept, None], -1))
    return (plan.weight[kept] * plan.scale[kept] * values).sum() / plan.weight.sum()


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
    start = time.perf_counter()
    loss = loss_of(impl, inputs, plugins, variant, shape)
    forward_end, forward_peak = time.perf_counter(), peak_rss_mib()
    loss.backward()
    end = time.perf_counter()
    return {"loss": loss.item(), "forward_s": forward_end - start, "backward_s": end - forward_end,
            "base_mib": base, "forward_peak_mib": forward_peak, "peak_mib": peak_rss_mib()}


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
    """Absolute peak, increment over the post-inputs RSS (MiB) and total seconds; None if it died."""
    if "error" in result:
        return None
    return {"peak": result["peak_mib"], "delta": result["peak_mib"] - result["base_mib"],
            "s": result["forward_s"] + result["backward_s"]}


def summary_table(results: dict[tuple[str, str], dict[str, Any]], variants: list[str]) -> str:
    """One row per variant: peak memory (absolute and increment), time, and naive/chunked ratios."""
    rows = []
    for variant in variants:
        naive, chunked = results[variant, "naive"], results[variant, "chunked"]
        m_naive, m_chunked = _metrics(naive), _metrics(chunked)
        row = [variant]
        for result, m in ((naive, m_naive), (chunked, m_chunked)):
            row += [result["error"], "–"] if m is None else [f"{m['peak']:,.0f}", f"{m['delta']:,.0f}"]
        for key in ("peak", "delta"):
            row.append(f"{m_naive[key] / m_chunked[key]:.2f}" if m_naive and m_chunked else "–")
        row += ["–" if m is None else f"{m['s']:.1f}" for m in (m_naive, m_chunked)]
        if m_naive and m_chunked:
            row += [f"{m_naive['s'] / m_chunked['s']:.2f}",
                    f"{abs(chunked['loss'] - naive['loss']) / abs(naive['loss']):.1e}"]
        else:
            row += ["–", "–"]
        rows.append(row)
    headers = ["method", "naive peak MiB", "naive Δ MiB", "chunked peak MiB", "chunked Δ MiB",
               "mem ratio (peak)", "mem ratio (Δ)", "naive s", "chunked s", "time ratio", "loss rel. diff"]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def detail_table(results: dict[tuple[str, str], dict[str, Any]]) -> str:
    """One row per worker: where the time and the memory go (forward vs backward)."""
    rows = []
    for (variant, impl), r in results.items():
        if "error" in r:
            rows.append([variant, impl, r["error"], "", "", "", "", ""])
            continue
        rows.append([variant, impl, f"{r['forward_s']:.1f}", f"{r['backward_s']:.1f}", f"{r['base_mib']:,.0f}",
                     f"{r['forward_peak_mib'] - r['base_mib']:,.0f}", f"{r['peak_mib'] - r['base_mib']:,.0f}",
                     f"{r['loss']:.6g}"])
    headers = ["method", "impl", "forward s", "backward s", "RSS after inputs MiB", "forward peak Δ MiB",
               "peak Δ MiB", "loss"]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def environment(shape: Shape, mem_limit_gb: float) -> str:
    full = shape.tokens * shape.vocab * 4 / MIB
    return "\n".join([
        (f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
         f"{os.cpu_count()} CPUs, {THREADS} torch threads per worker, fp32 on CPU"),
        (f"tokens {shape.tokens:,}, vocab {shape.vocab:,}, hidden {shape.hidden:,} (student and teacher), "
         f"chunk size {shape.chunk_size:,} ({-(-shape.tokens // shape.chunk_size)} chunks)"),
        (f"one (tokens × vocab) fp32 tensor: {full:,.0f} MiB; "
         f"one head weight: {shape.vocab * shape.hidden * 4 / MIB:,.0f} MiB"),
        f"worker address-space limit {mem_limit_gb:g} GiB; one timed forward+backward per worker, no warm-up",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                        help=f"valid tokens (default {DEFAULT_TOKENS}; 4096 does not fit the naive path in 18 GiB)")
    parser.add_argument("--vocab", type=int, default=152_064, help="vocabulary size (default 152064)")
    parser.add_argument("--hidden", type=int, default=1536, help="hidden size of both models (default 1536)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="chunked path's tokens per chunk (default 1024)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="what to measure")
    parser.add_argument("--mem-limit-gb", type=float, default=18.0,
                        help="address-space limit of each worker in GiB (default 18)")
    parser.add_argument("--check", action="store_true", help="only run the small-size agreement check")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "IMPL"),
                        help="internal: measure one (variant, implementation) and print JSON")
    args = parser.parse_args(argv)
    if args.worker and (args.worker[0] not in VARIANTS or args.worker[1] not in IMPLS):
        parser.error(f"--worker takes a variant in {VARIANTS} and an implementation in {IMPLS}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shape = Shape(args.tokens, args.vocab, args.hidden, args.chunk_size)
    if args.worker:
        print(json.dumps(worker(*args.worker, shape, args.mem_limit_gb)))
        return
    torch.set_num_threads(THREADS)
    check(discover(METHODS_DIR))
    print(f"check: naive and chunked agree (loss, grads) for {', '.join(VARIANTS)} at {CHECK_SHAPE}", flush=True)
    if args.check:
        return
    print(environment(shape, args.mem_limit_gb), flush=True)
    results = {}
    for variant in args.variants:
        for impl in IMPLS:
            results[variant, impl] = r = run_worker(variant, impl, shape, args.mem_limit_gb)
            status = r.get("error") or (f"peak {r['peak_mib']:,.0f} MiB (Δ {r['peak_mib'] - r['base_mib']:,.0f}), "
                                        f"{r['forward_s'] + r['backward_s']:.1f} s")
            print(f"  {variant} {impl}: {status}", file=sys.stderr, flush=True)
    print("\n" + summary_table(results, args.variants) + "\n\n" + detail_table(results))


if __name__ == "__main__":
    main()
