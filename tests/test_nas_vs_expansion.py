"""benchmarks/nas_vs_expansion.py: issue 27's table from hand-made finished runs, the latencies from one
paired set (stub runs, fake clock), the search cost from a derived.json, and the refusals (two networks in
one entry, a repeated seed, another schedule)."""

import json
import statistics
from functools import partial

import numpy as np
import pytest
from helpers import load_benchmark
from test_families_camvid import REPO

from lps_keras.latency.measure import measure_set
from lps_keras.recipe import load_recipe


def _run(tmp_path, name, overrides, miou, seed):
    d = tmp_path / name
    d.mkdir()
    recipe = load_recipe(REPO / "recipes" / "camvid_tinymrms_proof_cpu.json", [*overrides, f"train.seed={seed}"])
    (d / "recipe.json").write_text(recipe.to_json())
    (d / "metrics.json").write_text(json.dumps({
        "recipe": name, "iterations": 3000, "final_step": 3000, "miou": miou, "best_miou": miou,
        "best_step": 3000, "pixel_accuracy": 0.9, "history": [{"step": 3000, "miou": miou}], "fit_seconds": 3600.0,
        "per_class": {"road": {"iou": 0.9, "accuracy": 0.95}}}))
    return d


LPS = ["model.family=lps", "model.preset=null",
       'model.arch={"depth":[1,1,1,1,1],"width":[4,8,16,32,32],"resolution":[0.5,0,0]}']


def _stub_runs(per_round_s):
    """Runs that advance a fake clock by their own time: one untimed warm-up call (0 s), then one per round."""
    state = {"t": 0.0}
    queues = [[0.0, *times] for times in per_round_s]

    def make(q):
        return lambda: state.__setitem__("t", state["t"] + q.pop(0))
    return [make(q) for q in queues], lambda: state["t"]


def test_table_with_paired_latency_and_cost(tmp_path):
    mod = load_benchmark("nas_vs_expansion")
    a0, a1 = _run(tmp_path, "lps0", LPS, 0.50, 0), _run(tmp_path, "lps1", LPS, 0.52, 1)
    t0, t1 = _run(tmp_path, "tiny0", [], 0.40, 0), _run(tmp_path, "tiny1", [], 0.46, 1)
    derived = tmp_path / "derived.json"
    derived.write_text(json.dumps({"cost": {"wall_hours": 1.5, "cpu_count": 2}}))
    # round times 1, 2 ms (first) and 3, 5 ms (second): medians 1.5 and 4, per-round differences 2 and 3
    runs, clock = _stub_runs([[0.001, 0.002], [0.003, 0.005]])
    measure = partial(measure_set, runs=runs, clock=clock)
    args = mod.parse_args(["--entry", f"LPS={a0},{a1}", "--entry", f"TinyMRMS={t0},{t1}",
                           "--cost", f"LPS={derived}", "--rounds", "2", "--iters-per-round", "1",
                           "--warmup", "0", "--backend", "tf", "--output", str(tmp_path / "out" / "t")])
    assert mod.run(args, measure=measure) == 0
    doc = json.loads((tmp_path / "out" / "t.json").read_text())
    lps, tiny = doc["entries"]
    assert lps["miou"] == [50.0, 52.0] and lps["miou_mean"] == 51.0
    assert tiny["miou_sd"] == statistics.stdev([40.0, 46.0]) and tiny["seeds"] == [0, 1]
    assert lps["search_cpu_hours"] == 3.0 and tiny["search_cpu_hours"] == 0.0
    assert lps["family"] == "lps" and tiny["family"] == "mrms"
    np.testing.assert_allclose(doc["round_ms"], [[1, 3], [2, 5]])
    np.testing.assert_allclose([lps["latency_ms"], tiny["latency_ms"], tiny["delta_ms"]], [1.5, 4.0, 2.5])
    # SE of a median of the per-round differences [2, 3]: 1.2533 * (1.4826 * MAD 0.5) / sqrt(2 rounds)
    assert tiny["delta_se_ms"] == pytest.approx(1.2533 * 1.4826 * 0.5 / 2 ** 0.5)
    assert lps["delta_ms"] == 0 and lps["delta_se_ms"] == 0
    # GMACs at the timed size (--input-size, default 360x480), whatever size the runs exported at
    assert lps["gmacs_size"] == [360, 480] and lps["dtype_policy"] == ["none", "none"]
    rows = (tmp_path / "out" / "t.md").read_text().splitlines()
    assert rows[2].startswith("| LPS | lps |") and "| 1.500 | +0.000 ± 0.000 | none / none | 50.00 / 52.00 | " \
        "**51.00 ± 1.41** | 3.00 |" in rows[2]
    assert "| 4.000 | +2.500 ± 0.657 |" in rows[3] and "| 40.00 / 46.00 | 43.00 ± 4.24 | 0.00 |" in rows[3]


def test_one_seed_has_no_sd(tmp_path):
    mod = load_benchmark("nas_vs_expansion")
    one = _run(tmp_path, "one", [], 0.40, 0)
    runs, clock = _stub_runs([[0.001, 0.002]])
    args = mod.parse_args(["--entry", f"TinyMRMS={one}", "--rounds", "2", "--iters-per-round", "1", "--warmup", "0",
                           "--backend", "tf", "--output", str(tmp_path / "t")])
    assert mod.run(args, measure=partial(measure_set, runs=runs, clock=clock)) == 0
    entry = json.loads((tmp_path / "t.json").read_text())["entries"][0]
    assert entry["miou_sd"] is None and "| 40.00 | **40.00** | 0.00 |" in (tmp_path / "t.md").read_text()


def test_refusals_name_the_run(tmp_path, capsys):
    mod = load_benchmark("nas_vs_expansion")
    a0, a1 = _run(tmp_path, "lps0", LPS, 0.5, 0), _run(tmp_path, "lps1b", LPS, 0.5, 0)
    t0 = _run(tmp_path, "tiny0", [], 0.4, 1)
    other = _run(tmp_path, "long", ["train.iterations=3001"], 0.4, 2)
    trainval = _run(tmp_path, "trainval", ["data.train_split=train+val"], 0.6, 3)
    out = ["--output", str(tmp_path / "o")]
    assert mod.main(["--entry", f"x={a0},{t0}", *out]) == 2
    assert "one network per entry" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={a0},{a1}", *out]) == 2
    assert "two runs share train.seed ([0, 0])" in capsys.readouterr().err
    (other / "metrics.json").write_text((other / "metrics.json").read_text().replace("3000", "3001"))
    assert mod.main(["--entry", f"x={t0}", "--entry", f"y={other}", *out]) == 2
    assert "long: trains with train.iterations = 3001" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={t0}", "--entry", f"y={trainval}", *out]) == 2
    assert "trainval: trains with data.train_split = 'train+val'" in capsys.readouterr().err
    assert mod.main(["--entry", "x=,", *out]) == 2
    assert "--entry 'x': no run directory given" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={t0}", "--cost", "x=1", "--cost", "x=2", *out]) == 2
    assert "--cost 'x' given twice" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={t0}", "--cost", "x=-1", *out]) == 2
    assert "expected a finite number >= 0" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={t0}", "--cost", "y=1", *out]) == 2
    assert "--cost 'y': no --entry of that label" in capsys.readouterr().err
    assert mod.main(["--entry", f"x={t0}", "--cost", f"x={tmp_path / 'none.json'}", *out]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()
