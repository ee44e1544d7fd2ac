"""Latency: stats on a tiny model, every backend on an Arch (tftrt/tensorrt through injected converters),
cached artefacts, the start-up backend check, macs pseudo-backend, cache hit/miss, corrupt cache, foreign tables."""

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from helpers import savedmodel_constants

from lps_keras import latency as lat
from lps_keras.arch import Arch
from lps_keras.model import build_model

TINY = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), num_classes=19)
BIGGER = Arch((1, 1, 2, 2, 2), (4, 8, 16, 32, 32), (0.5,), num_classes=19)
SHAPE = (1, 64, 128, 3)


def _stub_stats(arch, median, device="CPU:test x2", backend="tf", shape=SHAPE, versions=None):
    return lat.LatencyStats.from_times([median - 1, median, median + 1], backend=backend, precision="fp32",
                                       input_shape=shape, device=device, versions=versions or {"tensorflow": "x"},
                                       threads={"intra_op": 2}, arch_hash=arch.hash)


def test_stats_from_times_formulae():
    s = _stub_stats(TINY, 10.0)
    assert (s.median_ms, s.mean_ms, s.min_ms, s.max_ms, s.iterations) == (10.0, 10.0, 9.0, 11.0, 3)
    assert s.p90_ms == pytest.approx(10.8)  # linear interpolation between 10 and 11
    assert lat.LatencyStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_measure_tf_on_tiny_model():
    stats = lat.measure_latency(TINY, "tf", SHAPE, warmup=2, iters=7, threads=2)
    assert stats.iterations == 7 and stats.backend == "tf" and stats.input_shape == SHAPE
    assert stats.min_ms <= stats.median_ms <= stats.max_ms and stats.min_ms <= stats.p90_ms <= stats.max_ms
    assert stats.min_ms > 0 and stats.arch_hash == TINY.hash
    assert "tensorflow" in stats.versions and stats.device
    assert stats.threads["intra_op"] in (0, 2)  # 2 if TF was not yet running, else the value in force
    model = build_model(TINY, deploy=True)
    again = lat.measure_latency(model, "tf", SHAPE, warmup=1, iters=3)
    assert again.iterations == 3 and again.arch_hash == TINY.hash


def test_measure_onnxruntime_records_threads():
    stats = lat.measure_latency(TINY, "onnxruntime", SHAPE, warmup=1, iters=3, threads=1)
    assert stats.threads["intra_op"] == 1 and "onnxruntime" in stats.versions
    assert stats.min_ms <= stats.median_ms <= stats.max_ms


def test_macs_backend_is_gmacs():
    s = lat.measure_latency(TINY, "macs", (2, 64, 128, 3))
    assert s.median_ms == pytest.approx(2 * TINY.macs(64, 128) / 1e9)
    fn = lat.latency_fn("macs", input_shape=(1, 1024, 2048, 3))
    assert fn(BIGGER) > fn(TINY) > 0
    # any family's config: TinyMRMS is 2.8 GFLOPs (read as MACs) at 768x1536 in the HMSeg paper
    from lps_keras.families import get_family

    tinymrms = get_family("mrms").config(preset="tinymrms", num_classes=19)
    assert lat.measure_latency(tinymrms, "macs", (1, 768, 1536, 3)).median_ms == pytest.approx(2.8, rel=0.05)
    with pytest.raises(lat.LatencyError, match="the macs backend needs a model config .* not str"):
        lat.measure_latency("model.onnx", "macs", (1, 64, 64, 3))


def test_unavailable_backends_and_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        lat.measure_latency(TINY, "nope", SHAPE)
    with pytest.raises(ValueError, match="input_shape"):
        lat.measure_latency(TINY, "tf", (64, 128, 3))
    from lps_keras.export import tftrt_status

    if not tftrt_status()[0]:
        with pytest.raises(lat.LatencyError, match="requirements-tftrt.txt"):
            lat.measure_latency("some/dir", "tftrt", SHAPE)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(lat.LatencyError, match="requirements-tensorrt.txt"):
            lat.measure_latency("m.onnx", "tensorrt", SHAPE)


