"""End to end: real proxy training on the synthetic set and real tf CPU latency, two steps, resumable."""

import dataclasses
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lps_keras.arch import EXPANSION_OPS_BY_NAME, Arch
from lps_keras.recipe import load_recipe
from lps_keras.search import EvalContext
from lps_keras.search.expansion import ProxyEvaluator, latency_device_text, proxy_recipe, run

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path, *extra):
    return load_recipe(REPO / "recipes/expand_synthetic.json", [*extra,
        f"data.root={tmp_path / 'synthetic'}",
        'data.synthetic={"num_train": 12, "num_val": 4, "height": 64, "width": 128, "seed": 0}',
        "search.proxy.iterations=3", "search.proxy.batch_size=2", "search.proxy.crop_size=[64, 64]",
        "search.proxy.train_subset=12", "search.proxy.val_subset=4",
        "search.latency_input_shape=[1, 64, 128, 3]", "search.latency_warmup=1", "search.latency_iters=3",
        "search.max_k=2", "search.steps=2", "search.latency.rounds=2", "search.latency.iters_per_round=1",
    ])


def test_proxy_recipe_uses_proxy_schedule(tmp_path):
    r = tiny_recipe(tmp_path)
    arch = Arch((1, 1, 2, 2, 2), (4, 8, 16, 32, 32), (0.5, 0.125, 0))
    p = proxy_recipe(r, arch, tmp_path / "run")
    assert p.arch() == arch.with_num_classes(19)
    assert (p.train.iterations, p.train.batch_size, p.train.val_interval) == (3, 2, 3)
    assert p.data.augment.crop_size == (64, 64) and p.data.train_subset == 12
    # a warm start trains warm_iterations at warm_lr from the grown weights; from scratch: the proxy's schedule
    w = tiny_recipe(tmp_path, "search.proxy.init=parent", "search.proxy.warm_iterations=2",
                    "search.proxy.warm_lr=0.004")
    grown = proxy_recipe(w, arch, tmp_path / "w", init=str(tmp_path / "grown.keras"))
    assert (grown.train.iterations, grown.train.base_lr, grown.train.init) == (2, 0.004, str(tmp_path / "grown.keras"))
    scratch = proxy_recipe(w, arch, tmp_path / "s")
    assert (scratch.train.iterations, scratch.train.base_lr) == (3, w.search.proxy.base_lr)
    # a recipe's step milestones are absolute steps of its full training: a proxy decays by poly over its own
    step = proxy_recipe(tiny_recipe(tmp_path, "train.lr_schedule=step", "train.lr_steps=[35000]",
                                    "train.lr_step_factors=[0.1]"), arch, tmp_path / "st")
    assert (step.train.lr_schedule, step.train.lr_steps, step.train.lr_step_factors) == ("poly", None, None)


class Interrupt(KeyboardInterrupt):
    """A kill, not a failure: an executor retries and journals an Exception, but stops on this."""


