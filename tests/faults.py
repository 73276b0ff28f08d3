"""Test-only fault hooks (kdbench.testhooks): tests/conftest.py points KDBENCH_TEST_HOOKS here for
every process the suite starts, and a test switches a fault on with its variable:

- KDBENCH_FAULT_KILL_AT_STEP=N: `kdbench train` is SIGKILLed as optimizer step N begins;
- KDBENCH_FAULT_NAN_AT_STEP=N: every micro-batch loss of step N becomes NaN;
- KDBENCH_FAULT_KILL_AFTER_SEED=N: `kdbench evaluate` is SIGKILLed right after seed N's partial
  result is written;
- KDBENCH_FAULT_KILL_IN=aggregate: `kdbench aggregate` is SIGKILLed after its markdown table is
  written, before the CSV.
"""

import dataclasses
import os
import signal


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def train_step(value, *, step):
    if os.environ.get("KDBENCH_FAULT_KILL_AT_STEP") == str(step):
        _kill()
    return value


def train_micro_batch(parts, *, step):
    """A micro-batch's LossParts, its loss NaN at step KDBENCH_FAULT_NAN_AT_STEP."""
    if os.environ.get("KDBENCH_FAULT_NAN_AT_STEP") == str(step):
        return dataclasses.replace(parts, loss=parts.loss * float("nan"))
    return parts


def evaluate_seed_written(value, *, seed):
    if os.environ.get("KDBENCH_FAULT_KILL_AFTER_SEED") == str(seed):
        _kill()
    return value


def aggregate_table_written(value):
    if os.environ.get("KDBENCH_FAULT_KILL_IN") == "aggregate":
        _kill()
    return value
