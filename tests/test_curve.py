"""The training-curve reader and plot against a hand-made run directory."""

import json

import pytest

from lps_keras.curve import main, plot_curve, read_curve


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    t0 = 1000.0
    lines = [
        {"step": 10, "loss": 2.0, "lr": 0.03, "steps_per_s": 1.0, "time": t0 + 10},
        {"step": 20, "loss": 1.5, "lr": 0.02, "steps_per_s": 1.0, "time": t0 + 20},
        # the run was stopped for a day and resumed: the gap counts as one logging interval (10 s)
        {"step": 30, "loss": 1.2, "lr": 0.01, "steps_per_s": 1.0, "time": t0 + 86400 + 30},
    ]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(lines)))
    (run / "state.json").write_text(json.dumps({"history": [{"step": 20, "miou": 0.25}, {"step": 30, "miou": 0.5}]}))
    return run


def test_read_curve_orders_steps_and_closes_resume_gaps(tmp_path):
    c = read_curve(_run_dir(tmp_path))
    assert c["steps"] == [10, 20, 30] and c["loss"] == [2.0, 1.5, 1.2]
    assert c["hours"] == pytest.approx([0.0, 10 / 3600, 20 / 3600])
    assert c["val_steps"] == [20, 30] and c["val_miou"] == [25.0, 50.0]
    assert c["val_hours"] == pytest.approx([10 / 3600, 20 / 3600])


def test_plot_writes_a_png_and_the_cli_rejects_a_non_run_dir(tmp_path, capsys):
    out = plot_curve(_run_dir(tmp_path), tmp_path / "docs" / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "no training log" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
