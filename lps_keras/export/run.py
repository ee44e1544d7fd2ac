"""``export_recipe``: everything ``export.py`` does, as one library call.

The recipe's ``export`` section says what to write (name, version, input size, outputs,
precision; the CLI's ``--version`` / ``--input-size`` / ``--outputs`` / ``--precision`` are
``--set export.*`` overrides). :class:`ExportOptions` holds the run's other inputs: the weights,
where to write, and which extra formats to build.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from lps_keras.errors import UsageError, check_path_name
from lps_keras.export.common import OutputExistsError
from lps_keras.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    weights: Optional[str] = None  # .keras (training or deploy form) or official .pth/.npz; None: random init
    output: Optional[str] = None  # model base directory; default savedmodels/<export.name or recipe name>
    overwrite: bool = False  # replace an existing version
    verify: bool = True  # fresh-process verification before the version is moved into place
    onnx: bool = False  # also write <output>/<version>.onnx and check onnxruntime parity
    opset: int = 17
    tensorrt: Optional[str] = None  # fp32 | fp16: also build a TensorRT 10 engine from the ONNX file
    tftrt: Optional[str] = None  # fp32 | fp16: also convert with TF-TRT (TF 2.17 line + GPU)
    parity_image: Optional[str] = None  # image for the bf16 parity report (default: a synthetic image)
    # Edge / CPU formats beside the version: <version>_litert_<p>.tflite, <version>_openvino_<p>.xml (+ .bin),
    # each with <stem>_accuracy.json (agreement and mIoU change against the fp32 SavedModel).
    litert: tuple[str, ...] = ()  # any of fp32, fp16, int8 (a single string is accepted)
    openvino: tuple[str, ...] = ()  # any of fp32, bf16, int8
    calibration_images: int = 100  # int8: training images for the representative dataset / NNCF
    edge_eval_images: Optional[int] = None  # accuracy report: first N validation images (None: all)

    def __post_init__(self):
        for name in ("litert", "openvino"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value or ()))

    def edge_requests(self) -> list[tuple[str, str]]:
        return [("litert", p) for p in self.litert] + [("openvino", p) for p in self.openvino]


def export_recipe(recipe: Recipe, options: ExportOptions = ExportOptions(),
                  log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> dict:
    """Export ``recipe``'s model as configured; returns what was written. Checks everything it can
    (existing version, static size for TF-TRT/TensorRT, backends, input files, memory) before exporting,
    and holds the model directory's lock while it writes (a second export of it stops at once)."""
    from lps_keras.export import savedmodel, tensorrt

    args = options
    arch = recipe.model_config()  # any family's config
    cfg = recipe.export
    # The name becomes savedmodels/<name>, TF Serving's model name and a URL path: no "../" (export.name is
    # checked with the recipe; the recipe's own name, its default, is checked here).
    name = check_path_name("export.name" if cfg.name else "recipe name (the default export.name)",
                           cfg.name or recipe.name)
    out_dir = Path(args.output or f"savedmodels/{name}")
    version = cfg.version
    input_size = cfg.input_size
    precision = cfg.precision
    target = out_dir / str(version)
    if target.exists() and not args.overwrite:
        raise OutputExistsError(f"{target} already exists; choose another --version or pass --overwrite")
    if args.tftrt and input_size is None:
        raise UsageError("--tftrt needs a static --input-size (e.g. 1024x2048)")
    if args.tftrt:
        tensorrt.require_tftrt()  # fail before spending minutes on the export
    if args.tensorrt:
        tensorrt.require_tensorrt()
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights!r} does not exist")
    if args.parity_image and not Path(args.parity_image).is_file():
        raise UsageError(f"--parity-image {args.parity_image!r} does not exist")
    edge_requests = args.edge_requests()
    if edge_requests:
        from lps_keras.export.edge import artefact_path, check_edge_requests
        from lps_keras.export.edge_report import check_calibration_split, edge_input_size

        check_edge_requests(edge_requests)  # unknown precision or missing package: fail before exporting
        edge_input_size(recipe)
        if args.edge_eval_images is not None and args.edge_eval_images < 1:
            raise UsageError(f"--edge-eval-images must be >= 1, got {args.edge_eval_images!r}")
        if any(p == "int8" for _, p in edge_requests):
            check_calibration_split(recipe, args.calibration_images)
        for fmt, p in edge_requests:
            if artefact_path(out_dir, version, fmt, p).exists() and not args.overwrite:
                raise OutputExistsError(f"{artefact_path(out_dir, version, fmt, p)} already exists; choose another "
                                      "--version or pass --overwrite")

    if input_size is not None and (args.verify or precision == "bf16" or args.onnx or args.tensorrt):
        # Verification (and the parity reports) run the network on an image of this size in this process
        # and a child: refuse before anything is written rather than die of a MemoryError half way.
        from lps_keras.memory import check_memory

        check_memory(savedmodel.export_memory_estimate(arch, input_size),
                     f"exporting with input size {input_size[0]}x{input_size[1]} (verification runs the network at it)",
                     "use a smaller --input-size, 'dynamic', or --no-verify")

    # One export.py at a time writes into a model directory: a second one writing the same version would
    # race for the rename. The lock file stays in <out_dir>, beside (never inside) the published versions.
    from lps_keras.fileio import DirectoryLock

    created = not out_dir.exists()
    lock = DirectoryLock(out_dir, "model directory").acquire()
    try:
        if target.exists() and not args.overwrite:  # written by a run that ended while this one started
            raise OutputExistsError(f"{target} already exists; choose another --version or pass --overwrite")
        return _export_locked(recipe, args, arch, name, out_dir, target, log, warn, edge_requests)
    finally:
        lock.release()
        if created:
            _remove_if_only_lock(out_dir)


