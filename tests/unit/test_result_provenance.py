"""Every evaluation result file says what it was computed from and by: the checkout's commit and
whether it had changes (untracked files included), the sha256 of each weight file and of the data
file, and the protocol; each checked against an independent computation."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from kdbench.evaluate import main
from kdbench.provenance import git_state
from tests.unit.test_evaluate import _write_set, model, model_dir, tokenizer  # noqa: F401 (fixtures)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_evaluation_result_carries_its_provenance(model_dir: Path, tmp_path: Path, repo, monkeypatch) -> None:  # noqa: F811
    monkeypatch.chdir(repo)
    data = _write_set(tmp_path / "toy.jsonl")
    out = tmp_path / "toy.json"
    assert main(["--model", str(model_dir), "--data", str(data), "--set", "toy", "--run", "p/m/seed1", "--seeds", "10",
                 "--max-new-tokens", "3", "--greedy", "--out", str(out), "--predictions", str(tmp_path / "p.jsonl")]) == 0
    prov = json.loads(out.read_text())["provenance"]
    assert prov["weights_sha256"] == {"model.safetensors": _sha256(model_dir / "model.safetensors")}
    assert prov["data_sha256"] == _sha256(data)
    assert prov["protocol"]["max_new_tokens"] == 3 and prov["protocol"]["do_sample"] is False
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["git"]["sha"] == head and isinstance(prov["git"]["dirty"], bool)


def test_an_untracked_file_makes_the_checkout_dirty(tmp_path: Path) -> None:
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "new.py").write_text("y = 2\n")  # a new plugin, not yet added
    assert git_state(tmp_path) | {"sha": None} == {"sha": None, "dirty": True, "untracked": 1}
