"""A one-node SLURM for the cluster tests: started by tests/cluster/slurm_up.sh (which installs
slurm-wlm and munge first where they are missing and it may), stopped by slurm_down.sh when the
module's tests are done. Skipped, with the reason, where SLURM cannot start here (not root, no
apt-get); with KDBENCH_REQUIRE_SLURM=1 (CI) that is a failure instead."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def slurm():
    """The environment that points SLURM's commands (and the plugin) at the test cluster (slurm_up.sh's DIR/env)."""
    state = Path(tempfile.mkdtemp(prefix="kds.", dir="/tmp"))  # short: munge's socket path is limited
    try:
        up = subprocess.run(["bash", str(HERE / "slurm_up.sh"), str(state), *map(str, _free_ports(2))],
                            capture_output=True, text=True, timeout=900)
        if up.returncode == 3 and os.environ.get("KDBENCH_REQUIRE_SLURM") != "1":
            pytest.skip(f"SLURM cannot start here: {up.stderr.strip().splitlines()[-1]}")
        assert up.returncode == 0, f"tests/cluster/slurm_up.sh failed:\n{up.stdout}{up.stderr}"
        yield {"SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    finally:
        subprocess.run(["bash", str(HERE / "slurm_down.sh"), str(state)], timeout=120)
