"""Export a recipe's model: fused SavedModel for TF Serving (+ TF-TRT, ONNX, TensorRT, bf16).

    python export.py --recipe recipes/lps_s.json --weights runs/lps_s/best.keras \\
        --output savedmodels/lps_s --version 1 [--input-size 1024x2048] [--onnx] [--precision bf16]

Everything is done by library calls in :mod:`lps_keras.export`; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe JSON (model, classes, export settings)")
    p.add_argument("--weights", help=".keras (training or deploy form) or official .pth/.npz; default random init")
    p.add_argument("--output", help="model base directory (default savedmodels/<export.name or recipe name>)")
    p.add_argument("--version", type=int, help="version directory (default export.version)")
    p.add_argument("--input-size", help="static HEIGHTxWIDTH graph, e.g. 1024x2048 (default export.input_size); "
                   "'dynamic' for any size")
    p.add_argument("--outputs", choices=("probabilities", "logits"), help="second output (default export.outputs)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="compute precision (default export.precision)")
    p.add_argument("--tftrt", choices=("fp32", "fp16"), help="also convert with TF-TRT (TF 2.17 line + GPU)")
    p.add_argument("--onnx", action="store_true", help="also write <output>/<version>.onnx (tf2onnx) and check parity")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tensorrt", choices=("fp32", "fp16"), help="also build a TensorRT 10 engine from the ONNX file")
    p.add_argument("--parity-image", help="image for the bf16 parity report (default: a synthetic test image)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--no-verify", action="store_true", help="skip the fresh-process verification")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("export.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set)
    from lps_keras import export as ex  # TensorFlow is imported only once the arguments are valid

    arch = recipe.arch()
    cfg = recipe.export
    name = cfg.name or recipe.name
    out_dir = Path(args.output or f"savedmodels/{name}")
    version = args.version if args.version is not None else cfg.version
    if args.input_size is None:
        input_size = cfg.input_size
    elif args.input_size.lower() == "dynamic":
        input_size = None
    else:
        input_size = ex.parse_size(args.input_size)
    precision = args.precision or cfg.precision
    outputs = args.outputs or cfg.outputs
    target = out_dir / str(version)
    if target.exists() and not args.overwrite:
        raise FileExistsError(f"{target} already exists; choose another --version or pass --overwrite")
    if args.tftrt and input_size is None:
        raise ValueError("--tftrt needs a static --input-size (e.g. 1024x2048)")
    if args.tftrt:
        ex._require_tftrt()  # fail before spending minutes on the export
    if args.tensorrt:
        ex._require_tensorrt()
    if args.weights and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights!r} does not exist")
    if args.parity_image and not Path(args.parity_image).is_file():
        raise FileNotFoundError(f"--parity-image {args.parity_image!r} does not exist")

    if args.weights is None:
        print("WARNING: no --weights given: exporting RANDOMLY INITIALISED weights (fine for latency, "
              "useless for predictions)", file=sys.stderr)
    reference, deploy = ex.prepare_deploy_model(arch, args.weights)
    print(f"model {arch} ({arch.num_params():,} deploy params); writing {target} "
          f"[{precision}, {outputs}, input {'x'.join(map(str, input_size)) if input_size else 'dynamic'}]")
    result = ex.export_savedmodel(deploy, out_dir, version, input_size=input_size, outputs=outputs,
                                  precision=precision, overwrite=args.overwrite, verify=not args.no_verify,
                                  reference_model=reference)
    if result.verification:
        v = result.verification
        print("verified in a fresh TensorFlow-only process: "
              + ", ".join(f"{s}: max rel err {v[s]['max_rel_error']:.2e}, labels {v[s]['label_agreement']:.2%}"
                          for s in ("serving_default", "serve_bytes")))
    else:
        print("verification skipped (--no-verify)")
    config = ex.write_models_config(out_dir, name)
    print(f"wrote {result.path} (signatures: {result.path / 'signatures.txt'}) and {config}")

    if precision == "bf16":
        image = _read_image(args.parity_image) if args.parity_image else ex.test_image(*(input_size or (256, 512)))
        report = ex.bf16_parity(deploy, image)
        print("bf16 parity vs fp32: " + json.dumps(report))
        (result.path / "assets.extra" / "bf16_parity.json").write_text(json.dumps(report, indent=2))

    onnx_path = None
    if args.onnx or args.tensorrt:
        onnx_path = out_dir / f"{version}.onnx"
        shape = (1, *input_size, 3) if input_size else (1, None, None, 3)
        report = ex.export_onnx(deploy, onnx_path, opset=args.opset, input_shape=shape)
        print("ONNX: " + json.dumps(report))
    if args.tensorrt:
        if input_size is None:
            raise ValueError("--tensorrt needs a static --input-size (e.g. 1024x2048)")
        engine = out_dir / f"{version}_{args.tensorrt}.engine"
        print("TensorRT: " + json.dumps(ex.build_tensorrt_engine(onnx_path, engine, args.tensorrt)))
    if args.tftrt:
        trt_dir = out_dir.with_name(f"{out_dir.name}_tftrt_{args.tftrt}") / str(version)
        report = ex.convert_tftrt(result.path, trt_dir, args.tftrt, (1, *input_size, 3), overwrite=args.overwrite)
        print("TF-TRT: " + json.dumps(report))
        ex.write_models_config(trt_dir.parent, trt_dir.parent.name)

    print()
    print(ex.format_serving_commands(out_dir, name))
    return 0


def _read_image(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
