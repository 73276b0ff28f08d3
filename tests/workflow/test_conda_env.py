"""`--sdm conda`: the env file installs this checkout. Snakemake hands workflows/envs/kdbench.yaml to
`conda env create` unchanged, and conda hands its pip lines to pip, which expands ${KDBENCH_ROOT}
from the environment; the workflow sets it. A stand-in `conda` (conda itself is not installed here)
records what Snakemake runs it with: the file and the environment."""

import json
import os
import re
import subprocess
import sys

import yaml

from tests.conftest import BIN, workflow_copy

FAKE_CONDA = '''#!{python}
import json, os, pathlib, sys
args = " ".join(sys.argv[1:])
if args == "--version":
    print("conda 25.1.0")
elif args == "info --json":
    print(json.dumps({{"conda_prefix": "{prefix}", "platform": "linux-64"}}))
elif args == "config --get channel_priority --json":
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args.startswith("env create"):
    env_file, prefix = (sys.argv[sys.argv.index(flag) + 1] for flag in ("--file", "--prefix"))
    pathlib.Path("{record}").write_text(json.dumps({{
        "file": pathlib.Path(env_file).read_text(), "KDBENCH_ROOT": os.environ.get("KDBENCH_ROOT")}}))
    pathlib.Path(prefix, "bin").mkdir(parents=True)
'''


def pip_expand(line: str, environ: dict) -> str:
    """What pip does to a requirements-file line: ${NAME} (upper case, digits, _) from the environment."""
    return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: environ.get(m.group(1), m.group(0)), line)


def test_the_conda_env_installs_this_checkout(tmp_path):
    (tmp_path / "wf").mkdir()
    root = workflow_copy(tmp_path / "wf")
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    record = tmp_path / "record.json"
    conda = fake / "bin/conda"
    conda.write_text(FAKE_CONDA.format(python=sys.executable, prefix=fake, record=record))
    conda.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "KDBENCH_ROOT"}
    env["PATH"] = os.pathsep.join([str(fake / "bin"), str(BIN), env.get("PATH", "")])
    done = subprocess.run(["snakemake", "--sdm", "conda", "--conda-create-envs-only", "--cores", "1"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    got = json.loads(record.read_text())
    assert got["file"] == (root / "workflows/envs/kdbench.yaml").read_text()
    assert got["KDBENCH_ROOT"] == str(root)
    spec = yaml.safe_load(got["file"])
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert [pip_expand(line, {"KDBENCH_ROOT": got["KDBENCH_ROOT"]}) for line in pip] == [f"-e {root}"]
