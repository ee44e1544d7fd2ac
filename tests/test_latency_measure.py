"""measure_set: paired, interleaved timing of a parent and its candidates; drift cancels in ΔL."""

import numpy as np
import pytest

from lps_keras import latency as lat
from lps_keras.errors import UsageError


class FakeMachine:
    """A clock and networks whose cost is a fixed base time times the machine's load at that moment.

    The load drifts with every call (slowly, as a busy machine's does), so absolute times move by far
    more than the differences between networks.
    """

    def __init__(self, base_ms, drift_per_call=0.002, noise=0.0, seed=0):
        self.now = 0.0
        self.calls = 0
        self.base = np.asarray(base_ms, float) / 1000.0
        self.drift = drift_per_call
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def clock(self):
        return self.now

    def load(self):
        return 1.0 + self.drift * self.calls  # 1.0 at the start, 2.2 after 600 calls

    def run(self, i):
        def call():
            self.calls += 1
            self.now += self.base[i] * self.load() * (1.0 + self.noise * self.rng.standard_normal())
        return call


def test_drift_cancels_in_the_paired_differences():
    base = [1.0, 1.3, 1.0, 2.0]  # parent, +0.3 ms, same latency, +1.0 ms
    m = FakeMachine(base, drift_per_call=0.002)
    result = lat.measure_set(["parent", "a", "b", "c"], backend="tf", runs=[m.run(i) for i in range(4)],
                             rounds=30, iters_per_round=5, warmup=1, clock=m.clock)
    # Absolute times moved by more than 2x over the run (the load went from ~1.0 to ~2.2) ...
    assert result.round_ms[:, 0].max() / result.round_ms[:, 0].min() > 1.8
    # ... so each network's spread across rounds is large, while the paired ratio to the parent stays exact:
    # within one round all networks see (nearly) the same load.
    ratio = result.round_ms / result.round_ms[:, [0]]
    np.testing.assert_allclose(np.median(ratio, axis=0), np.asarray(base) / base[0], rtol=0.03)
    assert result.delta_ms[0] == 0 and result.delta_se_ms[0] == 0
    assert result.delta_ms[2] == pytest.approx(0.0, abs=0.03 * result.median_ms[0])  # same latency: dL ~ 0
    assert np.all(np.diff(result.delta_ms[[2, 1, 3]]) > 0)  # ordered as the true costs
    # The uncertainty of the difference is far below the spread of the absolute times.
    assert result.delta_se_ms[1] < 0.2 * result.spread_ms[1]


class AdditiveDrift:
    """Networks of fixed cost plus a load that adds the same time to every call of a round and changes between
    rounds by more than the networks differ (another process starting and stopping)."""

    def __init__(self, base_ms, offsets_ms):
        self.now = 0.0
        self.round = 0
        self.base = np.asarray(base_ms, float) / 1000.0
        self.offsets = np.asarray(offsets_ms, float) / 1000.0

    def clock(self):
        return self.now

    def next_round(self, done, total):  # measure_set's progress callback: called after each round
        self.round = done

    def run(self, i):
        def call():
            self.now += self.base[i] + self.offsets[min(self.round, len(self.offsets) - 1)]
        return call


def test_additive_drift_per_round_cancels_exactly_in_the_deltas():
    base = [1.0, 1.3, 1.0, 2.0]  # parent, +0.3 ms, same latency, +1.0 ms
    offsets = [0.0, 3.0, 0.5, 7.0, 2.0, 9.0, 1.0, 4.0, 6.0, 0.2]  # ms added to every call of round r
    m = AdditiveDrift(base, offsets)
    result = lat.measure_set(["parent", "a", "b", "c"], runs=[m.run(i) for i in range(4)], rounds=len(offsets),
                             iters_per_round=3, warmup=1, clock=m.clock, progress=m.next_round)
    # each round's times are the base plus that round's offset (the stub works as meant) ...
    np.testing.assert_allclose(result.round_ms, np.add.outer(offsets, base), atol=1e-9)
    # ... so the absolute times spread by ms, while dL and its standard error see none of it
    assert result.spread_ms.min() > 1.0
    np.testing.assert_allclose(result.delta_ms, np.asarray(base) - base[0], atol=1e-9)
    np.testing.assert_allclose(result.delta_se_ms, 0.0, atol=1e-9)


