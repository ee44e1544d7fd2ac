"""Model summary: parameters, conv GMACs, output and per-path sizes of an LPS-Net architecture,
and parameters, GMACs and output stride of any other family's preset (NDNet, MRMS).

    python -m lps_keras.summary --preset lps_s
    python -m lps_keras.summary --arch '{"depth": [1,1,1,1,1], "width": [4,8,16,32,32], "resolution": ["1/2"]}'
    python -m lps_keras.summary --all --input-size 1024x2048

Counts follow the paper: MACs of the 3x3 convs and the 1x1 head of the deploy model (resizes,
additions and ReLUs excluded). The single-architecture report also builds the Keras deploy model
and cross-checks the analytic numbers against its layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

from lps_keras.arch import STAGE_STRIDES, Arch, ArchError
from lps_keras.families import FamilyError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×,]\s*(\d+)\s*$")


# --------------------------------------------------------------------------- counting
def training_num_params(arch: Arch) -> dict[str, int]:
    """Parameters of the multi-branch training form: ``trainable`` and ``bn_statistics``.

    Per block: 3x3 conv + BN, 1x1 conv + BN, and an identity BN where stride is 1 and the
    channel count is unchanged (each BN: 2 trainable + 2 moving statistics per channel).
    Other block types and interactions: one conv (no bias) + BN per unit of :mod:`lps_keras.block_specs`.
    """
    if arch.block != "conv3x3" or arch.interaction != "bilateral_b":
        return _unit_training_params(arch)
    trainable = stats = 0
    c_in = 3
    for d, c, stride in zip(arch.depth, arch.width, STAGE_STRIDES):
        for b in range(d):
            cin = c_in if b == 0 else c
            s = stride if b == 0 else 1
            bns = 3 if (s == 1 and cin == c) else 2  # every BN has c channels
            trainable += 9 * cin * c + cin * c + 2 * c * bns
            stats += 2 * c * bns
        c_in = c
    trainable *= arch.num_paths
    stats *= arch.num_paths
    trainable += arch.width[-1] * arch.num_paths * arch.num_classes + arch.num_classes
    return {"trainable": trainable, "bn_statistics": stats, "total": trainable + stats}


def _unit_training_params(arch: Arch) -> dict[str, int]:
    from lps_keras.block_specs import INTERACTION_AFTER_STAGES, INTERACTIONS, interaction_pairs, unit_params

    if arch.block == "conv3x3":  # RepVGG branches: the formula above, interactions added below
        base = training_num_params(dataclasses.replace(arch, interaction="bilateral_b"))
        trainable, stats = base["trainable"], base["bn_statistics"]
    else:
        units = [u for _, us in arch._block_units() for u in us]
        trainable = arch.num_paths * sum(unit_params(u, deploy=False) for u in units)
        stats = arch.num_paths * sum(2 * u.cout for u in units)
        trainable += arch.width[-1] * arch.num_paths * arch.num_classes + arch.num_classes
    rule = INTERACTIONS[arch.interaction]
    if rule is not None and rule.transform:
        pairs = len(interaction_pairs(arch.interaction, arch.num_paths))
        for s in INTERACTION_AFTER_STAGES:
            c = arch.width[s - 1]
            trainable += pairs * (c * c + 2 * c)
            stats += pairs * 2 * c
    return {"trainable": trainable, "bn_statistics": stats, "total": trainable + stats}


def count_macs(model, input_shape) -> int:
    """Conv MACs of a model built by ``build_model`` at ``input_shape`` = (H, W) or (H, W, 3).

    Measured from the Keras graph rather than from the :class:`Arch`: the model is re-traced
    at that size and each Conv2D inside a :class:`RepConvBlock` (every branch, so a training
    model also counts its 1x1 convs), each conv unit of the other block types and interactions
    (at the resolution it runs at) and the ``head`` contributes
    ``out_h * out_w * k_h * k_w * c_in * c_out`` (depthwise: ``c_out`` = 1).
    """
    import keras

    from lps_keras.blocks import UnitBlock
    from lps_keras.interactions import PathExchange
    from lps_keras.layers import RepConvBlock

    def conv_macs(hw, kernel):
        kh, kw, cin, cout = kernel.shape
        return hw[0] * hw[1] * kh * kw * cin * cout

    h, w = int(input_shape[0]), int(input_shape[1])
    traced = keras.models.clone_model(model, input_tensors=keras.Input(shape=(h, w, 3), batch_size=1))
    total = 0
    for layer in traced.layers:
        if isinstance(layer, RepConvBlock):
            for conv in (layer.conv, layer.conv_1x1):
                if conv is not None:
                    total += conv_macs(layer.output.shape[1:3], conv.kernel)
        elif isinstance(layer, UnitBlock):
            for unit in layer.units.values():
                hw = layer.input.shape[1:3] if unit.at_input else layer.output.shape[1:3]
                total += conv_macs(hw, unit.conv.kernel)
        elif isinstance(layer, PathExchange):
            for i, j in layer.pairs if layer.units else ():  # 1x1 convs at the sender's size
                total += conv_macs(layer.input[j].shape[1:3], layer.units[f"from{j + 1}_to{i + 1}"].conv.kernel)
        elif layer.name == "head":
            total += conv_macs(layer.output.shape[1:3], layer.kernel)
    return int(total)


def path_sizes(arch: Arch, height: int, width: int) -> list[dict]:
    """Per path: ratio, input size and the size after each stage."""
    return [
        {
            "path": p + 1,
            "ratio": arch.ratios[p],
            "input": arch.path_input_size(height, width, p),
            "stages": arch.feature_sizes(height, width, p),
        }
        for p in range(arch.num_paths)
    ]


def summarize(arch: Arch, height: int = 1024, width: int = 2048, build: bool = True) -> dict:
    """Numbers for one architecture; with ``build`` also the Keras-measured cross-checks."""
    out = {
        "arch": arch.to_dict(),
        "short": arch.short(),
        "hash": arch.hash,
        "input_size": [height, width],
        "num_paths": arch.num_paths,
        "params_deploy": arch.num_params(),
        "params_training": training_num_params(arch),
        "macs": arch.macs(height, width),
        "gmacs": arch.macs(height, width) / 1e9,
        "output_size": list(arch.output_size(height, width)),
        "paths": path_sizes(arch, height, width),
    }
    if build:
        from lps_keras.model import build_model

        deploy = build_model(arch, deploy=True)
        out["keras_params_deploy"] = int(deploy.count_params())
        out["keras_macs"] = count_macs(deploy, (height, width))
        out["keras_output_size"] = [int(v) for v in deploy.compute_output_shape((1, height, width, 3))[1:3]]
    return out


# --------------------------------------------------------------------------- formatting
def _fmt_size(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def _fmt_ratio(r: float) -> str:
    from fractions import Fraction

    return str(Fraction(r).limit_denominator(4096))


def format_report(s: dict, name: str) -> str:
    t = s["params_training"]
    lines = [
        f"LPS-Net {name}: {s['short']}  ({s['num_paths']} path{'s' if s['num_paths'] > 1 else ''}, "
        f"{s['arch']['num_classes']} classes, hash {s['hash']})",
        f"  params (deploy)      {s['params_deploy']:,}",
        f"  params (training)    {t['trainable']:,} trainable + {t['bn_statistics']:,} BN statistics "
        f"= {t['total']:,}",
        f"  conv GMACs @ {_fmt_size(s['input_size'])}  {s['gmacs']:.3f}",
        f"  logits               {_fmt_size(s['output_size'])}",
    ]
    for p in s["paths"]:
        stages = " -> ".join(_fmt_size(hw) for hw in p["stages"])
        lines.append(f"  path {p['path']} (x{_fmt_ratio(p['ratio'])})  input {_fmt_size(p['input'])}; stages {stages}")
    if "table4" in s:
        t = s["table4"]
        how = "start N0" if t["op"] is None else f"{t['op']} x{t['k']}"
        named = f", {t['name']}" if t["name"] else ""
        lines.append(f"  paper Table 4        step {t['step']} ({how}{named}): {t['latency_ms']:.2f} ms "
                     f"(TensorRT FP32, 1024x2048, GTX 1070Ti), {t['miou']:.1f} mIoU (Cityscapes val)")
    if "keras_macs" in s:
        ok = (
            s["keras_macs"] == s["macs"]
            and s["keras_params_deploy"] == s["params_deploy"]
            and s["keras_output_size"] == s["output_size"]
        )
        lines.append(
            f"  Keras deploy model   {s['keras_params_deploy']:,} params, {s['keras_macs'] / 1e9:.3f} GMACs, "
            f"logits {_fmt_size(s['keras_output_size'])}  [{'matches' if ok else 'MISMATCH'}]"
        )
    return "\n".join(lines)


def with_table4(s: dict, name: str) -> dict:
    """``s`` plus the paper's Table 4 row (``"table4"``: step, op, k, latency_ms, miou) when ``name`` is one."""
    from lps_keras.presets import TABLE4

    if name in TABLE4:
        s = {**s, "table4": dataclasses.asdict(TABLE4[name])}
    return s


