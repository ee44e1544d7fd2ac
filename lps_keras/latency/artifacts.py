"""What each latency backend times, built once per candidate and cached: :class:`ArtifactStore`.

Artefacts of the deploy network (random weights; latency does not depend on them), one entry each in the
kind table (:func:`register_artifact_kind`: the name a backend entry's ``artifact`` field gives, the file
or directory inside a store entry, and what an artefact of the kind depends on):

=============  =====================================================================================
``savedmodel`` static-shape SavedModel of the bare network (``serving_default``: float32
               ``image`` [N,H,W,3] -> ``logits``), the input of TF-TRT
``onnx``       tf2onnx export of the same graph (onnxruntime, OpenVINO and TensorRT start from it)
``openvino``   OpenVINO IR (``model.xml``/``.bin``, fp32 weights) converted from the ONNX file (export.py
               converts the SavedModel: the plugin runs the same graph, with the same logits; tested)
``litert``     a ``.tflite`` converted from the SavedModel (LiteRT converter, at the timed precision)
``tftrt``      the SavedModel after ``TrtGraphConverterV2`` convert -> build -> save
``tensorrt``   a serialized TensorRT 10 engine built from the ONNX file
=============  =====================================================================================

Each lives in ``<root>/<arch hash>-<kind>-<precision>-<NxHxWxC>/`` with a ``meta.json`` saying
what it is and which library versions made it; an entry made by other versions (or on another
GPU) is rebuilt. Building happens in a staging directory beside it, renamed into place when
complete, so a failed or killed conversion leaves nothing a later run could mistake for an
artefact; a failure raises one :class:`LatencyError` naming the arch and the backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Optional

import numpy as np

from lps_keras import fileio
from lps_keras.latency.stats import LatencyError


@dataclasses.dataclass(frozen=True)
class ArtifactKind:
    """One kind of artefact: ``filename`` is the file or directory inside a store entry that is the artefact
    proper; ``stamp()`` the library versions (and, for GPU engines, the device) an artefact of this kind
    depends on: a stored one made with other ones is rebuilt."""

    name: str
    filename: str
    summary: str
    stamp: Callable[[], dict]


_KINDS: dict[str, ArtifactKind] = {}
_FILENAMES: dict[str, str] = {}
#: kind -> the file or directory inside an entry that is the artefact proper (a live view of the table).
ARTIFACT_NAMES = MappingProxyType(_FILENAMES)


def register_artifact_kind(kind: ArtifactKind) -> ArtifactKind:
    """Add (or replace) an artefact kind; a backend entry names it in its ``artifact`` field."""
    if not (kind.name and kind.filename and kind.summary and callable(kind.stamp)):
        raise ValueError(f"artefact kind {kind.name!r} is incomplete: it needs a name, a filename, a summary "
                         f"and a stamp function")
    _KINDS[kind.name] = kind
    _FILENAMES[kind.name] = kind.filename
    return kind


def get_artifact_kind(name: str) -> ArtifactKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise LatencyError(f"unknown artefact kind {name!r}; known: {', '.join(_KINDS)}") from None

#: ``convert(source, out, precision, input_shape)``: write the artefact ``out`` from ``source``.
Converter = Callable[[Path, Path, str, tuple], object]


def shape_text(input_shape) -> str:
    return "x".join(str(int(v)) for v in input_shape)


class ArtifactStore:
    """Cached per-backend artefacts under ``root`` (see the module docstring)."""

    def __init__(self, root):
        self.root = Path(root)

    @classmethod
    def beside(cls, cache_path) -> ArtifactStore:
        """The store beside a latency cache file: ``latency_cache.json`` -> ``latency_cache_artifacts/``."""
        cache_path = Path(cache_path)
        return cls(cache_path.with_name(f"{cache_path.stem}_artifacts"))

    def entry(self, ident: str, kind: str, precision: str, input_shape) -> Path:
        return self.root / f"{ident}-{kind}-{precision}-{shape_text(input_shape)}"

    def path(self, ident: str, kind: str, precision: str, input_shape) -> Path:
        return self.entry(ident, kind, precision, input_shape) / get_artifact_kind(kind).filename

    def get_or_build(self, ident: str, label: str, kind: str, precision: str, input_shape,
                     build: Callable[[Path], object], stamp: Optional[dict] = None) -> Path:
        """The artefact's path, building it with ``build(path)`` first unless a matching one exists.

        ``stamp`` (library versions, device) must equal the one stored with the entry, else the
        entry is rebuilt. ``label`` names the network in errors (``"{1,1,1,1,1} ... (3f2a...)"``).
        """
        stamp = dict(stamp or {})
        entry = self.entry(ident, kind, precision, input_shape)
        filename = get_artifact_kind(kind).filename
        target = entry / filename
        meta_file = entry / "meta.json"
        if meta_file.exists() and target.exists():
            try:
                if json.loads(meta_file.read_text()).get("stamp") == stamp:
                    return target
            except ValueError:
                pass  # unreadable meta: rebuild
        self.root.mkdir(parents=True, exist_ok=True)
        fileio.remove_stale_temps(self.root)  # staging directories of builds that were killed
        staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix(entry.name), dir=self.root))
        try:
            t0 = time.perf_counter()
            try:
                build(staging / filename)
            except Exception as e:  # noqa: BLE001 - one error naming the arch and the backend
                detail = " ".join(str(e).split())[:500] or type(e).__name__
                raise LatencyError(f"building the {kind} artefact ({precision}, {shape_text(input_shape)}) "
                                   f"of {label} failed: {type(e).__name__}: {detail}") from e
            if not (staging / filename).exists():
                raise LatencyError(f"building the {kind} artefact of {label} wrote nothing at "
                                   f"{filename}")
            meta = {"ident": ident, "network": label, "kind": kind, "precision": precision,
                    "input_shape": [int(v) for v in input_shape], "stamp": stamp,
                    "build_seconds": round(time.perf_counter() - t0, 3), "time": time.time()}
            (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            fileio.publish_tree(staging)
            _replace_dir(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _replace_dir(src: Path, dst: Path):
    if dst.exists():  # stale (other versions) or half-removed: set it aside, then swap
        old = dst.with_name(fileio.temp_prefix(dst.name) + "old")
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(src, dst)
    except OSError:
        if not (dst / "meta.json").exists():  # not a concurrent builder's complete entry
            raise


# --------------------------------------------------------------------------- builders
def write_static_savedmodel(model, input_shape, out_dir) -> None:
    """``model`` as a static-shape SavedModel: ``serving_default(image: float32 input_shape) -> logits``.

    The bare network, as the official latency script exports it: no normalisation, resize to
    the input size, softmax or argmax (those belong to :func:`lps_keras.export.export_savedmodel`).
    Its weights are graph constants, as in the exported SavedModel
    (:func:`lps_keras.export.serving.constant_network` says why that matters to oneDNN).
    """
    import keras
    import tensorflow as tf

    from lps_keras.export.serving import constant_network

    spec = tf.TensorSpec(tuple(int(v) for v in input_shape), tf.float32, name="image")
    network = constant_network(model, tuple(int(v) for v in input_shape))

    def forward(image):
        return {"logits": network(image)}

    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", forward, input_signature=[spec])
    archive.write_out(str(out_dir), verbose=False)


def write_onnx(model, input_shape, out_path) -> None:
    """The same bare network as ONNX (tf2onnx, opset 17, static input shape)."""
    from lps_keras.export.onnx import export_onnx

    export_onnx(model, out_path, input_shape=tuple(int(v) for v in input_shape), verify=False)


def write_openvino_ir(onnx_path, xml_path, precision: str = "fp32", input_shape=None) -> None:
    """ONNX -> OpenVINO IR; weights kept in fp32 (``save_model`` would halve them by default).

    ``precision="int8"``: NNCF post-training quantisation calibrated on random images of
    ``input_shape``; for latency the graph is what matters (real calibration changes the scales,
    not the work). ``export.py --openvino int8`` calibrates on real training images.
    """
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        import nncf

        rng = np.random.default_rng(0)
        items = [rng.normal(0, 1, tuple(int(v) for v in input_shape)).astype(np.float32) for _ in range(8)]
        model = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def convert_tftrt_default(source, out, precision, input_shape) -> None:
    """The real TF-TRT step: :func:`lps_keras.export.convert_tftrt` on the float32 SavedModel."""
    from lps_keras.export.tensorrt import convert_tftrt

    convert_tftrt(source, out, precision=precision, input_shape=input_shape, input_dtype="float32")


def build_tensorrt_default(source, out, precision, input_shape) -> None:
    """The real TensorRT step: :func:`lps_keras.export.build_tensorrt_engine` (static shapes)."""
    from lps_keras.export.tensorrt import build_tensorrt_engine

    build_tensorrt_engine(source, out, precision)


def artifact_stamp(kind: str) -> dict:
    """Versions (and, for engines, the GPU) an artefact of ``kind`` depends on."""
    return get_artifact_kind(kind).stamp()


def _tf_stamp(with_tf2onnx: bool = False, **extra) -> Callable[[], dict]:
    def stamp() -> dict:
        import keras
        import tensorflow as tf

        values = {"tensorflow": tf.__version__, "keras": keras.__version__, **extra}
        if with_tf2onnx:
            import tf2onnx

            values["tf2onnx"] = tf2onnx.__version__
        return values
    return stamp


def _backend_stamp(backend: str, with_device: bool = False) -> Callable[[], dict]:
    def stamp() -> dict:
        from lps_keras.latency.backends import device_name, library_versions

        return {**library_versions(backend), **({"device": device_name(backend)} if with_device else {})}
    return stamp


for _kind in (
    # weights: written before as variables, now as constants (a cached one of the old kind is rebuilt)
    ArtifactKind("savedmodel", "saved_model", "static-shape SavedModel of the bare network",
                 _tf_stamp(weights="constants")),
    ArtifactKind("onnx", "model.onnx", "tf2onnx export of the bare network", _tf_stamp(with_tf2onnx=True)),
    ArtifactKind("openvino", "model.xml", "OpenVINO IR converted from the ONNX file", _backend_stamp("openvino")),
    ArtifactKind("litert", "model.tflite", ".tflite converted from the SavedModel", _backend_stamp("litert")),
    ArtifactKind("tftrt", "saved_model", "TF-TRT converted SavedModel", _backend_stamp("tftrt", with_device=True)),
    ArtifactKind("tensorrt", "model.engine", "TensorRT 10 engine built from the ONNX file",
                 _backend_stamp("tensorrt", with_device=True)),
):
    register_artifact_kind(_kind)
