"""benchmarks/proxy_fidelity.py's reuse of a finished study: the same step's candidates and latencies come
back exactly (so new proxies train the reference's networks), and the reference row reads as a step."""

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

from lps_keras.recipe import load_recipe
from lps_keras.search.candidates import propose_candidates

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "proxy_fidelity_camvid.json"


def _module():
    return load_benchmark("proxy_fidelity")


def test_a_finished_studys_step_is_reproduced_exactly():
    fid = _module()
    doc = json.loads(STUDY.read_text())
    recipe = load_recipe(REPO / doc["recipe"])
    start = recipe.arch()
    latency, ops = fid.fixed_latency(doc, start, recipe.search.max_k)
    _, cands = propose_candidates(start, ops, latency, recipe.search.max_k)
    ref = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    assert [(c.op, c.k, c.latency) for c in cands] == [(c["op"], c["k"], c["latency"]) for c in ref["candidates"]]
    assert latency(start) == pytest.approx(fid.parent_latency_of(doc))
    step = fid.reference_step(doc, start)
    assert [c.arch.hash for c in step.candidates] == [c.arch.hash for c in cands]
    assert step.arch.hash == next(c.arch.hash for c in cands if c.op == ref["winner"])
    with pytest.raises(Exception, match="not a network of that study's step"):
        latency(start.expand(ops[0], recipe.search.max_k + 3))
