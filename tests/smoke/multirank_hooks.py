"""Test hooks (kdbench.testhooks) for tests/smoke/test_multirank.py: each rank appends what its
micro-batches' losses count (tokens, selected tokens, temperatures) to
$KDBENCH_RECORD_PARTS/rank<R>.jsonl, so that the test can reduce them itself."""

import json
import os
from pathlib import Path


def train_micro_batch(parts, *, step):
    t = parts.temperature
    record = {"step": step, "tokens": parts.n_tokens, "selected": parts.n_selected,
              "tau": t.float().tolist() if t is not None else []}
    out = Path(os.environ["KDBENCH_RECORD_PARTS"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    return parts
