"""``python -m lps_keras.study blocks|interactions|widths --backend B [--input-size HxW] [--output DIR]``.

Times the studies of :mod:`lps_keras.study` on one latency backend of the project's table and writes
``<study>.json`` / ``<study>.md`` (and ``widths.png``) to ``--output``. Bad input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys


def _size(text: str) -> tuple[int, int]:
    from lps_keras.summary import _SIZE

    m = _SIZE.match(text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"--input-size must be HxW, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    from lps_keras.latency.backends import backend_names

    p = argparse.ArgumentParser(prog="python -m lps_keras.study", description=__doc__.splitlines()[0])
    p.add_argument("study", choices=("blocks", "interactions", "widths"))
    p.add_argument("--backend", default="tf", choices=backend_names())
    p.add_argument("--input-size", type=_size, default=None,
                   help="network input HxW (default 1024x2048; widths: the layer's input, default 128x128)")
    p.add_argument("--output", default=None, help="directory for the JSON, Markdown and PNG (default study_<name>)")
    p.add_argument("--target-ms", type=float, default=None,
                   help="blocks: the latency to tune c to (default: the conv3x3 network at c=16)")
    p.add_argument("--c-max", type=int, default=512,
                   help="blocks: the largest c tried (the search starts at c=16 and doubles or halves)")
    p.add_argument("--max-width", type=int, default=64, help="widths: widths 1..N")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="timed runs per network (per round in a set)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds of a paired set")
    p.add_argument("--train", metavar="RECIPE", default=None,
                   help="blocks / interactions: also train every row's network with RECIPE's search.proxy schedule "
                        "(its data, loss and class balance; e.g. recipes/expand_camvid.json) and add val mIoU; "
                        "runs go to <output>/train/ and resume")
    p.add_argument("--train-seeds", type=int, default=2,
                   help="seeds of the first row's network (conv3x3 / none), for the seed noise (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the --train recipe")
    return p


def _previous_result(args, out_dir):
    """A finished timing of the same study, backend, precision and size in ``out_dir`` (a --train rerun
    resumes its trainings on the networks it tuned, instead of re-tuning c on a noisy machine)."""
    import json
    from pathlib import Path

    path = Path(out_dir) / f"{args.study}.json"
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    size = list(args.input_size or (1024, 2048))
    same = (result.get("backend"), result.get("precision"), result.get("input_size")) == \
        (args.backend, args.precision, size)
    if args.study == "blocks":  # the widths were tuned to a target under a cap: another one is another study
        same = same and result.get("target_ms_given") == args.target_ms and result.get("c_max", 512) == args.c_max
    return result if same else None


def _accuracy_fn(recipe, out_dir):
    """``(arch, seed) -> val mIoU``: one proxy training (resumable run directory per network and seed)."""
    from pathlib import Path

    from lps_keras.search.expansion import proxy_recipe
    from lps_keras.train import train

    def accuracy(arch, seed):
        run_dir = Path(out_dir) / "train" / f"{arch.hash}-seed{seed}"
        print(f"training {arch.block} / {arch.interaction} {arch.short()} seed {seed} -> {run_dir}", flush=True)
        summary = train(proxy_recipe(recipe, arch, run_dir, seed=seed), resume=True, verbose=2)
        return summary["miou"]

    return accuracy


def _width_model(kind: str, width: int, in_channels: int):
    import keras

    x = keras.Input((None, None, in_channels))
    if kind == "conv3x3":
        y = keras.layers.Conv2D(width, 3, padding="same", name="conv")(x)
    else:
        y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
        y = keras.layers.Conv2D(width, 1, name="pw")(y)
    return keras.Model(x, y, name=f"{kind}_w{width}")


def run(args) -> int:
    import lps_keras.study as study
    from lps_keras.cli import quiet_tensorflow
    from lps_keras.latency import cpu_flags_text, measure_latency, measure_set

    quiet_tensorflow()
    recipe = None
    if args.train is not None:
        from lps_keras.errors import UsageError
        from lps_keras.recipe import load_recipe

        if args.study == "widths":
            raise UsageError("--train: the widths study times single layers; train the blocks or interactions study")
        if args.train_seeds < 1:
            raise UsageError(f"--train-seeds must be >= 1, got {args.train_seeds!r}")
        recipe = load_recipe(args.train, args.set)  # bad recipes fail before any timing
    out_dir = args.output or f"study_{args.study}_{args.backend}"
    common = dict(backend=args.backend, precision=args.precision, warmup=args.warmup)

    def set_fn(shape):
        def fn(targets):
            targets = list(targets)
            print(f"timing {len(targets)} networks interleaved in {args.rounds} rounds", flush=True)
            return measure_set(targets, input_shape=shape, rounds=args.rounds,
                               iters_per_round=max(1, args.iters // args.rounds), **common)
        return fn

    previous = _previous_result(args, out_dir) if recipe is not None else None
    if previous is not None:
        print(f"reusing the latencies of {out_dir}/{args.study}.json (same backend and size); delete it to re-time")
        result = previous
    elif args.study == "widths":
        h, w = args.input_size or (128, 128)
        in_c = 32
        models = lambda specs: [_width_model(k, c, in_c) for k, c in specs]  # noqa: E731
        inner = set_fn((1, h, w, in_c))
        result = study.widths_study(lambda specs: inner(models(specs)), range(1, args.max_width + 1), in_c, (h, w))
    else:
        h, w = args.input_size or (1024, 2048)
        shape = (1, h, w, 3)
        if args.study == "blocks":
            def single(arch):
                ms = measure_latency(arch, input_shape=shape, iters=args.iters, **common).median_ms
                print(f"tuning {arch.block}: c={arch.width[0]} {ms:.3f} ms", flush=True)
                return ms

            result = study.blocks_study(single, (h, w), args.target_ms, set_fn(shape), c_max=args.c_max)
            result.update(c_max=args.c_max, target_ms_given=args.target_ms)  # None: conv3x3's own latency
        else:
            result = study.interactions_study(set_fn(shape), (h, w))
    if previous is None:  # where and how it was timed, beside every figure (the CPU kind changes between machines)
        result.update(backend=args.backend, precision=args.precision, cpu=cpu_flags_text(),
                      timing=f"{args.rounds} interleaved rounds, {args.iters} timed runs per network, "
                             f"{args.warmup} warm-up")
    if recipe is not None:
        p = recipe.search.proxy
        result["training"] = (f"{args.train}: {p.iterations} iterations, batch {p.batch_size}, crop "
                              f"{p.crop_size[0]}x{p.crop_size[1]}, lr {p.base_lr}, {recipe.train.loss}"
                              + (f" at 1/{p.label_stride} label resolution" if (p.label_stride or 1) > 1 else "")
                              + (f" + {recipe.train.class_balance}" if recipe.train.class_balance != "none" else ""))
        study.write_outputs(result, out_dir)  # the latencies are kept if a training is interrupted
        study.add_accuracy(result, _accuracy_fn(recipe, out_dir), seeds=args.train_seeds)
    for path in study.write_outputs(result, out_dir):
        print(path)
    print(study.to_markdown(result))
    return 0


def main(argv=None) -> int:
    from lps_keras.cli import guarded

    args = build_parser().parse_args(argv)
    return guarded("study", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
