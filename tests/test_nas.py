"""NAS engine and HMSeg's space: Gumbel sampling, latency table and loss, derivation, resume."""

import itertools
import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from lps_keras.families.mrms import MRMSConfig, summary
from lps_keras.families.mrms.model import build_mrms
from lps_keras.nas import NASError, TemperatureSchedule, get_space, gumbel_softmax
from lps_keras.nas.hmseg import HMSegSpace
from lps_keras.nas.latency_table import ExpectedLatency, LatencyTable, build_latency_table, cost_loss
from lps_keras.nas.space import CostTerm, Decision, OpSpec, SearchSpace

BASE = MRMSConfig(width_multiplier=0.25, head_channels=16, lge_reduction=2, num_classes=3)
SIZE = (64, 64)


def small_space():
    """HMSeg's space with fewer operators (fast to build); the full one is checked by count only."""
    return HMSegSpace(BASE, expansions=(1, 3), kernels=(3,))


def test_full_space_matches_the_paper():
    space = get_space("hmseg", base=MRMSConfig())
    decisions = space.decisions()
    blocks, ratios = decisions[:17], decisions[17:]
    assert all(set(d.options) >= {(e, k) for e in (1, 3, 6) for k in (3, 5, 7)} for d in blocks)
    assert sum("identity" in d.options for d in blocks) == 10  # the blocks with a same-shape shortcut
    assert [d.options for d in ratios] == [(0.4, 0.5, 0.6)] * 3
    with pytest.raises(NASError, match="unknown search space 'x'"):
        get_space("x")


def test_straight_through_forward_is_one_hot_and_gradient_is_soft():
    alpha = tf.Variable([0.3, -1.0, 2.0, 0.5])
    u = tf.constant([0.2, 0.7, 0.5, 0.9])
    c = tf.constant([1.0, -2.0, 0.5, 3.0])
    with tf.GradientTape(persistent=True) as tape:
        hard, soft = gumbel_softmax(alpha, 0.7, u)
        y_hard = tf.reduce_sum(hard * c)
        y_soft = tf.reduce_sum(soft * c)
    h = hard.numpy()
    assert sorted(h.tolist()) == [0.0, 0.0, 0.0, 1.0] and h.argmax() == soft.numpy().argmax()
    np.testing.assert_allclose(tape.gradient(y_hard, alpha), tape.gradient(y_soft, alpha), rtol=1e-6)
    # and the soft gradient by hand: d/da sum(c * softmax(z / tau)) = s * (c - s.c) / tau
    s = soft.numpy()
    np.testing.assert_allclose(tape.gradient(y_hard, alpha), s * (c.numpy() - s @ c.numpy()) / 0.7, rtol=1e-5)


def test_sampling_frequencies_approach_softmax_at_temperature_one():
    alpha = np.array([1.0, 0.0, -0.5, 0.7], np.float32)
    n = 20000
    u = np.random.default_rng(0).uniform(size=(n, 4)).astype(np.float32)
    hard, _ = gumbel_softmax(np.tile(alpha, (n, 1)), 1.0, u)
    freq = np.asarray(hard).mean(axis=0)
    p = np.exp(alpha) / np.exp(alpha).sum()
    assert np.abs(freq - p).max() < 4 * np.sqrt(p * (1 - p) / n).max()  # within 4 standard errors


def test_temperature_schedule():
    s = TemperatureSchedule(10.0, 0.1, 5)
    assert [round(s(i), 6) for i in range(6)] == [10.0, round(10 ** 0.5, 6), 1.0, round(10 ** -0.5, 6), 0.1, 0.1]
    with pytest.raises(NASError, match="temperature end must be a positive number, got 0"):
        TemperatureSchedule(10.0, 0)


def test_expected_latency_against_hand_computation():
    a, b, c = (OpSpec.of("op", (4, 4, 8), name=n) for n in "abc")
    table = LatencyTable("tf", {a.key: 2.0, b.key: 5.0, c.key: 7.0}, fixed_ms=1.0)
    # decision 0: {a, b}; decision 1: {c only if option 1}; c runs when d0 = 1 and d1 = 1
    terms = [CostTerm(a, ((0, 0),)), CostTerm(b, ((0, 1),)), CostTerm(c, ((0, 1), (1, 1)))]
    expected = ExpectedLatency(terms, table, [2, 2])
    p0, p1 = np.array([0.25, 0.75]), np.array([0.4, 0.6])
    want = 1.0 + 0.25 * 2.0 + 0.75 * 5.0 + 0.75 * 0.6 * 7.0
    assert float(expected([p0, p1])) == pytest.approx(want, rel=1e-6)
    assert float(cost_loss(expected([p0, p1]), 4.0)) == pytest.approx(abs(want / 4.0 - 1), rel=1e-6)
    with pytest.raises(NASError, match=r"no entry 'op\(name=d\)@4x4x8'"):
        table[OpSpec.of("op", (4, 4, 8), name="d")]


