"""Training: schedule and optimizer against hand formulas, short runs, resume after SIGKILL, NaN stop,
MirroredStrategy parity and CLI errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# TF 2.21's oneDNN CPU kernels crash in the backward pass of strided 1x1 convs (see train.py).
# Eigen kernels: bit-stable numerics for the resume/parity comparisons (oneDNN reorders sums).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lps_keras.recipe import Recipe, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _env():
    env = dict(os.environ)
    env.update({"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
                "CUDA_VISIBLE_DEVICES": ""})
    return env


def _tiny_overrides(root, iterations=30, val=10, ckpt=10, log=5, batch=4):
    """Demo recipe on a tiny synthetic set: 64x128 images, 64x64 crops."""
    return [
        f"data.root={root}", "data.synthetic.num_train=24", "data.synthetic.num_val=6",
        "data.synthetic.height=64", "data.synthetic.width=128", "data.augment.crop_size=[64,64]",
        f"train.iterations={iterations}", f"train.val_interval={val}", f"train.checkpoint_interval={ckpt}",
        f"train.log_interval={log}", f"train.batch_size={batch}", "train.image_summaries=1", "eval.batch_size=2",
    ]


# --------------------------------------------------------------------------- in-memory data
def _stripes(n, seed, size=32, num_classes=3):
    """Two vertical stripes per image whose class is readable from the colour: a learnable toy task."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.int32)
    images = rng.normal(size=(n, size, size, 3)).astype("float32") * 0.3
    for i in range(n):
        a = int(rng.integers(0, num_classes))
        b = (a + 1) % num_classes
        labels[i, :, : size // 2], labels[i, :, size // 2 :] = a, b
        images[i, :, : size // 2, a % 3] += 1.5
        images[i, :, size // 2 :, b % 3] += 1.5
    labels[:, :2] = 255
    return images, labels


@pytest.fixture
def stub_data(monkeypatch):
    """Replace ``lps_keras.data.build_dataset`` by an in-memory toy set (3 classes, 32x32)."""

    for target, name, value in toy_patches():
        monkeypatch.setattr(target, name, value, raising=False)
    return toy_build_dataset


def toy_patches():
    import lps_keras.data

    return [
        (lps_keras.data, "build_dataset", toy_build_dataset),
        (lps_keras.data, "check_split", lambda *a, **k: 0),  # no files to check
        # The toy set has 3 classes, not the 19 of the recipe's dataset.
        (Recipe, "check_classes_cover_dataset", lambda self: None),
    ]


def install_toy_data():
    """What the fixture does, for the subprocess drivers (no monkeypatch there)."""
    for target, name, value in toy_patches():
        setattr(target, name, value)


def toy_build_dataset(recipe, split, training, batch_size=None, skip_examples=0):
    """Stand-in for ``lps_keras.data.build_dataset``: the toy set, seeded, resumable like the real one."""
    import tensorflow as tf

    images, labels = _stripes(16, 0 if training else 1)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(16, seed=recipe.train.seed, reshuffle_each_iteration=True).repeat().skip(skip_examples)
    return ds.batch(batch_size or 4)


def _stub_recipe(tmp_path, *extra):
    return load_recipe(REPO / "recipes" / "demo.json", [
        "model.num_classes=3", "train.batch_size=4", "train.log_interval=5", "train.image_summaries=1",
        f"train.run_dir={tmp_path / 'run'}", *extra,
    ])


# --------------------------------------------------------------------------- (f) schedule / optimizer
def test_poly_schedule_matches_numpy_formula():
    from lps_keras.train import PolyLR

    sched = PolyLR(0.01, 1000, power=0.9)
    steps = np.array([0, 1, 10, 500, 999, 1000, 1200])
    got = np.array([float(sched(s)) for s in steps])
    want = 0.01 * (1 - np.minimum(steps, 1000) / 1000) ** 0.9
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)  # float32 arithmetic
    warm = PolyLR(0.01, 1000, power=0.9, warmup_steps=10)
    np.testing.assert_allclose(float(warm(4)), 0.01 * (1 - 4 / 1000) ** 0.9 * 5 / 10, rtol=1e-5)
    again = PolyLR.from_config(warm.get_config())
    assert float(again(4)) == pytest.approx(float(warm(4)))


def test_step_schedule_is_the_ndnet_authors_rule_and_a_recipe_selects_it(tmp_path):
    from lps_keras.recipe import RecipeError
    from lps_keras.train import PolyLR, StepLR
    from lps_keras.train.optim import training_schedule

    # Seg_NDNet/train.py: lr = 0.1 while (step + 1) < 35000, 0.01 while < 60000, 0.001 while < 80000, else 0.0005
    def authors(step):
        return 0.1 if step + 1 < 35000 else 0.01 if step + 1 < 60000 else 0.001 if step + 1 < 80000 else 0.0005

    sched = StepLR(0.1, (35000, 60000, 80000), (0.1, 0.01, 0.005))
    for step in (0, 34998, 34999, 35000, 59998, 59999, 79999, 99999):
        assert float(sched(step)) == pytest.approx(authors(step), rel=1e-6), step
    assert float(StepLR.from_config(sched.get_config())(59999)) == pytest.approx(0.001)
    recipe = _stub_recipe(tmp_path, "train.lr_schedule=step", "train.lr_steps=[100,200]",
                          "train.lr_step_factors=[0.1,0.01]")
    assert float(training_schedule(recipe.train, 300)(150)) == pytest.approx(recipe.train.base_lr * 0.1)
    assert isinstance(training_schedule(_stub_recipe(tmp_path).train, 300), PolyLR)
    with pytest.raises(RecipeError, match=r"train\.lr_steps: lr_schedule 'step' needs lr_steps and lr_step_factors"):
        _stub_recipe(tmp_path, "train.lr_schedule=step", "train.lr_steps=[100,200]", "train.lr_step_factors=[0.1]")
    with pytest.raises(RecipeError, match=r"train\.lr_steps: must increase, got \[200, 100\]"):
        _stub_recipe(tmp_path, "train.lr_schedule=step", "train.lr_steps=[200,100]", "train.lr_step_factors=[1,1]")
    with pytest.raises(RecipeError, match=r"train\.lr_steps: given, but train\.lr_schedule is 'poly'"):
        _stub_recipe(tmp_path, "train.lr_steps=[100]")


def test_torch_sgd_coupled_weight_decay_matches_hand_computed_steps():
    from lps_keras.train import TorchSGD

    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.array([0.1, 0.2, -0.3], np.float32), np.array([-0.4, 0.0, 0.25], np.float32)]
    lr, mu, wd = 0.1, 0.9, 0.01
    var = keras.Variable(w0.copy())
    opt = TorchSGD(learning_rate=lr, momentum=mu, l2=wd)
    # torch.optim.SGD: d = g + wd * w; buf = mu * buf + d (buf = d at first); w -= lr * buf
    w, buf = w0.astype(np.float64), np.zeros(3)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        d = g + wd * w
        buf = mu * buf + d
        w = w - lr * buf
        np.testing.assert_allclose(np.asarray(var), w, rtol=1e-6)
    assert int(opt.iterations) == 2
    # Not Keras' decoupled decay: that would give a different second step.
    assert TorchSGD.from_config(opt.get_config()).l2 == wd


# --------------------------------------------------------------------------- (e) CLI errors
def test_cli_missing_recipe_and_bad_key(tmp_path):
    missing = tmp_path / "nope.json"
    r = subprocess.run([PY, "train.py", "--recipe", str(missing)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "nope.json" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr

    r = subprocess.run([PY, "train.py", "--recipe", "recipes/demo.json", "--set", "train.batchsize=4"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "train.batchsize" in r.stderr and "Traceback" not in r.stderr

    r = subprocess.run([PY, "evaluate.py", "--recipe", "recipes/demo.json", "--weights", str(tmp_path / "w.keras")],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "w.keras" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- short runs (in-memory data)
def test_short_run_writes_run_dir_and_learns(tmp_path, stub_data):
    from lps_keras.metrics import evaluate_predictions
    from lps_keras.model import build_model
    from lps_keras.train import train

    recipe = _stub_recipe(tmp_path, "train.iterations=20", "train.val_interval=10", "train.checkpoint_interval=5")
    keras.utils.set_random_seed(recipe.train.seed)
    untrained = build_model(recipe.arch())
    before = evaluate_predictions(lambda x: untrained(x, training=False), stub_data(recipe, "val", False, 4), 3,
                                  progress=False).miou
    out = train(recipe, verbose=0)
    run = Path(out["run_dir"])
    for name in ("recipe.json", "environment.json", "best.keras", "last.keras", "deploy.keras", "metrics.json",
                 "state.json", "train_log.jsonl", "backup/latest.weights.h5"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_step"] == 20 and metrics["miou"] == pytest.approx(out["miou"])
    assert out["miou"] > before + 0.2, (before, out["miou"])
    assert out["deploy_parity_max_rel_error"] < 1e-4
    assert [h["step"] for h in out["history"]] == [10, 20]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    assert log[-1]["loss"] < log[0]["loss"]
    assert json.loads((run / "recipe.json").read_text())["train"]["iterations"] == 20
    import tensorflow as tf

    tags = {}
    for split in ("train", "val"):
        for f in (run / "tensorboard" / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                for v in event.summary.value:
                    tags.setdefault(v.tag, v.metadata.plugin_data.plugin_name)
    assert tags == {"loss": "scalars", "learning_rate": "scalars", "steps_per_second": "scalars",
                    "mIoU": "scalars", "pixel_accuracy": "scalars", "input": "images", "ground_truth": "images",
                    "prediction": "images"}
    # The deploy model and the training checkpoint agree.
    deploy = keras.saving.load_model(run / "deploy.keras")
    best = keras.saving.load_model(run / "last.keras")
    x = next(iter(stub_data(recipe, "val", False, 4)))[0]
    np.testing.assert_allclose(np.asarray(deploy(x)), np.asarray(best(x, training=False)), rtol=1e-4, atol=1e-4)
    assert int(best.optimizer.iterations) == 20


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, stub_data):
    from lps_keras.train import NonFiniteLossError, train

    class PoisonAtStep7(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 6:
                head = self.model.get_layer("head")
                head.kernel.assign(np.full(head.kernel.shape, np.nan, "float32"))

    recipe = _stub_recipe(tmp_path, "train.iterations=20", "train.val_interval=10", "train.checkpoint_interval=5")
    with pytest.raises(NonFiniteLossError, match=r"step 7.*last good checkpoint \(step 5\)"):
        train(recipe, callbacks=[PoisonAtStep7()], verbose=0)
    run = tmp_path / "run"
    last = keras.saving.load_model(run / "last.keras")
    assert int(last.optimizer.iterations) == 5
    assert all(np.isfinite(w).all() for w in last.get_weights())
    assert json.loads((run / "state.json").read_text())["step"] == 5
    assert not (run / "metrics.json").exists()


def test_resume_restores_optimizer_state_in_process(tmp_path, stub_data):
    from lps_keras.train import train

    def momentum_norm(model):
        opt = model.optimizer
        return float(sum(np.sum(np.square(np.asarray(m))) for m in opt.momentums))

    seen = {}

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if int(self.model.optimizer.iterations) == 10:
                seen["at_backup"] = momentum_norm(self.model)

        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 13:
                raise RuntimeError("simulated crash")

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["restored_step"] = int(self.model.optimizer.iterations)
            seen["restored"] = momentum_norm(self.model)

    recipe = _stub_recipe(tmp_path, "train.iterations=20", "train.val_interval=10", "train.checkpoint_interval=5")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, callbacks=[Crash()], verbose=0)
    out = train(recipe, callbacks=[Probe()], verbose=0)
    assert out["resumed_from_step"] == 10 and out["final_step"] == 20
    assert seen["restored_step"] == 10
    assert seen["restored"] == pytest.approx(seen["at_backup"], rel=1e-6) and seen["restored"] > 0
    assert [h["step"] for h in out["history"]] == [10, 20]  # the step-10 validation survived the crash


# --------------------------------------------------------------------------- (b) resume after SIGKILL
_STUB_DRIVER = textwrap.dedent("""
    # Runs train.py unchanged, with the in-memory toy data set instead of files on disk.
    import runpy, sys
    sys.path.insert(0, {repo!r})
    from tests.test_training import install_toy_data

    install_toy_data()
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path({train!r}, run_name="__main__")
""")


def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, stub_data):
    # Same optimizer state *and* same data position after the restore, so a crash costs time only:
    # the final weights equal those of a run that was never interrupted.
    from lps_keras.train import train

    class Crash(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 13:
                raise RuntimeError("simulated crash")

    extra = ("train.iterations=20", "train.val_interval=10", "train.checkpoint_interval=5", "train.image_summaries=0")
    straight = _stub_recipe(tmp_path / "a", *extra)
    train(straight, verbose=0)
    crashed = _stub_recipe(tmp_path / "b", *extra)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[Crash()], verbose=0)
    assert train(crashed, verbose=0)["resumed_from_step"] == 10
    a = keras.saving.load_model(tmp_path / "a" / "run" / "last.keras", compile=False)
    b = keras.saving.load_model(tmp_path / "b" / "run" / "last.keras", compile=False)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=1e-4, atol=1e-6, err_msg=wa.path)


def test_resume_after_sigkill(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(_STUB_DRIVER.format(repo=str(REPO), train=str(REPO / "train.py")))
    run = tmp_path / "run"
    cmd = [PY, str(driver), "--recipe", "recipes/demo.json", "--run-dir", str(run)]
    for o in ("model.num_classes=3", "train.iterations=400", "train.val_interval=200", "train.checkpoint_interval=10",
              "train.log_interval=5", "train.batch_size=4", "train.image_summaries=0"):
        cmd += ["--set", o]
    backup = run / "backup" / "latest.weights.h5"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "state.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert backup.exists(), "no backup was written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    backed_up = json.loads((run / "state.json").read_text())["step"]
    assert 10 <= backed_up < 400 and backed_up % 10 == 0
    log_before = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]

    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    resumed = int(r.stdout.split("at step ")[1].split("/")[0])
    assert resumed >= backed_up  # a backup may land between reading state.json and the kill
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == resumed and metrics["final_step"] == 400
    assert json.loads((run / "environment.json").read_text())["resumed_from_step"] == resumed
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == list(range(5, 401, 5)), "the loss curve must continue without gaps"
    # The restored optimizer continues the learning-rate schedule where the backup left it ...
    after = [rec for rec in log if rec["step"] > resumed]
    np.testing.assert_allclose(after[0]["lr"], 0.05 * (1 - (after[0]["step"] - 1) / 400) ** 0.9, rtol=1e-5)
    # ... and the loss picks up near where it was, not at an untrained model's level.
    assert after[0]["loss"] < 0.5 * log_before[0]["loss"]
    import lps_keras.train  # noqa: F401 - registers the layers, loss, TorchSGD and PolyLR for load_model

    last = keras.saving.load_model(run / "last.keras")
    assert int(last.optimizer.iterations) == 400


# --------------------------------------------------------------------------- (a) demo recipe improves
def test_demo_recipe_short_run_improves_miou(tmp_path):
    from lps_keras.data import build_dataset
    from lps_keras.metrics import evaluate_predictions
    from lps_keras.model import build_model
    from lps_keras.train import train

    overrides = _tiny_overrides(tmp_path / "data", iterations=60, val=30, ckpt=30)
    recipe = load_recipe(REPO / "recipes" / "demo.json", [*overrides, f"train.run_dir={tmp_path / 'run'}"])
    keras.utils.set_random_seed(recipe.train.seed)
    untrained = build_model(recipe.arch())
    val = build_dataset(recipe, "val", training=False, batch_size=2)
    before = evaluate_predictions(lambda x: untrained(x, training=False), val, 19, progress=False).miou
    out = train(recipe, verbose=0)
    assert out["miou"] > before + 0.05, (before, out["miou"])


# --------------------------------------------------------------------------- (c) MirroredStrategy
_MIRRORED = textwrap.dedent("""
    import os, sys, json
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, os.getcwd())
    from lps_keras.arch import Arch
    from lps_keras.losses import SegmentationCrossEntropy
    from lps_keras.model import build_model
    from lps_keras.train import TorchSGD, PolyLR, make_strategy

    arch = Arch((1, 1, 1, 1, 1), (4, 8, 8, 8, 8), (1.0, 0.5), num_classes=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=(8, 32, 32)).astype("int32")

    TINY = {"ndnet": {"channels": [8, 8, 16], "depths": [1, 1, 1], "expansion": 2, "stem_channels": 8,
                      "head_channels": 8},
            }

    def build(kind):
        if kind == "lps":
            return build_model(arch, sync_batchnorm=True)
        from lps_keras.families import build, get_family

        return build(get_family(kind).config(config=TINY[kind], num_classes=3), sync_batchnorm=True,
                     upsample_logits=True)

    def run(strategy, init):
        with strategy.scope():
            model = build(sys.argv[1])
            if init is not None:
                model.set_weights(init)
            opt = TorchSGD(PolyLR(0.05, 10), momentum=0.9, l2=5e-4)
            model.compile(opt, SegmentationCrossEntropy(), jit_compile=False)
        start = model.get_weights()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        model.fit(ds, epochs=2, verbose=0)
        return start, model.get_weights(), strategy.num_replicas_in_sync

    keras.utils.set_random_seed(0)
    init, single, n1 = run(tf.distribute.get_strategy(), None)
    _, mirrored, n2 = run(make_strategy("mirrored"), init)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single, init))
    diff = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-6)) for a, b in zip(single, mirrored))
    print(json.dumps({"replicas": [n1, n2], "moved": moved, "max_rel_diff": diff}))
""")


@pytest.mark.parametrize("family", ["lps", pytest.param("ndnet", marks=pytest.mark.slow)])
def test_mirrored_strategy_matches_single_device(family):
    # the families train on several replicas with BN synchronised across them (MRMS shares NDNet's ConvBN and
    # FamilyModel path; its 50 synchronised BNs take minutes under two virtual CPUs: test_families checks them)
    r = subprocess.run([PY, "-c", _MIRRORED, family], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert result["moved"] > 1e-3  # training changed the weights
    assert result["max_rel_diff"] < 5e-4, result  # float32 reduction order differs between 1 and 2 replicas


_MULTI_WORKER_DRIVER = textwrap.dedent("""
    # One worker of a two-process MultiWorkerMirroredStrategy run through lps_keras.train.train,
    # on the in-memory toy set; writes its final weights to the file named by argv[1].
    import json, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    import keras
    from lps_keras.recipe import load_recipe
    from lps_keras.train import train
    from tests.test_training import install_toy_data

    install_toy_data()
    seen = {{}}

    class Capture(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen["weights"] = [np.asarray(w).tolist() for w in self.model.trainable_weights]
            seen["replicas"] = self.model.distribute_strategy.num_replicas_in_sync

    recipe = load_recipe({recipe!r}, sys.argv[2:])
    out = train(recipe, callbacks=[Capture()], verbose=0)
    with open(sys.argv[1], "w") as f:
        json.dump({{"final_step": out["final_step"], "replicas": seen["replicas"], "weights": seen["weights"]}}, f)
""")


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_processes_train_in_lockstep(tmp_path):
    # Two real worker processes on localhost (gRPC collectives): both finish the schedule with
    # identical weights (synchronous all-reduce), and only the chief writes the run directory.
    driver = tmp_path / "driver.py"
    driver.write_text(_MULTI_WORKER_DRIVER.format(repo=str(REPO), recipe=str(REPO / "recipes" / "demo.json")))
    run = tmp_path / "run"
    overrides = ["model.num_classes=3", "train.iterations=6", "train.val_interval=6",
                 "train.checkpoint_interval=3", "train.batch_size=4", "train.image_summaries=0",
                 "train.distribute=multi_worker", f"train.run_dir={run}"]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([PY, str(driver), str(tmp_path / f"worker{index}.json"), *overrides], cwd=REPO,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for index, proc in enumerate(procs):
            _, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads((tmp_path / f"worker{index}.json").read_text()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [r["final_step"] for r in results] == [6, 6]
    assert [r["replicas"] for r in results] == [2, 2]
    for a, b in zip(results[0]["weights"], results[1]["weights"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_step"] == 6
    assert (run / "last.keras").exists() and (run / "deploy.keras").exists()
    worker_dir = run / "workers" / "1"
    assert worker_dir.is_dir() and not (worker_dir / "metrics.json").exists()


# --------------------------------------------------------------------------- init / setup errors
def test_init_from_deploy_checkpoint_reproduces_it(tmp_path):
    from helpers import randomize_batchnorm

    from lps_keras.arch import Arch
    from lps_keras.model import build_model
    from lps_keras.reparam import reparameterize
    from lps_keras.weights import init_weights

    arch = Arch((1, 1, 2, 1, 1), (4, 8, 8, 8, 8), (1.0, 0.5), num_classes=3)
    source = build_model(arch)
    randomize_batchnorm(source, seed=3)
    deploy = reparameterize(source)
    deploy.save(tmp_path / "deploy.keras")
    source.save(tmp_path / "train.keras")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    want = np.asarray(deploy(x))

    target = build_model(arch)
    info = init_weights(target, tmp_path / "deploy.keras", verbose=False)
    assert not info["skipped"]
    np.testing.assert_allclose(np.asarray(target(x, training=False)), want, rtol=1e-4, atol=1e-4)

    target = build_model(arch)
    init_weights(target, tmp_path / "train.keras", verbose=False)
    np.testing.assert_allclose(np.asarray(target(x, training=False)), want, rtol=1e-4, atol=1e-4)


def test_setup_errors_are_clear(tmp_path, monkeypatch):
    from lps_keras.model import build_model
    from lps_keras.train import TrainingError, make_strategy, resolve_mixed_precision
    from lps_keras.weights import WeightsError, init_weights

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TrainingError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    assert resolve_mixed_precision("none") == "float32"
    assert resolve_mixed_precision("auto") in ("mixed_float16", "mixed_bfloat16", "float32")
    # auto never picks emulated bf16: an AVX2-only CPU trains in float32
    assert resolve_mixed_precision("auto", gpu=False, bf16=False) == "float32"
    assert resolve_mixed_precision("auto", gpu=False, bf16=True) == "mixed_bfloat16"
    assert resolve_mixed_precision("auto", gpu=True, bf16=False) == "mixed_float16"
    # per family: bf16 where it was measured faster (LPS-Net's dense 3x3 convs), float32 for the depthwise families
    for family in ("ndnet", "mrms"):
        assert resolve_mixed_precision("auto", gpu=False, bf16=True, family=family) == "float32"
        assert resolve_mixed_precision("auto", gpu=True, bf16=True, family=family) == "mixed_float16"
        assert resolve_mixed_precision("mixed_bfloat16", gpu=False, bf16=True, family=family) == "mixed_bfloat16"
    model = build_model(load_recipe(REPO / "recipes" / "demo.json").arch())
    with pytest.raises(WeightsError, match="missing.keras"):
        init_weights(model, tmp_path / "missing.keras")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(WeightsError, match="w.bin"):
        init_weights(model, tmp_path / "w.bin")


def test_mixed_bfloat16_run(tmp_path, stub_data):
    from lps_keras.train import train

    recipe = _stub_recipe(tmp_path, "train.iterations=10", "train.val_interval=10", "train.checkpoint_interval=10",
                          "train.mixed_precision=mixed_bfloat16", "train.image_summaries=0")
    before = keras.config.dtype_policy().name
    out = train(recipe, verbose=0)
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["dtype_policy"] == "mixed_bfloat16"
    assert np.isfinite(out["miou"]) and out["deploy_parity_max_rel_error"] < 0.05  # bf16 activations


# --------------------------------------------------------------------------- full disk
def test_full_disk_at_a_checkpoint_is_one_line_keeps_the_last_backup_and_resumes(tmp_path, stub_data, monkeypatch,
                                                                                   capsys):
    from fake_disk import CappedDisk

    from lps_keras.cli import guarded
    from lps_keras.train import train

    disk = CappedDisk(free=2000, armed=False).install(monkeypatch)  # json files fit, a checkpoint does not
    kept = {}
    run = tmp_path / "run"

    class FillTheDiskAfterStep5(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 6 and not disk.armed:
                kept.update({p: p.read_bytes() for p in (run / "backup" / "latest.weights.h5", run / "last.keras")})
                disk.armed = True

    recipe = _stub_recipe(tmp_path, "train.iterations=20", "train.val_interval=20", "train.checkpoint_interval=5",
                          "train.image_summaries=0")
    code = guarded("train.py", lambda: train(recipe, callbacks=[FillTheDiskAfterStep5()], verbose=0))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: ") and "the disk is full" in lines[0]
    assert str(run / "backup" / "latest.weights.h5") in lines[0] and disk.failed  # the step-10 backup
    assert all(p.read_bytes() == data for p, data in kept.items())  # the step-5 checkpoint, byte for byte
    assert not [p for p in run.rglob("*") if ".lpstmp-" in p.name]  # no partial file left

    disk.armed = False  # space freed: the rerun resumes from the kept backup
    out = train(recipe, verbose=0)
    assert (out["resumed_from_step"], out["final_step"]) == (5, 20)


def test_run_name_in_run_dir_must_be_a_plain_name(tmp_path):
    import dataclasses

    from lps_keras.errors import PathNameError
    from lps_keras.train.loop import resolve_run_dir

    recipe = load_recipe(REPO / "recipes" / "demo.json", ["train.run_dir=runs/{name}"])
    assert resolve_run_dir(recipe) == Path("runs/demo")
    for name in ("../../etc", "a/b", ".hidden", "x\n"):
        with pytest.raises(PathNameError, match=r"recipe\.name: .* is not a plain name"):
            resolve_run_dir(dataclasses.replace(recipe, name=name))
    literal = dataclasses.replace(recipe, name="a/b", train=dataclasses.replace(recipe.train, run_dir=str(tmp_path)))
    assert resolve_run_dir(literal) == tmp_path  # the name is not part of this path


# --------------------------------------------------------------------------- memory
def test_memory_estimate_errs_high_of_the_calibration_runs():
    from lps_keras.arch import Arch
    from lps_keras.train.memory import estimate_training_bytes

    # Peak RSS added by train() on the demo set at 192x192 (see lps_keras/train/memory.py).
    for width, batch, measured_mb in (((8, 16, 32, 64, 64), 2, 177), ((8, 16, 32, 64, 64), 8, 298),
                                      ((32, 64, 128, 256, 256), 2, 246), ((32, 64, 128, 256, 256), 8, 461)):
        arch = Arch((1, 1, 2, 2, 2), width, (1, 0, 0), num_classes=19)
        estimate_mb = estimate_training_bytes(arch, batch, 192, 192, 19) / 2**20
        assert measured_mb < estimate_mb < 2.2 * measured_mb, (width, batch, estimate_mb)


def test_family_memory_estimate_errs_high_of_the_calibration_runs():
    from lps_keras.arch import Arch
    from lps_keras.families import get_family
    from lps_keras.train.memory import block_elements, estimate_training_bytes, layer_elements

    # A one-path LPS-Net is its five blocks and the 1x1 head: the block outputs (the LPS estimate's own pure
    # count) plus the head's 4x4x3 logits at 1/16 of 64x64.
    arch = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (1, 0, 0), num_classes=3)
    assert block_elements(arch, 64, 64) == 32 * 32 * 4 + 16 * 16 * 8 + 8 * 8 * 16 + 2 * 4 * 4 * 32
    assert layer_elements(arch, 64, 64) == block_elements(arch, 64, 64) + 4 * 4 * 3
    # Peak RSS added by train() (benchmarks/train_memory.py; see lps_keras/train/memory.py).
    for family, preset, classes, (h, w), batch, measured_mb in (
            ("mrms", "tinymrms", 19, (192, 192), 2, 527), ("mrms", "tinymrms", 19, (192, 192), 8, 856),
            ("ndnet", "ndnet45", 19, (192, 192), 2, 476), ("ndnet", "ndnet45", 19, (192, 192), 8, 682),
            ("mrms", "tinymrms", 11, (360, 480), 2, 1060), ("mrms", "tinymrms", 11, (360, 480), 8, 2250)):
        config = get_family(family).config(preset=preset, num_classes=classes)
        estimate_mb = estimate_training_bytes(config, batch, h, w, classes) / 2**20
        assert measured_mb <= estimate_mb < 1.5 * measured_mb, (preset, h, batch, estimate_mb)


def test_the_memory_check_comes_after_the_strategy_and_before_the_run_directory(tmp_path, stub_data, monkeypatch):
    # NDNet/MRMS's estimate builds a Keras model, which starts TensorFlow; a multi-worker strategy made after
    # that fails ("Collective ops must be configured at program startup", as a two-process NDNet run showed).
    import lps_keras.train.loop as loop
    import lps_keras.train.run as run_module
    from lps_keras.errors import ResourceError
    from lps_keras.train import train

    order = []
    make_strategy = run_module.make_strategy
    monkeypatch.setattr(run_module, "make_strategy", lambda d: order.append("strategy") or make_strategy(d))

    def check(*args, **kwargs):
        order.append("memory")
        assert not (tmp_path / "run").exists()
        raise ResourceError("stop here")

    monkeypatch.setattr(loop, "check_training_memory", check)
    recipe = _stub_recipe(tmp_path, "model.arch=null", "model.family=ndnet", "model.preset=ndnet45")
    with pytest.raises(ResourceError, match="stop here"):
        train(recipe, verbose=0)
    assert order == ["strategy", "memory"] and not (tmp_path / "run").exists()


def test_a_family_run_that_cannot_fit_in_memory_is_refused_naming_the_family(tmp_path, stub_data, monkeypatch):
    import lps_keras.train.memory as memory
    from lps_keras.errors import ResourceError
    from lps_keras.train import train

    monkeypatch.setattr(memory, "available_memory", lambda: (1024 * 2**20, "MemAvailable in /proc/meminfo"))
    recipe = _stub_recipe(tmp_path, "model.arch=null", "model.family=ndnet", "model.preset=ndnet45",
                          "train.iterations=2", "train.batch_size=64")
    with pytest.raises(ResourceError, match=r"about [\d.]+ GiB of memory \(batch 64 of 192x192, a network of the "
                                            r"ndnet family\), but 1\.0 GiB is available .*a batch of at most "
                                            r"about \d+ fits"):
        train(recipe, verbose=0)
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(tmp_path, stub_data, monkeypatch):
    import lps_keras.train.memory as memory
    from lps_keras.errors import ResourceError
    from lps_keras.train import train

    monkeypatch.setattr(memory, "available_memory", lambda: (300 * 2**20, "MemAvailable in /proc/meminfo"))
    recipe = _stub_recipe(tmp_path, "train.iterations=2", "train.batch_size=64")
    with pytest.raises(ResourceError, match=r"train\.batch_size / data\.augment\.crop_size: training would need "
                                            r"about [\d.]+ GiB of memory \(batch 64 of 192x192.*but 0\.3 GiB is "
                                            r"available \(MemAvailable in /proc/meminfo\); a batch of at most about "
                                            r"\d+ fits"):
        train(recipe, verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("oom", ["MemoryError", "ResourceExhaustedError"])
def test_running_out_of_memory_during_training_is_one_line_and_removes_the_new_run_dir(tmp_path, stub_data, capsys,
                                                                                      oom):
    import tensorflow as tf

    from lps_keras.cli import guarded
    from lps_keras.train import train

    class RunOutOfMemory(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 2:
                if oom == "MemoryError":
                    raise MemoryError()
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,8,96,96]")

    recipe = _stub_recipe(tmp_path, "train.iterations=10", "train.val_interval=10", "train.checkpoint_interval=5")
    code = guarded("train.py", lambda: train(recipe, callbacks=[RunOutOfMemory()], verbose=0))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("train.py: error: out of memory"), lines
    assert not (tmp_path / "run").exists()  # before its first backup: nothing to resume, nothing left
