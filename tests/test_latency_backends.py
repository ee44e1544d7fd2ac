"""The latency backend table: every entry complete, names shared with the recipe and CLI, one-entry extension."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lps_keras import latency as lat
from lps_keras.errors import UsageError
from lps_keras.latency import backends
from lps_keras.recipe_sections import SearchConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", backends.BACKEND_NAMES)
def test_every_entry_is_complete(name):
    entry = backends.get_backend(name)
    assert entry.name == name and entry.precisions and entry.summary
    assert entry.precisions[0] == "fp32"  # every backend times fp32; the default precision
    assert callable(entry.device) and callable(entry.versions) and isinstance(entry.settings(), dict)
    assert entry.timed == (entry.runner is not None)
    assert entry.requirements.startswith("requirements") and entry.requirements.endswith(".txt")
    assert (REPO / entry.requirements).is_file()
    if entry.artifact is not None:
        kind = lat.artifacts.get_artifact_kind(entry.artifact)
        assert kind.name == entry.artifact and kind.filename and kind.summary and callable(kind.stamp)


def test_the_recipe_and_the_cli_offer_the_tables_names():
    rule = next(f for f in dataclasses.fields(SearchConfig) if f.name == "latency_backend").metadata
    assert rule["choices"]() == backends.backend_names() == backends.BACKEND_NAMES  # read when checked
    help_text = subprocess.run([sys.executable, str(REPO / "expand.py"), "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=120).stdout
    assert "{" + ",".join(backends.BACKEND_NAMES) + "}" in help_text.replace("\n", "").replace(" ", "")
    # export.py's artefact precisions are those its backends time
    help_text = subprocess.run([sys.executable, str(REPO / "export.py"), "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=120).stdout.replace("\n", "").replace(" ", "")
    for flag in ("tftrt", "tensorrt"):
        assert f"--{flag}{{{','.join(backends.get_backend(flag).precisions)}}}" in help_text
    for flag in ("litert", "openvino"):
        assert f"eachPRECISIONin{{{','.join(backends.get_backend(flag).precisions)}}}" in help_text


def test_export_cli_choices_are_read_from_the_table(monkeypatch):
    """A backend's precisions changed in the table change what export.py accepts (not a copy of the list)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_cli", REPO / "export.py")
    export_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_cli)
    for flag in ("tftrt", "tensorrt", "litert", "openvino"):
        monkeypatch.setitem(backends._TABLE, flag, dataclasses.replace(backends.get_backend(flag),
                                                                      precisions=("fp32", "fp8")))
    args = export_cli.parse_args(["--recipe", "r.json", "--tftrt", "fp8", "--tensorrt", "fp8", "--litert", "fp8",
                                  "--openvino", "fp8"])
    assert (args.tftrt, args.tensorrt, args.litert, args.openvino) == ("fp8", "fp8", ["fp8"], ["fp8"])
    with pytest.raises(SystemExit):
        export_cli.parse_args(["--recipe", "r.json", "--tensorrt", "fp16"])  # no longer in the table
    from lps_keras.export import tensorrt

    for convert in (tensorrt.convert_tftrt, tensorrt.build_tensorrt_engine):  # refused before any TensorRT import
        with pytest.raises(UsageError, match=r"precision must be one of fp32, fp8, got .fp16."):
            convert("in", "out", "fp16")


def test_an_unknown_backend_is_refused_naming_the_known_ones():
    with pytest.raises(lat.LatencyError, match=r"unknown latency backend 'nope'; known: tf, tf_session, onnxruntime"):
        backends.get_backend("nope")
    with pytest.raises(ValueError):  # a bad value, as before the table
        lat.measure_latency(None, backend="nope")
    with pytest.raises(lat.LatencyError, match="fp16"):
        backends.check_backend("onnxruntime", "fp16")


def test_a_missing_package_names_the_requirements_file(monkeypatch):
    monkeypatch.setattr(backends, "_passed", set())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(lat.LatencyError, match=r"'onnxruntime' needs the onnxruntime package.*requirements\.txt"):
        backends.check_backend("onnxruntime")


