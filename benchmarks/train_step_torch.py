"""Reference for benchmarks/train_step.py: the same LPS-Net training step in PyTorch (CPU), for issue 24.

    python benchmarks/train_step_torch.py [--preset lps_s] [--input-size 768x768] [--batch 2] [--steps 5]

The network is LPS-Net's RepVGG training form as ``lps_keras`` builds it (``RepConvBlock``: 3x3 conv +
BN, 1x1 conv + BN, identity BN where the shapes match, summed, ReLU; stride-2 blocks pad 1 on every
side, the 1x1 branch samples every other pixel; paths at their ratios, Bilateral-B after stages 3 and 4,
align-corners bilinear resizes, concat at path 1, 1x1 head), written here from that description; the
step is the same: logits upsampled to the crop, pixel cross-entropy (ignore 255), SGD with momentum
0.9 and L2 5e-4 (``TorchSGD`` is this optimiser), on random data. Channels-last memory format, as
TensorFlow's NHWC (``--channels-first`` for PyTorch's default). Same threads as TensorFlow's run.
Prints the CPU's flags; compare with train_step.py in the same session only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lps_s")
    p.add_argument("--input-size", default="768x768")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--channels-first", action="store_true", help="NCHW memory format (default channels-last)")
    p.add_argument("--output", default="benchmarks/train_step_torch.json")
    return p.parse_args(argv)


def build(arch):
    import torch
    from torch import nn
    from torch.nn import functional as F

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    class RepBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            self.conv = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.bn_id = nn.BatchNorm2d(cin) if stride == 1 and cin == cout else None

        def forward(self, x):
            y = self.bn(self.conv(x))
            sub = x[:, :, ::2, ::2] if self.stride == 2 else x
            y = y + self.bn1(self.conv1(sub))
            if self.bn_id is not None:
                y = y + self.bn_id(x)
            return torch.relu(y)

    class LPSNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.ratios = arch.ratios
            strides = (2, 2, 2, 2, 1)
            self.paths = nn.ModuleList()
            for _ in self.ratios:
                stages, cin = nn.ModuleList(), 3
                for depth, width, stride in zip(arch.depth, arch.width, strides):
                    blocks = []
                    for b in range(depth):
                        blocks.append(RepBlock(cin, width, stride if b == 0 else 1))
                        cin = width
                    stages.append(nn.Sequential(*blocks))
                self.paths.append(stages)
            self.head = nn.Conv2d(arch.width[-1] * len(self.ratios), arch.num_classes, 1)

        def forward(self, image):
            h, w = image.shape[-2:]
            xs = [image if r == 1.0 else resize(image, (int(h * r), int(w * r))) for r in self.ratios]
            for s in range(5):
                xs = [path[s](x) for path, x in zip(self.paths, xs)]
                if s in (2, 3) and len(xs) > 1:  # Bilateral-B after stages 3 and 4
                    xs = [xi + sum(resize(xj, xi.shape[-2:]) for j, xj in enumerate(xs) if j != i)
                          for i, xi in enumerate(xs)]
            feats = torch.cat([xs[0]] + [resize(x, xs[0].shape[-2:]) for x in xs[1:]], dim=1)
            return self.head(feats)

    return LPSNet()


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from lps_keras.export import parse_size
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text
    from lps_keras.presets import get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = parse_size(args.input_size)
    arch = get_preset(args.preset, num_classes=args.num_classes)
    model = build(arch).train()
    fmt = torch.contiguous_format if args.channels_first else torch.channels_last
    model = model.to(memory_format=fmt)
    # TorchSGD in lps_keras is this optimiser: momentum 0.9, L2 added to the gradient (weight_decay).
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(args.batch, 3, h, w)).astype("float32")).to(memory_format=fmt)
    y = torch.from_numpy(rng.integers(0, args.num_classes, size=(args.batch, h, w)).astype("int64"))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = torch.nn.functional.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=True)
        loss = torch.nn.functional.cross_entropy(logits, y, ignore_index=255)
        loss.backward()
        opt.step()

    def timed(fn, n):
        for _ in range(args.warmup):
            fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    print(f"torch {torch.__version__}, {args.preset} {h}x{w} batch {args.batch}, {args.threads} threads, "
          f"{'NCHW' if args.channels_first else 'channels-last'}: train step ...", flush=True)
    train_s = timed(step, args.steps)
    model.eval()
    with torch.inference_mode():
        fwd_s = timed(lambda: model(x), args.steps)
    params = sum(p.numel() for p in model.parameters())
    result = {"framework": f"torch {torch.__version__}", "preset": args.preset, "input_size": [h, w],
              "batch": args.batch, "threads": args.threads, "memory_format": "NCHW" if args.channels_first
              else "channels_last", "params": params, "train_step_seconds": train_s,
              "train_images_per_second": args.batch / train_s, "forward_seconds": fwd_s,
              "forward_images_per_second": args.batch / fwd_s, "cpu_flags": cpu_flags()}
    print(cpu_flags_text())
    print(f"train: {result['train_images_per_second']:.2f} images/s ({1000 * train_s:.0f} ms/step); "
          f"forward: {result['forward_images_per_second']:.2f} images/s ({1000 * fwd_s:.0f} ms/batch); "
          f"{params} parameters")
    if args.output:
        from lps_keras.fileio import atomic_write_json

        atomic_write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