@pytest.mark.slow
def test_two_steps_end_to_end_and_resume_without_retraining(tmp_path):
    # One op per dimension (search.ops): the real trainings, timings and resume of the full set, at a third the cost.
    recipe = tiny_recipe(tmp_path, 'search.ops=["depth_s4-5", "width_s3-5", "res_path1"]')
    out = tmp_path / "expand"
    real = ProxyEvaluator(recipe, str(out), verbose=0)
    calls = []
    armed = [True]

    base_macs = recipe.arch().macs(64, 128)

    def flaky(arch, ctx):
        calls.append((arch.hash, ctx.seed))
        if armed[0] and ctx.step == 1 and ctx.index == 3:  # index 0 is the parent, then the candidates
            armed[0] = False
            raise Interrupt("simulated kill in the middle of step 1")
        result = real(arch, ctx)  # a real proxy training; its 3-iteration mIoU is noise, so a deterministic
        # term that grows with the network decides the verdicts (a step of pure noise may rightly be "no gain")
        return {**result, "score": result["score"] + arch.macs(64, 128) / base_macs}

    with pytest.raises(Interrupt):
        run(recipe, out, evaluate_fn=flaky, recipes_dir=tmp_path / "recipes", progress=None)
    journal = json.loads((out / "journal.json").read_text())
    finished = set(journal["evaluations"])
    assert len(finished) == 3  # start network (step 1's parent) + two candidates of step 1
    assert set(journal["latency_sets"]["1"]) >= finished  # the step's set was timed together first

    calls.clear()
    history = run(recipe, out, evaluate_fn=flaky, recipes_dir=tmp_path / "recipes", progress=None)
    pairs = {(h, int(seed)) for h, e in journal["evaluations"].items() for seed in e["seeds"]}
    assert not pairs & set(calls), "a finished (network, seed) was trained again"
    assert len(history) == 3 and history[0].arch == recipe.arch()
    for prev, step in zip(history, history[1:]):
        assert step.latency > 0 and step.op is not None
        assert step.arch == prev.arch.expand(EXPANSION_OPS_BY_NAME[step.op], step.k)

    rows = json.loads((out / "expansion.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["latency_device"].startswith("tf on ") for r in rows)  # where each step's latencies were timed
    assert (out / "expansion.csv").read_text().startswith("step,")
    assert (out / "expansion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    step_recipes = sorted((tmp_path / "recipes").glob("step_*.json"))
    assert len(step_recipes) == 3
    assert load_recipe(step_recipes[-1]).arch() == history[-1].arch
    # Each (network, seed) trained in its own run directory with a fused deploy model; step 1's seed is 1000.
    assert all((out / "candidates" / f"{h}-seed1000" / "deploy.keras").exists() for h in finished)
    assert all(c.latency_se >= 0 for s in history[1:] for c in s.candidates)
    assert {c.op for s in history[1:] for c in s.candidates} <= {"depth_s4-5", "width_s3-5", "res_path1"}
    assert len(history[2].parent_scores) == 1 and history[2].parent_scores != history[1].scores


def test_latency_device_text_names_backend_device_and_cpu_flags(tmp_path):
    from lps_keras.latency import cpu_flags_text

    recipe = tiny_recipe(tmp_path)

    def with_search(**changes):
        return dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, **changes))

    asked = []

    class Remote:  # a Ray executor with a latency resource asks the device node, not this process
        def on_device(self, fn, *args):
            asked.append(fn.__name__)
            return fn(*args)

    onnx = with_search(latency_backend="onnxruntime")
    assert latency_device_text(onnx, Remote()) == f"onnxruntime on {cpu_flags_text()}"
    assert cpu_flags_text().startswith("CPU:") and " has " in cpu_flags_text()
    assert asked == ["device_name", "cpu_flags_text"]
    assert latency_device_text(onnx) == f"onnxruntime on {cpu_flags_text()}"
    assert latency_device_text(with_search(latency_backend="macs")) is None  # computed, not measured
    profiled = with_search(latency=dataclasses.replace(recipe.search.latency, source="profile:p.json"))
    assert latency_device_text(profiled) == "profile p.json"
    assert latency_device_text(onnx, device_key="CPU:X x2") == \
        "onnxruntime from the latency cache of CPU:X x2 (--device-key)"


def test_run_with_a_given_latency_fn_names_no_device(tmp_path):
    import csv

    recipe = load_recipe(REPO / "recipes/expand_synthetic.json", ["search.steps=1", "search.max_k=2"])
    out = tmp_path / "o"
    run(recipe, out, latency_fn=lambda a: a.macs(64, 128) / 1e6, evaluate_fn=concave_score,
        recipes_dir=out / "recipes", progress=None)
    assert json.loads((out / "journal.json").read_text())["latency_devices"] == {}
    with open(out / "expansion.csv", newline="") as f:
        assert [r["latency_device"] for r in csv.DictReader(f)] == ["", ""]


def test_cli_errors(tmp_path):
    res = subprocess.run([sys.executable, "expand.py", "--recipe", str(tmp_path / "nope.json"), "--output",
                          str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "nope.json" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json", "--output",
                          str(tmp_path / "o"), "--set", "search.stepz=3"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "search.stepz" in res.stderr


def concave_score(arch, ctx):
    """Cheap picklable stand-in for proxy training (module level, so spawned workers can import it)."""
    return {"score": sum(d ** 0.5 for d in arch.depth) + sum(w ** 0.25 for w in arch.width) + 3 * sum(arch.resolution)}


def test_process_pool_workers_give_the_sequential_result(tmp_path):
    recipe = tiny_recipe(tmp_path)

    def latency(arch):
        return arch.macs(64, 128) / 1e6

    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        recipe = dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, workers=workers))
        runs[workers] = run(recipe, out, latency_fn=latency, evaluate_fn=concave_score,
                            recipes_dir=out / "recipes", progress=None)
        assert json.loads((out / "journal.json").read_text())["evaluations"]
    assert [(s.arch, s.op, s.k) for s in runs[2]] == [(s.arch, s.op, s.k) for s in runs[1]]
    assert len(runs[2]) == 3 and all(s.op for s in runs[2][1:])


TINY_CLI = ["--set", 'data.synthetic={"num_train": 12, "num_val": 4, "height": 64, "width": 128, "seed": 0}',
            "--set", "search.proxy.iterations=3", "--set", "search.proxy.batch_size=2",
            "--set", "search.proxy.crop_size=[64, 64]", "--set", "search.proxy.train_subset=12",
            "--set", "search.proxy.val_subset=4", "--set", "search.latency_input_shape=[1, 64, 128, 3]",
            "--set", "search.latency_warmup=1", "--set", "search.latency_iters=3", "--set", "search.max_k=2",
            "--set", "search.latency.rounds=2", "--set", "search.latency.iters_per_round=1",
            "--set", 'search.ops=["depth_s4-5", "width_s3-5", "res_path1"]']


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino"])  # the CPU deploy runtime; onnxruntime: see test_latency
def test_cli_one_step_timed_by_a_cpu_runtime(tmp_path, backend):
    out = tmp_path / "expand"
    res = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json", "--output",
                          str(out), "--latency-backend", backend, "--steps", "1", "--recipes-dir",
                          str(tmp_path / "recipes"), "--set", f"data.root={tmp_path / 'synthetic'}", *TINY_CLI],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((out / "expansion.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1]
    assert (out / "expansion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entries = json.loads((out / "latency_cache.json").read_text())["entries"].values()
    assert entries and {e["backend"] for e in entries} == {backend}
    kinds = {p.name.split("-")[1] for p in (out / "latency_cache_artifacts").iterdir()}
    assert kinds == ({"onnx"} if backend == "onnxruntime" else {"onnx", "openvino"})


def test_cli_missing_backend_stops_before_anything_starts(tmp_path):
    from lps_keras.export import tftrt_status

    if tftrt_status()[0]:
        pytest.skip("this machine has TF-TRT")
    out = tmp_path / "o"
    res = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json", "--output",
                          str(out), "--latency-backend", "tftrt"], cwd=REPO, capture_output=True, text=True)
    errors = [line for line in res.stderr.splitlines() if "expand.py: error" in line]
    assert res.returncode != 0 and len(errors) == 1 and "requirements-tftrt.txt" in errors[0]
    assert "Traceback" not in res.stderr and not out.exists()


def test_proxy_fields_rules_and_fingerprint(tmp_path):
    from lps_keras.recipe import RecipeError
    from lps_keras.search.expansion import search_fingerprint

    r = tiny_recipe(tmp_path)
    p = r.search.proxy
    assert (p.seeds, p.init, p.warm_iterations, p.racing.enabled) == (1, "scratch", None, False)
    d = r.search.decision
    assert (d.alpha, d.epsilon, d.latency_z) == (0.05, 0.5, 2.0)
    plain = load_recipe(REPO / "recipes/expand_synthetic.json").search.latency
    assert (plain.rounds, plain.iters_per_round) == (10, 5)
    for bad, key in (("search.proxy.seeds=0", "search.proxy.seeds"), ("search.proxy.init=grown", "search.proxy.init"),
                     ("search.proxy.warm_iterations=5", "search.proxy.warm_iterations"),
                     ("search.proxy.warm_lr=0.01", "search.proxy.warm_lr"),
                     ("search.proxy.racing.enabled=true", "search.proxy.racing.max_seeds"),
                     ("search.proxy.racing.eta=1", "search.proxy.racing.eta"),
                     ("search.decision.alpha=1", "search.decision.alpha"),
                     ("search.decision.epsilon=-1", "search.decision.epsilon"),
                     ("search.latency.rounds=-1", "search.latency.rounds"),
                     ('search.ops=["depth_s4-5", "nope"]', "search.ops")):
        extra = ["search.proxy.seeds=8"] if "racing.enabled" in bad else []
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(REPO / "recipes/expand_synthetic.json", [bad, *extra])
    # The removed key gets a message saying what replaced it.
    raw = json.loads((REPO / "recipes/expand_synthetic.json").read_text())
    raw["search"]["proxy"]["decision_z"] = 2.0
    (tmp_path / "old.json").write_text(json.dumps(raw))
    with pytest.raises(RecipeError, match=r"search\.proxy\.decision_z: removed; .*search\.decision"):
        load_recipe(tmp_path / "old.json")
    # Seeds, racing and the decision rule change which (arch, seed) pairs are trained, not their scores:
    # same fingerprint;
    # a scratch proxy's fingerprint is the one journals written before these fields existed carry.
    more = load_recipe(REPO / "recipes/expand_synthetic.json", ["search.proxy.seeds=3",
                                                                 "search.proxy.racing.enabled=true",
                                                                 "search.decision.epsilon=1"])
    base = load_recipe(REPO / "recipes/expand_synthetic.json")
    assert search_fingerprint(more, "tf") == search_fingerprint(base, "tf")
    # What a proxy run scores, and how, does change every score: another fingerprint.
    for change in ("search.proxy.score=pixel_accuracy", "search.proxy.label_stride=4",
                   "train.warmup_iterations=5", "train.mixed_precision=mixed_bfloat16",
                   "train.loss_label_stride=2"):
        other = load_recipe(REPO / "recipes/expand_synthetic.json", [change])
        assert search_fingerprint(other, "tf") != search_fingerprint(base, "tf"), change
    stride = proxy_recipe(load_recipe(REPO / "recipes/expand_synthetic.json", ["search.proxy.label_stride=4"]),
                          base.arch(), tmp_path / "run")
    assert stride.train.loss_label_stride == 4 and base.train.loss_label_stride == 1
    # OHEM's threshold counts only with the OHEM loss; the proxy's own label stride overrides the recipe's.
    assert search_fingerprint(load_recipe(REPO / "recipes/expand_synthetic.json", ["train.ohem_threshold=0.5"]),
                              "tf") == search_fingerprint(base, "tf")
    ohem = load_recipe(REPO / "recipes/expand_synthetic.json", ["train.loss=ohem"])
    assert search_fingerprint(load_recipe(REPO / "recipes/expand_synthetic.json", ["train.loss=ohem",
                                                                                   "train.ohem_threshold=0.5"]),
                              "tf") != search_fingerprint(ohem, "tf")
    strided = ["search.proxy.label_stride=4"]
    assert search_fingerprint(load_recipe(REPO / "recipes/expand_synthetic.json", [*strided,
                                                                                   "train.loss_label_stride=2"]),
                              "tf") == search_fingerprint(load_recipe(REPO / "recipes/expand_synthetic.json", strided),
                                                          "tf")
    old = search_fingerprint(base, "tf")
    warm = load_recipe(REPO / "recipes/expand_synthetic.json", ["search.proxy.init=parent"])
    assert search_fingerprint(warm, "tf") != old


def test_init_parent_starts_candidate_from_grown_parent_weights(tmp_path, monkeypatch):
    import numpy as np
    from helpers import randomize_batchnorm

    from lps_keras.fileio import atomic_save_model
    from lps_keras.model import build_model
    from lps_keras.weights import init_weights

    recipe = load_recipe(REPO / "recipes/expand_synthetic.json", [
        "search.proxy.init=parent", "search.proxy.warm_iterations=2", "search.proxy.seeds=2"])
    out = tmp_path / "expand"
    parent_arch = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0), num_classes=19)
    child_arch = parent_arch.expand(EXPANSION_OPS_BY_NAME["depth_s4-5"], 1)
    parent = build_model(parent_arch)
    randomize_batchnorm(parent, seed=3)  # trained-like statistics, so identity blocks are really tested
    parent_dir = out / "candidates" / parent_arch.hash
    atomic_save_model(parent, parent_dir / "last.keras")
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    seen = {}

    def fake_train(r, resume, verbose):
        # What train() does before its first step: build the arch, load train.init.
        model = build_model(r.arch())
        if r.train.init:
            init_weights(model, r.train.init, verbose=False)
        seen.update(recipe=r, logits=np.asarray(model(x, training=False)))
        return {"miou": 0.5}

    monkeypatch.setattr("lps_keras.train.train", fake_train)
    ctx = EvalContext(step=1, key=child_arch.hash, op="depth_s4-5", dimension="depth", k=1, seed=1,
                      parent_weights=str(parent_dir / "deploy.keras"))
    result = ProxyEvaluator(recipe, str(out), verbose=0)(child_arch, ctx)
    r = seen["recipe"]
    assert r.arch() == child_arch and r.train.iterations == 2 and r.train.seed == recipe.train.seed + 1
    assert r.train.run_dir == str(out / "candidates" / f"{child_arch.hash}-seed1")
    assert r.train.init == str(out / "candidates" / "grown" / f"{child_arch.hash}-seed1.keras")
    assert result["metrics"]["init"] == "parent" and result["score"] == 0.5
    ref = np.asarray(parent(x, training=False))
    assert ref.std() > 0.1  # a meaningful comparison
    np.testing.assert_allclose(seen["logits"], ref, rtol=0, atol=1e-5)
    # The start network (no parent) and a scratch proxy train from scratch for the full proxy schedule.
    ProxyEvaluator(recipe, str(out), verbose=0)(parent_arch, EvalContext(step=0, key=parent_arch.hash))
    assert seen["recipe"].train.init is None and seen["recipe"].train.iterations == recipe.search.proxy.iterations


