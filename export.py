"""Export a recipe's model: fused SavedModel for TF Serving (+ TF-TRT, ONNX, TensorRT, bf16, LiteRT, OpenVINO).

    python export.py --recipe recipes/lps_s.json --weights runs/lps_s/best.keras \\
        --output savedmodels/lps_s --version 1 [--input-size 1024x2048] [--onnx] [--precision bf16] \\
        [--litert fp32 fp16 int8] [--openvino fp32 bf16 int8]

This file only parses arguments (the flags map onto the recipe's ``export`` section and
:class:`lps_keras.export.ExportOptions`) and calls :func:`lps_keras.export.export_recipe`.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None):
    # The artefacts' precisions are those the latency backends of the same names time: one table, read when
    # the parser is built (a backend's precisions changed there change them here).
    from lps_keras.latency.backends import get_backend

    def precisions(backend: str) -> tuple[str, ...]:
        return get_backend(backend).precisions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe JSON (model, classes, export settings)")
    p.add_argument("--weights", help=".keras (training or deploy form) or official .pth/.npz; default random init")
    p.add_argument("--output", help="model base directory (default savedmodels/<export.name or recipe name>)")
    p.add_argument("--version", type=int, help="version directory (default export.version)")
    p.add_argument("--input-size", help="static HEIGHTxWIDTH graph, e.g. 1024x2048 (default export.input_size); "
                   "'dynamic' for any size")
    p.add_argument("--outputs", choices=("probabilities", "logits"), help="second output (default export.outputs)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="compute precision (default export.precision)")
    p.add_argument("--graph-weights", choices=("constants", "variables"),
                   help="how the SavedModel's graph holds the weights (default export.graph_weights: constants, "
                        "which TensorFlow's oneDNN kernels cache in their fast layout: LPS-S in a TF1 session "
                        "with TF_ENABLE_ONEDNN_OPTS=1 on an AVX2 CPU ran 2x faster than with variables)")
    p.add_argument("--tftrt", choices=precisions("tftrt"), help="also convert with TF-TRT (TF 2.17 line + GPU)")
    p.add_argument("--onnx", action="store_true", help="also write <output>/<version>.onnx (tf2onnx) and check parity")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tensorrt", choices=precisions("tensorrt"),
                   help="also build a TensorRT 10 engine from the ONNX file")
    p.add_argument("--litert", nargs="+", choices=precisions("litert"), default=[], metavar="PRECISION",
                   help="also write <output>/<version>_litert_<precision>.tflite for each PRECISION in "
                   "{" + ",".join(precisions("litert")) + "} (int8: full-integer, calibrated on training images) "
                   "with an accuracy report")
    p.add_argument("--openvino", nargs="+", choices=precisions("openvino"), default=[], metavar="PRECISION",
                   help="also write OpenVINO IR <output>/<version>_openvino_<precision>.xml/.bin for each PRECISION "
                   "in {" + ",".join(precisions("openvino")) + "} (int8: NNCF) with an accuracy report")
    p.add_argument("--calibration-images", type=int, default=100,
                   help="int8: training images for calibration (default 100)")
    p.add_argument("--edge-eval-images", type=int,
                   help="LiteRT/OpenVINO accuracy report: first N validation images (default all)")
    p.add_argument("--parity-image", help="image for the bf16 parity report (default: a synthetic test image)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--no-verify", action="store_true", help="skip the fresh-process verification")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    return p.parse_args(argv)


def recipe_overrides(args) -> list[str]:
    """``--version`` / ``--input-size`` / ``--outputs`` / ``--precision`` / ``--graph-weights`` as ``--set export.*``
    overrides."""
    from lps_keras.recipe import parse_size

    overrides = list(args.set)
    if args.input_size is not None:
        size = None if args.input_size.lower() == "dynamic" else list(parse_size(args.input_size))
        overrides.append(f"export.input_size={json.dumps(size)}")
    for key, value in (("version", args.version), ("outputs", args.outputs), ("precision", args.precision),
                       ("graph_weights", args.graph_weights)):
        if value is not None:
            overrides.append(f"export.{key}={json.dumps(value)}")
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("export.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=recipe_overrides(args))
    from lps_keras.export import ExportOptions, export_recipe  # TensorFlow only once the arguments are valid

    options = ExportOptions(weights=args.weights, output=args.output, overwrite=args.overwrite,
                            verify=not args.no_verify, onnx=args.onnx, opset=args.opset, tensorrt=args.tensorrt,
                            tftrt=args.tftrt, parity_image=args.parity_image, litert=tuple(args.litert),
                            openvino=tuple(args.openvino), calibration_images=args.calibration_images,
                            edge_eval_images=args.edge_eval_images)
    export_recipe(recipe, options, warn=lambda msg: print(msg, file=sys.stderr))
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
