"""End to end: real proxy training on the synthetic set and real tf CPU latency, two steps, resumable."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lps_keras.arch import EXPANSION_OPS_BY_NAME, Arch
from lps_keras.recipe import load_recipe
from lps_keras.search.expansion import ProxyEvaluator, proxy_recipe, run

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path):
    return load_recipe(REPO / "recipes/expand_synthetic.json", [
        f"data.root={tmp_path / 'synthetic'}",
        'data.synthetic={"num_train": 12, "num_val": 4, "height": 64, "width": 128, "seed": 0}',
        "search.proxy.iterations=3", "search.proxy.batch_size=2", "search.proxy.crop_size=[64, 64]",
        "search.proxy.train_subset=12", "search.proxy.val_subset=4",
        "search.latency_input_shape=[1, 64, 128, 3]", "search.latency_warmup=1", "search.latency_iters=3",
        "search.max_k=2", "search.steps=2",
    ])


def test_proxy_recipe_uses_proxy_schedule(tmp_path):
    r = tiny_recipe(tmp_path)
    arch = Arch((1, 1, 2, 2, 2), (4, 8, 16, 32, 32), (0.5, 0.125, 0))
    p = proxy_recipe(r, arch, tmp_path / "run")
    assert p.arch() == arch.with_num_classes(19)
    assert (p.train.iterations, p.train.batch_size, p.train.val_interval) == (3, 2, 3)
    assert p.data.augment.crop_size == (64, 64) and p.data.train_subset == 12


class Interrupt(KeyboardInterrupt):
    """A kill, not a failure: an executor retries and journals an Exception, but stops on this."""


@pytest.mark.slow
def test_two_steps_end_to_end_and_resume_without_retraining(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "expand"
    real = ProxyEvaluator(recipe, str(out), verbose=0)
    calls = []
    armed = [True]

    def flaky(arch, ctx):
        calls.append(arch.hash)
        if armed[0] and ctx.step == 1 and ctx.index == 2:
            armed[0] = False
            raise Interrupt("simulated kill in the middle of step 1")
        return real(arch, ctx)

    with pytest.raises(Interrupt):
        run(recipe, out, evaluate_fn=flaky, recipes_dir=tmp_path / "recipes", progress=None)
    journal = json.loads((out / "journal.json").read_text())
    finished = set(journal["evaluations"])
    assert len(finished) == 3  # start network + two candidates of step 1

    calls.clear()
    history = run(recipe, out, evaluate_fn=flaky, recipes_dir=tmp_path / "recipes", progress=None)
    assert not finished & set(calls), "a finished candidate was trained again"
    assert len(history) == 3 and history[0].arch == recipe.arch()
    for prev, step in zip(history, history[1:]):
        assert step.latency > 0 and step.op is not None
        assert step.arch == prev.arch.expand(EXPANSION_OPS_BY_NAME[step.op], step.k)

    rows = json.loads((out / "expansion.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (out / "expansion.csv").read_text().startswith("step,")
    assert (out / "expansion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    step_recipes = sorted((tmp_path / "recipes").glob("step_*.json"))
    assert len(step_recipes) == 3
    assert load_recipe(step_recipes[-1]).arch() == history[-1].arch
    # Each candidate trained in its own run directory with a fused deploy model.
    assert all((out / "candidates" / h / "deploy.keras").exists() for h in finished)


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