def test_adding_a_backend_is_one_entry(monkeypatch, tmp_path):
    """A new runtime registered once is timed by measure_latency and measure_set like the built-in ones."""
    calls = []

    def runner(job):
        calls.append(job.backend)
        return (lambda: None), {"intra_op": 1}

    entry = backends.Backend("fake", ("fp32",), "a stand-in runtime", device=lambda: "CPU:fake", versions=lambda: {
        "fake": "1.0"}, runner=runner)
    monkeypatch.setitem(backends._TABLE, "fake", entry)
    from lps_keras.presets import get_preset

    stats = lat.measure_latency(get_preset("lps_tiny"), backend="fake", input_shape=(1, 32, 64, 3), warmup=0, iters=3)
    assert stats.backend == "fake" and stats.device == "CPU:fake" and stats.versions == {"fake": "1.0"}
    assert stats.iterations == 3 and calls == ["fake"]
    with pytest.raises(ValueError, match="incomplete"):
        backends.register_backend(dataclasses.replace(entry, name="broken", runner=None))
    # registered after import, it is a choice of the recipe (search and NAS sections) like the built-in ones
    from lps_keras.recipe import RecipeError, load_recipe

    recipe = load_recipe(REPO / "recipes" / "expand_synthetic.json",
                         ["search.latency_backend=fake", "nas.latency_backend=fake"])
    assert recipe.search.latency_backend == "fake" and recipe.nas.latency_backend == "fake"
    with pytest.raises(RecipeError, match=r"search.latency_backend: 'fakest' is not one of .*fake"):
        load_recipe(REPO / "recipes" / "expand_synthetic.json", ["search.latency_backend=fakest"])


def test_a_backend_with_its_own_artefact_kind_is_two_entries(monkeypatch, tmp_path):
    """A runtime timing a new kind of file: one kind entry (filename, stamp) and one backend entry; the store
    builds it once and rebuilds it when the kind's stamp changes. An unregistered kind is refused."""
    from lps_keras.latency import artifacts

    version = {"v": "1"}
    kind = artifacts.ArtifactKind("blob", "model.blob", "a stand-in artefact", lambda: {"blobber": version["v"]})
    monkeypatch.setitem(artifacts._KINDS, "blob", kind)
    monkeypatch.setitem(artifacts._FILENAMES, "blob", "model.blob")
    built = []

    def runner(job):
        path = job.artifact("blob", lambda out: (built.append(out), out.write_text("blob")))
        assert path.name == "model.blob" and path.read_text() == "blob"
        return (lambda: None), {"intra_op": 1}

    entry = backends.Backend("blobrt", ("fp32",), "a stand-in runtime on .blob files", device=lambda: "CPU:fake",
                             versions=lambda: {"blobrt": "1.0"}, artifact="blob", runner=runner)
    monkeypatch.setattr(backends, "_TABLE", dict(backends._TABLE))  # the registration is undone after the test
    backends.register_backend(entry)
    from lps_keras.arch import Arch

    arch = Arch((1, 1, 1, 1, 1), (4, 8, 8, 8, 8), (1.0, 0.5), num_classes=3)
    for _ in range(2):
        lat.measure_latency(arch, backend="blobrt", input_shape=(1, 32, 32, 3), warmup=0, iters=1, artifacts=tmp_path)
    assert len(built) == 1  # the second measurement reuses the stored artefact
    version["v"] = "2"
    lat.measure_latency(arch, backend="blobrt", input_shape=(1, 32, 32, 3), warmup=0, iters=1, artifacts=tmp_path)
    assert len(built) == 2  # made by another version of its tool: rebuilt
    with pytest.raises(ValueError, match="'blob2'.*not in the kind table"):
        backends.register_backend(dataclasses.replace(entry, name="blob2rt", artifact="blob2"))
    with pytest.raises(lat.LatencyError, match="unknown artefact kind 'blob2'"):
        artifacts.get_artifact_kind("blob2")
    with pytest.raises(ValueError, match="incomplete"):
        artifacts.register_artifact_kind(dataclasses.replace(kind, filename=""))


def test_describe_backends_lists_every_entry():
    text = backends.describe_backends()
    assert [line.split()[0] for line in text.splitlines()] == list(backends.BACKEND_NAMES)


