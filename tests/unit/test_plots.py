"""kdbench.plots: metrics reading, which runs each figure shows, atomic non-empty PNGs, CLI errors.

The PNG tests need matplotlib and are skipped without it; the data and wiring tests run with a
recording stand-in for pyplot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import plots
from kdbench.errors import KDBenchError

PAIR = "gpt2-s_from_gpt2-t"


def _metrics(root: Path, method: str, *, adakd: bool, steps: int = 5, seed: int = 1) -> Path:
    path = root / "runs" / PAIR / method / f"seed{seed}" / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(steps):
        rec = {"step": 10 * i, "loss": 5.0 - 0.5 * i, "ce": 6.0 - 0.4 * i, "kd_loss": 5.0 - 0.5 * i, "lr": 1e-3,
               "tokens": 100, "selected": 80, "tokens_per_s": 900.0}
        if adakd:
            rec |= {"latf_ratio": 1.0 - 0.05 * i, "tau_mean": 1.0, "tau_min": 0.7 - 0.01 * i, "tau_max": 1.5}
        records.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def metrics(tmp_path: Path) -> list[Path]:
    return [_metrics(tmp_path, "fkl", adakd=False), _metrics(tmp_path, "fkl+adakd", adakd=True)]


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    sets = ["dolly", "sni", "Avg"]
    rows = [("fkl", s, 30.0 + i, 1.0, 5, 29.0 + i if s != "Avg" else np.nan) for i, s in enumerate(sets)]
    rows += [("fkl+adakd", s, 31.0, 0.5, 5, np.nan) for s in sets]
    path = tmp_path / "main.csv"
    pd.DataFrame(rows, columns=["method", "set", "mean", "std", "n", "published"]).to_csv(path, index=False)
    return path


def test_read_metrics_labels_runs_and_keeps_the_last_record_of_a_step(metrics: list[Path]) -> None:
    with metrics[0].open("a") as fh:  # a resumed run logs step 40 again
        fh.write(json.dumps({"step": 40, "loss": 0.123, "ce": 1.0}) + "\n")
    df = plots.read_metrics(metrics)
    assert list(df["run"].unique()) == ["fkl seed1", "fkl+adakd seed1"]
    assert len(df) == 10
    assert df.query("run == 'fkl seed1' and step == 40")["loss"].item() == 0.123
    assert df.query("run == 'fkl seed1'")["latf_ratio"].isna().all()
    assert [r for r, _ in plots._runs_with(df, "latf_ratio")] == ["fkl+adakd seed1"]
    assert plots.run_label(Path("a/b/c.jsonl")) == "a/b/c.jsonl"
    assert plots.run_label(metrics[1], several_pairs=True) == f"{PAIR}: fkl+adakd seed1"


def test_bad_metrics_and_cli_misuse_raise(tmp_path: Path, metrics: list[Path]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0}\n{oops\n')
    with pytest.raises(KDBenchError, match="bad.jsonl, line 2: not valid JSON"):
        plots.read_metrics([bad])
    with pytest.raises(KDBenchError, match="no such metrics file"):
        plots.read_metrics([tmp_path / "none.jsonl"])
    with pytest.raises(KDBenchError, match="nothing to plot"):
        plots.main(["--metrics", str(metrics[0])])
    with pytest.raises(KDBenchError, match="need --metrics"):
        plots.main(["--curves-png", str(tmp_path / "c.png")])
    with pytest.raises(KDBenchError, match="needs --table-csv"):
        plots.main(["--published-png", str(tmp_path / "p.png")])


class _Recorder:
    """A stand-in for matplotlib.pyplot that records the series each axes receives."""

    def __init__(self) -> None:
        self.axes: list[_Axes] = []

    def subplots(self, nrows: int = 1, ncols: int = 1, squeeze: bool = True, **_: object):
        grid = np.empty((nrows, ncols), dtype=object)
        for i in range(nrows):
            for j in range(ncols):
                grid[i, j] = _Axes()
                self.axes.append(grid[i, j])
        return _Figure(), (grid[0, 0] if squeeze and nrows == ncols == 1 else (grid.squeeze() if squeeze else grid))

    def close(self, fig: object) -> None:
        pass


class _Line:
    def get_color(self) -> str:
        return "C0"


class _Axes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return [_Line()] if name == "plot" else None

        return record


class _Figure:
    def savefig(self, path: str, format: str, **_: object) -> None:
        assert format == "png"
        Path(path).write_bytes(b"\x89PNG recorded")

    def suptitle(self, *_: object) -> None:
        pass

    def tight_layout(self) -> None:
        pass


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    monkeypatch.setattr(plots, "_pyplot", lambda: rec)
    return rec


def test_figures_get_the_right_series_and_are_written_atomically(
    recorder: _Recorder, metrics: list[Path], table_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plots"
    assert plots.main(["--metrics", *map(str, metrics), "--latf-png", str(out / "latf.png"),
                       "--curves-png", str(out / "curves.png"), "--tau-png", str(out / "tau.png"),
                       "--table-csv", str(table_csv), "--published-png", str(out / "pub.png")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "latf.png", "pub.png", "tau.png"]  # no temp files
    latf, loss, _ce, tau, *bars = recorder.axes
    lines = [c for c in latf.calls if c[0] == "plot"]
    assert len(lines) == 1 and lines[0][2]["label"] == "fkl+adakd seed1"
    assert list(lines[0][1][1]) == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8])
    assert [c[2]["label"] for c in loss.calls if c[0] == "plot"] == ["fkl seed1", "fkl+adakd seed1"]
    assert [c[0] for c in tau.calls].count("fill_between") == 1
    dolly = [c for c in bars[0].calls if c[0] == "bar"]
    assert list(dolly[0][1][1]) == [30.0, 31.0] and list(dolly[1][1][1]) == [29.0, 0.0]  # ours, published


def test_empty_figures_say_so(recorder: _Recorder, metrics: list[Path], tmp_path: Path) -> None:
    plots.plot_latf_ratio(plots.read_metrics(metrics[:1]), tmp_path / "latf.png")
    assert any(c[0] == "text" and "latf_ratio" in c[1][2] for c in recorder.axes[0].calls)
    assert (tmp_path / "latf.png").stat().st_size > 0


def test_missing_matplotlib_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ModuleNotFoundError
    with pytest.raises(KDBenchError, match="needs matplotlib"):
        plots._pyplot()


def test_real_pngs(metrics: list[Path], table_csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert plots.main(["--metrics", *map(str, metrics), "--latf-png", str(out / "latf.png"),
                       "--curves-png", str(out / "curves.png"), "--tau-png", str(out / "tau.png"),
                       "--table-csv", str(table_csv), "--published-png", str(out / "pub.png")]) == 0
    for name in ("latf.png", "curves.png", "tau.png", "pub.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "latf.png", "pub.png", "tau.png"]
    plots.plot_latf_ratio(plots.read_metrics(metrics[:1]), out / "empty.png")  # nothing to show: still a PNG
    assert (out / "empty.png").read_bytes().startswith(b"\x89PNG")



def test_more_than_ten_runs_get_distinct_colours() -> None:
    """matplotlib's default cycle repeats its 10 colours; a grid of 11+ runs (config/crosstok.yaml) must not."""
    pytest.importorskip("matplotlib")
    plt = plots._pyplot()
    for n in (3, 12):
        fig, ax = plt.subplots()
        plots._distinct_colors(ax, n)
        colours = [ax.plot([0, 1], [i, i])[0].get_color() for i in range(n)]
        assert len(set(map(str, colours))) == n
        plt.close(fig)
