"""Weights in the layout of the official PyTorch LPS-Net (``torch.save(net.state_dict())``).

Key mapping (official indices are 0-based, ours 1-based; path 1 is the highest resolution):

=====================================  ==========================================================
official key                           Keras
=====================================  ==========================================================
``{net}.stages.{s-1}.{b-1}.0.weight``  ``path{p}_stage{s}_block{b}`` conv kernel, ``[O,I,3,3]`` ->
                                       ``[3,3,I,O]``
``{net}.stages.{s-1}.{b-1}.0.bias``    its conv bias (deploy form only)
``{net}.stages.{s-1}.{b-1}.1.*``       BatchNorm ``weight, bias, running_mean, running_var``
                                       (training form only, folded in with eps 1e-5;
                                       ``num_batches_tracked`` is accepted and ignored)
``head.weight`` / ``head.bias``        ``head`` kernel ``[N,C,1,1]`` -> ``[1,1,C,N]`` / bias
=====================================  ==========================================================

``{net}`` is ``net`` for one path, ``netH``/``netL`` for two and ``net1``/``net2``/``net3`` for
three. The official training form has no 1x1/identity branches (those are this project's
re-parameterisable additions), so both official forms map onto our *deploy* model.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import keras
import numpy as np

from lps_keras.errors import LPSError
from lps_keras.fileio import atomic_path
from lps_keras.layers import RepConvBlock

#: Attribute names of the per-path ``BaseNet`` in the official 1-, 2- and 3-path models.
PATH_PREFIXES = {1: ("net",), 2: ("netH", "netL"), 3: ("net1", "net2", "net3")}
#: ``nn.BatchNorm2d`` default epsilon, which the official model uses.
OFFICIAL_BN_EPS = 1e-5
BN_KEYS = ("weight", "bias", "running_mean", "running_var")

_BLOCK_NAME = re.compile(r"^path(\d+)_stage(\d+)_block(\d+)$")
_OFFICIAL_BLOCK = re.compile(r"^(net|netH|netL|net1|net2|net3)\.stages\.(\d+)\.(\d+)\.([01])\.(\w+)$")
_WRAPPER_KEYS = ("state_dict", "model", "net_state_dict", "model_state_dict")


class OfficialWeightsError(LPSError, ValueError):
    """An official state dict does not fit the model; the message names the key."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What :func:`load_official_weights` did (like torch's ``load_state_dict`` result)."""

    form: str  # "deploy" | "training"
    loaded_layers: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]


# --------------------------------------------------------------------------- key mapping
def official_block_prefix(num_paths: int, path: int, stage: int, block: int) -> str:
    """``official_block_prefix(2, 1, 4, 3) == "netH.stages.3.2"`` (our indices are 1-based)."""
    if num_paths not in PATH_PREFIXES:
        raise ValueError(f"num_paths must be 1, 2 or 3, got {num_paths!r}")
    if not 1 <= path <= num_paths:
        raise ValueError(f"path must be in 1..{num_paths}, got {path!r}")
    return f"{PATH_PREFIXES[num_paths][path - 1]}.stages.{stage - 1}.{block - 1}"


def keras_block_name(official_key: str) -> str:
    """The Keras block a ``*.stages.*`` official key belongs to, e.g. ``path1_stage4_block3``."""
    m = _OFFICIAL_BLOCK.match(official_key)
    if not m:
        raise ValueError(f"not an official block key: {official_key!r}")
    prefix, stage, block = m.group(1), int(m.group(2)), int(m.group(3))
    path = next(ps.index(prefix) + 1 for ps in PATH_PREFIXES.values() if prefix in ps)
    return f"path{path}_stage{stage + 1}_block{block + 1}"


def official_key_map(model: keras.Model, form: str = "deploy") -> dict[str, tuple[str, str]]:
    """Every official key the model expects -> ``(keras layer name, role)``.

    ``role`` is ``conv_weight``, ``conv_bias``, ``bn_<name>`` or ``head_weight``/``head_bias``.
    """
    if form not in ("deploy", "training"):
        raise ValueError(f"form must be 'deploy' or 'training', got {form!r}")
    blocks, num_paths = _blocks(model)
    mapping = {}
    for (p, s, b), layer in sorted(blocks.items()):
        prefix = official_block_prefix(num_paths, p, s, b)
        mapping[f"{prefix}.0.weight"] = (layer.name, "conv_weight")
        if form == "deploy":
            mapping[f"{prefix}.0.bias"] = (layer.name, "conv_bias")
        else:
            for k in BN_KEYS:
                mapping[f"{prefix}.1.{k}"] = (layer.name, f"bn_{k}")
    mapping["head.weight"] = ("head", "head_weight")
    mapping["head.bias"] = ("head", "head_bias")
    return mapping


def _blocks(model):
    blocks = {}
    for layer in model.layers:
        m = _BLOCK_NAME.match(layer.name)
        if m and isinstance(layer, RepConvBlock):
            blocks[tuple(int(g) for g in m.groups())] = layer
    if not blocks:
        raise OfficialWeightsError(f"model {model.name!r} has no LPS-Net blocks (path<p>_stage<s>_block<b>)")
    num_paths = max(p for p, _, _ in blocks)
    if num_paths not in PATH_PREFIXES:
        raise OfficialWeightsError(f"model {model.name!r} has {num_paths} paths; the official models have 1 to 3")
    return blocks, num_paths