def noisy_score(arch, ctx):
    """concave_score plus seeded noise per (arch, seed): a picklable stand-in with seed-to-seed spread."""
    import numpy as np

    noise = np.random.default_rng([int(arch.hash[:8], 16), ctx.seed]).normal(0, 0.3)
    return {"score": concave_score(arch, ctx)["score"] + float(noise)}


def test_run_with_seeds_and_racing_records_margins(tmp_path):
    import csv

    recipe = load_recipe(REPO / "recipes/expand_synthetic.json", [
        "search.steps=2", "search.max_k=2", "search.proxy.seeds=2", "search.proxy.racing.enabled=true",
        "search.proxy.racing.max_seeds=4", "search.proxy.racing.budget=4"])
    out = tmp_path / "o"
    history = run(recipe, out, latency_fn=lambda a: a.macs(64, 128) / 1e6, evaluate_fn=noisy_score,
                  recipes_dir=out / "recipes", progress=None)
    journal = json.loads((out / "journal.json").read_text())
    assert journal["version"] == 3
    per_step = [[s for s in map(int, e["seeds"]) if s // 1000 == t] for e in journal["evaluations"].values()
                for t in (1, 2)]
    assert all(2 <= len(seeds) <= 4 for seeds in per_step if seeds)
    with open(out / "expansion.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["decision"] for r in rows[1:]] == [s.verdict for s in history[1:]]
    assert all(r["decision"] in ("decided", "equivalent", "no gain", "undecided") for r in rows[1:])
    assert all(int(r["racing_evaluations"]) <= 4 for r in rows)
    assert any(s.racing_evaluations for s in history)  # this seeded noise leaves step 2 open after 2 seeds


HELD_SEARCH = """
import sys, time
from pathlib import Path
from lps_keras.recipe import load_recipe
from lps_keras.search.expansion import run

out, go = Path(sys.argv[1]), Path(sys.argv[2])

def evaluate(arch, ctx):
    # Holds the search (and its output directory) until the test lets it go.
    while not go.exists():
        time.sleep(0.05)
    return {"score": sum(arch.width) / 100}

recipe = load_recipe("recipes/expand_synthetic.json", ["search.steps=1", "search.max_k=1", "search.workers=1"])
print("searching", flush=True)
run(recipe, out, latency_fn=lambda a: a.macs(64, 128) / 1e6, evaluate_fn=evaluate, recipes_dir=out / "recipes",
    progress=None)
"""


def test_second_expand_on_an_output_directory_in_use_exits_2_naming_the_holder(tmp_path):
    # Two real processes: before the lock, the second retrained finished candidates and rewrote the
    # journal under the first. The first's evaluations wait for a file, so the timing is ours.
    out, go = tmp_path / "expand", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HELD_SEARCH, str(out), str(go)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.stdout.readline().strip() == "searching"
        deadline = time.time() + 60
        while not (out / "journal.json").exists():  # written after the lock is taken
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json",
                                 "--output", str(out), "--latency-backend", "macs", "--steps", "1"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2 and len(lines) == 1, (second.returncode, second.stderr[-3000:])
        assert lines[0].startswith("expand.py: error: ") and str(out) in lines[0]
        assert f"in use by process {first.pid}" in lines[0]
        go.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    journal = json.loads((out / "journal.json").read_text())
    assert len(journal["steps"]) == 2 and (out / "expansion.json").exists()


def test_candidate_keys_are_plain_names(tmp_path):
    from lps_keras.errors import PathNameError
    from lps_keras.search.expansion import candidate_dir

    assert candidate_dir(tmp_path, "0123abcd4567", 2) == tmp_path / "candidates" / "0123abcd4567-seed2"
    for key in ("../escape", "a/b", ""):
        with pytest.raises(PathNameError, match="candidate key"):
            candidate_dir(tmp_path, key)



def _locking_score_in(output_dir, arch, ctx):
    """Holds the candidate's run-directory lock as train() does, in a pool worker (module level: picklable)."""
    from lps_keras.fileio import DirectoryLock
    from lps_keras.search.expansion import candidate_dir

    with DirectoryLock(candidate_dir(output_dir, ctx.key, ctx.seed), "run directory"):
        return concave_score(arch, ctx)


def test_the_drivers_lock_does_not_block_its_workers_run_directories(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "w2"
    recipe = dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, workers=2, steps=1))
    evaluate = functools.partial(_locking_score_in, str(out))
    history = run(recipe, out, latency_fn=lambda a: a.macs(64, 128) / 1e6, evaluate_fn=evaluate,
                  recipes_dir=out / "recipes", progress=None)
    assert len(history) == 2
    assert (out / "candidates" / f"{recipe.arch().hash}-seed1000" / ".lps.lock").exists()  # taken by a worker


def test_a_search_on_a_latency_profile_needs_no_device_and_records_the_profile(tmp_path, monkeypatch):
    import numpy as np

    from lps_keras.latency.profile import FEATURES, ProfileError, make_profile, predict_latency

    coef = np.zeros(len(FEATURES))
    coef[FEATURES.index("const")] = 0.5
    coef[FEATURES.index("gmacs_s4")] = 300.0
    coef[FEATURES.index("gmacs_s5")] = 200.0
    coef[FEATURES.index("layers")] = 0.01
    profile = tmp_path / "cpu_tf.json"
    profile.write_text(json.dumps(make_profile(coef, "tf", "fp32", (1, 64, 128, 3), device="CPU:elsewhere",
                                               measured=True, source="test", residual_sd_rel=0.03)))
    recipe = load_recipe(REPO / "recipes/expand_synthetic.json", [
        f"data.root={tmp_path / 'synthetic'}", "search.latency_input_shape=[1, 64, 128, 3]", "search.max_k=2",
        "search.steps=1", f"search.latency.source=profile:{profile}"])
    out = tmp_path / "out"
    history = run(recipe, out, evaluate_fn=concave_score, recipes_dir=out / "recipes", progress=None)
    journal = json.loads((out / "journal.json").read_text())
    fp = journal["setup"]["fingerprint"]
    assert fp["latency_source"] == f"profile:{profile}" and fp["profile"]["device"] == "CPU:elsewhere"
    for step in history:  # deterministic: exactly the profile's predictions
        assert step.latency == predict_latency(step.arch, profile)
    # the step's differences carry the profile's error (sigma_rel * the step's largest dL; no validation rows
    # here: the fit's 0.03), recorded in the journal; the k rule's latencies are exact (SE 0)
    lat_set = journal["latency_sets"]["1"]
    parent_ms = lat_set[history[0].arch.hash][0]
    largest = max(lat - parent_ms for lat, _ in lat_set.values())
    assert all(se == pytest.approx(0.03 * largest) for h, (_, se) in lat_set.items() if h != history[0].arch.hash)
    assert all(entry.get("se", 0) == 0 for entry in journal["latencies"].values())
    # a journal written before profile searches had sets (decided with SE 0) still resumes, replayed as decided
    import lps_keras.search.latencies as latencies

    new_way = latencies.latency_functions
    old = tmp_path / "old"
    monkeypatch.setattr(latencies, "latency_functions", lambda *a, **k: (new_way(*a, **k)[0], None))
    before = run(recipe, old, evaluate_fn=concave_score, recipes_dir=old / "recipes", progress=None)
    assert "latency_sets" not in json.loads((old / "journal.json").read_text()) or not json.loads(
        (old / "journal.json").read_text())["latency_sets"]
    monkeypatch.undo()
    again = run(recipe, old, evaluate_fn=concave_score, recipes_dir=old / "recipes", progress=None)
    assert [s.arch.hash for s in again] == [s.arch.hash for s in before]
    wrong = load_recipe(REPO / "recipes/expand_synthetic.json", [
        f"data.root={tmp_path / 'synthetic'}", "search.latency_input_shape=[1, 128, 256, 3]",
        f"search.latency.source=profile:{profile}"])
    with pytest.raises(ProfileError, match=r"made at input \[1, 64, 128, 3\]"):
        run(wrong, tmp_path / "out2", evaluate_fn=concave_score, recipes_dir=tmp_path / "r2", progress=None)


def test_a_candidate_directory_holding_another_run_stops_with_the_expansions_advice(tmp_path, monkeypatch):
    from lps_keras.train.errors import RUN_ADVICE, RunConflictError

    def conflicting(recipe, **kw):
        raise RunConflictError(f"run directory {recipe.train.run_dir} holds a run trained with other settings "
                               f"(train.seed 0 -> 1){RUN_ADVICE}")

    monkeypatch.setattr("lps_keras.train.train", conflicting)
    recipe = tiny_recipe(tmp_path)
    with pytest.raises(RunConflictError) as info:
        ProxyEvaluator(recipe, str(tmp_path / "out"), verbose=0)(recipe.arch(), EvalContext(step=0, key="k0"))
    message = str(info.value)
    assert message.startswith("candidate k0 seed 0: run directory ") and "(train.seed 0 -> 1)" in message
    assert "--run-dir" not in message and message.endswith(f"use a new --output, or delete {tmp_path / 'out'}"
                                                           f"/candidates/k0")
