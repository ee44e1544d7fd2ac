"""Where the time goes: per-op profile of one fused deploy graph under TensorFlow and under ONNX Runtime.

    python benchmarks/op_profile.py --preset lps_s --size 1024x2048 --iters 10 \\
        --output docs/op_profile_lps_s_1024x2048.json

TensorFlow: the deploy model's tf.function (variables) frozen to constants and
run in a session with a full trace (``RunMetadata.step_stats``: every node's time after grappler's
rewrites, e.g. ``_FusedConv2D``), summed per op type. ONNX Runtime: the same network's ONNX graph (the
``onnxruntime`` backend's artefact) with the session profiler, summed per op type. Both report the
wall time per call measured without tracing, and the share of it the ops account for (the rest:
executor overhead between ops; a sum above 100 % means ops ran in parallel). Same threads for both.
Also timed: the tf.function itself (variables), the same function frozen by TensorFlow's converter,
and XLA-compiled (``jit_compile=True``). With oneDNN a variable filter gets the im2col + GEMM kernel
and a constant one the direct kernel; the ``tf`` latency backend and export.py now use constants
(lps_keras.export.serving.constant_network; docs/speed_tf_vs_onnxruntime.md, item 2).
``TF_ENABLE_ONEDNN_OPTS`` is read by TensorFlow at import: set it in the environment to compare
its oneDNN kernels (``_MklNative*``) with the default Eigen ones.
The CPU's instruction-set flags are printed and saved with the figures; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lps_s", help="a preset of any family (default lps_s)")
    p.add_argument("--size", default="1024x2048", help="HEIGHTxWIDTH, batch 1")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--iters", type=int, default=10, help="profiled calls per runtime (after 3 warm-up calls)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--output", default=None, help="JSON report (default: print only)")
    return p.parse_args(argv)


def _wall_ms(call, iters: int) -> float:
    """ms per ``call()`` over ``iters`` calls after 3 untimed ones."""
    for _ in range(3):
        call()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - t0) / iters * 1000


def _summary(per_op_us: dict, calls: int, wall_ms: float) -> dict:
    ops = {k: round(v / 1000 / calls, 3) for k, v in sorted(per_op_us.items(), key=lambda kv: -kv[1])}
    total = sum(ops.values())
    return {"wall_ms": round(wall_ms, 3), "ops_ms": round(total, 3), "ops_share_of_wall": round(total / wall_ms, 3),
            "per_op_ms": ops}


def profile_tf(model, shape, iters: int, threads: int) -> dict:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from lps_keras.latency.runners import set_tf_threads

    set_tf_threads(threads, None)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def forward(image):
        return model(image, training=False)

    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    inp = frozen.inputs[0].name
    out = frozen.outputs[0].name
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        wall = _wall_ms(lambda: sess.run(out, {inp: x}), iters)
        per_op = defaultdict(float)
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(iters):
            meta = tf.compat.v1.RunMetadata()
            sess.run(out, {inp: x}, options=options, run_metadata=meta)
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    label = node.timeline_label
                    op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
                    if op in ("_SOURCE", "_Recv", "_Send", "_Retval", "_Arg", "Const", "NoOp"):
                        continue
                    per_op[op] += node.op_end_rel_micros - node.op_start_rel_micros
    return _summary(per_op, iters, wall)


def time_tf_function(model, shape, iters: int, threads: int, jit_compile: bool = False, frozen: bool = False) -> float:
    """ms per call of the deploy model's tf.function with its variables: XLA-compiled with
    ``jit_compile``; with ``frozen``, its weights turned into constants first (as in the session)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from lps_keras.latency.runners import set_tf_threads

    set_tf_threads(threads, None)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=jit_compile)
    def forward(image):
        return model(image, training=False)

    if frozen:
        forward = convert_variables_to_constants_v2(forward.get_concrete_function())
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    call = (lambda: forward(x)[0].numpy()) if frozen else (lambda: forward(x).numpy())
    return round(_wall_ms(call, iters), 3)


def profile_onnxruntime(onnx_path: Path, shape, iters: int, threads: int) -> dict:
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)

    def session(profile: bool):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    plain = session(False)
    name = plain.get_inputs()[0].name
    wall = _wall_ms(lambda: plain.run(None, {name: x}), iters)
    prof = session(True)
    for _ in range(3):
        prof.run(None, {name: x})
    trace = json.loads(Path(prof.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[-1]["ts"] if runs else 0  # the last run's nodes only (the first ones warm up)
    per_op = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"]
    return _summary(per_op, 1, wall)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import quiet_tensorflow

    quiet_tensorflow()
    from lps_keras.export import parse_size
    from lps_keras.families import family_of_preset
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency.artifacts import write_onnx
    from lps_keras.latency.runners import random_deploy_model
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text

    h, w = parse_size(args.size)
    shape = (1, h, w, 3)
    config = family_of_preset(args.preset).config(preset=args.preset, num_classes=args.num_classes)
    model = random_deploy_model(config)  # what the latency backends time: fused, random weights
    print(f"CPU: {cpu_flags_text()}; {args.preset} at {h}x{w}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        write_onnx(model, shape, onnx)
        report = {"preset": args.preset, "input_shape": list(shape), "threads": args.threads,
                  "cpu": cpu_flags_text(), "cpu_flags": cpu_flags(),
                  "onnxruntime": profile_onnxruntime(onnx, shape, args.iters, args.threads),
                  "tf": profile_tf(model, shape, args.iters, args.threads),
                  "tf_function_ms": time_tf_function(model, shape, args.iters, args.threads),
                  "tf_function_frozen_ms": time_tf_function(model, shape, args.iters, args.threads, frozen=True),
                  "tf_function_xla_ms": time_tf_function(model, shape, args.iters, args.threads, jit_compile=True),
                  "tf_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset: TF's default)")}
    report["tf_over_onnxruntime_wall"] = round(report["tf"]["wall_ms"] / report["onnxruntime"]["wall_ms"], 3)
    for runtime in ("tf", "onnxruntime"):
        r = report[runtime]
        print(f"\n{runtime}: {r['wall_ms']:.1f} ms per call, ops {r['ops_ms']:.1f} ms "
              f"({100 * r['ops_share_of_wall']:.0f}% of wall)")
        for op, ms in list(r["per_op_ms"].items())[:12]:
            print(f"  {op:32s} {ms:9.2f} ms")
    print(f"\ntf / onnxruntime wall: {report['tf_over_onnxruntime_wall']:.2f}; the tf.function itself "
          f"{report['tf_function_ms']:.1f} ms, with constant weights {report['tf_function_frozen_ms']:.1f} ms, "
          f"XLA-compiled {report['tf_function_xla_ms']:.1f} ms")
    if args.output:
        atomic_write_json(Path(args.output), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