def _remove_if_only_lock(out_dir: Path) -> None:
    """A failed first export leaves no ``savedmodels/<name>`` holding nothing but the lock file."""
    from lps_keras.fileio import LOCK_NAME

    try:
        if {p.name for p in out_dir.iterdir()} <= {LOCK_NAME}:
            (out_dir / LOCK_NAME).unlink(missing_ok=True)
            out_dir.rmdir()
    except OSError:
        pass  # another process has just started using it: leave it


def _export_locked(recipe, args, arch, name, out_dir, target, log, warn, edge_requests) -> dict:
    from lps_keras.export import precision as prec
    from lps_keras.export import savedmodel, serving, tensorrt
    from lps_keras.export.onnx import export_onnx
    from lps_keras.families import describe, family_of_config
    from lps_keras.weights import prepare_deploy_model

    cfg = recipe.export
    version, input_size, precision, outputs = cfg.version, cfg.input_size, cfg.precision, cfg.outputs
    if args.weights is None:
        warn("WARNING: no --weights given: exporting RANDOMLY INITIALISED weights (fine for latency, "
             "useless for predictions)")
    reference, deploy = prepare_deploy_model(arch, args.weights)
    params = family_of_config(arch).summary(arch, (512, 512))["params_deploy"]
    log(f"model {describe(arch)} ({params:,} deploy params); writing {target} "
        f"[{precision}, {outputs}, input {'x'.join(map(str, input_size)) if input_size else 'dynamic'}, "
        f"weights as graph {cfg.graph_weights}]")
    result = savedmodel.export_savedmodel(deploy, out_dir, version, input_size=input_size, outputs=outputs,
                                          precision=precision, overwrite=args.overwrite, verify=args.verify,
                                          reference_model=reference, graph_weights=cfg.graph_weights)
    written = {"savedmodel": str(result.path), "verification": result.verification}
    if result.verification:
        v = result.verification
        log("verified in a fresh TensorFlow-only process: "
            + ", ".join(f"{s}: max rel err {v[s]['max_rel_error']:.2e}, labels {v[s]['label_agreement']:.2%}"
                        for s in ("serving_default", "serve_bytes")))
    else:
        log("verification skipped (--no-verify)")
    config = serving.write_models_config(out_dir, name)
    log(f"wrote {result.path} (signatures: {result.path / 'signatures.txt'}) and {config}")

    if precision == "bf16":
        image = (_read_image(args.parity_image) if args.parity_image
                 else savedmodel.sample_image(*(input_size or (256, 512))))
        report = prec.bf16_parity(deploy, image)
        log("bf16 parity vs fp32: " + json.dumps(report))
        (result.path / "assets.extra" / "bf16_parity.json").write_text(json.dumps(report, indent=2))
        written["bf16_parity"] = report

    onnx_path = None
    if args.onnx or args.tensorrt:
        onnx_path = out_dir / f"{version}.onnx"
        shape = (1, *input_size, 3) if input_size else (1, None, None, 3)
        report = export_onnx(deploy, onnx_path, opset=args.opset, input_shape=shape)
        log("ONNX: " + json.dumps(report))
        written["onnx"] = report
    if args.tensorrt:
        if input_size is None:
            raise UsageError("--tensorrt needs a static --input-size (e.g. 1024x2048)")
        engine = out_dir / f"{version}_{args.tensorrt}.engine"
        written["tensorrt"] = tensorrt.build_tensorrt_engine(onnx_path, engine, args.tensorrt)
        log("TensorRT: " + json.dumps(written["tensorrt"]))
    if args.tftrt:
        trt_dir = out_dir.with_name(f"{out_dir.name}_tftrt_{args.tftrt}") / str(version)
        report = tensorrt.convert_tftrt(result.path, trt_dir, args.tftrt, (1, *input_size, 3),
                                        overwrite=args.overwrite)
        log("TF-TRT: " + json.dumps(report))
        serving.write_models_config(trt_dir.parent, trt_dir.parent.name)
        written["tftrt"] = report

    if edge_requests:
        from lps_keras.export.edge import export_edge

        written["edge"] = export_edge(recipe, deploy, out_dir, version, edge_requests,
                                      calibration_count=args.calibration_images,
                                      eval_images=args.edge_eval_images, overwrite=args.overwrite, log=log)

    log("")
    log(serving.format_serving_commands(out_dir, name, onednn=cfg.graph_weights == "constants"))
    return written


def _read_image(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
