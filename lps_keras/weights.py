"""Weights files and the deploy <-> training weight mapping.

- :func:`load_weights_file`: the model in a ``.keras`` file (training or deploy form) or a family's
  published weights (``.pth`` / ``.pt`` / ``.npz``: official LPS-Net, see :mod:`lps_keras.official`,
  or the NDNet authors') as a model of the family (an :class:`LPSNet` for LPS-Net).
- :func:`init_weights`: initialise a model from such a file, or from an ImageNet-pretrained
  :class:`~lps_keras.classifier.LPSClassifier` (``pretrain.py``), by layer name, a deploy-form
  source initialising a training-form model as the equivalent multi-branch block.
- :func:`prepare_deploy_model`: the (reference, deploy) pair an export is made and verified from.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from lps_keras.arch import Arch
from lps_keras.classifier import LPSClassifier
from lps_keras.errors import LPSError
from lps_keras.families import build, config_of, describe, family_of_config, fuse, register_models, with_dtype
from lps_keras.layers import RepConvBlock
from lps_keras.model import LPSNet, build_model

__all__ = ["WeightsError", "init_weights", "is_deploy", "load_weights_file", "prepare_deploy_model"]


class WeightsError(LPSError, ValueError):
    """A weights file cannot initialise a model; the message names the file."""


def is_deploy(model) -> bool:
    """True when ``model`` is in deploy (fused) form: a family model built with ``deploy=True``, or a
    plain graph whose re-parameterisable blocks are all one 3x3 conv + bias."""
    if getattr(model, "family_config", None) is not None:
        return bool(model.deploy)
    blocks = [layer for layer in model.layers if isinstance(layer, RepConvBlock)]
    return bool(blocks) and all(b.deploy for b in blocks)


def load_weights_file(path, arch, input_shape=None, classifier: bool = False) -> keras.Model:
    """The model stored in a weights file: a ``.keras`` model as saved (training or deploy form),
    or a family's published weights (``.pth`` / ``.pt`` / ``.npz``: the official LPS-Net layout, or
    the NDNet authors') loaded into a model of ``arch`` (any family's config).
    With ``classifier=True`` a ``.keras`` file holding a pretrained :class:`LPSClassifier` (or its
    backbone) is returned as it is; otherwise such a file is refused naming what it is.

    Raises FileNotFoundError or ValueError naming the file; callers check the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        register_models()  # a model of any family loads as its class
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as e:  # noqa: BLE001 - keras raises many types for a bad archive
            raise WeightsError(f"{path}: not a loadable .keras model ({type(e).__name__}: {e})") from None
        model = _float32(model)
        if isinstance(model, LPSClassifier):
            if classifier:
                return model
            raise WeightsError(f"{path}: an ImageNet classifier from pretrain.py, not a segmentation model; "
                             "it can only initialise one (train.py --init)")
        if getattr(model, "family", "lps") != "lps":
            return model  # another family's model carries its config; the caller compares it
        return _as_lpsnet(model, arch, path)
    if suffix in (".pth", ".pt", ".npz"):
        family = family_of_config(arch)
        # LPS-Net's official layout is its deploy form; other families' authors publish training forms.
        model = family.build(arch, deploy=family.name == "lps", input_shape=input_shape or (None, None, 3))
        family.load_published_weights(model, str(path))
        return model
    raise WeightsError(f"{path}: unknown weights format {suffix!r}; expected .keras, .pth or .npz")