def test_hmseg_expected_latency_is_the_derived_networks_sum_for_one_hot_alphas():
    space = small_space()
    table = LatencyTable("tf", {s.key: float(i + 1) for i, s in enumerate(space.op_specs(SIZE))})
    decisions = space.decisions()
    expected = ExpectedLatency(space.cost_terms(SIZE), table, [len(d.options) for d in decisions])
    rng = np.random.default_rng(1)
    choice = [int(rng.integers(len(d.options))) for d in decisions]
    probs = [np.eye(len(d.options))[c] for d, c in zip(decisions, choice)]
    # by hand: walk the derived network's blocks at their input sizes
    config = space.derive_from_choices(choice)
    from lps_keras.families.mrms.config import backbone_blocks, level_size
    want = 0.0
    for blk in backbone_blocks(config):
        entry = blk.stride == 2
        if blk.resize:
            hw = [level_size(v, blk.stage - 1, config) for v in SIZE]
            want += table[OpSpec.of("resize", (*hw, blk.cin), scale=2 * blk.ratio)]
            hw = [level_size(v, blk.stage, config, resized=True) for v in SIZE]
        else:
            hw = [level_size(v, blk.stage - entry, config) for v in SIZE]
        want += table[OpSpec.of("ir", (*hw, blk.cin), cout=blk.cout, expansion=blk.hidden // blk.cin,
                                kernel=blk.kernel, stride=blk.stride)]
    assert float(expected(probs)) == pytest.approx(want, rel=1e-6)


