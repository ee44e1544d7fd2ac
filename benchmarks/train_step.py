"""Training throughput of a model preset (any family) on this machine: images/s of a full train step and of the
forward pass.

    python benchmarks/train_step.py [--preset lps_s] [--input-size 768x768] [--batch 2] [--steps 5]
    python benchmarks/train_step.py --preset tinymrms --input-size 360x480 --batch 8 --jit on   # XLA on a CPU

The train step is what ``train.py`` runs (multi-branch training model, pixel cross-entropy on
logits upsampled to the crop, :class:`~lps_keras.train.TorchSGD` with the poly schedule) on
random data, through ``model.fit``-equivalent ``train_on_batch``; the forward pass is the same
training model in inference mode (``model(x, training=False)`` in a ``tf.function``). Warm-up
steps (tracing) are excluded. Writes JSON with the numbers and the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lps_s", help="a preset of any family (lps_s, ndnet45, tinymrms, ...)")
    p.add_argument("--input-size", default="768x768", help="HEIGHTxWIDTH crop (default 768x768)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--mixed-precision", default="none", choices=("none", "auto", "mixed_float16", "mixed_bfloat16"))
    p.add_argument("--jit", default="auto", choices=("auto", "on", "off"),
                   help="XLA for the train step (auto: on GPU only, as train.py)")
    p.add_argument("--output", default="benchmarks/train_step.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    from lps_keras.export import parse_size
    from lps_keras.families import family_of_preset
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text
    from lps_keras.losses import SegmentationCrossEntropy
    from lps_keras.train import PolyLR, TorchSGD, environment_info, resolve_mixed_precision

    h, w = parse_size(args.input_size)
    family = family_of_preset(args.preset)
    policy = resolve_mixed_precision(args.mixed_precision, family=family.name)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    config = family.config(preset=args.preset, num_classes=args.num_classes)
    model = family.build(config)
    jit = {"auto": "auto" if tf.config.list_physical_devices("GPU") else False, "on": True, "off": False}[args.jit]
    model.compile(TorchSGD(PolyLR(0.01, 1000), momentum=0.9, l2=5e-4), SegmentationCrossEntropy(), jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, h, w, 3)).astype("float32")
    y = rng.integers(0, args.num_classes, size=(args.batch, h, w)).astype("int32")

    def timed(fn, n):
        for _ in range(args.warmup):
            fn()
        t = time.perf_counter()
        for i in range(n):
            fn()
            print(f"\r  step {i + 1}/{n}", end="", flush=True)
        print()
        return (time.perf_counter() - t) / n

    print(f"{args.preset} {h}x{w} batch {args.batch}, policy {policy}: train step ...", flush=True)
    train_s = timed(lambda: model.train_on_batch(x, y), args.steps)
    forward = tf.function(lambda t: model(t, training=False))
    xt = tf.constant(x)
    print("forward pass ...", flush=True)
    fwd_s = timed(lambda: forward(xt).numpy(), args.steps)
    result = {
        "preset": args.preset, "family": family.name, "config": config.to_dict(), "input_size": [h, w],
        "batch": args.batch,
        "dtype_policy": policy, "jit_compile": str(jit), "steps": args.steps,
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "train_step_seconds": train_s, "train_images_per_second": args.batch / train_s,
        "forward_seconds": fwd_s, "forward_images_per_second": args.batch / fwd_s,
        "environment": environment_info(policy=policy), "cpu_flags": cpu_flags(),
    }
    print(cpu_flags_text())
    print(f"train: {result['train_images_per_second']:.2f} images/s ({1000 * train_s:.0f} ms/step); "
          f"forward: {result['forward_images_per_second']:.2f} images/s ({1000 * fwd_s:.0f} ms/batch)")
    if args.output:
        atomic_write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
