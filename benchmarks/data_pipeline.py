#!/usr/bin/env python
"""Training-pipeline throughput on Cityscapes-size images (1024x2048) with full augmentation.

Writes a few synthetic street scenes at 1024x2048 in the Cityscapes layout into a temporary
directory, then times ``build_dataset(..., training=True)`` (decode, random scale 0.5-2.0,
768x768 crop, flip, colour jitter, normalisation, batching) and prints images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=24, help="distinct images written (default 24)")
    p.add_argument("--size", default="1024x2048", help="image size HxW (default 1024x2048)")
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=12, help="timed batches (after 2 warm-up batches)")
    p.add_argument("--output", default="benchmarks/data_pipeline.json")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from lps_keras.data import build_dataset
    from lps_keras.data.cityscapes import train_ids_to_label_ids
    from lps_keras.data.synthetic import draw_scene
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text
    from lps_keras.recipe import recipe_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for i in range(args.images):
            image, label = draw_scene(rng, h, w)
            stem = f"bench_{i:06d}_000019"
            for sub, name, arr in (("leftImg8bit", f"{stem}_leftImg8bit.png", image),
                                   ("gtFine", f"{stem}_gtFine_labelIds.png", train_ids_to_label_ids(label))):
                d = root / sub / "train" / "bench"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(arr, np.uint8)).save(d / name)
        print(f"wrote {args.images} images of {h}x{w} in {time.perf_counter() - t0:.1f}s", flush=True)
        recipe = recipe_from_dict({
            "model": {"preset": "lps_s"},
            "data": {"dataset": "cityscapes", "root": str(root),
                     "augment": {"crop_size": [args.crop, args.crop], "scale_range": [0.5, 2.0]}},
            "train": {"batch_size": args.batch},
        })
        it = iter(build_dataset(recipe, "train", training=True))
        for _ in range(2):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            x, _ = next(it)
        _ = x.numpy()
        dt = time.perf_counter() - t0
    ips = args.batches * args.batch / dt
    result = {
        "images_per_second": round(ips, 2),
        "image_size": [h, w],
        "crop": args.crop,
        "batch": args.batch,
        "timed_images": args.batches * args.batch,
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "tensorflow": tf.__version__,
    }
    print(cpu_flags_text())
    print(f"data pipeline: {ips:.1f} images/s ({h}x{w} PNG decode + scale/crop {args.crop}/flip/jitter, "
          f"batch {args.batch}, {os.cpu_count()} CPUs)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
