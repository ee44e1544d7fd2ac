"""``build_model``: an :class:`~lps_keras.arch.Arch` as a functional Keras model.

Layer names are deterministic and shared by the training and deploy forms, which is what
weight transfer (re-parameterisation, official weights, checkpoints) keys on:

- ``path{p}_resize``: the path's input, the image resized by its ratio (skipped for ratio 1)
- ``path{p}_stage{s}_block{b}``: :class:`RepConvBlock`, 1-based indices; block 1 of stages 1-4
  has stride 2
- ``interaction_stage3``, ``interaction_stage4``: Bilateral-B after stages 3 and 4
- ``path{p}_upsample`` (p >= 2), ``concat``: lower paths at the first path's size, concatenated
- ``head``: 1x1 conv with bias to class logits (1/16 of the first path's input)
- ``logits_upsample``: only with ``upsample_logits=True``, logits at the input size
"""

from __future__ import annotations

import keras

from lps_keras.arch import STAGE_STRIDES, Arch
from lps_keras.layers import BilinearResize, PathInteraction, RepConvBlock

INTERACTION_AFTER_STAGES = (3, 4)


def block_name(path: int, stage: int, block: int) -> str:
    """Name of a conv block; all indices 1-based."""
    return f"path{path}_stage{stage}_block{block}"


def build_model(
    arch: Arch,
    deploy: bool = False,
    upsample_logits: bool = False,
    input_shape=(None, None, 3),
    sync_batchnorm: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build LPS-Net for ``arch``.

    Args:
        arch: blocks, widths, path ratios and class count.
        deploy: plain 3x3 conv + bias + ReLU blocks (the re-parameterised form) instead of the
            multi-branch training blocks.
        upsample_logits: return logits bilinearly upsampled to the input size.
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        sync_batchnorm: synchronise BN statistics across replicas (tf.distribute).
    Inputs are float NHWC images already normalised with the ImageNet mean and std.
    """
    if not isinstance(arch, Arch):
        raise TypeError(f"build_model expects an Arch, got {type(arch).__name__}: {arch!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {input_shape!r}")
    image = keras.Input(shape=input_shape, name="image")
    paths = []
    for p, ratio in enumerate(arch.ratios, start=1):
        paths.append(image if ratio == 1.0 else BilinearResize(scale=ratio, name=f"path{p}_resize")(image))

    for s, (depth, width, stride) in enumerate(zip(arch.depth, arch.width, STAGE_STRIDES), start=1):
        for p in range(len(paths)):
            x = paths[p]
            for b in range(1, depth + 1):
                x = RepConvBlock(
                    width, strides=stride if b == 1 else 1, deploy=deploy,
                    synchronized_bn=sync_batchnorm, name=block_name(p + 1, s, b),
                )(x)
            paths[p] = x
        if s in INTERACTION_AFTER_STAGES and len(paths) > 1:
            paths = list(PathInteraction(name=f"interaction_stage{s}")(paths))

    if len(paths) > 1:
        upsampled = [BilinearResize(name=f"path{p}_upsample")([x, paths[0]]) for p, x in enumerate(paths[1:], start=2)]
        features = keras.layers.Concatenate(axis=-1, name="concat")([paths[0], *upsampled])
    else:
        features = paths[0]
    logits = keras.layers.Conv2D(arch.num_classes, 1, use_bias=True, name="head")(features)
    if upsample_logits:
        logits = BilinearResize(name="logits_upsample")([logits, image])
    return keras.Model(image, logits, name=name or f"lpsnet_{arch.hash}{'_deploy' if deploy else ''}")


def arch_from_model(model: keras.Model) -> Arch:
    """Recover the :class:`Arch` of a model built by :func:`build_model` from its layers."""
    blocks = {}
    ratios = {}
    for layer in model.layers:
        parts = layer.name.split("_")
        if isinstance(layer, RepConvBlock) and len(parts) == 3 and parts[0].startswith("path"):
            p, s, b = int(parts[0][4:]), int(parts[1][5:]), int(parts[2][5:])
            blocks[(p, s, b)] = layer.filters
        elif isinstance(layer, BilinearResize) and layer.name.endswith("_resize"):
            ratios[int(parts[0][4:])] = layer.scale
    if not blocks:
        raise ValueError(f"model {model.name!r} has no LPS-Net blocks (path<p>_stage<s>_block<b>)")
    num_paths = max(p for p, _, _ in blocks)
    depth = tuple(max(b for (p, s, b) in blocks if p == 1 and s == st) for st in range(1, 6))
    width = tuple(blocks[(1, st, 1)] for st in range(1, 6))
    resolution = tuple(ratios.get(p, 1.0) for p in range(1, num_paths + 1))
    head = model.get_layer("head")
    return Arch(depth, width, resolution, num_classes=head.filters)


def load_weights_file(path, arch: Arch, input_shape=None) -> keras.Model:
    """The model stored in a weights file: a ``.keras`` model as saved (training or deploy form),
    or official LPS-Net weights (``.pth`` / ``.pt`` / ``.npz``) loaded into a deploy model of ``arch``.

    Raises FileNotFoundError or ValueError naming the file; callers check the architecture.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        try:
            return keras.saving.load_model(str(path), compile=False)
        except Exception as e:  # noqa: BLE001 - keras raises many types for a bad archive
            raise ValueError(f"{path}: not a loadable .keras model ({type(e).__name__}: {e})") from None
    if suffix in (".pth", ".pt", ".npz"):
        from lps_keras.official import load_official_weights

        deploy = build_model(arch, deploy=True, input_shape=input_shape or (None, None, 3))
        load_official_weights(deploy, str(path))
        return deploy
    raise ValueError(f"{path}: unknown weights format {suffix!r}; expected .keras, .pth or .npz")