def test_cache_hit_and_miss_through_latency_fn(tmp_path):
    calls = []

    def stub(arch, **kw):
        calls.append(arch.hash)
        return _stub_stats(arch, 5.0 if arch == TINY else 9.0, device=lat.device_name("tf"),
                           versions=lat.library_versions("tf"), shape=kw["input_shape"])

    path = tmp_path / "cache.json"
    fn = lat.latency_fn("tf", input_shape=SHAPE, cache=path, measure=stub)
    assert fn(TINY) == 5.0 and fn(TINY) == 5.0 and fn(BIGGER) == 9.0
    assert calls == [TINY.hash, BIGGER.hash]  # the second TINY call was a hit
    # A new process (new cache object) reads the file: no re-measurement.
    fn2 = lat.latency_fn("tf", input_shape=SHAPE, cache=path, measure=stub)
    assert fn2(TINY) == 5.0 and len(calls) == 2
    # Other input shape or precision is a different key.
    lat.latency_fn("tf", input_shape=(1, 32, 64, 3), cache=path, measure=stub)(TINY)
    assert len(calls) == 3
    # Another requested thread count is another measurement; the default setting keeps its old key.
    lat.latency_fn("tf", input_shape=SHAPE, cache=path, measure=stub, threads=1)(TINY)
    lat.latency_fn("tf", input_shape=SHAPE, cache=path, measure=stub, threads=1)(TINY)
    assert len(calls) == 4
    data = json.loads(path.read_text())
    assert len(data["entries"]) == 4 and not list(tmp_path.glob(".cache.json.*"))
    assert sum(k.endswith("|threads=1") for k in data["entries"]) == 1


def test_onnx_route_backends_key_what_wrote_the_graph():
    # tf2onnx, Keras and TensorFlow write the ONNX graph that onnxruntime, OpenVINO and TensorRT run.
    pytest.importorskip("tf2onnx")
    for backend in ("onnxruntime", "openvino"):
        versions = lat.library_versions(backend)
        assert {"tensorflow", "keras", "tf2onnx"} <= set(versions), (backend, versions)


def test_measure_latency_uses_cache(tmp_path):
    cache = lat.LatencyCache(tmp_path / "c.json")
    first = lat.measure_latency(TINY, "tf", SHAPE, warmup=1, iters=2, cache=cache)
    second = lat.measure_latency(TINY, "tf", SHAPE, warmup=1, iters=2, cache=cache)
    assert second == first  # identical numbers: read back, not re-measured


@pytest.mark.parametrize("content", ["{not json", json.dumps({"entries": [1, 2]}), json.dumps({"entries": {"k": {}}})])
def test_corrupt_cache_warns_and_starts_fresh(tmp_path, content):
    path = tmp_path / "cache.json"
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        cache = lat.LatencyCache(path)
    assert len(cache) == 0
    calls = []

    def stub(arch, **kw):
        calls.append(1)
        return _stub_stats(arch, 3.0, device=lat.device_name("tf"), versions=lat.library_versions("tf"))

    fn = lat.latency_fn("tf", input_shape=SHAPE, cache=cache, measure=stub)
    assert fn(TINY) == 3.0 and calls == [1]  # re-measured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(lat.LatencyCache(path)) == 1  # rewritten as valid JSON


def test_table_from_another_device(tmp_path):
    gpu = "GPU:NVIDIA H100 80GB HBM3"
    measured = lat.LatencyCache(tmp_path / "gpu.json")
    measured.store(TINY, _stub_stats(TINY, 1.25, device=gpu, versions={"tensorflow": "2.17.1"}))
    # Exact-key lookup on this CPU machine does not find the GPU entry ...
    here = lat.LatencyCache(tmp_path / "gpu.json")
    assert here.lookup(TINY, "tf", "fp32", SHAPE) is None
    # ... a device-independent lookup does, and so does naming the device.
    assert here.lookup(TINY, "tf", "fp32", SHAPE, match_device=False).median_ms == 1.25
    assert lat.LatencyCache(tmp_path / "gpu.json", device_key=gpu).lookup(TINY, "tf", "fp32", SHAPE).device == gpu
    assert lat.LatencyCache(tmp_path / "gpu.json", device_key="GPU:other").lookup(TINY, "tf", "fp32", SHAPE) is None

    def never(arch, **kw):
        raise AssertionError("must not measure on this machine")

    fn = lat.latency_fn("tf", input_shape=SHAPE, cache=tmp_path / "gpu.json", device_key=gpu, measure=never)
    assert fn(TINY) == 1.25
    with pytest.raises(lat.LatencyCacheMiss, match=BIGGER.hash):
        fn(BIGGER)
    # Importing the table into a local cache.
    local = lat.LatencyCache(tmp_path / "local.json")
    assert local.import_table(tmp_path / "gpu.json") == 1
    assert lat.LatencyCache(tmp_path / "local.json", match_device=False).lookup(TINY, "tf", "fp32", SHAPE)


