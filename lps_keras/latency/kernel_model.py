"""A kernel-level latency model: LPS-Net's convolutions priced from single-layer timings, plus a
whole-network correction (the profile's ``"kernels"`` model; issue 21, item 3). Pure numpy.

The whole-network linear model (:mod:`lps_keras.latency.profile`, ``"linear"``) prices a MAC the same
whatever the layer's width, so it cannot see that narrow layers use the machine poorly (an AVX2
register holds 8 floats: a 4-channel conv wastes half of every vector op), which is where its error
sits. Here each 3x3 conv is priced from a table timed on the device:

``conv_ms(h, w, c_in, c_out, stride) = t0 + h * w * slope``

with ``t0`` and ``slope`` interpolated bilinearly in ``(log2 c_in, log2 c_out)`` from a grid of single
convolutions timed at two output sizes (:data:`GRID_SIZES`). LPS-Net's stride-1 convs keep the width
(a 1-D grid of c -> c convs; stage 5's first block, stride 1, may change it: priced by the MAC ratio);
its stride-2 convs change it (a 2-D grid, ``c_in`` from 3: the image). Outside the grid's channels the
nearest grid point is scaled by the MAC ratio.

A network's latency is then ``a * sum(conv_ms) + b * resize_melems + c * head_gmacs + d * layers + e``,
fitted (least squares on relative error) on a few dozen whole networks measured on the device: ``a``
absorbs what fusion and the runtime's scheduling change from the single layers, ``d`` the per-layer
overhead a single-layer model pays differently, ``e`` the call's fixed cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lps_keras.arch import STAGE_STRIDES, Arch

#: Channel grid of the single-conv table (c_in of stride-2 convs also 3: the image).
GRID_CHANNELS = (4, 8, 16, 32, 64, 128, 256, 512)
STRIDE2_INPUT_CHANNELS = (3, *GRID_CHANNELS)
#: The two output sizes each grid point is timed at: the intercept and the per-pixel slope.
GRID_SIZES = ((16, 16), (64, 128))  # (the second large enough that the per-pixel cost, not the call, shows)
FEATURES = ("conv_ms", "resize_melems", "head_gmacs", "layers", "const")


def conv_layers(arch: Arch, height: int, width: int) -> list[tuple[int, int, int, int, int]]:
    """Every 3x3 conv of ``arch`` at ``height`` x ``width``: ``(h_out, w_out, c_in, c_out, stride)``."""
    out = []
    for p in range(arch.num_paths):
        h, w = arch.path_input_size(height, width, p)
        c_in = 3
        for stride, depth, c in zip(STAGE_STRIDES, arch.depth, arch.width):
            for b in range(depth):
                st = stride if b == 0 else 1
                h, w = -(-h // st), -(-w // st)
                out.append((h, w, c_in, c, st))
                c_in = c
    return out


def grid_specs(channels: Sequence[int] = GRID_CHANNELS, sizes=GRID_SIZES) -> list[tuple[int, int, int, int, int]]:
    """The single convs to time: ``(h_out, w_out, c_in, c_out, stride)`` (stride 1: c_in == c_out)."""
    specs = []
    for h, w in sizes:
        specs += [(h, w, c, c, 1) for c in channels]
        specs += [(h, w, ci, co, 2) for ci in (3, *channels) for co in channels]
    return specs


def _interp_axis(grid: Sequence[int], c: float) -> tuple[int, int, float]:
    """Indices (lo, hi) of ``grid`` around ``c`` (clamped) and the weight of hi, in log2."""
    x = math.log2(max(c, 1e-9))
    g = [math.log2(v) for v in grid]
    if x <= g[0]:
        return 0, 0, 0.0
    if x >= g[-1]:
        return len(g) - 1, len(g) - 1, 0.0
    hi = next(i for i, v in enumerate(g) if v >= x)
    lo = hi - 1
    return lo, hi, (x - g[lo]) / (g[hi] - g[lo])


class ConvTable:
    """``t0`` and ``slope`` per grid point, from the single-conv timings ``{spec: ms}`` of :func:`grid_specs`."""

    def __init__(self, timings: Mapping[tuple, float], channels: Sequence[int] = GRID_CHANNELS, sizes=GRID_SIZES):
        self.channels = tuple(channels)
        self.sizes = tuple(tuple(s) for s in sizes)
        (h1, w1), (h2, w2) = self.sizes
        p1, p2 = h1 * w1, h2 * w2
        self.in2 = (3, *self.channels)

        def line(ci, co, st):
            a, b = timings[(h1, w1, ci, co, st)], timings[(h2, w2, ci, co, st)]
            slope = max((b - a) / (p2 - p1), 0.0)  # more pixels never cost less; noise can say otherwise
            return max(a - slope * p1, 0.0), slope

        self.s1 = np.array([line(c, c, 1) for c in self.channels])  # (C, 2)
        self.s2 = np.array([[line(ci, co, 2) for co in self.channels] for ci in self.in2])  # (Cin, Cout, 2)

    @classmethod
    def from_dict(cls, d: Mapping) -> ConvTable:
        table = cls.__new__(cls)
        table.channels = tuple(d["channels"])
        table.sizes = tuple(tuple(s) for s in d["sizes"])
        table.in2 = (3, *table.channels)
        table.s1 = np.asarray(d["stride1"], float)
        table.s2 = np.asarray(d["stride2"], float)
        return table

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "sizes": [list(s) for s in self.sizes],
                "stride1": self.s1.tolist(), "stride2": self.s2.tolist()}  # per-pixel slopes are ~1e-6 ms: no rounding

    def conv_ms(self, h: int, w: int, c_in: int, c_out: int, stride: int) -> float:
        """Interpolated at the channels clamped to the grid; the per-pixel cost then scaled by the MAC
        ratio to that grid point (1 inside the grid, except a stride-1 conv that changes the width, priced
        from the table's c -> c conv at its output width)."""
        def clamp(c, grid):
            return min(max(c, grid[0]), grid[-1])

        if stride == 1:
            x = clamp(c_out, self.channels)
            lo, hi, t = _interp_axis(self.channels, x)
            t0, slope = (1 - t) * self.s1[lo] + t * self.s1[hi]
            scale = (c_in * c_out) / (x * x)
        else:
            xi, xo = clamp(c_in, self.in2), clamp(c_out, self.channels)
            i0, i1, ti = _interp_axis(self.in2, xi)
            o0, o1, to = _interp_axis(self.channels, xo)
            t0, slope = ((1 - ti) * ((1 - to) * self.s2[i0, o0] + to * self.s2[i0, o1])
                         + ti * ((1 - to) * self.s2[i1, o0] + to * self.s2[i1, o1]))
            scale = (c_in * c_out) / (xi * xo)
        return float(t0 + h * w * slope * scale)


def kernel_features(arch: Arch, height: int, width: int, table: ConvTable) -> np.ndarray:
    """The feature vector of ``arch`` (order: :data:`FEATURES`)."""
    convs = conv_layers(arch, height, width)
    conv_ms = sum(table.conv_ms(*c) for c in convs)
    resize = 0.0
    for p in range(arch.num_paths):
        if arch.ratios[p] != 1.0:
            h, w = arch.path_input_size(height, width, p)
            resize += h * w * 3
    if arch.num_paths > 1:
        sizes = [arch.feature_sizes(height, width, p) for p in range(arch.num_paths)]
        for s in (2, 3):
            for p in range(arch.num_paths):
                h, w = sizes[p][s]
                resize += h * w * arch.width[s] * (arch.num_paths - 1)
        h, w = sizes[0][-1]
        resize += h * w * arch.width[-1] * (arch.num_paths - 1)
    oh, ow = arch.output_size(height, width)
    head = oh * ow * arch.width[-1] * arch.num_paths * arch.num_classes
    return np.array([conv_ms, resize / 1e6, head / 1e9, len(convs) + 1, 1.0])


def fit_network_model(features: np.ndarray, ms: Sequence[float]) -> tuple[np.ndarray, float]:
    """Least squares on relative error of ``ms ~ features @ coef``; (coef, relative residual sd)."""
    x = np.asarray(features, float)
    y = np.asarray(ms, float)
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    rel = (x @ coef - y) / y
    dof = max(len(y) - x.shape[1], 1)
    return coef, float(np.sqrt(np.sum(rel ** 2) / dof))


def measure_grid(time_conv: Callable[[tuple], float], specs: Sequence[tuple] | None = None,
                 say: Callable[[str], None] = print) -> dict:
    """``{spec: ms}`` for every single conv of the grid, each timed by ``time_conv(spec)``."""
    specs = list(specs or grid_specs())
    out = {}
    for i, spec in enumerate(specs):
        out[tuple(spec)] = float(time_conv(tuple(spec)))
        if (i + 1) % 20 == 0 or i + 1 == len(specs):
            say(f"  single convs: {i + 1}/{len(specs)}")
    return out