def _float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32. A model saved by a ``mixed_bfloat16`` training run keeps that policy in
    its layers, and loaded as saved it computes in bf16: an fp32 export verified against it failed at 2.6% (a
    CamVid-trained Table 4 network). Family models are rebuilt in float32 with the same weights
    (:func:`lps_keras.families.with_dtype`); others (a pretrained classifier) only initialise weights."""
    policies = {getattr(getattr(x, "dtype_policy", None), "name", "float32") for x in (model, *model.layers)}
    if policies <= {"float32"} or getattr(model, "family_config", None) is None:
        return model
    return with_dtype(model, "float32")


def _as_lpsnet(model: keras.Model, arch: Arch, path) -> LPSNet:
    """``model`` as an :class:`LPSNet` of ``arch``.

    ``.keras`` files saved before models carried their Arch hold a plain functional graph: it is
    rebuilt as an :class:`LPSNet` of ``arch`` (the caller's expected arch) and its weights copied
    layer by layer, so an architecture that differs shows up as a layer or shape mismatch.
    """
    if isinstance(model, LPSNet):
        return model
    upsample = any(layer.name == "logits_upsample" for layer in model.layers)
    rebuilt = build_model(arch, deploy=is_deploy(model), upsample_logits=upsample, input_shape=model.input_shape[1:])
    source = {layer.name: layer for layer in model.layers if layer.weights}
    target = {layer.name: layer for layer in rebuilt.layers if layer.weights}
    mismatch = f"{path}: the model's architecture does not match the recipe's {arch}"
    if set(source) != set(target):
        raise WeightsError(mismatch)
    for name, layer in target.items():
        weights = source[name].get_weights()
        if [w.shape for w in weights] != [tuple(v.shape) for v in layer.weights]:
            raise WeightsError(f"{mismatch} (layer {name})")
        layer.set_weights(weights)
    return rebuilt


def prepare_deploy_model(arch, weights=None, input_shape=(None, None, 3)):
    """(reference_model, deploy_model) for ``arch`` from ``weights``.

    ``weights``: None (random init; the caller warns), a ``.keras`` file in training or deploy form
    (detected from its blocks; the stored architecture must equal ``arch``), or official
    weights (``.pth`` / ``.npz``) loaded into a deploy model. The reference model is the one the
    export is verified against: the training-form model when there is one, so verification also
    covers the re-parameterisation.
    """

    if weights is None:
        model = build(arch, deploy=False, input_shape=input_shape)
        return model, fuse(model)
    model = load_weights_file(weights, arch, input_shape)
    saved = config_of(model)
    if saved != arch:
        detail = (saved.differences(arch, ("weights", "recipe")) if isinstance(saved, Arch)
                  else f"{describe(saved)} vs {describe(arch)}")
        raise WeightsError(f"{weights}: the weights' architecture does not match the recipe's: {detail}")
    return model, (model if is_deploy(model) else fuse(model))


def init_weights(model: keras.Model, path, verbose: bool = True) -> dict:
    """Initialise ``model`` from a ``.keras`` checkpoint, official LPS-Net weights (``.pth`` / ``.npz``)
    or an ImageNet-pretrained classifier or backbone (``pretrain.py``'s ``backbone.keras`` / ``last.keras``).

    Weights are matched by layer name (the names are shared by the training and deploy forms and
    by the classifier's backbone) and shape; layers of other shapes (e.g. a head with another class
    count) and layers the source lacks (the segmentation head, from a classifier) are left as they
    are and reported. A classifier must have the model's depth, width and path ratios.

    A deploy-form source block (one 3x3 conv with bias) initialises a training block as the
    equivalent multi-branch block in inference mode: the kernel goes to the 3x3 conv, the
    bias to that branch's BN beta with identity statistics (gamma 1, mean 0, var 1 - eps), the
    1x1 kernel is zeroed and the identity branch's BN gamma is 0.
    """
    try:
        source = load_weights_file(path, config_of(model), classifier=True)
    except (OSError, ValueError, ImportError) as e:
        raise WeightsError(str(e)) from None
    if isinstance(source, LPSClassifier):
        target = config_of(model)
        if not isinstance(target, Arch):  # pretrain.py trains LPS-Net backbones only
            raise WeightsError(f"{path}: an ImageNet-pretrained LPS-Net backbone initialises LPS-Net models only; "
                               f"this model is of family {family_of_config(target).name!r} (train.init)")
        backbone_arch = source.arch.with_num_classes(model.arch.num_classes)
        if backbone_arch != model.arch:
            raise WeightsError(f"{path}: the pretrained backbone's architecture does not match the model's: "
                               f"{backbone_arch.differences(model.arch, ('pretrained', 'model'))}")

    loaded, skipped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            skipped.append(f"{layer.name} (not in source)")
            continue
        if isinstance(layer, RepConvBlock) and isinstance(src, RepConvBlock) and src.deploy and not layer.deploy:
            kernel, bias = src.conv.get_weights()
            if tuple(kernel.shape) != tuple(layer.conv.kernel.shape):
                skipped.append(f"{layer.name} (shape {kernel.shape} vs {tuple(layer.conv.kernel.shape)})")
                continue
            layer.conv.kernel.assign(kernel)
            _set_bn(layer.bn, gamma=1.0, beta=bias)
            if layer.conv_1x1 is not None:
                layer.conv_1x1.kernel.assign(np.zeros(layer.conv_1x1.kernel.shape, "float32"))
                _set_bn(layer.bn_1x1, gamma=1.0, beta=0.0)
            if layer.bn_identity is not None:
                _set_bn(layer.bn_identity, gamma=0.0, beta=0.0)
            loaded.append(layer.name)
            continue
        src_w, dst_w = src.get_weights(), layer.get_weights()
        if len(src_w) != len(dst_w) or any(a.shape != b.shape for a, b in zip(src_w, dst_w)):
            skipped.append(f"{layer.name} (weights {[a.shape for a in src_w]} vs {[b.shape for b in dst_w]})")
            continue
        layer.set_weights(src_w)
        loaded.append(layer.name)
    if not loaded:
        raise WeightsError(f"no layer of {path} matches the model (skipped: {', '.join(skipped[:5])})")
    names = {layer.name for layer in model.layers}
    unused = [layer.name for layer in source.layers if layer.weights and layer.name not in names]
    if verbose:
        print(f"init: {len(loaded)} layers from {path}: {', '.join(loaded)}"
              + (f"; skipped (left as initialised): {', '.join(skipped)}" if skipped else "")
              + (f"; not used from the file: {', '.join(unused)}" if unused else ""))
    return {"path": str(path), "loaded": loaded, "skipped": skipped, "unused": unused}


def _set_bn(bn, gamma, beta):
    c = bn.moving_mean.shape[0]
    bn.gamma.assign(np.broadcast_to(np.asarray(gamma, "float32"), (c,)))
    bn.beta.assign(np.broadcast_to(np.asarray(beta, "float32"), (c,)))
    bn.moving_mean.assign(np.zeros((c,), "float32"))
    # var + eps = 1, so the BN is exactly the identity in inference mode.
    bn.moving_variance.assign(np.full((c,), 1.0 - bn.epsilon, "float32"))
