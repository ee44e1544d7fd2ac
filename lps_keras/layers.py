"""LPS-Net building blocks: re-parameterisable conv block, align-corners resize, path interaction.

All layers use ``keras.ops`` except the TF fast path of :func:`resize_bilinear`, which emits
TF's native ``ResizeBilinear(align_corners=True)`` so TF-TRT and tf2onnx convert it to a
single resize node instead of a gather network.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_PACKAGE = "lps_keras"


# --------------------------------------------------------------------------- resize
def resize_bilinear(x, size):
    """Bilinear resize of NHWC ``x`` to ``size`` = (height, width), ``align_corners=True``.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=True)``: the
    corner pixels of input and output coincide, so a pixel at output row ``i`` samples input row
    ``i * (H_in - 1) / (H_out - 1)``.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        size = tf.stack([tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)])
        out = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True, half_pixel_centers=False)
        # ResizeBilinear always returns float32; keep the caller's compute dtype.
        return tf.cast(out, x.dtype) if out.dtype != x.dtype else out
    return resize_bilinear_gather(x, size)


def _axis_coords(in_size, out_size, dtype):
    in_size = ops.cast(in_size, "float32")
    out_f = ops.cast(out_size, "float32")
    scale = ops.where(out_f > 1, (in_size - 1.0) / ops.maximum(out_f - 1.0, 1.0), 0.0)
    pos = ops.arange(out_size, dtype="float32") * scale
    lo = ops.floor(pos)
    frac = ops.cast(pos - lo, dtype)
    lo = ops.cast(lo, "int32")
    hi = ops.minimum(lo + 1, ops.cast(in_size, "int32") - 1)
    return lo, hi, frac


def resize_bilinear_gather(x, size):
    """Exact align-corners bilinear resize by gather and lerp (non-TF backends)."""
    out_h, out_w = size
    in_h, in_w = ops.shape(x)[1], ops.shape(x)[2]
    y0, y1, wy = _axis_coords(in_h, out_h, x.dtype)
    x0, x1, wx = _axis_coords(in_w, out_w, x.dtype)
    top = ops.take(x, y0, axis=1)
    bottom = ops.take(x, y1, axis=1)
    wy = ops.reshape(wy, (1, -1, 1, 1))
    rows = top + (bottom - top) * wy
    left = ops.take(rows, x0, axis=2)
    right = ops.take(rows, x1, axis=2)
    wx = ops.reshape(wx, (1, 1, -1, 1))
    return left + (right - left) * wx


def _scaled_size(x, scale):
    # Official: int(H * r); floor on a positive product is the same as int().
    shape = ops.shape(x)
    h, w = shape[1], shape[2]
    if isinstance(h, int) and isinstance(w, int):
        return int(h * scale), int(w * scale)
    h = ops.cast(ops.floor(ops.cast(h, "float32") * scale), "int32")
    w = ops.cast(ops.floor(ops.cast(w, "float32") * scale), "int32")
    return h, w


def _spatial_size(x):
    shape = ops.shape(x)
    return shape[1], shape[2]


def _same_static_size(a, b):
    sa, sb = a.shape[1:3], b.shape[1:3]
    return None not in sa and tuple(sa) == tuple(sb)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BilinearResize(keras.layers.Layer):
    """Align-corners bilinear resize by a ratio, or to the spatial size of a reference tensor.

    ``BilinearResize(scale=0.75)(x)`` gives ``int(H * 0.75) x int(W * 0.75)`` (path inputs);
    ``BilinearResize()([x, ref])`` gives ``x`` at ``ref``'s height and width (interactions,
    concatenation, logits upsampling).
    """

    def __init__(self, scale=None, **kwargs):
        super().__init__(**kwargs)
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"BilinearResize scale must be a positive number or None, got {scale!r}")
        self.scale = scale

    def call(self, inputs):
        if self.scale is not None:
            if isinstance(inputs, (list, tuple)):
                raise ValueError("BilinearResize(scale=...) takes one tensor, got a list")
            return resize_bilinear(inputs, _scaled_size(inputs, self.scale))
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("BilinearResize() without scale takes [tensor, reference]")
        x, ref = inputs
        if _same_static_size(x, ref):
            return x
        return resize_bilinear(x, _spatial_size(ref))

    def compute_output_shape(self, input_shape):
        if self.scale is not None:
            n, h, w, c = input_shape
            return (n, None if h is None else int(h * self.scale), None if w is None else int(w * self.scale), c)
        (n, _, _, c), (_, h, w, _) = input_shape
        return (n, h, w, c)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PathInteraction(keras.layers.Layer):
    """Bilateral-B interaction: each path adds every other path resized to its own size.

    All outputs are computed from the inputs as given (not from already-updated paths).
    """

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError("PathInteraction takes a list of at least two path features")
        outputs = []
        for i, xi in enumerate(inputs):
            out = xi
            for j, xj in enumerate(inputs):
                if i == j:
                    continue
                out = out + (xj if _same_static_size(xj, xi) else resize_bilinear(xj, _spatial_size(xi)))
            outputs.append(out)
        return outputs

    def compute_output_shape(self, input_shape):
        return list(input_shape)


