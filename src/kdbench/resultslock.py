"""A lock on the results directory itself, held by a running workflow from its start to its end.

Snakemake locks its working directory (`.snakemake/locks`), so two checkouts (or two `--directory`
folders) whose configs name one `results:` would otherwise train the same runs at once, each
overwriting the other's checkpoints. The workflow takes this lock in `onstart` (a dry run takes
none) and gives it back in `onsuccess`/`onerror`; it is an advisory `flock` on
`<results>/.kdbench.lock`, so the kernel releases it when the process ends however it ends, and no
stale lock is ever left behind. The file holds who took it (host, process, working directory,
start time), which the refusal names.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from kdbench.errors import KDBenchError

LOCK_FILE = ".kdbench.lock"
_held: dict[str, IO[str]] = {}


def acquire(results: str | os.PathLike[str]) -> None:
    """Take the lock on `results` for this process, or raise naming the workflow that holds it."""
    path = Path(results) / LOCK_FILE
    if str(path) in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the workflow's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise KDBenchError(f"the results directory {results} is in use by another kdbench workflow "
                           f"({_describe(holder)}); nothing was run. Wait for it to finish, or give this grid "
                           "another `results:`.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "workdir": os.getcwd(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    handle.flush()
    _held[str(path)] = handle


def release(results: str | os.PathLike[str]) -> None:
    """Give the lock back (a no-op where this process does not hold it)."""
    handle = _held.pop(str(Path(results) / LOCK_FILE), None)
    if handle is not None:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"process {h['pid']} on {h['host']}, working directory {h['workdir']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
