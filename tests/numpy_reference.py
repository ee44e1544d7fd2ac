"""Independent numpy references shared by several test files."""

import numpy as np


def resize_align_corners(x, out_h, out_w):
    """Independent numpy bilinear resize, align_corners=True, NHWC."""
    _, h, w, _ = x.shape

    def axis(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    fy = fy[None, :, None, None]
    fx = fx[None, None, :, None]
    a = x[:, y0][:, :, x0]
    b = x[:, y0][:, :, x1]
    c = x[:, y1][:, :, x0]
    d = x[:, y1][:, :, x1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)