# --------------------------------------------------------------------------- artefact backends
def _graph_ops(fn) -> list[str]:
    graph_def = fn.graph.as_graph_def()
    return [n.op for n in graph_def.node] + [n.op for f in graph_def.library.function for n in f.node_def]


def check_static_fused_savedmodel(path, arch, shape):
    """What a TF-TRT converter must be handed: a static-shape float SavedModel of the fused ``arch``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept referenced while the signature runs
    fn = loaded.signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    assert tuple(spec.shape) == shape and spec.dtype == tf.float32  # static: no None anywhere
    ops = _graph_ops(fn)
    assert "Conv2D" in ops and not [op for op in ops if "BatchNorm" in op]  # fused: BN folded into the convs
    # Analytic deploy params, held as graph constants (as export.py writes the network since issue 24).
    assert not fn.variables and sum(v.size for v in savedmodel_constants(path)) == arch.num_params()
    out = fn(**{name: tf.zeros(shape)})["logits"]
    assert tuple(out.shape) == (shape[0], *arch.output_size(*shape[1:3]), arch.num_classes)


def check_static_fused_onnx(path, arch, shape):
    """What a TensorRT builder must be handed: a static-shape ONNX file of the fused ``arch``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    (inp,) = model.graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == list(shape)
    assert all(d.HasField("dim_value") for d in inp.type.tensor_type.shape.dim)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    params = [i for n in model.graph.node if n.op_type == "Conv" for i in n.input[1:]]  # kernel (and bias)
    params += [i for n in model.graph.node if n.op_type == "Add" and set(n.input) & convs  # or a bias Add
               for i in n.input if i in inits]
    assert sum(inits[i].size for i in params) == arch.num_params()
    assert sum(n.op_type == "Conv" for n in model.graph.node) == arch.num_paths * sum(arch.depth) + 1


def _entries(store_dir):
    return sorted(p.name for p in store_dir.iterdir()) if store_dir.exists() else []


def test_tftrt_with_injected_converter_caches_the_converted_model(tmp_path):
    handed = []

    def stand_in(source, out, precision, input_shape):
        check_static_fused_savedmodel(source, TINY, SHAPE)
        handed.append((precision, input_shape))
        shutil.copytree(source, out)  # a plain SavedModel: what TF-TRT writes, minus the engines

    store = tmp_path / "artifacts"
    stats = lat.measure_latency(TINY, "tftrt", SHAPE, warmup=1, iters=3, precision="fp16", artifacts=store,
                                convert=stand_in)
    assert handed == [("fp16", SHAPE)]
    assert (stats.backend, stats.precision, stats.iterations, stats.arch_hash) == ("tftrt", "fp16", 3, TINY.hash)
    assert f"{TINY.hash}-tftrt-fp16-1x64x128x3" in _entries(store)

    def never(*args):
        raise AssertionError("a cached TF-TRT model was converted again")

    again = lat.measure_latency(TINY, "tftrt", SHAPE, warmup=1, iters=2, precision="fp16", artifacts=store,
                                convert=never)
    assert again.iterations == 2


def test_tensorrt_with_injected_builder_and_loader(tmp_path):
    built, loaded = [], []

    def builder(source, out, precision, input_shape):
        check_static_fused_onnx(source, TINY, SHAPE)
        built.append(precision)
        out.write_bytes(source.read_bytes())  # our "engine" is the ONNX file itself

    def loader(engine, input_shape, precision, threads):
        loaded.append(engine.name)
        return lat.load_onnxruntime(engine, input_shape, precision, threads)  # something the loop can run

    store = tmp_path / "artifacts"
    stats = lat.measure_latency(TINY, "tensorrt", SHAPE, warmup=1, iters=3, precision="fp16", artifacts=store,
                                convert=builder, load=loader)
    assert built == ["fp16"] and loaded == ["model.engine"] and stats.iterations == 3
    assert _entries(store) == [f"{TINY.hash}-onnx-fp32-1x64x128x3", f"{TINY.hash}-tensorrt-fp16-1x64x128x3"]
    lat.measure_latency(TINY, "tensorrt", SHAPE, warmup=0, iters=1, precision="fp16", artifacts=store,
                        convert=builder, load=loader)
    assert built == ["fp16"] and len(loaded) == 2  # engine reused, not rebuilt