def _require_deploy(model, what):
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} expects a keras.Model, got {type(model).__name__}")
    training = [layer.name for layer in model.layers if isinstance(layer, RepConvBlock) and not layer.deploy]
    if training:
        raise OfficialWeightsError(
            f"{what} needs a deploy model, but {model.name!r} is in training form (block {training[0]!r} has "
            "BN and 1x1 branches): build it with build_model(arch, deploy=True), or convert it first with "
            "lps_keras.reparam.reparameterize(model)"
        )


# --------------------------------------------------------------------------- reading
def read_state_dict(source) -> dict[str, np.ndarray]:
    """A state dict as ``{key: float/int numpy array}`` from a mapping, ``.pth``/``.pt`` or ``.npz``.

    Mappings may hold numpy arrays or torch tensors. A checkpoint that wraps the state dict
    (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.`` prefix are unwrapped.
    """
    if isinstance(source, (str, os.PathLike)):
        raw = _read_file(Path(source))
    elif isinstance(source, dict) or hasattr(source, "items"):
        raw = dict(source.items())
    else:
        raise TypeError(f"expected a state dict (mapping) or a path to .pth/.npz, got {type(source).__name__}")
    for key in _WRAPPER_KEYS:
        if not any(str(k).endswith("head.weight") for k in raw) and isinstance(raw.get(key), dict):
            raw = dict(raw[key])
            break
    if raw and all(isinstance(k, str) and k.startswith("module.") for k in raw):
        raw = {k[len("module."):]: v for k, v in raw.items()}
    return {str(k): _to_numpy(k, v) for k, v in raw.items()}


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise OfficialWeightsError(f"official weights file not found: {str(path)!r}")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".pth.tar") else path.suffix
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix in (".pth", ".pt", ".pth.tar", ".bin"):
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"reading {str(path)!r} needs PyTorch, which is an optional dependency: `pip install torch` "
                "(or convert it to .npz with numpy: np.savez(out, **{k: v.numpy() for k, v in sd.items()}))"
            ) from None
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
            if "weights_only" in str(e) or type(e).__name__ == "UnpicklingError":
                raise OfficialWeightsError(
                    f"{str(path)!r} is not a plain state dict: refused to unpickle it "
                    "(it holds Python objects beyond tensors, which could run code on loading)") from None
            raise OfficialWeightsError(f"{str(path)!r}: cannot read it as a PyTorch file ({type(e).__name__}: {e})") \
                from None
    raise OfficialWeightsError(f"unsupported weights file {str(path)!r}: expected .pth, .pt or .npz")


def _to_numpy(key, value):
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # any unconvertible value is a bad entry
        raise OfficialWeightsError(f"state dict entry {key!r} is not an array: {type(value).__name__}") from e


def detect_form(state_dict: dict) -> str:
    """``"training"`` if the blocks carry BatchNorm (``*.1.running_mean``), else ``"deploy"``."""
    has_bn = any(_OFFICIAL_BLOCK.match(k) and k.endswith(".1.running_mean") for k in state_dict)
    has_bias = any(_OFFICIAL_BLOCK.match(k) and k.endswith(".0.bias") for k in state_dict)
    if has_bn and has_bias:
        example_bn = next(k for k in state_dict if _OFFICIAL_BLOCK.match(k) and k.endswith(".1.running_mean"))
        example_bias = next(k for k in state_dict if _OFFICIAL_BLOCK.match(k) and k.endswith(".0.bias"))
        raise OfficialWeightsError(
            f"state dict mixes the training form ({example_bn!r}) and the deploy form ({example_bias!r})"
        )
    return "training" if has_bn else "deploy"


# --------------------------------------------------------------------------- loading
def load_official_weights(model: keras.Model, state_dict_or_path, strict: bool = True) -> LoadResult:
    """Load official LPS-Net weights into a deploy model built by ``build_model(arch, deploy=True)``.

    Args:
        model: the deploy model; its depth, widths, path count and classes must match the weights.
        state_dict_or_path: a mapping of official keys to numpy arrays / torch tensors, or a path to
            a ``.pth`` (needs torch) or ``.npz`` with the same keys. Deploy form (conv weight + bias)
            and training form (conv + BatchNorm, folded here with eps 1e-5) are both accepted.
        strict: raise on missing or unexpected keys. With ``strict=False`` they are only reported in
            the result and layers without weights keep theirs. Shape mismatches always raise.

    Raises:
        OfficialWeightsError: training-form model, missing/unexpected keys (strict), shape mismatch.
    """
    _require_deploy(model, "load_official_weights")
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        # A file's errors name the file: "does not match model 'lpsnet'" alone does not say which
        # --weights was wrong. (Errors of reading it name it already.)
        sd = read_state_dict(state_dict_or_path)
        try:
            return _load_state_dict(model, sd, strict)
        except OfficialWeightsError as e:
            raise OfficialWeightsError(f"{os.fspath(state_dict_or_path)}: {e}") from None
    return _load_state_dict(model, read_state_dict(state_dict_or_path), strict)