def test_tf_session_times_the_savedmodel_as_tf_serving_runs_it(tmp_path):
    # The session executor on the static SavedModel: it runs and returns the serving output's shape.
    from lps_keras.arch import Arch
    from lps_keras.latency import measure_latency
    from lps_keras.latency.runners import load_savedmodel_session

    arch = Arch((1, 1, 1, 1, 1), (4, 8, 8, 8, 8), (1.0, 0.5), num_classes=3)
    stats = measure_latency(arch, backend="tf_session", input_shape=(1, 32, 32, 3), warmup=1, iters=2,
                            artifacts=tmp_path)
    assert stats.backend == "tf_session" and stats.median_ms > 0 and stats.iterations == 2
    saved = next(tmp_path.rglob("saved_model"))
    run, threads = load_savedmodel_session(saved, (1, 32, 32, 3), threads=1)
    (out,) = run()
    assert out.shape == (1, 2, 2, 3) and threads["intra_op"] == 1


def test_tf_backends_time_a_kernel_model_with_any_input_channels(tmp_path):
    # The kernel latency profile times single convolutions whose input has c_in channels, not 3: the
    # weights-as-constants form keeps the caller's whole (static) input shape.
    import keras

    from lps_keras.latency import measure_latency

    inputs = keras.Input((16, 16, 8), batch_size=1)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    for backend in ("tf", "tf_session"):
        stats = measure_latency(model, backend=backend, input_shape=(1, 16, 16, 8), warmup=1, iters=1,
                                artifacts=tmp_path)
        assert stats.median_ms > 0 and tuple(stats.input_shape) == (1, 16, 16, 8)


@pytest.mark.parametrize("value, expected", [(None, "default"), ("1", "on"), ("true", "on"), ("0", "off"),
                                             ("false", "off")])
def test_tf_latencies_are_keyed_by_the_onednn_setting_as_tensorflow_reads_it(monkeypatch, value, expected):
    from lps_keras.latency import library_versions

    if value is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", value)
    assert library_versions("tf")["onednn"] == expected and library_versions("tf_session")["onednn"] == expected
    try:
        assert "onednn" not in library_versions("litert")  # XNNPACK: not TensorFlow's CPU kernels
    except ImportError:
        pass


def test_runtime_settings_come_from_the_table_and_are_recorded_with_the_versions(monkeypatch):
    monkeypatch.setenv("LPS_ORT_SPINNING", "on")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert backends.runtime_settings("onnxruntime") == {"spinning": "on"}
    assert backends.runtime_settings("tf") == backends.runtime_settings("tf_session") == {"onednn": "off",
                                                                                           "weights": "constants"}
    assert backends.runtime_settings("openvino") == {} and backends.runtime_settings("litert") == {}
    pytest.importorskip("onnxruntime")
    versions = backends.library_versions("onnxruntime")
    assert versions["spinning"] == "on" and list(versions)[-1] == "spinning"  # the settings after the libraries


def test_onnxruntime_spinning_is_set_recorded_and_keyed(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import keras

    from lps_keras.latency import LatencyError, library_versions, measure_latency

    monkeypatch.setenv("LPS_ORT_SPINNING", "on")  # ONNX Runtime's own default
    assert library_versions("onnxruntime")["spinning"] == "on"
    monkeypatch.delenv("LPS_ORT_SPINNING", raising=False)  # off unless asked: measured steadier in paired rounds
    assert library_versions("onnxruntime")["spinning"] == "off"
    seen = []
    real = ort.InferenceSession

    def session(path, opts, **kw):
        seen.append(opts.get_session_config_entry("session.intra_op.allow_spinning"))
        return real(path, opts, **kw)

    monkeypatch.setattr(ort, "InferenceSession", session)
    inputs = keras.Input((16, 16, 3), batch_size=1)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    stats = measure_latency(model, backend="onnxruntime", input_shape=(1, 16, 16, 3), warmup=1, iters=1,
                            artifacts=tmp_path)
    assert seen == ["0"] and stats.threads["spinning"] == "off" and stats.versions["spinning"] == "off"
    monkeypatch.setenv("LPS_ORT_SPINNING", "sometimes")
    with pytest.raises(LatencyError, match=r"LPS_ORT_SPINNING: 'sometimes' is not 'on' or 'off'"):
        library_versions("onnxruntime")
