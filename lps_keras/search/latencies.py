"""Where the search's latencies come from: the one place that wires measurement, profiles and executors.

:func:`latency_functions` gives the two functions :class:`lps_keras.search.algorithm.Expansion` takes:

- ``latency_fn(arch) -> ms`` (GMACs for ``macs``): one network, through the persistent latency cache; it
  picks k and the target of a step;
- ``latency_set_fn(parent, archs) -> {hash: (latency, SE of the difference to the parent)}``: the parent
  and a step's candidates timed together in interleaved rounds (:func:`lps_keras.latency.measure.measure_set`),
  so slow drift of the machine cancels in the differences the verdict uses, and each difference carries
  its standard error. None when latencies are not timed (``macs``) or when ``rounds`` is 0. With a profile
  the latencies are predicted (deterministic; the function's ``deterministic`` attribute says so, and the k
  rule takes them as exact) and each difference of a step carries the profile's relative error applied to the
  work the step adds, ``sigma_rel * max dL`` over the step's candidates (:func:`lps_keras.latency.profile.sigma_rel`,
  the RMS relative error on its held-out networks, or on its leave-one-out rows). A candidate shares the
  parent's layers, whose errors cancel in its dL; what is left is the error on the added layers, which for
  the step's candidates (all grown towards one target) is at most of the size of the largest addition. Taking
  the step's largest dL rather than each candidate's own keeps a candidate predicted to add almost nothing
  from being trusted to add exactly that: its dL counts as "the same latency" unless it is beyond
  ``latency_z`` of that error. (The earlier ``sigma_rel * L_parent`` took the whole network's error for a
  difference: on the shipped OpenVINO profile, sigma_rel 12.9 %, every step-1 candidate from N0 fell within
  2 SE of its parent, so a profile search could only stop with "no gain".)

Measurements run where the executor says: here, or (a Ray executor with a ``latency_resource``) as tasks on
the node offering that resource, the cache staying with the driver keyed by that node's device name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from lps_keras.arch import Arch
from lps_keras.search.executors import ExecutorError


def profile_dl_se(sigma_rel: float, parent_latency: float, latencies) -> float:
    """The SE of every predicted dL of one step on a profile: ``sigma_rel`` x the step's largest |dL| (see the
    module docstring); the search's paired sets and the fidelity study's regret replay both use it."""
    return sigma_rel * max((abs(lat - parent_latency) for lat in latencies), default=0.0)


def latency_functions(backend: str, input_shape, *, warmup: int = 5, iters: int = 20, cache=None, executor=None,
                      device_key: Optional[str] = None, rounds: int = 0, iters_per_round: int = 5,
                      profile=None, verbose: bool = True, measure: Optional[Callable] = None,
                      measure_set: Optional[Callable] = None):
    """``(latency_fn, latency_set_fn or None)``; see the module docstring. ``measure`` / ``measure_set``
    replace :func:`~lps_keras.latency.measure_latency` / :func:`~lps_keras.latency.measure.measure_set` (tests)."""
    input_shape = tuple(input_shape)
    if profile is not None:
        from lps_keras.latency.profile import profile_latency_fn

        fn = profile_latency_fn(profile, backend, input_shape)

        def predicted(parent: Arch, archs: Sequence[Arch]) -> dict:
            base = fn(parent)
            lats = {arch.hash: fn(arch) for arch in archs}
            se = profile_dl_se(fn.sigma_rel, base, lats.values())
            return {parent.hash: (base, 0.0), **{h: (lat, se) for h, lat in lats.items()}}

        predicted.deterministic = True
        return fn, predicted
    from lps_keras.latency import LatencyCache, device_name, latency_fn, measure_latency
    from lps_keras.latency import measure as measuring

    remote = getattr(executor, "latency_resource", None) is not None
    on_device = executor.on_device if remote else (lambda fn, *a, **k: fn(*a, **k))
    if remote and device_key is not None:
        raise ExecutorError("--device-key and --latency-resource both say where latencies come from; use one")
    if remote:
        # The cache stays here, keyed by the device node's name (asked once): a rerun reuses it and another
        # device's numbers are never mixed in.
        cache = LatencyCache(cache, device_key=on_device(device_name, backend))
        single = latency_fn(backend=backend, input_shape=input_shape, warmup=warmup, iters=iters, cache=cache,
                            measure=lambda arch, **kw: on_device(measure or measure_latency, arch, **kw),
                            verbose=verbose)
    else:
        single = latency_fn(backend=backend, input_shape=input_shape, warmup=warmup, iters=iters,
                            cache=None if cache is None else str(cache), device_key=device_key,
                            match_device=device_key is None, measure=measure, verbose=verbose)
    if backend == "macs" or rounds == 0 or device_key is not None:
        return single, None  # computed, or taken from another device's table: nothing to time here
    measure_set = measure_set or measuring.measure_set
    artifacts = None if remote else getattr(single, "artifacts", None)  # where latency_fn keeps converted models

    def paired(parent: Arch, archs: Sequence[Arch]) -> dict:
        m = on_device(measure_set, [parent, *archs], backend=backend, input_shape=input_shape, rounds=rounds,
                      iters_per_round=iters_per_round, warmup=warmup, artifacts=artifacts)
        base = float(m.median_ms[m.parent])
        out = {parent.hash: (base, 0.0)}
        for i, arch in enumerate(archs, 1):
            out[arch.hash] = (base + float(m.delta_ms[i]), float(m.delta_se_ms[i]))
        if verbose:
            print(m.table(), flush=True)
        return out

    return single, paired
