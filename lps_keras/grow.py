"""Function-preserving growth (weight inheritance): a trained LPS-Net grown into a bigger architecture.

:func:`grow_model` builds the training-form model of a child architecture and fills it from a trained
parent so that, in inference mode, the child computes the parent's logits. This is the warm start of
the expansion search (``search.proxy.init = parent``): each candidate ``N + k * delta`` starts from
its parent instead of from scratch.

How each kind of growth stays exact (``x`` is a block input, always post-ReLU so ``x >= 0``):

- **Kept blocks** get the parent's weights in their old input/output channels.
- **Width**: the new output channels of a block start with fresh weights and fresh BNs, so they are
  alive, but every kernel entry from a new input channel to an old output channel is zero and the
  head's rows for new channels are zero: new channels never reach an old channel or the logits.
- **Depth**: a new block appended to a stage has fresh kernels but its 3x3 and 1x1 BNs have
  ``gamma = beta = 0`` (those branches output exactly 0, in training mode too), and its identity BN
  is exactly 1: ``gamma = 1``, ``beta = mean = 0``, ``moving_variance = 1 - eps``, for which
  ``var + eps`` rounds to exactly 1.0 in float32, so ``rsqrt`` gives 1.0 and the block returns
  ``relu(x) = x`` bit for bit. Zero gammas rather than zero kernels: with a zero kernel the
  training-mode BN sees a constant, divides by ``sqrt(eps)`` and the first SGD step turns the branch
  into a full-size random one; a zero gamma grows from 0 at the ordinary rate.
- **Resolution ratio** of an existing path: no weight depends on it, all are kept.
- **A new path** (fresh weights) reaches the old paths only through the parameter-free sums of the
  interactions after stages 3 and 4 and through the head. Its head rows are zero. Its stage-3 and
  stage-4 outputs cannot be made exactly zero without killing it: a block whose pre-activation is 0
  everywhere has zero gradient through its ReLU, and then everything before it in the path never
  trains. Instead the last block of those two stages has all its BN gammas scaled by a tiny positive
  gate (:data:`NEW_PATH_GATE`): by positive homogeneity of ReLU its output is exactly ``gate`` times
  a fresh block's, far below float32 resolution of the old features, while its gammas get ordinary
  O(1) gradients and open up within the first steps.

Limits: exactness holds in inference mode. In training mode BN normalises with batch statistics, so a
new depth block's identity BN standardises its input instead of passing it; kept blocks, new width
and a new path stay function-preserving in training mode too (BN is per channel, the gate is too).
Growth needs a child at least as big as the parent in every dimension, with paths matched by
position (ratios sorted high to low); it cannot remove the identity branch the parent's stage-5
block 1 has when stages 4 and 5 are equally wide.
"""

from __future__ import annotations

import keras
import numpy as np

from lps_keras.arch import Arch
from lps_keras.layers import RepConvBlock
from lps_keras.model import INTERACTION_AFTER_STAGES, block_name, build_model

#: Scale of the BN gammas of a new path's last block in stages 3 and 4 (float32 / bfloat16 compute).
NEW_PATH_GATE = 2.0**-30
# float16 flushes 2**-30 * O(1) to zero (smallest subnormal 2**-24), which would kill the path again.
_NEW_PATH_GATE_FLOAT16 = 2.0**-10


def grow_model(parent: keras.Model, child_arch: Arch, input_shape=None) -> keras.Model:
    """A new training-form model of ``child_arch`` that inherits ``parent``'s weights.

    Function-preserving: in inference mode the result computes the parent's logits (exactly for
    depth and width growth; up to ``NEW_PATH_GATE`` times the new path's features for a new path)
    whenever the existing paths keep their ratios. A changed ratio changes the output, but every
    weight is still carried over unchanged. See the module docstring for how each case is made exact.

    Args:
        parent: a training-form model from :func:`~lps_keras.model.build_model` (trained weights).
        child_arch: the architecture to grow into, e.g. ``parent.arch.expand(op, k)``;
            any arch with the same classes and at least the parent's depth, width, number of
            paths and (position by position, high to low) path ratios.
        input_shape: (H, W, 3) of the new model; default: the parent's.
    Raises:
        ValueError naming both architectures and what differs when ``child_arch`` is not a growth
        of the parent, or when ``parent`` is not a training-form LPS-Net.
    ``parent`` itself is not modified.
    """
    if not isinstance(child_arch, Arch):
        raise TypeError(f"grow_model expects an Arch for child_arch, got {type(child_arch).__name__}: {child_arch!r}")
    parent_arch = getattr(parent, "arch", None)  # models from build_model carry their Arch
    if not isinstance(parent_arch, Arch):
        raise ValueError(f"grow_model needs a parent built by build_model, got {type(parent).__name__} {parent.name!r}")
    _check_growth(parent_arch, child_arch)
    blocks = [layer for layer in parent.layers if isinstance(layer, RepConvBlock)]
    if any(b.deploy or not b.use_1x1 for b in blocks):
        raise ValueError(f"grow_model needs a training-form parent (RepConvBlock deploy=False), got {parent.name!r}")
    child = build_model(
        child_arch,
        input_shape=tuple(parent.input_shape[1:]) if input_shape is None else input_shape,
        sync_batchnorm=blocks[0].synchronized_bn,
    )
    compute_dtype = child.get_layer(block_name(1, 1, 1)).compute_dtype
    gate = _NEW_PATH_GATE_FLOAT16 if compute_dtype == "float16" else NEW_PATH_GATE
    for p in range(1, child_arch.num_paths + 1):
        for s in range(1, 6):
            depth = child_arch.depth[s - 1]
            for b in range(1, depth + 1):
                target = child.get_layer(block_name(p, s, b))
                if p > parent_arch.num_paths:
                    if b == depth and s in INTERACTION_AFTER_STAGES:
                        _gate_block(target, gate)
                elif b > parent_arch.depth[s - 1]:
                    _identity_block(target, parent_arch.width[s - 1])
                else:
                    _copy_block(parent.get_layer(block_name(p, s, b)), target)
    _copy_head(parent.get_layer("head"), child.get_layer("head"), parent_arch, child_arch)
    return child