def _load_state_dict(model, sd: dict, strict: bool) -> LoadResult:
    form = detect_form(sd)
    expected = official_key_map(model, form)
    ignorable = {k for k in sd if k.endswith(".num_batches_tracked") and _OFFICIAL_BLOCK.match(k)}
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected and k not in ignorable)
    if strict and (missing or unexpected):
        raise OfficialWeightsError(_key_report(model, form, missing, unexpected))

    # Group present keys per layer; check every shape before writing anything.
    per_layer: dict[str, dict[str, np.ndarray]] = {}
    for key, (layer_name, role) in expected.items():
        if key in sd:
            per_layer.setdefault(layer_name, {})[role] = (key, sd[key])
    updates = []
    for layer_name, entries in per_layer.items():
        layer = model.get_layer(layer_name)
        if layer_name == "head":
            kernel_var, bias_var = layer.kernel, layer.bias
        else:
            kernel_var, bias_var = layer.conv.kernel, layer.conv.bias
        k_shape = tuple(kernel_var.shape)
        want = {
            "conv_weight": (k_shape[3], k_shape[2], k_shape[0], k_shape[1]),
            "head_weight": (k_shape[3], k_shape[2], k_shape[0], k_shape[1]),
            "conv_bias": (k_shape[3],),
            "head_bias": (k_shape[3],),
        }
        want.update({f"bn_{k}": (k_shape[3],) for k in BN_KEYS})
        for role, (key, value) in entries.items():
            if tuple(value.shape) != want[role]:
                raise OfficialWeightsError(
                    f"shape mismatch for {key!r}: the state dict has {list(value.shape)}, the model "
                    f"({layer_name!r}) needs {list(want[role])}"
                )
        roles = set(entries)
        if layer_name != "head" and form == "training" and roles and roles != {"conv_weight"} | {
            f"bn_{k}" for k in BN_KEYS
        }:
            gone = sorted(k for k, (ln, _) in expected.items() if ln == layer_name and k not in sd)
            raise OfficialWeightsError(f"cannot fold BatchNorm into {layer_name!r}: missing {gone}")
        weight_role = "head_weight" if layer_name == "head" else "conv_weight"
        bias_role = "head_bias" if layer_name == "head" else "conv_bias"
        kernel = None
        if weight_role in entries:
            kernel = entries[weight_role][1].astype(np.float64).transpose(2, 3, 1, 0)
        bias = entries[bias_role][1].astype(np.float64) if bias_role in entries else None
        if form == "training" and layer_name != "head" and kernel is not None:
            bn = {k: entries[f"bn_{k}"][1].astype(np.float64) for k in BN_KEYS}
            kernel, bias = fold_batchnorm(kernel, None, **bn)
        updates.append((kernel_var, kernel, bias_var, bias))

    for kernel_var, kernel, bias_var, bias in updates:
        if kernel is not None:
            kernel_var.assign(kernel.astype(kernel_var.dtype))
        if bias is not None:
            bias_var.assign(bias.astype(bias_var.dtype))
    return LoadResult(form, tuple(sorted(per_layer)), tuple(missing), tuple(unexpected))


def fold_batchnorm(kernel, conv_bias, weight, bias, running_mean, running_var, eps=OFFICIAL_BN_EPS):
    """Fold inference BatchNorm into a conv with kernel ``(..., C_out)``; returns (kernel, bias)."""
    scale = weight / np.sqrt(running_var + eps)
    b = 0.0 if conv_bias is None else conv_bias
    return kernel * scale, (b - running_mean) * scale + bias


def _key_report(model, form, missing, unexpected, limit=8):
    def show(keys):
        head = ", ".join(repr(k) for k in keys[:limit])
        return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
    return (
        f"official {form}-form state dict does not match model {model.name!r} "
        f"(depth/width/paths/classes must be the same): " + "; ".join(parts)
    )


# --------------------------------------------------------------------------- export
def export_official_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The deploy model's weights as an official deploy-form state dict (float32 numpy, NCHW kernels).

    Load it in PyTorch with ``get_lpsnet(..., deploy=True).load_state_dict({k: torch.from_numpy(v) ...})``.
    """
    _require_deploy(model, "export_official_state_dict")
    blocks, num_paths = _blocks(model)
    out = {}
    for (p, s, b), layer in sorted(blocks.items()):
        prefix = official_block_prefix(num_paths, p, s, b)
        kernel, bias = (np.asarray(w) for w in layer.conv.get_weights())
        out[f"{prefix}.0.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        out[f"{prefix}.0.bias"] = bias.astype(np.float32)
    kernel, bias = (np.asarray(w) for w in model.get_layer("head").get_weights())
    out["head.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
    out["head.bias"] = bias.astype(np.float32)
    return out


def save_official_npz(model: keras.Model, path) -> Path:
    """Write :func:`export_official_state_dict` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise OfficialWeightsError(f"official weights are saved as .npz, got {str(path)!r}")
    state = export_official_state_dict(model)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **state)
    return path
