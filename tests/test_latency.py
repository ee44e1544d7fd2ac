"""Latency: stats on a tiny model, macs pseudo-backend, cache hit/miss, corrupt cache, foreign-device tables."""

import json
import warnings

import pytest

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


def test_unavailable_backends_and_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        lat.measure_latency(TINY, "openvino", SHAPE)
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
    data = json.loads(path.read_text())
    assert len(data["entries"]) == 3 and not list(tmp_path.glob(".cache.json.*"))


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
