"""benchmarks/families_camvid.py: the comparison table from finished run directories (hand-made fixtures),
and an unfinished run refused naming it."""

import json
from pathlib import Path

from helpers import load_benchmark

from lps_keras.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, name, final_step, miou):
    d = tmp_path / name
    d.mkdir()
    recipe = load_recipe(REPO / "recipes" / "demo.json",
                         ["model.arch=null", "model.family=ndnet", "model.preset=ndnet45",
                          "train.iterations=1500"])
    (d / "recipe.json").write_text(recipe.to_json())
    history = [{"step": 750, "miou": miou / 2}, {"step": 1500, "miou": miou}]
    (d / "metrics.json").write_text(json.dumps({
        "recipe": name, "iterations": 1500, "final_step": final_step, "miou": miou, "best_miou": miou,
        "best_step": 1500, "pixel_accuracy": 0.9, "history": history, "fit_seconds": 1800.0,
        "per_class": {"road": {"iou": 0.95, "accuracy": 0.97}, "sky": {"iou": 0.5, "accuracy": 0.6}}}))
    (d / "environment.json").write_text(json.dumps({"dtype_policy": "float32"}))
    return d


def test_table_and_plot_from_finished_runs(tmp_path):
    mod = load_benchmark("families_camvid")
    run = _run(tmp_path, "nd", 1500, 0.5)
    entry = mod.collect("NDNet45", run)
    # the authors' code counts 395,267 inference parameters for NDNet45's FCN32 at 19 classes (README table)
    assert entry["params"] == 395_267 and entry["family"] == "ndnet"
    assert entry["miou"] == 50.0 and entry["val_steps"] == [750, 1500] and entry["val_miou"] == [25.0, 50.0]
    assert entry["train_hours"] == 0.5 and entry["val_hours"] == [0.25, 0.5]  # no log: spread over the time
    assert entry["per_class"] == {"road": 95.0, "sky": 50.0} and entry["dtype_policy"] == "float32"
    out = tmp_path / "out" / "cmp"
    assert mod.main(["--entry", f"NDNet45={run}", "--output", str(out)]) == 0
    row = out.with_suffix(".md").read_text().splitlines()[2]
    assert row.startswith("| NDNet45 | ndnet | 0.40M |") and "| **50.0** | 50.0 (1500) | 95.0 | 50.0 |" in row
    assert out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["entries"][0]["label"] == "NDNet45"


def test_an_unfinished_run_is_refused_naming_it(tmp_path, capsys):
    mod = load_benchmark("families_camvid")
    run = _run(tmp_path, "half", 750, 0.3)
    assert mod.main(["--entry", f"x={run}", "--output", str(tmp_path / "o")]) == 2
    assert "half: the run stopped at step 750 of 1500; finish it first" in capsys.readouterr().err
    assert mod.main(["--entry", "nolabel", "--output", str(tmp_path / "o")]) == 2
    assert "--entry 'nolabel': expected LABEL=DIR" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()


def test_an_entry_of_an_earlier_table_is_kept_as_it_was(tmp_path, capsys):
    # a run directory gone (a new checkout) but its figures published: the earlier table's entry is reused
    mod = load_benchmark("families_camvid")
    run = _run(tmp_path, "nd", 1500, 0.5)
    first = tmp_path / "first"
    assert mod.main(["--entry", f"NDNet45={run}", "--output", str(first)]) == 0
    kept = json.loads(first.with_suffix(".json").read_text())["entries"][0]
    second = tmp_path / "second"
    assert mod.main(["--entry", f"NDNet45={first.with_suffix('.json')}", "--entry", f"again={run}",
                     "--output", str(second)]) == 0
    entries = json.loads(second.with_suffix(".json").read_text())["entries"]
    assert entries[0] == kept and entries[1]["label"] == "again"
    assert mod.main(["--entry", f"LPS-S={first.with_suffix('.json')}", "--output", str(tmp_path / "o")]) == 2
    assert "no entry labelled 'LPS-S' in this earlier table" in capsys.readouterr().err


def test_a_published_run_without_state_json_spreads_its_evaluations(tmp_path):
    # docs/runs/ copies of runs published before state.json was copied: a log but no timed evaluations
    mod = load_benchmark("families_camvid")
    run = _run(tmp_path, "pub", 1500, 0.5)
    (run / "train_log.jsonl").write_text(json.dumps({"step": 25, "loss": 1.0, "lr": 0.01, "time": 0.0}) + "\n")
    entry = mod.collect("NDNet45", run)
    assert entry["val_hours"] == [0.25, 0.5]  # 1800 s spread evenly over the steps 750 and 1500
