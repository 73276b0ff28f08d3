"""Generation engines of the evaluation protocol (docs/METHODS.md §5): ``hf`` (transformers'
``generate``, the default, :mod:`kdbench.engines.hf`) and ``vllm`` (an optional extra,
:mod:`kdbench.engines.vllm`), selected per grid by ``evaluation.engine``.

Both sample each response from its own random stream, seeded by :func:`row_seed` from the decoding
seed, the example's position in its set and its prompt. A response therefore does not depend on
which other prompts share its batch (up to floating-point differences of batch shapes), so one
model's sets and decoding seeds are decoded together in full batches, and `kdbench evaluate` and
`kdbench lm-eval` sample the same responses.
"""

from __future__ import annotations

import hashlib

def row_seed(seed: int, index: int, prompt: str) -> int:
    """The seed of one response's random stream: a 63-bit digest of the decoding ``seed``, the
    example's ``index`` in its set and its ``prompt`` (a torch Generator and vLLM's per-request
    ``SamplingParams.seed`` both take it)."""
    digest = hashlib.sha256(f"{seed}\0{index}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
