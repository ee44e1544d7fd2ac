"""benchmarks/step_latency_repeat.py: the k of each op comes from the search's own rule (paired rounds, and the
smaller of two k their SEs do not tell apart), and a recipe without paired sets is one line, exit 2."""

from pathlib import Path

from helpers import load_benchmark

from lps_keras.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _fns(se):
    def single(arch):
        return arch.macs(64, 128) / 1e6

    def paired(parent, archs):
        return {parent.hash: (single(parent), 0.0), **{a.hash: (single(a), se) for a in archs}}
    return single, paired


def test_k_follows_the_searchs_rule_with_the_paired_ses(monkeypatch, tmp_path, capsys):
    mod = load_benchmark("step_latency_repeat")
    recipe = load_recipe(REPO / "recipes" / "expand_synthetic.json", ["search.latency_input_shape=[1, 64, 128, 3]"])
    ks = {}
    for se in (0.0, 1e9):  # exact latencies: the argmin; SEs that tell nothing apart: the smaller of the two nearest
        monkeypatch.setattr("lps_keras.search.expansion.make_latency_fns", lambda *a, se=se, **k: _fns(se))
        ks[se] = {r["op"]: r["k"] for r in mod.measure(recipe)["candidates"]}
    assert ks[0.0].keys() == ks[1e9].keys()
    assert all(ks[1e9][op] <= ks[0.0][op] for op in ks[0.0]) and ks[1e9] != ks[0.0], ks
    # a profile's predictions (deterministic) take no tie-break, whatever SE they carry: the argmin, as the search

    def exact(se):
        single, paired = _fns(se)
        paired.deterministic = True
        return single, paired
    monkeypatch.setattr("lps_keras.search.expansion.make_latency_fns", lambda *a, **k: exact(1e9))
    assert {r["op"]: r["k"] for r in mod.measure(recipe)["candidates"]} == ks[0.0]
    # a recipe that measures no paired sets: one line naming it, exit 2, nothing written
    monkeypatch.undo()
    out = tmp_path / "a.json"
    assert mod.main(["--recipe", str(REPO / "recipes" / "expand_synthetic.json"), "--set", "search.latency.rounds=0",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "expand_synthetic" in err and "search.latency.rounds is 0" in err and "Traceback" not in err
    assert not out.exists()
