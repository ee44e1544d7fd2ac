"""search.py / lps_keras.nas.run: a whole search from a recipe (budget, table, search, derived
network), resumed after a stop, refused with one line on bad settings; the table's calibration
against a hand computation."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from lps_keras.families.mrms.config import MRMSConfig
from lps_keras.nas import NASError, get_space
from lps_keras.nas.latency_table import ExpectedLatency, LatencyTable, calibrate_table, table_latency
from lps_keras.nas.space import OpSpec
from lps_keras.recipe import RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = {"width_multiplier": 0.25, "head_channels": 16}
SIZE = (64, 64)
ARCH = {"depth": [1, 1, 1, 1, 1], "width": [8, 16, 32, 64, 64], "resolution": [1, 0.25, 0]}  # a budget network


def _recipe(tmp_path, **nas):
    return {
        "name": "tiny_search",
        "model": {"family": "mrms", "config": TINY, "num_classes": 19},
        "data": {"dataset": "synthetic", "root": str(tmp_path / "synthetic"),
                 "synthetic": {"num_train": 4, "num_val": 2, "height": 64, "width": 96},
                 "augment": {"crop_size": [64, 64]}},
        "train": {"iterations": 2, "batch_size": 2, "val_interval": 2, "checkpoint_interval": 2},
        "nas": {"steps": 3, "batch_size": 2, "crop_size": [32, 32], "latency_backend": "tf",
                "latency_input_size": list(SIZE), "latency_warmup": 0, "latency_iters": 2, "checkpoint_interval": 2,
                "log_interval": 1, "run_eagerly": True, "budget_ms": 5.0, **nas},
    }


def _table(path, base=None, ms=0.1):
    """A table with every operator of the space at SIZE (a made-up ``ms`` each): no timing needed."""
    space = get_space("hmseg", base=base or MRMSConfig(**TINY))
    LatencyTable("tf", {s.key: ms for s in space.op_specs(SIZE)}).save(path)
    return path


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "LPS_FILTER_TF_STARTUP")}
    env.update({"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TF_ENABLE_ONEDNN_OPTS": "0"})
    return env


def _search(*args):
    return subprocess.run([PY, "search.py", *map(str, args)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)


def test_calibration_puts_what_the_operators_miss_into_fixed_ms(tmp_path):
    # Every operator 1.0 ms; the hand-designed path runs one operator per block (17) and no resize
    # (ratio 0.5 everywhere), so its table sum is 17 ms; timed whole at 20 ms -> fixed_ms = 3 ms. The
    # high-resolution branch's ratio (the head's input size) is calibrated per option: at 0.4 and 0.6 the
    # path adds that branch's resize (one more operator, 18 ms) and the whole network times 15 / 25 ms, so
    # the fixed cost is 15 - 18 = -3 and 25 - 18 = 7 ms there.
    space = get_space("hmseg", base=MRMSConfig(**TINY))
    table = LatencyTable("tf", {s.key: 1.0 for s in space.op_specs(SIZE)})
    timed = []

    def measure(target, backend, input_shape, **kwargs):
        timed.append((target, backend, input_shape))
        r3 = target.branch_ratios[0] if target.branch_ratios else 0.5
        return type("Stats", (), {"median_ms": {0.4: 15.0, 0.5: 20.0, 0.6: 25.0}[r3]})()

    calibrate_table(space, table, SIZE, "tf", measure=measure)
    assert timed[0] == (MRMSConfig(**TINY), "tf", (1, *SIZE, 3))
    assert [t[0].branch_ratios for t in timed[1:]] == [(0.4, 0.5, 0.5), (0.6, 0.5, 0.5)]
    assert table.calibration["network_ms"] == 20.0 and table.calibration["ops_ms"] == 17.0
    assert table.fixed_ms == pytest.approx(3.0)
    d = space.calibration_decision()
    assert table.fixed_by_option == {"decision": d, "ms": pytest.approx([-3.0, 3.0, 7.0])}
    _, choices = space.reference()
    for option, whole in enumerate((15.0, 20.0, 25.0)):  # each calibrated network's own time comes back
        picks = [option if i == d else c for i, c in enumerate(choices)]
        assert table_latency(space, table, SIZE, picks) == pytest.approx(whole)
    # the fixed cost is weighted by that decision's probabilities: uniform over the three -> mean 7/3 ms
    decisions = space.decisions()
    probs = [np.eye(len(x.options), dtype=np.float32)[c] for x, c in zip(decisions, choices)]
    probs[d] = np.full(3, 1 / 3, np.float32)
    expected = ExpectedLatency(space.cost_terms(SIZE), table, [len(x.options) for x in decisions])
    assert float(expected(probs)) == pytest.approx(17.0 + 2 / 3 * 1.0 + (-3.0 + 3.0 + 7.0) / 3)
    table.save(tmp_path / "table.json")  # the per-option cost travels with the table
    assert LatencyTable.load(tmp_path / "table.json").fixed_by_option == table.fixed_by_option
    calibrate_table(space, table, SIZE, "tf", measure=measure)  # done once per table
    assert len(timed) == 3


def test_recipe_nas_section_is_validated(tmp_path):
    raw = _recipe(tmp_path)
    assert recipe_from_dict(raw).nas.budget_ms == 5.0
    for nas, match in (({"space": "lgcnet"}, r"nas.space: 'lgcnet' is not one of hmseg"),
                       ({"budget_arch": {"depth": [1, 1, 1, 1, 1], "width": [8, 16, 32, 64, 64],
                                         "resolution": [1, 0.25, 0]}}, r"nas.budget_ms / nas.budget_arch: give one"),
                       ({"budget_ms": None, "budget_arch": {"depth": [1]}}, r"nas.budget_arch: "),
                       ({"latency_backend": "macs"}, r"nas.latency_backend: 'macs' computes"),
                       ({"steps": 0}, r"nas.steps: must be > 0")):
        with pytest.raises(RecipeError, match=match):
            recipe_from_dict({**raw, "nas": {**raw["nas"], **nas}})


def test_search_without_budget_or_on_another_family_is_refused(tmp_path):
    from lps_keras.nas.run import run_search

    raw = _recipe(tmp_path, budget_ms=None)
    with pytest.raises(NASError, match=r"nas.budget_ms / nas.budget_arch: the search needs a latency budget"):
        run_search(recipe_from_dict(raw), tmp_path / "a")
    raw = _recipe(tmp_path)
    raw["model"] = {"preset": "lps_s"}
    with pytest.raises(NASError, match=r"model.family: the 'hmseg' space searches an MRMS network"):
        run_search(recipe_from_dict(raw), tmp_path / "b")
    raw = _recipe(tmp_path, latency_table=str(tmp_path / "t.json"))
    LatencyTable("tf", {"ir(x)@1x1x1": 1.0}).save(tmp_path / "t.json")
    with pytest.raises(NASError, match=r"t.json has no entry 'ir\(.*built for another space or input size"):
        run_search(recipe_from_dict(raw), tmp_path / "c")


@pytest.fixture
def machine(monkeypatch):
    """Timing stand-ins: this machine is the device named ``machine[0]``; every whole network times 2 ms,
    every operator 0.1 ms (no operator model is built)."""
    import lps_keras.latency as latency
    import lps_keras.nas.latency_table as latency_table
    from lps_keras.nas.hmseg import HMSegSpace

    here = ["CPU: target"]

    def measure(target, backend, input_shape, **kwargs):
        ms = 0.1 if isinstance(target, OpSpec) else 2.0
        return types.SimpleNamespace(median_ms=ms, device=here[0])

    monkeypatch.setattr(latency, "measure_latency", measure)
    monkeypatch.setattr(latency_table, "device_label", lambda backend="tf": here[0])
    monkeypatch.setattr(HMSegSpace, "op_model", lambda self, spec: spec)
    return here


def test_table_only_builds_the_table_on_the_target_and_a_budget_arch_is_refused_elsewhere(tmp_path, machine):
    from lps_keras.nas.run import _check_table_device, run_search

    lines = []
    target = tmp_path / "target"
    out = run_search(recipe_from_dict(_recipe(tmp_path, budget_ms=None, budget_arch=ARCH)), target, log=lines.append,
                     table_only=True)
    table = LatencyTable.load(out["table"])
    assert out["device"] == table.device == "CPU: target" and table.calibration["network_ms"] == 2.0
    assert out["budget"]["reference_ms"] == 2.0 and out["budget"]["device"] == "CPU: target"
    assert not (target / "search.npz").exists() and not (target / "derived.json").exists()
    assert "--latency-table" in lines[-1] and lines[-1].endswith("--budget-ms 2")  # what to carry, said once
    import search

    assert search.parse_args(["--recipe", "r.json", "--table-only"]).table_only
    # without a budget the table alone is built; a table given from elsewhere is not what --table-only is for
    alone = run_search(recipe_from_dict(_recipe(tmp_path, budget_ms=None)), tmp_path / "alone", log=lines.append,
                       table_only=True)
    assert alone["budget"] is None and not (tmp_path / "alone" / "budget.json").exists()
    with pytest.raises(NASError, match=r"nas.latency_table: --table-only builds this machine's table"):
        run_search(recipe_from_dict(_recipe(tmp_path, latency_table=out["table"])), tmp_path / "x", table_only=True)

    # On another machine, the target's table with a budget network timed here is refused before anything is timed
    machine[0] = "CPU: here"
    carried = _recipe(tmp_path, budget_ms=None, budget_arch=ARCH, latency_table=out["table"])
    with pytest.raises(NASError, match=r"nas.budget_arch: the latency table .*table.json was measured on 'CPU: "
                                       r"target', the budget's network is timed on 'CPU: here'; give nas.budget_ms"):
        run_search(recipe_from_dict(carried), tmp_path / "here")
    assert not (tmp_path / "here" / "budget.json").exists()
    cfg = recipe_from_dict(carried).nas
    # ... but not a budget already timed on the table's device (budget.json carried with it), nor nas.budget_ms
    _check_table_device(target / "budget.json", cfg)
    _check_table_device(tmp_path / "none.json", recipe_from_dict(_recipe(tmp_path, latency_table=out["table"])).nas)
    machine[0] = "CPU: target"  # and on the table's own device, a budget network timed here is fine
    _check_table_device(tmp_path / "none.json", cfg)


def test_derived_latency_names_the_device_it_was_measured_on(tmp_path, machine):
    from lps_keras.nas.run import _derive

    recipe = recipe_from_dict(_recipe(tmp_path))
    space = get_space("hmseg", base=recipe.model_config())
    alphas = [np.eye(len(d.options))[0] for d in space.decisions()]
    search = types.SimpleNamespace(space=space, step=3, alphas=lambda: alphas, derive=lambda: space.derive(alphas))
    budget = {"source": "nas.budget_ms", "reference_ms": 5.0, "budget_ms": 5.0}
    for table_device, same in (("CPU: target", True), ("GPU: elsewhere", False)):
        table = LatencyTable("tf", {s.key: 0.1 for s in space.op_specs(SIZE)}, device=table_device)
        lines = []
        run = tmp_path / table_device.split(":")[0]
        run.mkdir()
        measured = _derive(run, recipe, search, table, budget, lines.append)["measured"]
        assert measured["device"] == "CPU: target" and measured["table_device"] == table_device
        assert measured["derived_ms"] == 2.0
        assert ("not the table's device" not in lines[-1]) == same, lines[-1]
        assert "measured 2.000 ms on CPU: target" in lines[-1]
        assert json.loads((run / "derived.json").read_text())["measured"] == measured


def test_a_search_for_another_device_needs_its_backend_only_there(tmp_path, machine, monkeypatch):
    """With the target's table and its budget in ms, a machine without the backend searches anyway: the derived
    network is recorded as not timed here, naming why; without the table the missing backend stops it."""
    import lps_keras.latency.backends as backends
    from lps_keras.latency import LatencyError
    from lps_keras.nas.run import _derive

    def absent(backend, *a, **k):
        raise LatencyError(f"latency backend {backend!r} needs the tensorrt package, which is not installed")

    monkeypatch.setattr(backends, "check_backend", absent)
    monkeypatch.setattr("lps_keras.latency.check_backend", absent)
    space = get_space("hmseg", base=recipe_from_dict(_recipe(tmp_path)).model_config())
    table = LatencyTable("tf", {s.key: 0.1 for s in space.op_specs(SIZE)}, device="GPU: target")
    table.save(tmp_path / "target.json")
    recipe = recipe_from_dict(_recipe(tmp_path, latency_table=str(tmp_path / "target.json")))
    alphas = [np.eye(len(d.options))[0] for d in space.decisions()]
    search = types.SimpleNamespace(space=space, step=3, alphas=lambda: alphas, derive=lambda: space.derive(alphas))
    lines = []
    (tmp_path / "run").mkdir()
    measured = _derive(tmp_path / "run", recipe, search, table, {"reference_ms": 5.0, "budget_ms": 5.0},
                       lines.append)["measured"]
    assert measured["derived_ms"] is None and "not installed" in measured["not_measured"]
    assert "on the table's device GPU: target; not timed here (" in lines[-1] and "time it there" in lines[-1]
    with pytest.raises(LatencyError, match="not installed"):  # searching for this machine: the backend is needed
        _derive(tmp_path / "run2", recipe_from_dict(_recipe(tmp_path)), search, table,
                {"reference_ms": 5.0, "budget_ms": 5.0}, lines.append)
    # the same directory resumed where the backend is: the derived network is timed then, not left untimed
    monkeypatch.setattr(backends, "check_backend", lambda *a, **k: None)
    monkeypatch.setattr("lps_keras.latency.check_backend", lambda *a, **k: None)
    again = _derive(tmp_path / "run", recipe, search, table, {"reference_ms": 5.0, "budget_ms": 5.0}, lines.append)
    assert again["measured"]["derived_ms"] == 2.0 and "not_measured" not in again["measured"]


@pytest.mark.slow
def test_search_cli_derives_a_trainable_network_resumes_and_refuses_other_settings(tmp_path):
    recipe = tmp_path / "search.json"
    recipe.write_text(json.dumps(_recipe(tmp_path, latency_table=str(_table(tmp_path / "table.json")))))
    run = tmp_path / "run"
    r = _search("--recipe", recipe, "--run-dir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[search] step 3/3" in r.stdout and "[derive]" in r.stdout
    derived = json.loads((run / "derived.json").read_text())
    assert derived["steps"] == 3 and derived["budget_ms"] == 5.0 and derived["measured"]["derived_ms"] > 0
    cost = derived["cost"]  # wall time per phase, added up over the directory's runs
    assert set(cost["seconds"]) == {"budget", "table", "search", "derive"} and cost["seconds"]["search"] > 0
    assert cost["wall_hours"] == pytest.approx(sum(cost["seconds"].values()) / 3600, abs=1e-4)  # rounded to 0.1 s
    # 0.1 ms per operator run: every block but the skipped ones, and a resize per branch not at ratio 0.5
    ran = 17 - derived["config"]["blocks"].count("identity") + sum(r != 0.5 for r in derived["config"]["branch_ratios"])
    assert derived["table_ms"] == pytest.approx(0.1 * ran, rel=1e-5)
    assert len(derived["alphas"]) == 20  # 17 blocks + 3 branch ratios
    # the derived network's recipe trains like any other MRMS network (model.config, no nas section)
    trained = load_recipe(run / "derived_recipe.json")
    assert trained.name == "tiny_search_derived" and trained.model.family == "mrms"
    config = trained.model_config()
    assert config == MRMSConfig.from_dict({**derived["config"]})
    from lps_keras.families import build

    model = build(config)
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape[-1] == 19
    assert [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    # the same command again continues from the checkpoint (step 3): nothing is searched again
    r = _search("--recipe", recipe, "--run-dir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 3/3" in r.stdout and "[search] step 1/" not in r.stdout
    again = json.loads((run / "derived.json").read_text())
    assert again["steps"] == 3 and again["cost"]["seconds"]["search"] >= cost["seconds"]["search"]
    # more steps would re-stretch the finished schedules (temperature, lr): refused with one line, exit 2
    r = _search("--recipe", recipe, "--run-dir", run, "--steps", 4)
    assert r.returncode == 2 and "holds a search with nas.steps = 3, not 4" in r.stderr and "Traceback" not in r.stderr
    # another search in the same directory is refused naming the key (search.py: one line, exit 2)
    from lps_keras.nas.run import run_search

    before = (run / "search_recipe.json").read_text()
    with pytest.raises(NASError, match=r"holds a search with nas.cost_weight = 1.0, not 2.0"):
        run_search(load_recipe(recipe, ["nas.cost_weight=2"]), run)
    assert (run / "search_recipe.json").read_text() == before
    # a directory recorded before a recipe key existed (train.lr_schedule & co.) resumes: absent = the default
    older = json.loads(before)
    for key in ("lr_schedule", "lr_steps", "lr_step_factors"):
        del older["train"][key]
    (run / "search_recipe.json").write_text(json.dumps(older))
    assert run_search(load_recipe(recipe), run, log=lambda m: None)["steps"] == 3
    # the external table is compared by content: the same bytes elsewhere continue, a rebuilt one is refused
    copy = tmp_path / "copy" / "table.json"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "table.json").read_bytes())
    assert run_search(load_recipe(recipe, [f"nas.latency_table={copy}"]), run, log=lambda m: None)["steps"] == 3
    _table(tmp_path / "table.json", ms=0.2)
    with pytest.raises(NASError, match=r"nas.latency_table: .*table.json is not the table this search directory"):
        run_search(load_recipe(recipe), run)
    # nor may a rerun drop the external table (the search would build its own and continue on it)
    with pytest.raises(NASError, match=r"nas.latency_table: .* searched with the table .*table.json; rerun with it"):
        run_search(load_recipe(recipe, ["nas.latency_table=null"]), run)


def test_search_cost_keeps_the_time_of_a_killed_run(tmp_path):
    import os

    from lps_keras.nas.cost import SearchCost

    path = tmp_path / "cost.json"
    # a run killed in its search phase, which began at t = 1000 and last wrote its log at t = 1600
    path.write_text(json.dumps({"seconds": {"table": 10.0}, "running": {"phase": "search", "since": 1000.0}}))
    (tmp_path / "log.jsonl").write_text("{}\n")
    os.utime(tmp_path / "log.jsonl", (1600.0, 1600.0))
    (tmp_path / "search_recipe.json").write_text("{}")  # written by the new run (now): not the killed run's
    cost = SearchCost(path, started=2000.0)
    assert cost.seconds == {"table": 10.0, "search": 600.0}
    assert json.loads(path.read_text()) == {"seconds": {"table": 10.0, "search": 600.0}}
    with cost.phase("derive"):
        assert json.loads(path.read_text())["running"]["phase"] == "derive"
    saved = json.loads(path.read_text())
    assert "running" not in saved and set(saved["seconds"]) == {"table", "search", "derive"}