def test_failed_conversion_leaves_nothing_and_names_arch_and_backend(tmp_path):
    def broken(source, out, precision, input_shape):
        out.write_bytes(b"half an engine")
        raise RuntimeError("out of workspace\nsecond line")

    store = tmp_path / "artifacts"
    with pytest.raises(lat.LatencyError) as info:
        lat.measure_latency(TINY, "tensorrt", SHAPE, artifacts=store, convert=broken, load=lat.load_onnxruntime)
    message = str(info.value)
    assert TINY.hash in message and "tensorrt" in message and "out of workspace" in message
    assert "\n" not in message
    assert _entries(store) == [f"{TINY.hash}-onnx-fp32-1x64x128x3"]  # the ONNX step had succeeded; no engine


def test_openvino_fp32_matches_onnx_and_sets_the_hint(tmp_path):
    import onnxruntime as ort
    import openvino as ov

    store = tmp_path / "artifacts"
    stats = lat.measure_latency(TINY, "openvino", SHAPE, warmup=1, iters=3, threads=1, artifacts=store)
    assert stats.threads["precision_hint"] == "f32" and stats.threads["intra_op"] == 1
    assert "openvino" in stats.versions
    # The IR keeps fp32 weights: it reproduces the ONNX artefact (onnxruntime) to float32 rounding.
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    onnx_path = store / f"{TINY.hash}-onnx-fp32-1x64x128x3" / "model.onnx"
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    ir = store / f"{TINY.hash}-openvino-fp32-1x64x128x3" / "model.xml"
    got = ov.Core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_openvino_times_the_graph_export_ships(tmp_path):
    """The latency backend converts the ONNX file to IR; export.py converts the network SavedModel. Both give
    the plugin the same executed graph (node kinds and counts, constants aside) and the same logits, so the
    latency a search reads is the shipped IR's."""
    import collections

    import openvino as ov

    from lps_keras.export.edge import convert_openvino, write_network_savedmodel
    from lps_keras.latency import artifacts as art
    from lps_keras.latency.runners import random_deploy_model

    model = random_deploy_model(TINY)
    art.write_onnx(model, SHAPE, tmp_path / "m.onnx")
    art.write_openvino_ir(tmp_path / "m.onnx", tmp_path / "latency.xml")
    shipped = convert_openvino(write_network_savedmodel(model, tmp_path / "sm", SHAPE[1:3]), "fp32")
    core = ov.Core()
    x = np.random.default_rng(2).normal(0, 1, SHAPE).astype(np.float32)
    graphs, logits = [], []
    for m in (core.read_model(str(tmp_path / "latency.xml")), shipped):
        compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
        graphs.append(collections.Counter(k for k in kinds if k != "Const"))
        logits.append(compiled(x)[0])
    assert graphs[0] == graphs[1] and graphs[0]["Convolution"] >= 5
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5 * np.abs(logits[1]).max())


def test_openvino_bf16_where_the_cpu_supports_it(tmp_path):
    from lps_keras.latency.backends import openvino_bf16_status

    supported, _ = openvino_bf16_status()
    if not supported:
        with pytest.raises(lat.LatencyError, match="bf16"):
            lat.measure_latency(TINY, "openvino", SHAPE, precision="bf16")
        return
    stats = lat.measure_latency(TINY, "openvino", SHAPE, warmup=1, iters=2, precision="bf16")
    assert stats.threads["precision_hint"] == "bf16" and stats.precision == "bf16"


def test_backend_check_is_one_line_naming_the_requirements(monkeypatch):
    from lps_keras.export import tftrt_status
    from lps_keras.latency import backends

    monkeypatch.setattr(backends, "_passed", set())
    if not tftrt_status()[0]:
        with pytest.raises(lat.LatencyError, match="requirements-tftrt.txt") as info:
            lat.check_backend("tftrt")
        assert "\n" not in str(info.value) and "2.18" in str(info.value)
        with pytest.raises(lat.LatencyError, match="requirements-tftrt.txt"):  # at creation, not at a candidate
            lat.latency_fn("tftrt", input_shape=SHAPE)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(lat.LatencyError, match=r"openvino.*requirements\.txt") as info:
        lat.latency_fn("openvino", input_shape=SHAPE)
    assert "\n" not in str(info.value)
    with pytest.raises(lat.LatencyError, match="fp16"):
        lat.check_backend("onnxruntime", "fp16")


def test_latency_fn_keeps_artefacts_beside_the_cache(tmp_path):
    calls = []

    def stand_in(source, out, precision, input_shape):
        calls.append(1)
        shutil.copytree(source, out)

    fn = lat.latency_fn("tftrt", input_shape=SHAPE, warmup=1, iters=2, cache=tmp_path / "lat.json", convert=stand_in)
    assert fn(TINY) > 0 and fn.artifacts.root == tmp_path / "lat_artifacts"
    assert f"{TINY.hash}-tftrt-fp32-1x64x128x3" in _entries(tmp_path / "lat_artifacts")
    (tmp_path / "lat.json").unlink()  # latency forgotten, artefact kept: re-timed without converting again
    lat.latency_fn("tftrt", input_shape=SHAPE, warmup=1, iters=2, cache=tmp_path / "lat.json", convert=stand_in)(TINY)
    assert calls == [1]


