"""Atomic outputs: replaced only on success, never half-written, stale temporaries swept."""

import pytest

from gptpipe.io import atomic_dir, write_metrics, write_plot


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "models" / "base"
    with atomic_dir(out) as d:
        (d / "w").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "w").write_text("half")
            raise RuntimeError("killed")
    assert (out / "w").read_text() == "v1"
    (tmp_path / "models" / ".base.tmp-99999").mkdir()  # as a SIGKILLed run leaves it
    with atomic_dir(out) as d:
        (d / "w").write_text("v2")
    assert (out / "w").read_text() == "v2"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["base"]


def test_metrics_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_metrics("x", {"a": 1})
    write_plot("x", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_loss": 1.7}])
    assert (tmp_path / "metrics/x.json").read_text().strip().startswith("{")
    assert (tmp_path / "plots/x.csv").read_text().splitlines() == ["step,loss,val_loss", "1,2.0,", "2,1.5,1.7"]