# --------------------------------------------------------------------------- conv block
def check_block_args(kind: str, filters, strides) -> None:
    """A block's ``filters`` (positive int) and ``strides`` (1 or 2), or a ValueError quoting the value."""
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"{kind} filters must be a positive int, got {filters!r}")
    if strides not in (1, 2):
        raise ValueError(f"{kind} strides must be 1 or 2, got {strides!r}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RepConvBlock(keras.layers.Layer):
    """3x3 conv + BN + ReLU with RepVGG-style training branches.

    Training form (``deploy=False``): ``relu(bn(conv3x3(x)) + bn_1x1(conv1x1(x)) + bn_id(x))``,
    the identity branch existing only where stride is 1 and channels match. Deploy form: one
    ``relu(conv3x3(x) + bias)`` with the weights from :meth:`fused_kernel_bias`.

    Stride-2 convs pad one pixel on every side (PyTorch ``padding=1``) instead of Keras'
    ``padding="same"``, which pads only bottom/right for even sizes: that would shift the sampling
    grid away from the official weights and off the 1x1 branch's sampling points.
    """

    def __init__(
        self,
        filters,
        strides=1,
        deploy=False,
        use_1x1=True,
        use_identity=True,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        synchronized_bn=False,
        kernel_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_block_args(type(self).__name__, filters, strides)
        self.filters = filters
        self.strides = strides
        self.deploy = bool(deploy)
        self.use_1x1 = bool(use_1x1)
        self.use_identity = bool(use_identity)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.synchronized_bn = bool(synchronized_bn)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        # Stride 1: "same" is symmetric for a 3x3 kernel, so no explicit pad op is needed.
        padding = "valid" if strides == 2 else "same"
        self.conv = keras.layers.Conv2D(
            filters, 3, strides=strides, padding=padding, use_bias=self.deploy,
            kernel_initializer=self.kernel_initializer, name="conv", dtype=self.dtype_policy,
        )
        self.bn = self.conv_1x1 = self.bn_1x1 = self.bn_identity = None
        if not self.deploy:
            self.bn = self._make_bn("bn")
            if self.use_1x1:
                # Stride 2 is applied by subsampling in call(): a strided 1x1 Conv2D crashes TF
                # 2.21's oneDNN CPU kernels during training; x[:, ::2, ::2] samples the same points.
                self.conv_1x1 = keras.layers.Conv2D(
                    filters, 1, strides=1, padding="valid", use_bias=False,
                    kernel_initializer=self.kernel_initializer, name="conv_1x1", dtype=self.dtype_policy,
                )
                self.bn_1x1 = self._make_bn("bn_1x1")

    def _make_bn(self, name):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, synchronized=self.synchronized_bn,
            name=name, dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"RepConvBlock {self.name!r} needs a known channel count, got shape {input_shape!r}")
        self.in_channels = int(in_channels)
        conv_in = list(input_shape)
        if self.strides == 2:
            conv_in[1] = None if conv_in[1] is None else conv_in[1] + 2
            conv_in[2] = None if conv_in[2] is None else conv_in[2] + 2
        self.conv.build(tuple(conv_in))
        out_shape = self.compute_output_shape(input_shape)
        if not self.deploy:
            self.bn.build(out_shape)
            if self.use_1x1:
                self.conv_1x1.build(out_shape[:3] + (input_shape[-1],))
                self.bn_1x1.build(out_shape)
            if self.has_identity:
                self.bn_identity = self._make_bn("bn_identity")
                self.bn_identity.build(input_shape)

    @property
    def has_identity(self):
        return (not self.deploy and self.use_identity and self.strides == 1
                and getattr(self, "in_channels", None) == self.filters)

    def call(self, x, training=None):
        padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]) if self.strides == 2 else x
        y = self.conv(padded)
        if not self.deploy:
            y = self.bn(y, training=training)
            if self.use_1x1:
                sub = x[:, ::2, ::2, :] if self.strides == 2 else x
                y = y + self.bn_1x1(self.conv_1x1(sub), training=training)
            if self.bn_identity is not None:
                y = y + self.bn_identity(x, training=training)
        return ops.relu(y)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if self.strides == 2:
            h = None if h is None else (h + 1) // 2
            w = None if w is None else (w + 1) // 2
        return (n, h, w, self.filters)

    # ------------------------------------------------------------------ fusion
    def fused_kernel_bias(self):
        """The equivalent single 3x3 kernel (3, 3, C_in, C_out) and bias (C_out,) as float64 numpy.

        Each BN (inference form) is folded into its branch; the 1x1 kernel goes to the 3x3 centre
        tap and the identity becomes a centred one-hot kernel; the branches then add.
        """
        if self.deploy:
            kernel, bias = (np.asarray(w, dtype=np.float64) for w in self.conv.get_weights())
            return kernel, bias
        kernel, bias = _fold_bn(np.asarray(self.conv.kernel, dtype=np.float64), self.bn)
        if self.use_1x1:
            k1, b1 = _fold_bn(np.asarray(self.conv_1x1.kernel, dtype=np.float64), self.bn_1x1)
            kernel[1, 1] += k1[0, 0]
            bias = bias + b1
        if self.bn_identity is not None:
            eye = np.zeros((3, 3, self.in_channels, self.filters), dtype=np.float64)
            eye[1, 1] = np.eye(self.in_channels, self.filters)
            ki, bi = _fold_bn(eye, self.bn_identity)
            kernel += ki
            bias = bias + bi
        return kernel, bias

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "strides": self.strides,
            "deploy": self.deploy,
            "use_1x1": self.use_1x1,
            "use_identity": self.use_identity,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "synchronized_bn": self.synchronized_bn,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def _fold_bn(kernel, bn):
    """Fold inference-mode BN into a conv kernel (..., C_out): k * g/s, beta - mean * g/s."""
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else 0.0
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    factor = gamma / np.sqrt(var + bn.epsilon)
    return kernel * factor, beta - mean * factor