def _check_growth(parent: Arch, child: Arch) -> None:
    problems = []
    if child.num_classes != parent.num_classes:
        problems.append(f"num_classes {parent.num_classes} -> {child.num_classes}")
    for name in ("depth", "width"):
        for i, (a, b) in enumerate(zip(getattr(parent, name), getattr(child, name))):
            if b < a:
                problems.append(f"{name}[{i}] shrinks {a} -> {b}")
    if child.num_paths < parent.num_paths:
        problems.append(f"paths {parent.num_paths} -> {child.num_paths}")
    for i, (a, b) in enumerate(zip(parent.ratios, child.ratios)):
        if b < a:
            problems.append(f"ratio of path {i + 1} (high to low) shrinks {a:g} -> {b:g}")
    # Stage-5 block 1 has stride 1, so it has an identity branch exactly when stages 4 and 5 are
    # equally wide; a child without it cannot reproduce the parent's (a child gaining it zeroes it).
    if parent.width[3] == parent.width[4] and child.width[3] != child.width[4]:
        widths = f"width[3:5] {list(parent.width[3:])} -> {list(child.width[3:])}"
        problems.append(f"stage-5 block 1 loses its identity branch ({widths})")
    if problems:
        raise ValueError(f"cannot grow {parent.short()} into {child.short()}: " + "; ".join(problems))


def _identity_variance(epsilon: float) -> np.float32:
    """A float32 moving variance ``v`` with ``v + epsilon == 1.0`` exactly in float32."""
    eps = np.float32(epsilon)
    v = np.float32(1.0) - eps
    for _ in range(8):  # 1 - eps is exact or within an ulp or two; walk to the exact one
        total = v + eps
        if total == np.float32(1.0):
            return v
        v = np.nextafter(v, np.float32(-np.inf) if total > 1 else np.float32(np.inf), dtype=np.float32)
    raise ValueError(f"no float32 variance makes var + {epsilon!r} exactly 1")


def _bn_values(bn):
    return [np.array(v.numpy()) for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)]


def _set_bn(bn, gamma, beta, mean, var):
    for variable, value in zip((bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance), (gamma, beta, mean, var)):
        variable.assign(value.astype(variable.dtype))


def _copy_kernel(src, dst, ci, co):
    kernel = np.array(dst.kernel.numpy())
    kernel[:, :, :ci, :co] = src.kernel.numpy()
    kernel[:, :, ci:, :co] = 0.0  # new input channels never reach old output channels
    dst.kernel.assign(kernel)


def _copy_bn(src, dst, co):
    values = _bn_values(dst)
    for value, old in zip(values, _bn_values(src)):
        value[:co] = old
    _set_bn(dst, *values)


def _copy_block(src: RepConvBlock, dst: RepConvBlock) -> None:
    ci, co = src.in_channels, src.filters
    _copy_kernel(src.conv, dst.conv, ci, co)
    _copy_kernel(src.conv_1x1, dst.conv_1x1, ci, co)
    _copy_bn(src.bn, dst.bn, co)
    _copy_bn(src.bn_1x1, dst.bn_1x1, co)
    if dst.bn_identity is not None:
        if src.bn_identity is not None:
            _copy_bn(src.bn_identity, dst.bn_identity, co)
        else:
            # The parent had no identity branch here: silence it on the old output channels
            # (gamma 0 keeps its gradient alive; the conv branches carry the signal).
            gamma, beta, mean, var = _bn_values(dst.bn_identity)
            gamma[:co] = beta[:co] = mean[:co] = 0.0
            _set_bn(dst.bn_identity, gamma, beta, mean, var)


def _identity_block(dst: RepConvBlock, co: int) -> None:
    """A new block at the end of a stage: exactly ``relu(x) = x`` on the ``co`` old channels."""
    for bn in (dst.bn, dst.bn_1x1):
        gamma, beta, mean, var = _bn_values(bn)
        gamma[:co] = beta[:co] = 0.0
        _set_bn(bn, gamma, beta, mean, var)
    gamma, beta, mean, var = _bn_values(dst.bn_identity)
    gamma[:co], beta[:co], mean[:co] = 1.0, 0.0, 0.0
    var[:co] = _identity_variance(dst.bn_identity.epsilon)
    _set_bn(dst.bn_identity, gamma, beta, mean, var)


def _gate_block(dst: RepConvBlock, gate: float) -> None:
    # All branches scaled by the same positive factor (beta stays 0): the block's output is exactly
    # gate times the fresh block's, since relu(g * z) = g * relu(z) for g > 0.
    for bn in (dst.bn, dst.bn_1x1, dst.bn_identity):
        if bn is not None:
            bn.gamma.assign(bn.gamma.numpy() * gate)


def _copy_head(src, dst, parent: Arch, child: Arch) -> None:
    # The head reads the concatenation [path1, path2, ...] of width[-1] channels each; only the
    # parent's channels of the parent's paths get weights, every new row starts at zero.
    c_old, c_new = parent.width[-1], child.width[-1]
    old_kernel, bias = src.get_weights()
    kernel = np.zeros(dst.kernel.shape, dtype=old_kernel.dtype)
    for p in range(parent.num_paths):
        kernel[:, :, p * c_new:p * c_new + c_old] = old_kernel[:, :, p * c_old:(p + 1) * c_old]
    dst.set_weights([kernel, bias])