def test_artifact_store_rebuilds_only_for_other_versions(tmp_path):
    store = lat.ArtifactStore(tmp_path / "a")
    builds = []

    def build(out):
        builds.append(out.name)
        out.write_text("engine")

    first = store.get_or_build("h1", "net h1", "tensorrt", "fp16", SHAPE, build, {"tensorrt": "10.1"})
    assert store.get_or_build("h1", "net h1", "tensorrt", "fp16", SHAPE, build, {"tensorrt": "10.1"}) == first
    assert len(builds) == 1
    store.get_or_build("h1", "net h1", "tensorrt", "fp16", SHAPE, build, {"tensorrt": "10.2"})  # new TensorRT
    assert len(builds) == 2 and first.read_text() == "engine"
    meta = json.loads((first.parent / "meta.json").read_text())
    assert meta["stamp"] == {"tensorrt": "10.2"} and meta["input_shape"] == list(SHAPE)
    assert _entries(tmp_path / "a") == ["h1-tensorrt-fp16-1x64x128x3"]  # no staging or old copies left


def test_keras_model_on_every_cpu_backend_uses_no_persistent_store(tmp_path):
    model = build_model(TINY, deploy=True)
    for backend in ("onnxruntime", "openvino"):
        stats = lat.measure_latency(model, backend, SHAPE, warmup=1, iters=2, artifacts=tmp_path / "a")
        assert stats.arch_hash == TINY.hash and stats.backend == backend
    assert not (tmp_path / "a").exists()  # a model's weights/form are not keyed by its arch: temporary artefacts


def test_litert_times_an_arch_and_the_file_it_built(tmp_path):
    pytest.importorskip("ai_edge_litert")
    cache = lat.LatencyCache(tmp_path / "cache.json")
    sizes = {}
    for precision in ("fp32", "int8"):
        stats = lat.measure_latency(TINY, backend="litert", input_shape=SHAPE, warmup=1, iters=2,
                                    precision=precision, cache=cache)
        assert stats.backend == "litert" and stats.median_ms > 0 and "ai_edge_litert" in stats.versions
        (entry,) = (tmp_path / "cache_artifacts").glob(f"{TINY.hash}-litert-{precision}-*")
        sizes[precision] = (entry / "model.tflite").stat().st_size
    # int8 stores one byte per weight where fp32 stores four (plus graph overhead).
    assert sizes["int8"] < 0.6 * sizes["fp32"]
    # The artefact itself can be timed, and another input size is refused, not resized.
    tflite = next((tmp_path / "cache_artifacts").glob("*-litert-fp32-*")) / "model.tflite"
    assert lat.measure_latency(str(tflite), backend="litert", input_shape=SHAPE, warmup=1, iters=2).median_ms > 0
    with pytest.raises(lat.LatencyError, match="exported for input"):
        lat.measure_latency(str(tflite), backend="litert", input_shape=(1, 32, 64, 3), warmup=1, iters=1)


def test_openvino_int8_builds_a_quantised_ir(tmp_path):
    pytest.importorskip("nncf")
    store = tmp_path / "artifacts"
    stats = lat.measure_latency(TINY, "openvino", SHAPE, warmup=1, iters=2, precision="int8", artifacts=store)
    assert stats.precision == "int8" and stats.median_ms > 0
    xml = (store / f"{TINY.hash}-openvino-int8-1x64x128x3" / "model.xml").read_text()
    # NNCF inserts FakeQuantize nodes in front of the convolutions; the fp32 IR has none.
    assert xml.count('type="FakeQuantize"') >= 5
    lat.measure_latency(TINY, "openvino", SHAPE, warmup=1, iters=1, artifacts=store)
    assert 'type="FakeQuantize"' not in (store / f"{TINY.hash}-openvino-fp32-1x64x128x3" / "model.xml").read_text()


def test_cpu_flags_follow_proc_cpuinfo():
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = lat.cpu_flags()
    assert set(flags) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    for name, present in flags.items():
        assert present == (f" {name} " in text.replace("\n", " ") or f" {name}\n" in text)
    line = lat.cpu_flags_text()
    assert line.startswith("CPU:") and ("avx2" in line)
