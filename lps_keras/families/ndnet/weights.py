"""Weights in the layout of the authors' PyTorch NDNet (``torch.save(net.state_dict())``).

The authors publish Cityscapes weights for their encoder-decoder NDNet45 (``Seg_NDNet/ndnet.pth`` in
github zgyang-hnu/NDNet), which is the ``ndnet45_ende`` preset at 19 classes::

    model = build_ndnet(FAMILY.config("ndnet45_ende"))
    load_ndnet_weights(model, "ndnet.pth")

Their models take RGB images scaled to [-1, 1], ``(x / 255 - 0.5) * 2`` (``dataset/cityscape.py``),
not ImageNet mean/std. Key mapping (the authors' stages ``block3/4/5`` are our stages 1/2/3, their
block indices 0-based, ours 1-based):

=================================================  ==============================================
authors' key                                       Keras layer (weights)
=================================================  ==============================================
``features.conv1.conv.weight``, ``.bn.*``          ``stem`` (ConvBN 3x3)
``features.block{s+2}.{b-1}.{c}.dwconv.weight``    ``stage{s}_block{b}_{c}_dw`` (depthwise)
``features.block{s+2}.{b-1}.{c}.pwconv.weight``    ``stage{s}_block{b}_{c}`` (ConvBN 1x1), with
``features.block{s+2}.{b-1}.{c}.bn.*``             ``c`` in ``conv1``, ``conv2``, ``shortcut``
``fusion.conv.weight``, ``fusion.bn.*``            ``fusion`` (ende only)
``seg.transform.dwconv.weight``                    ``head_dw``
``seg.transform.pwconv.weight``, ``.bn.*``         ``head_pw``
``seg.score.weight``, ``seg.score.bias``           ``head_score``
=================================================  ==============================================

``bn.*`` is ``weight, bias, running_mean, running_var`` (eps 1e-5 in both frameworks);
``num_batches_tracked`` and the training-only auxiliary head ``aux_seg.*`` are accepted and skipped.
Conv kernels ``[O, I, kh, kw]`` become ``[kh, kw, I, O]``, depthwise ``[C, 1, 3, 3]`` become
``[3, 3, C, 1]``. A deploy-form model is loaded through a training model of the same config and
then fused, so both forms give the same outputs.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from lps_keras.families.family import FamilyError
from lps_keras.families.layers import ConvBN, fuse_into
from lps_keras.families.ndnet.model import NDNet, build_ndnet
from lps_keras.official import OfficialWeightsError, read_state_dict

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
#: Keys that the authors' state dicts carry and that have no Keras counterpart.
SKIPPED = re.compile(r"(^aux_seg\.|\.num_batches_tracked$)")
_BLOCK = re.compile(r"^stage(\d)_block(\d+)_(conv1|conv2|shortcut)(_dw)?$")
_FIXED = {"stem": "features.conv1", "fusion": "fusion", "head_pw": "seg.transform", "head_dw": "seg.transform",
          "head_score": "seg.score"}


@dataclasses.dataclass(frozen=True)
class NDNetLoadResult:
    """What :func:`load_ndnet_weights` did (like torch's ``load_state_dict`` result)."""

    loaded_layers: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    skipped_keys: tuple[str, ...]  # num_batches_tracked and the auxiliary head


def authors_prefix(layer_name: str) -> str | None:
    """The authors' module path of a Keras layer with weights, e.g. ``stage1_block2_conv1`` ->
    ``features.block3.1.conv1``; ``None`` for layers without a counterpart."""
    if layer_name in _FIXED:
        return _FIXED[layer_name]
    m = _BLOCK.match(layer_name)
    if not m:
        return None
    stage, block, conv = int(m.group(1)), int(m.group(2)), m.group(3)
    return f"features.block{stage + 2}.{block - 1}.{conv}"


def ndnet_key_map(model: NDNet) -> dict[str, tuple[str, str]]:
    """Every authors' key a training-form ``model`` expects -> ``(keras layer name, role)``."""
    mapping = {}
    for layer in model.layers:
        prefix = authors_prefix(layer.name)
        if prefix is None or not layer.weights:
            continue
        if isinstance(layer, ConvBN):
            # The stem and fusion are StdConvBR (``.conv``); the 1x1s after a depthwise are ``.pwconv``.
            conv = "conv" if layer.name in ("stem", "fusion") else "pwconv"
            mapping[f"{prefix}.{conv}.weight"] = (layer.name, "kernel")
            for k in BN_KEYS:
                mapping[f"{prefix}.bn.{k}"] = (layer.name, f"bn_{k}")
        elif layer.name.endswith("_dw"):
            mapping[f"{prefix}.dwconv.weight"] = (layer.name, "depthwise")
        else:  # head_score: a plain conv with bias
            mapping[f"{prefix}.weight"] = (layer.name, "kernel")
            mapping[f"{prefix}.bias"] = (layer.name, "bias")
    return mapping


def load_ndnet_weights(model: NDNet, state_dict_or_path, strict: bool = True) -> NDNetLoadResult:
    """Load the authors' state dict (a mapping, ``.pth`` or ``.npz``) into ``model``.

    ``strict=True`` refuses missing and unexpected keys; a key whose shape does not fit is always
    refused. Errors are :class:`FamilyError` naming the key.
    """
    if not isinstance(model, NDNet):
        raise FamilyError(f"load_ndnet_weights expects an NDNet model, got {type(model).__name__}")
    try:
        state = read_state_dict(state_dict_or_path)
    except OfficialWeightsError as e:
        raise FamilyError(str(e)) from None
    if model.deploy:
        train = build_ndnet(model.family_config, input_shape=model.image_shape, dtype=model.policy_name)
        result = load_ndnet_weights(train, state, strict=strict)
        fuse_into(train, model)
        return result

    mapping = ndnet_key_map(model)
    skipped = sorted(k for k in state if k not in mapping and SKIPPED.search(k))
    unexpected = sorted(k for k in state if k not in mapping and not SKIPPED.search(k))
    missing = sorted(k for k in mapping if k not in state)
    if strict and missing:
        raise FamilyError(f"state dict is missing key {missing[0]!r} ({len(missing)} missing) for {model.name!r}")
    if strict and unexpected:
        raise FamilyError(f"state dict has unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected); "
                          f"it does not fit {model.name!r} (config {model.family_config.to_dict()})")

    layers = {layer.name: layer for layer in model.layers}
    by_layer: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for key, (layer_name, role) in mapping.items():
        if key in state:
            by_layer.setdefault(layer_name, {})[role] = (key, state[key])
    loaded = []
    for name, roles in by_layer.items():
        layer = layers[name]
        if isinstance(layer, ConvBN):
            targets = {"kernel": layer.conv.kernel, **{f"bn_{k}": v for k, v in zip(BN_KEYS, _bn_vars(layer))}}
        elif "depthwise" in roles:
            targets = {"depthwise": layer.kernel}
        else:
            targets = {"kernel": layer.kernel, "bias": layer.bias}
        for role, (key, value) in roles.items():
            variable = targets[role]
            value = _to_keras(key, role, value)
            if tuple(value.shape) != tuple(variable.shape):
                raise FamilyError(f"state dict key {key!r} has shape {list(np.shape(state[key]))}; layer "
                                  f"{name!r} needs {_torch_shape(role, variable.shape)}")
            variable.assign(value.astype(variable.dtype))
        loaded.append(name)
    return NDNetLoadResult(tuple(loaded), tuple(missing), tuple(unexpected), tuple(skipped))


def _bn_vars(layer: ConvBN):
    bn = layer.bn
    return bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance


def _to_keras(key: str, role: str, value) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if role in ("kernel", "depthwise"):
        if value.ndim != 4:
            raise FamilyError(f"state dict key {key!r} must be a 4-d conv weight, got shape {list(value.shape)}")
        # torch [O, I, kh, kw] -> Keras [kh, kw, I, O]; depthwise [C, 1, kh, kw] -> [kh, kw, C, 1].
        return value.transpose(2, 3, 1, 0) if role == "kernel" else value.transpose(2, 3, 0, 1)
    return value


def _torch_shape(role: str, keras_shape) -> list:
    s = tuple(keras_shape)
    if role == "kernel" and len(s) == 4:
        return [s[3], s[2], s[0], s[1]]
    if role == "depthwise":
        return [s[2], s[3], s[0], s[1]]
    return list(s)