def test_without_drift_the_deltas_are_the_true_differences():
    base = [2.0, 2.5, 1.5]
    m = FakeMachine(base, drift_per_call=0.0)
    result = lat.measure_set(["p", "slower", "faster"], runs=[m.run(i) for i in range(3)], rounds=5,
                             iters_per_round=3, clock=m.clock)
    np.testing.assert_allclose(result.median_ms, base)
    np.testing.assert_allclose(result.delta_ms, [0.0, 0.5, -0.5], atol=1e-9)
    np.testing.assert_allclose(result.spread_ms, 0.0, atol=1e-9)
    np.testing.assert_allclose(result.delta_se_ms, 0.0, atol=1e-9)


def test_se_of_the_difference_follows_the_noise():
    base = [1.0, 1.2]
    m = FakeMachine(base, drift_per_call=0.0, noise=0.05, seed=1)
    result = lat.measure_set(["p", "c"], runs=[m.run(i) for i in range(2)], rounds=200, iters_per_round=1,
                             clock=m.clock, seed=3)
    # each round's difference has sd sqrt(0.05^2 * (1.0^2 + 1.2^2)) ms; the SE of its median ~ 1.2533 sd / sqrt(R)
    sd = 0.05 * np.sqrt(1.0 ** 2 + 1.2 ** 2)
    assert result.delta_se_ms[1] == pytest.approx(1.2533 * sd / np.sqrt(200), rel=0.25)
    assert result.delta_ms[1] == pytest.approx(0.2, abs=4 * result.delta_se_ms[1])


def test_every_round_runs_every_network_in_a_shuffled_order():
    order = []
    runs = [(lambda i=i: order.append(i)) for i in range(4)]
    lat.measure_set(list("pabc"), runs=runs, rounds=6, iters_per_round=1, warmup=0)
    timed = order[4:]  # one untimed warm-up call each first
    rounds = [timed[k:k + 4] for k in range(0, len(timed), 4)]
    assert all(sorted(r) == [0, 1, 2, 3] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not always the same order


def test_the_result_as_stats_and_a_table():
    m = FakeMachine([1.0, 1.5])
    result = lat.measure_set(["N0", "N0+depth"], runs=[m.run(0), m.run(1)], rounds=4, iters_per_round=2,
                             clock=m.clock, parent=0)
    stats = result.stats(1, arch_hash="abc")
    assert stats.median_ms == pytest.approx(result.median_ms[1]) and stats.iterations == 4
    assert stats.threads["paired_rounds"] == 4 and stats.arch_hash == "abc"
    d = result.to_dict()
    assert d["labels"] == ["N0", "N0+depth"] and len(d["round_ms"]) == 4 and d["delta_ms"][0] == 0
    assert "(parent)" in result.table().splitlines()[1]


@pytest.mark.parametrize("kw, match", [({"rounds": 1}, "rounds >= 2"), ({"parent": 3}, "parent index"),
                                       ({"backend": "macs"}, "computes")])
def test_bad_arguments(kw, match):
    args = {"runs": [lambda: None, lambda: None], **kw}
    with pytest.raises((UsageError, lat.LatencyError), match=match):
        lat.measure_set(["a", "b"], **args)


def test_real_backend_pairs_a_parent_and_a_candidate():
    """On the real tf runner: the parent and a deeper child are loaded once and timed in paired rounds."""
    from lps_keras.arch import EXPANSION_OPS_BY_NAME
    from lps_keras.presets import get_preset

    parent = get_preset("lps_tiny", num_classes=4)
    child = parent.expand(EXPANSION_OPS_BY_NAME["depth_s2-5"], 2)
    result = lat.measure_set([parent, child], backend="tf", input_shape=(1, 64, 128, 3), rounds=3,
                             iters_per_round=2, warmup=1)
    assert result.labels == [str(parent), str(child)] and result.round_ms.shape == (3, 2)
    assert np.all(result.round_ms > 0)
