"""The KD loss on a GPU at Liger-Kernel's published shape: kd_loss.py's two implementations (chunked:
`kdbench.losses.objective` with heads; naive: full logits) in bf16 on cuda, hidden size 4096,
vocabulary 128,256 (Llama-3's), 1k to 8k tokens: peak GPU memory and time of one forward+backward,
and chunked / naive as ratios.

Each (tokens, variant, implementation) runs in this process one after the other: the inputs are
built, `torch.cuda.reset_peak_memory_stats`, one untimed warm-up, then the median of `--repeats`
timed forward+backward passes (cuda-synchronised). Peak memory is `max_memory_allocated` over the
memory held after building the inputs (both heads: 2 × 1 GiB in bf16). A pass that runs out of GPU
memory is reported as OOM. Before measuring, the two implementations are checked to agree at a
small shape on the GPU in bf16 (loss and gradients within bf16 rounding of the fp32 CPU values).

    python benchmarks/kd_loss_gpu.py                       # 1,024 2,048 4,096 8,192 tokens; fkl, fkl+adakd
    python benchmarks/kd_loss_gpu.py --tokens 1024 --variants fkl
Exits 1 where no CUDA GPU is visible, or the check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_loss import METHODS_DIR, VARIANTS, Shape, loss_of, make_inputs  # noqa: E402

from kdbench.registry import discover  # noqa: E402

LIGER = {"hidden": 4096, "vocab": 128_256}  # Liger-Kernel's fused linear cross-entropy / JSD benchmark shape
MIB = 2**20


def to_device(inputs, device: str, dtype: torch.dtype):
    """The inputs of kd_loss.make_inputs in `dtype` on `device` (student hidden states and head with grad)."""
    inputs.h_s = inputs.h_s.detach().to(device, dtype).requires_grad_()
    inputs.h_t = inputs.h_t.to(device, dtype)
    inputs.labels = inputs.labels.to(device)
    inputs.student_head = inputs.student_head.to(device, dtype)
    inputs.teacher_head = inputs.teacher_head.to(device, dtype)
    return inputs


def check(plugins, variants: list[str], device: str = "cuda") -> None:
    """Chunked bf16 on cuda agrees with naive fp32 on the CPU at a small shape, within bf16 rounding."""
    shape = Shape(tokens=300, vocab=4096, hidden=256, chunk_size=128)
    for variant in variants:
        ref = make_inputs(shape)
        ref_loss = loss_of("naive", ref, plugins, variant, shape)
        ref_loss.backward()
        gpu = to_device(make_inputs(shape), device, torch.bfloat16)
        loss = loss_of("chunked", gpu, plugins, variant, shape)
        loss.backward()
        torch.testing.assert_close(loss.float().cpu(), ref_loss.detach(), rtol=2e-2, atol=1e-3)
        grad, ref_grad = gpu.h_s.grad.float().cpu(), ref.h_s.grad
        rel = float((grad - ref_grad).norm() / ref_grad.norm())
        assert rel < 3e-2, f"{variant}: gradient of h_s differs by {rel:.3g} (relative norm), chunked bf16 vs fp32"
    print(f"check: chunked bf16 on {device} agrees with naive fp32 for {', '.join(variants)}", file=sys.stderr)


def measure(plugins, impl: str, variant: str, shape: Shape, repeats: int) -> dict:
    torch.cuda.empty_cache()
    inputs = to_device(make_inputs(shape), "cuda", torch.bfloat16)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(repeats + 1):
            inputs.h_s.grad, inputs.student_head.weight.grad = None, None
            torch.cuda.synchronize()
            start = time.perf_counter()
            loss_of(impl, inputs, plugins, variant, shape).backward()
            torch.cuda.synchronize()
            if i:  # the first pass warms up
                times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        del inputs
    return {"seconds": statistics.median(times), "peak_mib": (torch.cuda.max_memory_allocated() - base) / MIB}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["fkl", "fkl+adakd"])
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kd_loss_gpu: no CUDA GPU visible; this benchmark needs one.", file=sys.stderr)
        return 1
    plugins = discover(METHODS_DIR)
    check(plugins, args.variants)
    rows = []
    for tokens in args.tokens:
        shape = Shape(tokens=tokens, chunk_size=args.chunk_size, **LIGER)
        for variant in args.variants:
            naive, chunked = (measure(plugins, impl, variant, shape, args.repeats) for impl in ("naive", "chunked"))
            if chunked.get("oom"):
                print(f"kd_loss_gpu: the chunked loss ran out of GPU memory at {tokens} tokens", file=sys.stderr)
                return 1
            ratio = (lambda key: "naive OOM" if naive.get("oom") else f"{chunked[key] / naive[key]:.2f}")
            rows.append([tokens, variant, "OOM" if naive.get("oom") else f"{naive['peak_mib']:,.0f}",
                         f"{chunked['peak_mib']:,.0f}", ratio("peak_mib"),
                         "OOM" if naive.get("oom") else f"{naive['seconds'] * 1e3:.1f}", f"{chunked['seconds'] * 1e3:.1f}",
                         ratio("seconds")])
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, hidden {LIGER['hidden']}, vocab "
          f"{LIGER['vocab']:,}, chunk {args.chunk_size}, median of {args.repeats}")
    print(tabulate(rows, headers=["tokens", "variant", "naive MiB", "chunked MiB", "memory ratio", "naive ms",
                                  "chunked ms", "time ratio"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
