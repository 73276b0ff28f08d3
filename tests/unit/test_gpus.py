"""GPU pinning: concurrent jobs claim disjoint GPUs through kernel-released locks."""

import subprocess
import sys

import pytest

from kdbench.errors import KDBenchError
from kdbench.gpus import claim, gpu_count


def test_claims_are_disjoint_and_released(tmp_path):
    with claim(2, total=3, lock_dir=tmp_path) as first:
        assert first == [0, 1]
        with claim(1, total=3, lock_dir=tmp_path) as second:
            assert second == [2]
            with pytest.raises(KDBenchError, match="no 1 free GPUs within 0.2 s"):
                with claim(1, total=3, lock_dir=tmp_path, poll=0.05, timeout=0.2):
                    pass
    with claim(3, total=3, lock_dir=tmp_path) as all_three:  # everything was released
        assert all_three == [0, 1, 2]


def test_a_killed_holder_releases_its_gpus(tmp_path):
    code = ("import os, signal, sys; from pathlib import Path; from kdbench.gpus import claim\n"
            f"with claim(2, total=2, lock_dir=Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(KDBenchError):
        with claim(1, total=2, lock_dir=tmp_path, poll=0.05, timeout=0.2):
            pass
    holder.kill()
    holder.wait()
    with claim(2, total=2, lock_dir=tmp_path, timeout=2) as ids:
        assert ids == [0, 1]


def test_asking_for_more_gpus_than_the_node_has(tmp_path, monkeypatch):
    with pytest.raises(KDBenchError, match="asks for 4 GPUs .* this node has 2"):
        with claim(4, total=2, lock_dir=tmp_path):
            pass
    monkeypatch.setenv("KDBENCH_GPUS", "8")
    assert gpu_count() == 8
