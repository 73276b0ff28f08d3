"""Test tiers: each test is marked by its folder (tests/conftest.py); bare `pytest` runs the unit tier
and the README's test command, which CI runs (.ci/run), runs every tier but gpu.

Checked on a stand-in suite (one test per tier folder, this repository's conftest.py and
pyproject.toml), so the check costs a second instead of collecting the real suite."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TIERS


def readme_pytest_args() -> list[str]:
    """The arguments of pytest in the README's test command, found as .ci/run finds the command."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("python3 -m venv")]
    command = shlex.split(lines[1])
    assert "pytest" in command, f"the README's test command runs no pytest: {lines[1]}"
    return command[command.index("pytest") + 1:]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    shutil.copy2(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "tests").mkdir()
    shutil.copy2(REPO / "tests/conftest.py", tmp_path / "tests")
    for tier in TIERS:
        (tmp_path / "tests" / tier).mkdir()
        (tmp_path / "tests" / tier / f"test_{tier}.py").write_text("def test_it():\n    pass\n")
    return tmp_path


def collect(root: Path, *args: str) -> tuple[int, set[str], str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=root, capture_output=True, text=True, timeout=120)
    tiers = {line.split("/")[1] for line in done.stdout.splitlines() if line.startswith("tests/") and "::" in line}
    return done.returncode, tiers, done.stdout + done.stderr


def test_bare_pytest_runs_the_unit_tier(suite):
    rc, tiers, out = collect(suite)
    assert rc == 0, out
    assert tiers == {"unit"}, out


def test_the_readme_command_runs_every_tier_but_gpu(suite):
    rc, tiers, out = collect(suite, *readme_pytest_args())
    assert rc == 0, out
    assert tiers == set(TIERS) - {"gpu"}, out


@pytest.mark.parametrize("tier", ["smoke", "gpu"])  # the others: bare pytest, the README command
def test_a_marker_selects_its_folder(suite, tier):
    rc, tiers, out = collect(suite, "-m", tier)
    assert rc == 0, out
    assert tiers == {tier}, out


def test_a_path_runs_what_it_names_in_any_tier(suite):
    rc, tiers, out = collect(suite, "tests/smoke", "tests/gpu")
    assert rc == 0, out
    assert tiers == {"smoke", "gpu"}, out


def test_a_test_outside_the_tier_folders_is_an_error(suite):
    (suite / "tests/test_stray.py").write_text("def test_it():\n    pass\n")
    rc, _, out = collect(suite, "-m", "not gpu")
    assert rc != 0
    assert "test_stray.py: a test lives in a tier folder" in out


def test_an_unregistered_marker_is_an_error(suite):
    (suite / "tests/unit/test_typo.py").write_text("import pytest\n\n@pytest.mark.smok\ndef test_it():\n    pass\n")
    rc, _, out = collect(suite)
    assert rc != 0
    assert "'smok' not found in `markers`" in out
