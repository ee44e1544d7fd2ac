"""The design-principle studies on stub latency functions, and the CLI's one-line errors."""

import json

import pytest

import lps_keras.study as study
from lps_keras.block_specs import BLOCK_TYPES, INTERACTION_TYPES


def gmacs_latency(arch):
    """A stub: latency proportional to conv MACs at 64x128 (monotone in c), per block a different slope."""
    return arch.macs(64, 128) / 1e7 * (1.0 + BLOCK_TYPES.index(arch.block))


def test_tune_width_converges_to_target():
    got = study.tune_width(lambda c: 0.5 * c, target_ms=10.2, c_max=256)
    assert got["c"] == 20 and got["latency_ms"] == 10.0 and len(got["evaluations"]) <= 12
    even = study.tune_width(lambda c: float(c), target_ms=7.0, step=2, c_max=64)
    assert even["c"] in (6, 8) and even["c"] % 2 == 0
    assert study.tune_width(lambda c: float(c), target_ms=1e6, c_max=32)["c"] == 32
    assert study.tune_width(lambda c: float(c), target_ms=0.0, c_max=32)["c"] == 1


def test_tune_width_brackets_from_c16_and_never_times_far_wider_networks():
    wide = study.tune_width(lambda c: float(c), target_ms=20.0, c_max=512)
    assert wide["c"] == 20 and max(wide["evaluations"]) == 32  # 16 -> 32, then bisection
    narrow = study.tune_width(lambda c: float(c), target_ms=5.0, c_max=512)
    assert narrow["c"] == 5 and max(narrow["evaluations"]) == 16  # 16 -> 8 -> 4, then bisection
    # Against an exhaustive search on a monotone law, for odd starts, steps and limits.
    for step, c_max, start, a, target in [(1, 64, 3, 0.7, 30.1), (2, 128, 16, 1.3, 99.0), (2, 8, 40, 2.0, 3.0),
                                          (1, 512, 600, 0.1, 7.77), (1, 100, 16, 1.0, 1e9)]:
        got = study.tune_width(lambda c, a=a: a * c, target, step, c_max, c_start=start)
        best = min(range(step, c_max // step * step + 1, step), key=lambda c: (abs(a * c - target), c))
        assert abs(a * got["c"] - target) == pytest.approx(abs(a * best - target))


def test_blocks_study_hits_the_common_target_and_has_the_papers_rows():
    result = study.blocks_study(gmacs_latency, input_size=(64, 128))
    target = gmacs_latency(study.table2_arch("conv3x3", 16))
    assert result["target_ms"] == pytest.approx(target, abs=1e-4)  # rounded to 4 places
    rows = {r["block"]: r for r in result["rows"]}
    assert set(rows) == set(BLOCK_TYPES) and rows["conv3x3"]["c"] == 16
    for block, row in rows.items():
        step = study.width_step(block)
        # c is the best multiple of step: neither neighbour gets closer to the target.
        for other in (row["c"] - step, row["c"] + step):
            if other >= 1:
                other_ms = gmacs_latency(study.table2_arch(block, other))
                assert abs(row["latency_ms"] - target) <= abs(other_ms - target) + 1e-4
        assert row["paper_latency_ms"] == study.PAPER_TABLE2[block][1]
        assert row["gflops_per_ms"] == pytest.approx(row["gflops"] / row["latency_ms"], rel=1e-2)
    md = study.to_markdown(result)
    assert "| conv3x3 | 16 |" in md and "18.5" in md and "0.8" in md


def test_blocks_study_retimes_as_a_set_and_takes_a_target():
    calls = []

    def set_fn(archs):
        calls.append(archs)
        return [1.0] * len(archs)

    result = study.blocks_study(gmacs_latency, (64, 128), target_ms=3.0, latency_set_fn=set_fn,
                                blocks=("conv3x3", "sepconv3x3"))
    assert result["target_ms"] == 3.0 and len(calls) == 1 and len(calls[0]) == 2
    assert all(r["latency_ms"] == 1.0 and r["gflops_per_ms"] == r["gflops"] for r in result["rows"])
    assert all(a.interaction == "none" and a.depth == (1, 2, 4, 7, 7) for a in calls[0])


def test_interactions_study_reports_increase_over_none():
    result = study.interactions_study(lambda archs: [1.0 + 0.1 * i for i in range(len(archs))], (64, 128))
    rows = {r["interaction"]: r for r in result["rows"]}
    assert set(rows) == set(INTERACTION_TYPES) and rows["none"]["increase_ms"] == 0
    assert rows["bilateral_b"]["paper_latency_ms"] == 5.97 and rows["bilateral_b"]["paper_increase_ms"] == 0.29
    assert rows["direct_a"]["increase_ms"] == pytest.approx(0.1)


def test_widths_study_and_outputs(tmp_path):
    result = study.widths_study(lambda specs: [c * (3.0 if k == "conv3x3" else 1.0) for k, c in specs],
                                widths=range(1, 9), size=(16, 16))
    assert [r["width"] for r in result["rows"]] == list(range(1, 9))
    row = result["rows"][3]  # width 4: 16*16*9*32*4 and 16*16*(9*32 + 32*4) MACs
    assert row["conv3x3_gflops"] == pytest.approx(16 * 16 * 9 * 32 * 4 / 1e9)
    assert row["sepconv3x3_gflops"] == pytest.approx(16 * 16 * (9 * 32 + 32 * 4) / 1e9)
    paths = study.write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["widths.json", "widths.md", "widths.png"]
    assert json.loads(paths[0].read_text())["rows"][0]["width"] == 1
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_bad_input_in_one_line(capsys):
    from lps_keras.study.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["blocks", "--backend", "nope"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["widths", "--input-size", "12by3"])
    assert e.value.code == 2 and "'12by3'" in capsys.readouterr().err


def test_cli_widths_on_the_tf_backend(tmp_path, capsys):
    from lps_keras.study.__main__ import main

    rc = main(["widths", "--backend", "tf", "--input-size", "8x8", "--max-width", "2", "--warmup", "1",
               "--iters", "2", "--rounds", "2", "--output", str(tmp_path)])
    assert rc == 0 and (tmp_path / "widths.md").is_file() and (tmp_path / "widths.png").is_file()
    from lps_keras.latency import cpu_flags_text

    assert cpu_flags_text() in (tmp_path / "widths.md").read_text()  # every table says on which CPU it was timed


def test_add_accuracy_trains_every_row_and_the_first_with_more_seeds():
    result = study.interactions_study(lambda archs: [1.0] * len(archs), (64, 128))
    calls = []

    def accuracy(arch, seed):
        calls.append((arch.interaction, seed))
        return 0.5 + 0.01 * seed + (0.1 if arch.interaction == "bilateral_b" else 0.0)

    study.add_accuracy(result, accuracy, seeds=3)
    assert calls[:3] == [("none", 0), ("none", 1), ("none", 2)] and len(calls) == 3 + len(INTERACTION_TYPES) - 1
    rows = {r["interaction"]: r for r in result["rows"]}
    assert rows["none"]["val_miou"] == pytest.approx(0.51) and rows["bilateral_b"]["val_miou"] == pytest.approx(0.6)
    noise = result["seed_noise"]
    assert noise["variant"] == "none" and noise["sd"] == pytest.approx(0.01)  # sd of 0.50, 0.51, 0.52
    assert "val_miou" in result["columns"] and "sd 0.01" in study.to_markdown(result)
    blocks = {"study": "blocks", "rows": [{"block": "ghost", "c": 8}], "columns": ["block", "c", "gflops"]}
    study.add_accuracy(blocks, lambda arch, seed: {"ghost": 0.3}[arch.block] if arch.width[0] == 8 else 0, seeds=1)
    assert blocks["rows"][0]["val_miou"] == 0.3 and blocks["seed_noise"]["sd"] is None


def test_cli_train_refuses_the_widths_study_and_a_bad_recipe_in_one_line(tmp_path, capsys):
    from lps_keras.study.__main__ import main

    assert main(["widths", "--train", "recipes/expand_camvid.json", "--output", str(tmp_path)]) == 2
    assert "--train: the widths study times single layers" in capsys.readouterr().err
    assert main(["blocks", "--train", str(tmp_path / "none.json"), "--output", str(tmp_path)]) == 2
    assert "none.json: recipe file not found" in capsys.readouterr().err


def test_blocks_study_times_the_default_targets_network_once():
    calls = []

    def noisy(arch):  # every call of the same network is 10% slower than the one before
        calls.append((arch.block, arch.width[0]))
        return gmacs_latency(arch) * (1.1 ** calls.count((arch.block, arch.width[0])))

    result = study.blocks_study(noisy, input_size=(64, 128), blocks=("conv3x3",))
    assert calls.count(("conv3x3", 16)) == 1
    assert result["rows"][0]["c"] == 16


def test_interactions_study_takes_the_paired_increase_and_its_se_from_a_set_measurement():
    import numpy as np

    from lps_keras.latency import SetMeasurement

    n = len(INTERACTION_TYPES)
    drift = np.array([[0.0], [5.0], [-3.0], [9.0]])  # machine load moves every network alike, round by round
    step = np.array([[0.2 * i for i in range(n)]])
    noise = np.zeros((4, n))
    noise[:, 1] = [0.1, -0.1, 0.1, -0.1]  # the second network's difference to none varies a little

    def set_fn(archs):
        assert archs[0].interaction == "none"
        return SetMeasurement(labels=[a.interaction for a in archs], parent=0, round_ms=10.0 + drift + step + noise,
                              backend="stub", precision="fp32", input_shape=(1, 64, 128, 3), device="cpu",
                              versions={}, threads={}, iters_per_round=1)

    result = study.interactions_study(set_fn, (64, 128))
    rows = result["rows"]
    assert rows[0]["increase_ms"] == 0 and rows[0]["increase_se_ms"] == 0
    assert rows[2]["increase_ms"] == pytest.approx(0.4) and rows[2]["increase_se_ms"] == 0  # drift cancelled
    assert rows[1]["increase_ms"] == pytest.approx(0.2) and rows[1]["increase_se_ms"] > 0
    assert "increase_se_ms" in study.to_markdown(result)


def test_tune_width_keeps_the_closest_c_it_timed_even_when_noise_breaks_monotony():
    law = {16: 26.4, 8: 7.2, 12: 17.6, 14: 19.7, 15: 28.7}  # measured on a loaded CPU: c=15 above c=16
    got = study.tune_width(lambda c: law.get(c, 3.0 * c), 26.4, c_max=256, known={16: 26.4})
    assert got["c"] == 16