def test_derive_known_answer():
    space = small_space()
    decisions = space.decisions()
    alphas = []
    for d in decisions:
        a = np.zeros(len(d.options))
        if d.name.startswith("branch"):
            a[{"branch3_ratio": 1, "branch4_ratio": 0, "branch5_ratio": 2}[d.name]] = 1.0
        elif "identity" in d.options and d.name in ("stage3_block3", "stage4_block4"):
            a[d.options.index("identity")] = 1.0
        else:
            a[d.options.index((3, 3))] = 1.0
        alphas.append(a)
    config = space.derive(alphas)
    blocks = [{"expansion": 3, "kernel": 3}] * 17
    blocks[5] = blocks[9] = "identity"  # stage3_block3 and stage4_block4
    assert config == MRMSConfig.from_dict({**BASE.to_dict(), "blocks": blocks, "branch_ratios": [0.5, 0.4, 0.6]})
    model = build_mrms(config, input_shape=(*SIZE, 3))
    names = {layer.name for layer in model.layers}
    assert "stage3_block3_dw" not in names and "stage4_block1_resize" in names and "stage3_block1_resize" not in names
    assert summary(config, SIZE)["params"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    loaded = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert loaded.family_config == config
    with pytest.raises(NASError, match="expected 20 alpha vectors, got 1"):
        space.derive(alphas[:1])


def test_hand_designed_config_is_unchanged():
    assert MRMSConfig().to_dict() == {"width_multiplier": 1.0, "head_channels": 160, "lge": True,
                                      "lge_reduction": 4, "num_classes": 19}
    assert MRMSConfig(branch_ratios=[0.5] * 3, blocks=None) != MRMSConfig()  # explicit, though the same net
    with pytest.raises(Exception, match=r"blocks\[0\] \(stage1_block1\) changes stride or width"):
        MRMSConfig(blocks=["identity"] + [{"expansion": 6, "kernel": 3}] * 16)


class Stub:
    def __init__(self):
        self.calls = []

    def __call__(self, model, backend, input_shape, **kwargs):
        self.calls.append((model.name, backend, tuple(input_shape)))
        assert tuple(model.input.shape[1:]) == tuple(input_shape[1:])
        return types.SimpleNamespace(median_ms=0.5 + len(self.calls))


def test_latency_table_builder_with_a_stub(tmp_path):
    space = small_space()
    stub = Stub()
    path = tmp_path / "table.json"
    specs = space.op_specs(SIZE)
    table = build_latency_table(space, SIZE, "onnxruntime", measure=stub, path=path, iters=3)
    assert len(stub.calls) == len(specs) and set(table.entries) == {s.key for s in specs}
    assert {c[1] for c in stub.calls} == {"onnxruntime"}
    data = json.loads(path.read_text())
    assert data["backend"] == "onnxruntime" and data["entries"][specs[0].key] == 1.5
    # a rerun continues: nothing measured twice; a half-built table is completed
    del data["entries"][specs[-1].key]
    path.write_text(json.dumps(data))
    again = Stub()
    rebuilt = build_latency_table(space, SIZE, "onnxruntime", measure=again, path=path)
    assert rebuilt.entries.keys() == table.entries.keys()
    assert len(again.calls) == 1
    with pytest.raises(NASError, match="the table is for backend 'onnxruntime', not 'tf'"):
        LatencyTable.load(path, backend="tf")
    # A half-built table from another machine is not continued here (two devices' timings in one table) ...
    data = json.loads(path.read_text())
    data["device"] = "CPU: some other machine"
    path.write_text(json.dumps(data))
    assert build_latency_table(space, SIZE, "onnxruntime", measure=Stub(), path=path).device == data["device"]
    del data["entries"][specs[0].key]
    path.write_text(json.dumps(data))
    with pytest.raises(NASError, match=r"partial latency table measured on 'CPU: some other machine'.*1 operator\(s\)"):
        build_latency_table(space, SIZE, "onnxruntime", measure=Stub(), path=path)


def test_a_latency_table_records_its_runtime_settings_and_warns_when_used_with_others(tmp_path, monkeypatch):
    """As a latency profile does: onnxruntime's thread spinning recorded with the table; loaded where it
    differs, a UserWarning names the setting (not refused: the table describes the settings it records)."""
    import warnings

    monkeypatch.setenv("LPS_ORT_SPINNING", "off")
    path = tmp_path / "table.json"
    build_latency_table(small_space(), SIZE, "onnxruntime", measure=Stub(), path=path)
    assert json.loads(path.read_text())["versions"]["spinning"] == "off"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(path)  # the same settings: silent
    monkeypatch.setenv("LPS_ORT_SPINNING", "on")
    with pytest.warns(UserWarning, match=r"table.json: measured with onnxruntime spinning='off' \(here 'on'\)"):
        assert LatencyTable.load(path).versions["spinning"] == "off"


def test_operators_are_timed_in_the_form_whole_networks_are_timed_in(tmp_path):
    """The calibration subtracts the operators' sum from a whole network timed fused with random biases
    (random_deploy_model); each operator is timed in that form: no BN, nonzero biases, and the output of the
    training-form operator once its BNs are folded."""
    space = HMSegSpace(BASE, expansions=(3,), kernels=(5,))
    spec = next(s for s in space.op_specs(SIZE) if s.kind == "ir" and s.param("stride") == 1
                and s.input_shape[-1] == s.param("cout"))  # a block with its shortcut: every part runs
    deploy = space.op_model(spec)
    block = deploy.get_layer("op")
    parts = ("expand", "dw", "project")
    assert all(getattr(block, p).bn is None for p in parts)
    assert not any(("gamma" in v.path or "moving" in v.path) for v in deploy.weights)
    biases = [v for v in deploy.weights if v.path.endswith("bias")]
    assert len(biases) == 3 and all(np.all(np.asarray(b) != 0) for b in biases)

    train = space.op_model(spec, deploy=False)
    trained = train.get_layer("op")
    rng = np.random.default_rng(0)
    for p in parts:  # trained-like statistics (fresh BNs are the identity and would hide a bad fold)
        bn = getattr(trained, p).bn
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                        rng.uniform(0.5, 2.0, c)])
        kernel, bias = getattr(trained, p).fused_kernel_bias()
        getattr(block, p).conv.set_weights([kernel.astype("float32"), bias.astype("float32")])
    x = rng.normal(size=(2, *spec.input_shape)).astype("float32")
    ref = np.asarray(train(x, training=False), np.float64)
    np.testing.assert_allclose(np.asarray(deploy(x), np.float64), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    path = tmp_path / "old.json"  # a table of the earlier, unfused operators is not read as this one
    path.write_text(json.dumps({"format": 1, "backend": "tf", "entries": {}}))
    with pytest.raises(NASError, match=r"old.json: a latency table of format 1 \(operators timed unfused"):
        LatencyTable.load(path)


def make_search(space, table, seed=0):
    from lps_keras.nas.search_tf import Search

    def loss(labels, logits):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    keras.utils.set_random_seed(seed)
    return Search(space, table, SIZE, budget_ms=10.0, loss_fn=loss,
                  weight_optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  arch_optimizer=keras.optimizers.Adam(0.05), schedule=TemperatureSchedule(10.0, 0.1, 6),
                  cost_weight=1.0, seed=seed)


def data(step):
    rng = np.random.default_rng(step)
    return (rng.normal(size=(2, *SIZE, 3)).astype("float32"), rng.integers(0, 3, size=(2, *SIZE)).astype("int32"))


@pytest.fixture
def eager():
    """Run the search step eagerly: resume is about state, and tracing the supernet twice cost 90 s of CI."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def test_search_resumes_from_the_saved_step(tmp_path, eager):
    space = small_space()
    table = LatencyTable("tf", {s.key: 1.0 + 0.01 * i for i, s in enumerate(space.op_specs(SIZE))})
    ckpt = tmp_path / "search.npz"
    first = make_search(space, table)
    before = first.alphas()
    assert first.run(data, 4, checkpoint=ckpt, every=2) == 4
    saved = first.alphas()
    assert any(not np.array_equal(a, b) for a, b in zip(before, saved))  # the alphas moved
    assert np.isfinite(first.last["loss"])
    # "killed" after step 4: a fresh process-like search (other initial weights) resumes there
    second = make_search(space, table, seed=0)
    for v in second.supernet.trainable_variables:
        v.assign(tf.zeros_like(v))
    steps = []
    second.run(data, 6, checkpoint=ckpt, every=2, on_step=lambda s, _: steps.append(s))
    assert steps == [5, 6]
    third = make_search(space, table)
    assert third.restore(ckpt) == 6
    # the restored alphas are the saved ones; the step-4 state reloads identically too
    for a, b in zip(third.alphas(), second.alphas()):
        np.testing.assert_array_equal(a, b)
    assert isinstance(third.derive(), MRMSConfig)
    # the first search, continued without a stop, lands on the same alphas (same seeds, same batches)
    first.run(data, 6)
    for a, b in zip(first.alphas(), second.alphas()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(NASError, match="seed 0, this search has seed 1"):
        make_search(space, table, seed=1).restore(ckpt)


class _ToySupernet(keras.Model):
    """One decision, conv or skip, on 3-channel maps (3 classes), and a learned gain on the alphas."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(3, 3, padding="same")
        self.alphas = [self.add_weight(name="alpha_edge0", shape=(2,), initializer="zeros")]
        self.gain = self.add_weight(name="gcn_gain", shape=(), initializer="ones")

    def call(self, images, samples, training=False):
        s = samples[0]
        return s[0] * self.conv(images) + s[1] * images


class _Toy(SearchSpace):
    """A cell-style space whose logits are a learned map of the alphas (as LGCNet's GCN is)."""

    name = "toy"

    def decisions(self):
        return [Decision("cell0_edge0", ("conv", "skip"))]

    def cost_terms(self, input_size):
        return [CostTerm(OpSpec.of("conv", (*input_size, 3)), ((0, 0),))]

    def op_model(self, spec):
        x = keras.Input(spec.input_shape)
        return keras.Model(x, keras.layers.Conv2D(3, 3, padding="same")(x))

    def build_supernet(self, **kwargs):
        return _ToySupernet()

    def arch_variables(self, supernet):
        return [*supernet.alphas, supernet.gain]

    def logits(self, supernet, alphas):
        return [supernet.gain * a + keras.ops.convert_to_tensor([0.0, 0.5]) for a in alphas]

    def derive_from_choices(self, choices):
        return list(choices)


def test_a_second_space_needs_no_engine_change():
    from lps_keras.nas.search_tf import Search

    table = build_latency_table(_Toy(), (8, 8), measure=Stub())
    assert _Toy().derive([[0.1, 0.9]]) == [1] and list(table.entries) == ["conv()@8x8x3"]
    assert list(itertools.islice(table.entries.values(), 1)) == [1.5]

    def loss(labels, logits):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    keras.utils.set_random_seed(0)
    search = Search(_Toy(), table, (8, 8), budget_ms=0.5, loss_fn=loss,
                    weight_optimizer=keras.optimizers.SGD(0.01), arch_optimizer=keras.optimizers.SGD(0.1),
                    schedule=TemperatureSchedule(1.0, 0.5, 3), seed=0, run_eagerly=True)
    # the engine sees the space's logits: zero alphas + the bias [0, 0.5] -> "skip", and the expected latency
    # weighs the conv's 1.5 ms by softmax([0, 0.5])[0]
    assert search.derive() == [1]
    assert float(search.expected_latency()) == pytest.approx(1.5 / (1 + np.exp(0.5)), rel=1e-5)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 8, 8)).astype("int32")
    assert search.run(lambda step: (images, labels), 3) == 3
    assert float(search.supernet.gain) != 1.0  # the map's weight is trained by the architecture optimiser
    assert search.alphas()[0] == pytest.approx(float(search.supernet.gain) * np.asarray(search.supernet.alphas[0])
                                               + np.array([0.0, 0.5]))


def test_too_small_input_is_refused():
    with pytest.raises(NASError, match=r"input_size \(32, 32\) is too small: stage5_block1 would get a 0x0 map"):
        small_space().cost_terms((32, 32))
