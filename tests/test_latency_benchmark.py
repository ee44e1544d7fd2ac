"""benchmarks/latency.py: any family's preset gets its row (params and GMACs from the family's summary,
checked against the NDNet authors' count), and an unknown preset is one line, exit 2, before anything is timed."""

import json

from helpers import load_benchmark

from lps_keras.latency import LatencyStats


def test_a_family_preset_gets_its_row_and_a_bad_name_is_refused(tmp_path, monkeypatch, capsys):
    mod = load_benchmark("latency")
    timed = []

    def fake_measure(target, backend, shape, **kwargs):  # no timing here: the row's figures are the point
        timed.append((type(target).__name__, backend))
        return LatencyStats.from_times([2.0, 2.0], backend=backend, precision=kwargs["precision"],
                                         input_shape=shape, device="test", versions={}, threads={})

    monkeypatch.setattr("lps_keras.latency.measure_latency", fake_measure)
    out = tmp_path / "lat.json"
    assert mod.main(["--presets", "ndnet45", "--input-size", "64x64", "--runs", "1", "--columns", "tf_fp32",
                     "--num-classes", "19", "--output", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    # the authors' code counts 395,267 inference parameters for NDNet45's FCN32 at 19 classes (README table)
    assert row["preset"] == "ndnet45" and row["params"] == 395_267 and row["tf_fp32"] == 2.0
    assert timed == [("NDNetConfig", "tf")]
    assert mod.main(["--presets", "nope", "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "Traceback" not in err and not (tmp_path / "x.json").exists()
