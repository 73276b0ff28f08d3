"""Named points where tests inject faults into real jobs (a kill mid-run, a NaN loss).

Production code only names the point: `testhooks.point("train.step", step=step)` or
`parts = testhooks.point("train.micro_batch", parts, step=step)`. Without `KDBENCH_TEST_HOOKS`
every point is a no-op that returns its value unchanged. With `KDBENCH_TEST_HOOKS=<file.py>` (the test suite
sets it to `tests/faults.py` for every process it starts), the file is imported once and a point
calls the file's function of the same name, dots as underscores (`train_step(value, **context)`),
if it has one; that function returns the value to use. The faults themselves, and the variables
that switch them on, live in that file, never in the package.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from kdbench.errors import KDBenchError

ENV = "KDBENCH_TEST_HOOKS"


def point(name: str, value: Any = None, **context: Any) -> Any:
    """The hook file's `name` (dots as underscores) applied to `value`, or `value` unchanged."""
    path = os.environ.get(ENV)
    if not path:
        return value
    hook = getattr(_load(path), name.replace(".", "_"), None)
    return value if hook is None else hook(value, **context)


@functools.cache
def _load(path: str):
    spec = importlib.util.spec_from_file_location("kdbench_test_hooks", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise KDBenchError(f"{ENV}={path}: no such hook file (a Python file of test-only fault hooks).")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
