"""Timing: ``measure_latency`` (one network), ``measure_set`` (a candidate set, paired) and ``latency_fn``.

Honest timing rules: warm-up runs (which include tracing, graph optimisation, engine building) are
never timed; every timed iteration ends with the result on the host; the median is the reported
figure. Which runner loads a network for a backend comes from the table in
:mod:`lps_keras.latency.backends`; the cache (:mod:`lps_keras.latency.cache`) only caches.

Paired measurement (:func:`measure_set`). A search step compares a parent with its candidates by
latency *differences* of a fraction of a millisecond, while the machine's load drifts by more
than that within minutes (N0 measured 0.81-1.14 ms within one hour at 360x480 on a 2-core CPU).
So the parent and all candidates are loaded once and timed interleaved in rounds: each round runs
every network (``iters_per_round`` timed calls, their median is the round's figure) in a freshly
shuffled order. Load that drifts slowly shifts every network of a round alike, so the per-round
differences to the parent cancel it; ΔL is the median of those differences and its uncertainty
comes from their spread across rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Optional, Union

import numpy as np

from lps_keras.arch import Arch
from lps_keras.errors import UsageError
from lps_keras.latency import artifacts as art
from lps_keras.latency.artifacts import ArtifactStore
from lps_keras.latency.backends import check_backend, check_precision, device_name, get_backend, library_versions
from lps_keras.latency.cache import LatencyCache
from lps_keras.latency.runners import Job, Loader, arch_of, artifact_store
from lps_keras.latency.stats import (
    LatencyCacheMiss,
    LatencyError,
    LatencyStats,
    time_loop,
)


@contextlib.contextmanager
def prepared(target, backend: str, input_shape, precision: str = "fp32", threads: Optional[int] = None,
             artifacts=None, convert=None, load=None):
    """``(run, thread_info)`` of ``target`` on ``backend``, ready to be timed (artefacts built and loaded)."""
    entry = get_backend(backend)
    if not entry.timed:
        raise LatencyError(f"the {backend} backend computes, it does not time")
    if backend != "tftrt" and not isinstance(target, (str, os.PathLike)):
        check_backend(backend, precision, converter=convert is None, runtime=load is None)
    with artifact_store(artifacts, target) as store:
        job = Job(target, backend, tuple(input_shape), precision, threads, store, convert, load)
        yield entry.runner(job)


def measure_latency(
    target,
    backend: str = "tf",
    input_shape=(1, 1024, 2048, 3),
    warmup: int = 5,
    iters: int = 20,
    precision: str = "fp32",
    threads: Optional[int] = None,
    cache: Optional[LatencyCache] = None,
    artifacts: Union[None, str, os.PathLike, art.ArtifactStore] = None,
    convert: Optional[art.Converter] = None,
    load: Optional[Loader] = None,
) -> LatencyStats:
    """Time one forward pass of ``target`` at ``input_shape`` (NHWC, float32; C = 3 for networks,
    any C for a single-operator model of the NAS latency table).

    What is timed is the official LPS-Net latency script's network: batch 1, float input,
    logits out (at the head's resolution); no pre-processing, argmax or softmax.

    Args:
        target: an :class:`Arch` (its deploy model with random weights: latency does not depend
            on weights), a Keras model (float32 normalised input -> logits), or a ready artefact:
            a SavedModel directory (tf, tftrt, openvino), an ``.onnx`` file (onnxruntime, openvino,
            tensorrt), an OpenVINO ``.xml`` or a TensorRT ``.engine``.
        backend: a name of the backend table (:func:`~lps_keras.latency.backends.describe_backends`
            lists them with their precisions): e.g. ``tf``, ``tf_session``, ``onnxruntime``, ``openvino``,
            ``litert``, ``tftrt``, ``tensorrt``, or ``macs`` (no timing: the network's GMACs, any family).
        precision: ``fp32``; ``bf16`` (tf, openvino: only where the CPU supports it) or
            ``fp16`` (tftrt, tensorrt). OpenVINO's hint is always set explicitly: its CPU
            plugin defaults to bf16 on CPUs that have it.
        threads: intra-op threads (TF: only if set before TF started; onnxruntime, openvino:
            per session / compiled model). The values in force are recorded in the stats.
        cache: a :class:`LatencyCache`; hit -> no measurement, miss -> measured and stored.
        artifacts: where converted artefacts of an :class:`Arch` are kept (a directory or an
            :class:`~lps_keras.latency.artifacts.ArtifactStore`); default beside ``cache``, else
            a temporary directory removed afterwards. Keras models and files always use a
            temporary one.
        convert: replaces the ``tftrt`` / ``tensorrt`` conversion step,
            ``convert(source, out, precision, input_shape)``: ``source`` is the static-shape
            SavedModel (tftrt) or ONNX file (tensorrt), ``out`` the path to write.
        load: replaces the step that turns the artefact into the timed call,
            ``load(artefact, input_shape, precision, threads) -> (run, thread_info)``.
    """
    entry = get_backend(backend)
    input_shape = tuple(int(v) for v in input_shape)
    # Any channel count: the NAS latency table times single operators on feature maps.
    if len(input_shape) != 4 or input_shape[-1] < 1:
        raise ValueError(f"input_shape must be (N, H, W, C), got {input_shape!r}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters!r}, warmup={warmup!r}")
    check_precision(backend, precision)
    arch = target if isinstance(target, Arch) else None
    if cache is not None and arch is not None:
        if artifacts is None and entry.artifact is not None:
            artifacts = art.ArtifactStore.beside(cache.path)
        return cache.get_or_measure(arch, backend, precision, input_shape, lambda: measure_latency(
            target, backend, input_shape, warmup=warmup, iters=iters, precision=precision, threads=threads,
            artifacts=artifacts, convert=convert, load=load), threads=threads)

    if not entry.timed:  # macs: computed, not measured
        macs, arch_hash = _analytic_macs(target, input_shape[1], input_shape[2])
        gmacs = input_shape[0] * macs / 1e9
        return LatencyStats.from_times([gmacs], backend="macs", precision=precision, input_shape=input_shape,
                                       device="analytic", versions=library_versions("macs"), threads={},
                                       warmup=0, arch_hash=arch_hash)
    with prepared(target, backend, input_shape, precision, threads, artifacts, convert, load) as (run, thread_info):
        times = time_loop(run, warmup, iters)
    arch = arch_of(target)
    return LatencyStats.from_times(times, backend=backend, precision=precision, input_shape=input_shape,
                                   device=device_name(backend), versions=library_versions(backend),
                                   threads=thread_info, warmup=warmup, arch_hash=arch.hash if arch else None)


def _analytic_macs(target, height: int, width: int) -> tuple[int, Optional[str]]:
    """(MACs, Arch hash or None) of an Arch, any family's config, or a model built from one."""
    arch = arch_of(target)
    if arch is not None:
        return arch.macs(height, width), arch.hash
    from lps_keras.families import FamilyError, config_of, family_of_config

    try:
        config = config_of(target) if hasattr(target, "layers") else target
        family = family_of_config(config)
    except FamilyError:
        raise LatencyError(f"the macs backend needs a model config (an Arch or a family's config) or a model "
                           f"built from one, not {type(target).__name__}") from None
    return family.summary(config, (height, width))["macs"], None


def latency_fn(
    backend: str = "tf",
    input_shape=(1, 1024, 2048, 3),
    warmup: int = 5,
    iters: int = 20,
    precision: str = "fp32",
    threads: Optional[int] = None,
    cache: Union[None, str, os.PathLike, LatencyCache] = None,
    device_key: Optional[str] = None,
    match_device: bool = True,
    measure: Optional[Callable] = None,
    verbose: bool = False,
    artifacts: Union[None, str, os.PathLike, ArtifactStore] = None,
    convert: Optional[Callable] = None,
    load: Optional[Callable] = None,
) -> Callable[[Arch], float]:
    """``arch -> latency`` (median ms; GMACs for ``backend="macs"``) through the cache.

    The backend is checked here, once (:func:`~lps_keras.latency.check_backend`): a machine
    without it gets one :class:`LatencyError` naming what is missing before the search starts.
    Converted artefacts (ONNX, OpenVINO IR, engines) go to ``artifacts``, by default
    ``<cache stem>_artifacts/`` beside the cache file, so a resumed search does not rebuild them.
    With ``device_key`` naming another machine (a table imported from it) a cache miss raises
    :class:`LatencyCacheMiss`, since measuring here would mix devices. ``measure`` replaces
    :func:`measure_latency` (tests); ``convert`` / ``load`` are passed to it.
    """
    if isinstance(cache, (str, os.PathLike)):
        cache = LatencyCache(cache, device_key=device_key, match_device=match_device)
    elif cache is not None and device_key is not None:
        cache.device_key = device_key
    input_shape = tuple(input_shape)
    if artifacts is None and cache is not None:
        artifacts = ArtifactStore.beside(cache.path)
    if measure is None and (device_key is None or device_key == device_name(backend)):
        check_backend(backend, precision, converter=convert is None, runtime=load is None)

    def fn(arch: Arch) -> float:
        def measure_here() -> LatencyStats:
            if cache is not None and device_key is not None and device_key != device_name(backend):
                raise LatencyCacheMiss(
                    f"{arch} ({arch.hash}) is not in latency table {cache.path} for device {device_key!r}, "
                    f"{backend}/{precision} {'x'.join(map(str, input_shape))}; measure it on that device")
            if measure is not None:
                return measure(arch, backend=backend, input_shape=input_shape, warmup=warmup, iters=iters,
                               precision=precision, threads=threads)
            return measure_latency(arch, backend=backend, input_shape=input_shape, warmup=warmup, iters=iters,
                                   precision=precision, threads=threads, artifacts=artifacts, convert=convert,
                                   load=load)

        # GMACs are computed, not measured: nothing to cache.
        use_cache = cache is not None and backend != "macs"
        if use_cache:
            stats = cache.get_or_measure(arch, backend, precision, input_shape, measure_here, threads=threads)
        else:
            stats = measure_here()
        if verbose and backend != "macs":
            print(f"latency {arch}: {stats.median_ms:.2f} ms ({backend}, {stats.device})", flush=True)
        return stats.median_ms

    fn.cache = cache
    fn.artifacts = artifacts
    return fn


# --------------------------------------------------------------------------- paired measurement of a set
#: A median of R normal samples has standard error ~ 1.2533 * sigma / sqrt(R); MAD * 1.4826 estimates sigma.
_MEDIAN_SE = 1.2533
_MAD_SIGMA = 1.4826


def _robust_sigma(x: np.ndarray, axis=0) -> np.ndarray:
    return _MAD_SIGMA * np.median(np.abs(x - np.median(x, axis=axis, keepdims=True)), axis=axis)


@dataclasses.dataclass
class SetMeasurement:
    """The result of :func:`measure_set`: per-round medians of every network, and what follows from them.

    ``round_ms[r, i]`` is network ``i``'s median over round ``r``'s timed calls. Per network:
    ``median_ms`` (over rounds), ``spread_ms`` (robust sigma over rounds: 1.4826 * MAD), ``delta_ms``
    (median over rounds of the difference to the parent's time in the same round) and ``delta_se_ms``
    (its standard error from the rounds' spread of differences; 0 for the parent itself).
    """

    labels: list
    parent: int
    round_ms: np.ndarray
    backend: str
    precision: str
    input_shape: tuple
    device: str
    versions: dict
    threads: dict
    iters_per_round: int

    @property
    def rounds(self) -> int:
        return int(self.round_ms.shape[0])

    @property
    def median_ms(self) -> np.ndarray:
        return np.median(self.round_ms, axis=0)

    @property
    def spread_ms(self) -> np.ndarray:
        return _robust_sigma(self.round_ms, axis=0)

    @property
    def deltas(self) -> np.ndarray:
        """``[rounds, n]``: each network's time minus the parent's, round by round."""
        return self.round_ms - self.round_ms[:, [self.parent]]

    @property
    def delta_ms(self) -> np.ndarray:
        return np.median(self.deltas, axis=0)

    @property
    def delta_se_ms(self) -> np.ndarray:
        return _MEDIAN_SE * _robust_sigma(self.deltas, axis=0) / np.sqrt(self.rounds)

    def stats(self, i: int, arch_hash: Optional[str] = None) -> LatencyStats:
        """Network ``i`` as a :class:`LatencyStats` over its per-round medians (for the cache and tables)."""
        return LatencyStats.from_times(self.round_ms[:, i], backend=self.backend, precision=self.precision,
                                       input_shape=self.input_shape, device=self.device, versions=self.versions,
                                       threads={**self.threads, "paired_rounds": self.rounds,
                                                "iters_per_round": self.iters_per_round},
                                       warmup=0, arch_hash=arch_hash)

    def to_dict(self) -> dict:
        return {"labels": [str(v) for v in self.labels], "parent": self.parent, "backend": self.backend,
                "precision": self.precision, "input_shape": list(self.input_shape), "device": self.device,
                "versions": self.versions, "threads": self.threads, "rounds": self.rounds,
                "iters_per_round": self.iters_per_round, "round_ms": self.round_ms.round(5).tolist(),
                "median_ms": self.median_ms.round(5).tolist(), "spread_ms": self.spread_ms.round(5).tolist(),
                "delta_ms": self.delta_ms.round(5).tolist(), "delta_se_ms": self.delta_se_ms.round(5).tolist()}

    def table(self) -> str:
        """One line per network: median, spread, ΔL ± SE against the parent."""
        lines = [f"{'network':40s} {'median ms':>10s} {'spread':>8s} {'dL ms':>9s} {'+-SE':>7s}"]
        for i, label in enumerate(self.labels):
            mark = " (parent)" if i == self.parent else ""
            lines.append(f"{(str(label) + mark)[:40]:40s} {self.median_ms[i]:10.3f} {self.spread_ms[i]:8.3f} "
                         f"{self.delta_ms[i]:+9.3f} {self.delta_se_ms[i]:7.3f}")
        return "\n".join(lines)


def measure_set(
    targets: Sequence,
    backend: str = "tf",
    input_shape=(1, 1024, 2048, 3),
    rounds: int = 10,
    iters_per_round: int = 5,
    warmup: int = 3,
    precision: str = "fp32",
    threads: Optional[int] = None,
    parent: int = 0,
    seed: int = 0,
    artifacts: Union[None, str, os.PathLike, ArtifactStore] = None,
    convert: Optional[art.Converter] = None,
    load: Optional[Loader] = None,
    runs: Optional[Sequence[Callable[[], object]]] = None,
    clock: Callable[[], float] = time.perf_counter,
    progress: Optional[Callable[[int, int], None]] = None,
) -> SetMeasurement:
    """Time ``targets`` (the parent at index ``parent`` and its candidates) interleaved in rounds.

    Every network is loaded once (artefacts built first, as :func:`measure_latency` does), warmed up
    untimed, then timed in ``rounds`` rounds; each round runs every network ``iters_per_round``
    times in a freshly shuffled order (``seed``), so slow load drift cancels in the per-round
    differences to the parent (module docstring). ``runs`` replaces loading with ready callables,
    one per target (tests; then ``targets`` are only labels), ``clock`` the timer, ``progress(r, R)``
    is called after each round.
    """
    n = len(targets)
    if n < 1:
        raise UsageError("measure_set needs at least one network")
    if not 0 <= parent < n:
        raise UsageError(f"parent index {parent!r} is not one of the {n} networks")
    if rounds < 2 or iters_per_round < 1 or warmup < 0:
        raise UsageError(f"need rounds >= 2, iters_per_round >= 1 and warmup >= 0, got rounds={rounds!r}, "
                         f"iters_per_round={iters_per_round!r}, warmup={warmup!r}")
    input_shape = tuple(int(v) for v in input_shape)
    entry = get_backend(backend)
    check_precision(backend, precision)
    if not entry.timed:
        raise LatencyError(f"the {backend} backend computes, it does not time: nothing to pair")
    rng = np.random.default_rng(seed)
    with contextlib.ExitStack() as stack:
        if runs is None:
            loaded = [stack.enter_context(prepared(t, backend, input_shape, precision, threads, artifacts, convert,
                                                   load)) for t in targets]
            runs = [run for run, _ in loaded]
            thread_info = loaded[0][1]
        else:
            if len(runs) != n:
                raise UsageError(f"measure_set: {len(runs)} runs for {n} targets")
            thread_info = {}
        for run in runs:  # tracing, graph optimisation, engine building: never timed
            for _ in range(max(warmup, 1)):
                run()
        round_ms = np.zeros((rounds, n))
        for r in range(rounds):
            for i in rng.permutation(n):
                times = []
                for _ in range(iters_per_round):
                    t0 = clock()
                    runs[i]()
                    times.append(clock() - t0)
                round_ms[r, i] = 1000.0 * float(np.median(times))
            if progress is not None:
                progress(r + 1, rounds)
    labels = [str(arch_of(t) or t) for t in targets]
    return SetMeasurement(labels=labels, parent=parent, round_ms=round_ms, backend=backend, precision=precision,
                          input_shape=input_shape, device=device_name(backend), versions=library_versions(backend),
                          threads=thread_info, iters_per_round=iters_per_round)
