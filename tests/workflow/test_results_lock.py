"""Two working directories whose grids name one `results:` directory: Snakemake locks each working
directory, so only kdbench's lock on the results directory itself keeps the second from training the
same run at the same time; it is refused, naming the first, and the lock is free once the first ends."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time

import yaml

from kdbench.resultslock import LOCK_FILE
from tests.conftest import BIN, grid_config, run_cli, workflow_copy

PAIR = "gpt2-tiny-s_from_gpt2-tiny-t"


def test_a_second_working_directory_on_the_same_results_is_refused(tmp_path):
    shared = tmp_path / "shared results"
    roots = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        root = workflow_copy(tmp_path / name)
        roots.append(root)
        cfg = grid_config(root, pairs=[PAIR], methods=["fkl"], sets=["dolly"])
        cfg["results"] = str(shared)  # the same absolute directory from both
        cfg["data"].update(n_train=200, n_valid=10, n_eval=4)
        (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
    target = str(shared / f"runs/{PAIR}/teacher/seed0/model")  # the teacher's SFT (1200 steps): the runs overlap

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = subprocess.Popen(["snakemake", "--cores", "1", "--configfile", "grid.yaml", "--", target], cwd=roots[0],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lock = shared / LOCK_FILE
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second could start: " + first.stdout.read()[-2000:]
        assert json.loads(lock.read_text())["workdir"] == str(roots[0])
        second = run_cli("snakemake", "--cores", "1", "--configfile", "grid.yaml", "--", target, cwd=roots[1])
        out = second.stdout + second.stderr
        assert second.returncode != 0, out[-2000:]
        assert f"the results directory {shared} is in use by another kdbench workflow" in out, out[-2000:]
        assert f"working directory {roots[0]}" in out and "Traceback" not in out, out[-2000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)  # Snakemake stops its jobs, then onerror releases the lock
        first.communicate(timeout=120)

    with open(shared / LOCK_FILE) as handle:  # free again: the next workflow may take it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