TABLE4_NOTE = ("T4 ms / T4 mIoU: the paper's Table 4 (TensorRT FP32, batch 1, 1024x2048, GTX 1070Ti; "
               "Cityscapes val without the strong training strategies)")


def format_table(rows: list[tuple[str, dict]]) -> str:
    header = ("preset", "paths", "depth", "width", "resolution", "params", "train params", "GMACs", "logits",
              "T4 ms", "T4 mIoU")
    body = []
    for name, s in rows:
        a = s["arch"]
        t4 = s.get("table4")
        body.append((
            name,
            str(s["num_paths"]),
            ",".join(map(str, a["depth"])),
            ",".join(map(str, a["width"])),
            ",".join(_fmt_ratio(r) for r in a["resolution"]),
            f"{s['params_deploy']:,}",
            f"{s['params_training']['total']:,}",
            f"{s['gmacs']:.3f}",
            _fmt_size(s["output_size"]),
            f"{t4['latency_ms']:.2f}" if t4 else "-",
            f"{t4['miou']:.1f}" if t4 else "-",
        ))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = {1, 5, 6, 7, 9, 10}

    def row(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [row(header), row(["-" * w for w in widths]), *(row(r) for r in body)]
    if any(s.get("table4") for _, s in rows):
        lines.append(TABLE4_NOTE)
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def parse_size(text: str) -> tuple[int, int]:
    m = _SIZE.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"input size must be HEIGHTxWIDTH with positive integers, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _load_arch_arg(text: str) -> Arch:
    source = "--arch"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ArchError(f"--arch is neither a JSON object nor an existing file: {text!r}")
        source, text = str(path), path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchError(f"{source}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
        data = data["arch"]
    try:
        return Arch.from_dict(data)
    except ArchError as e:
        raise ArchError(f"{source}: {e}") from None


def _other_presets() -> list[str]:
    from lps_keras.families import FAMILIES

    return [p for f in FAMILIES.values() if f.name != "lps" for p in f.presets]


def family_summary(preset: str, height: int, width: int, num_classes: int = 19, build: bool = False) -> dict:
    """Parameters, conv GMACs and output stride of any family's preset; ``build`` cross-checks with Keras."""
    from lps_keras.families import family_of_preset

    family = family_of_preset(preset)
    config = family.config(preset=preset, num_classes=num_classes)
    out = {"family": family.name, "config": config.to_dict(), "input_size": [height, width],
           **family.summary(config, (height, width))}
    out["gmacs"] = out["macs"] / 1e9
    if build:
        out["keras_params"] = int(sum(int(np.prod(v.shape)) for v in family.build(config).trainable_weights))
        out["keras_params_deploy"] = int(family.build(config, deploy=True).count_params())
    return out


def format_family_table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'model':<16} {'family':<7} {'params':>10} {'deploy':>10} {'GMACs':>8} {'stride':>7}"]
    for name, s in rows:
        lines.append(f"{name:<16} {s['family']:<7} {s['params']:>10,} {s['params_deploy']:>10,} "
                     f"{s['gmacs']:>8.2f} {s['output_stride']:>7g}")
    return "\n".join(lines)


def _family_report(name: str, h: int, w: int, args) -> int:
    build = not args.no_build
    if build:
        from lps_keras.cli import quiet_tensorflow

        quiet_tensorflow()
    s = family_summary(name, h, w, args.num_classes or 19, build=build)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(f"{name} ({s['family']}): {json.dumps(s['config'])}\n"
              f"  params {s['params']:,} (training form, as the family's paper counts), {s['params_deploy']:,} fused\n"
              f"  {s['gmacs']:.3f} GMACs at {h}x{w}; logits at 1/{s['output_stride']:g} of the input")
    if build and (s["keras_params"] != s["params"] or s["keras_params_deploy"] != s["params_deploy"]):
        print(f"error: the Keras model disagrees with the analytic counts ({s['keras_params']:,} / "
              f"{s['keras_params_deploy']:,})", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lps_keras.summary",
        description="Print parameters (deploy and training form), conv GMACs and logit size of any model "
        "family's preset (LPS-Net, NDNet, MRMS), or of an LPS-Net architecture with its per-path feature sizes.",
        epilog="examples:\n"
        "  python -m lps_keras.summary --preset lps_s\n"
        "  python -m lps_keras.summary --preset lps_l --input-size 512x1024 --num-classes 11\n"
        "  python -m lps_keras.summary --arch '{\"depth\": [1,1,1,1,1], \"width\": [4,8,16,32,32], "
        "\"resolution\": [\"1/2\"]}'\n"
        "  python -m lps_keras.summary --all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", help="preset name of any model family, e.g. lps_tiny, lps_s, lps_m, lps_l, "
                      "table4_step09, ndnet45, tinymrms (default: lps_s)")
    what.add_argument("--arch", help="architecture as a JSON object {depth, width, resolution[, num_classes]} or "
                      "a path to a JSON file holding one")
    what.add_argument("--all", action="store_true", help="one table row per preset (analytic counts only; "
                      "the table4_* rows add the paper's Table 4 latency and mIoU)")
    parser.add_argument("--input-size", type=parse_size, default=(1024, 2048), metavar="HxW",
                        help="input image size (default: 1024x2048, the Cityscapes setting of the paper)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="output classes (default: the --arch value, else 19)")
    parser.add_argument("--no-build", action="store_true",
                        help="skip building the Keras model for the cross-check (analytic numbers only)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 2:
        parser.error(f"--num-classes must be >= 2, got {args.num_classes}")
    h, w = args.input_size
    from lps_keras.presets import PRESETS, get_preset

    try:
        if args.all:
            rows = [(name, with_table4(summarize(arch.with_num_classes(args.num_classes or 19), h, w, build=False),
                                       name)) for name, arch in PRESETS.items()]
            others = [(name, family_summary(name, h, w, args.num_classes or 19)) for name in _other_presets()]
            print(json.dumps({**dict(rows), **dict(others)}, indent=2) if args.json else
                  f"conv GMACs and logits at {h}x{w}, {args.num_classes or 19} classes\n" + format_table(rows)
                  + "\n\nother families\n" + format_family_table(others))
            return 0
        if args.arch is not None:
            arch = _load_arch_arg(args.arch)
            if args.num_classes is not None:
                arch = arch.with_num_classes(args.num_classes)
            name = "custom"
        else:
            name = args.preset or "lps_s"
            if name not in PRESETS:  # another family's preset (or an unknown name: FamilyError lists them all)
                return _family_report(name, h, w, args)
            arch = get_preset(name, args.num_classes or 19)
    except (ArchError, FamilyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_build:
        # TensorFlow's start-up lines (no-GPU notices) are printed before its log level applies: filter them
        # as every entry point does (a TF_CPP_MIN_LOG_LEVEL set here would turn that filter off).
        from lps_keras.cli import quiet_tensorflow

        quiet_tensorflow()
    s = summarize(arch, h, w, build=not args.no_build)
    if name != "custom":
        s = with_table4(s, name)
    print(json.dumps(s, indent=2) if args.json else format_report(s, name))
    if "keras_macs" in s and (s["keras_macs"] != s["macs"] or s["keras_params_deploy"] != s["params_deploy"]
                              or s["keras_output_size"] != s["output_size"]):
        print("error: the Keras model disagrees with the analytic counts (see the last line)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
