"""LPS-Net on a GPU: this project's Keras model under JAX against the official PyTorch model.

Both frameworks run the *same* network with the *same* weights: the official deploy-form model
(``lpsnet.py`` from github.com/YihengZhang-CV/LPS-Net, which this project does not ship: pass the
folder holding it with ``--official-dir``) gets random weights, and our Keras deploy model loads
them through :func:`lps_keras.official.load_official_weights`. Per preset the script reports

* parity: the largest difference of the logits, relative to their largest magnitude, in strict
  fp32 (TF32 off in both frameworks), so the timings compare one computation;
* latency (batch 1, median of ``--iters`` timed calls after ``--warmup``; the host clock around
  call + device synchronisation, the same method for both; inputs rotate over 4 buffers so the
  L2 cache does not hold the image) in three precisions: ``fp32`` (TF32 off: what the paper's
  TensorRT FP32 figures mean), ``tf32`` (each framework's default on Ampere and newer) and
  ``bf16`` (weights and activations in bfloat16); PyTorch eager in NCHW and channels-last, and
  (on a GPU) the faster of the two replayed as a CUDA graph, which removes eager PyTorch's per-op
  launch overhead as XLA's one compiled program does for JAX.

The JSON (``--out``) and a Markdown table go to stdout as they land, so a run cut short still
reports what it measured. It runs on a CPU too (``--input-size 64x128`` for a smoke test).

    KERAS_BACKEND=jax python benchmarks/gpu_jax_vs_torch.py --official-dir .ref --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRECISIONS = ("fp32", "tf32", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", required=True, help="folder holding the official lpsnet.py")
    p.add_argument("--presets", default="lps_tiny,lps_s,lps_m,lps_l")
    p.add_argument("--input-size", default="1024x2048", help="HxW (default: the paper's 1024x2048)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"subset of {','.join(PRECISIONS)}")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="measure everything this many times (spread)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new measurements after this many seconds (default 420)")
    p.add_argument("--out", default=None, help="JSON file, rewritten after every measurement")
    return p.parse_args(argv)


def timed(call, sync, inputs, iters, warmup):
    for i in range(warmup):
        sync(call(inputs[i % len(inputs)]))
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        sync(call(inputs[i % len(inputs)]))
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10], "iters": iters}


def cuda_graph_call(net, example):
    """``net`` captured as a CUDA graph: a call copies its input into the static buffer and replays."""
    import torch

    static_in = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            net(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net(static_in)

    def call(x):
        static_in.copy_(x)
        graph.replay()
        return static_out
    return call


def main(argv=None):
    args = parse_args(argv)
    import jax
    import keras
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(args.official_dir).resolve()))
    import lpsnet as official  # the official model file, carried beside the run, never shipped

    from lps_keras.latency.stats import cpu_flags
    from lps_keras.model import build_model
    from lps_keras.official import load_official_weights
    from lps_keras.presets import get_preset

    h, w = (int(v) for v in args.input_size.lower().split("x"))
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        sys.exit(f"--precisions: unknown {unknown}; choose from {PRECISIONS}")
    on_gpu = torch.cuda.is_available()
    tdev = torch.device("cuda" if on_gpu else "cpu")
    torch.backends.cudnn.benchmark = True  # XLA autotunes its convolutions; let cuDNN do the same
    report = {
        "input_size": [h, w], "batch": 1,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {"jax": jax.__version__, "keras": keras.__version__, "torch": torch.__version__,
                     "cudnn": torch.backends.cudnn.version() if on_gpu else None},
        "cpu_flags": cpu_flags(), "method": __doc__.split("\n\n")[2].strip(), "results": [],
    }
    start = time.perf_counter()

    def emit():
        if args.out:
            tmp = Path(args.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=1))
            tmp.replace(args.out)

    def set_tf32(on: bool):
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on
        jax.config.update("jax_default_matmul_precision", None if on else "highest")

    rng = np.random.default_rng(0)
    images = [rng.standard_normal((1, h, w, 3)).astype("float32") for _ in range(4)]
    print("| preset | precision | jax (Keras) ms | torch NCHW ms | torch channels-last ms | torch graph ms |"
          " torch eager/jax | torch graph/jax |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    runs = [(r, name) for r in range(args.repeats) for name in args.presets.split(",")]
    for repeat, name in runs:
        if time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: skipping {name}", flush=True)
            continue
        arch = get_preset(name)
        tnet = official.get_lpsnet(arch.depth, arch.width, arch.resolution, arch.num_classes, deploy=True)
        tnet = tnet.eval().to(tdev)
        state = {k: v.detach().cpu().numpy() for k, v in tnet.state_dict().items()}
        kmodel = build_model(arch, deploy=True, input_shape=(h, w, 3))
        load_official_weights(kmodel, state)
        for precision in precisions:
            if time.perf_counter() - start > args.budget_s:
                break
            set_tf32(precision == "tf32")
            if precision == "bf16":
                model = build_model(arch, deploy=True, input_shape=(h, w, 3), dtype="bfloat16")
                model.set_weights(kmodel.get_weights())
                tdtype, jdtype = torch.bfloat16, jax.numpy.bfloat16
            else:
                model, tdtype, jdtype = kmodel, torch.float32, jax.numpy.float32
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            fwd = jax.jit(lambda t, n, x, m=model: m.stateless_call(t, n, x, training=False)[0])
            jin = [jax.device_put(jax.numpy.asarray(x, dtype=jdtype)) for x in images]
            row = {"preset": name, "precision": precision, "repeat": repeat, "arch": arch.to_dict()}
            t_compile = time.perf_counter()
            jout = np.asarray(fwd(tv, ntv, jin[0]).astype("float32"))
            row["jax_first_call_s"] = round(time.perf_counter() - t_compile, 2)
            row["jax"] = timed(lambda x, f=fwd, t=tv, n=ntv: f(t, n, x), lambda y: y.block_until_ready(), jin,
                               args.iters, args.warmup)
            net = tnet.to(tdtype)
            tin = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(tdev, tdtype) for x in images]
            sync = (lambda y: torch.cuda.synchronize()) if on_gpu else (lambda y: None)
            with torch.inference_mode():
                tout = net(tin[0]).float().permute(0, 2, 3, 1).cpu().numpy()
                row["torch_nchw"] = timed(net, sync, tin, args.iters, args.warmup)
                net_cl = net.to(memory_format=torch.channels_last)
                tin_cl = [x.contiguous(memory_format=torch.channels_last) for x in tin]
                row["torch_channels_last"] = timed(net_cl, sync, tin_cl, args.iters, args.warmup)
                if on_gpu:
                    cl = row["torch_channels_last"]["median_ms"] < row["torch_nchw"]["median_ms"]
                    graph_in = tin_cl if cl else tin
                    graph_net = net_cl if cl else net.to(memory_format=torch.contiguous_format)
                    row["torch_graph_layout"] = "channels_last" if cl else "nchw"
                    row["torch_graph"] = timed(cuda_graph_call(graph_net, graph_in[0]), sync, graph_in,
                                               args.iters, args.warmup)
                tnet = net_cl.to(torch.float32).to(memory_format=torch.contiguous_format)
            row["max_rel_diff"] = float(np.abs(jout - tout).max() / max(np.abs(tout).max(), 1e-12))
            report["results"].append(row)
            emit()
            best_torch = min(row["torch_nchw"]["median_ms"], row["torch_channels_last"]["median_ms"])
            jax_ms = row["jax"]["median_ms"]
            graph_ms = row["torch_graph"]["median_ms"] if "torch_graph" in row else float("nan")
            print(f"| {name} | {precision} | {jax_ms:.2f} | {row['torch_nchw']['median_ms']:.2f} | "
                  f"{row['torch_channels_last']['median_ms']:.2f} | {graph_ms:.2f} | {best_torch / jax_ms:.2f} | "
                  f"{graph_ms / jax_ms:.2f} |  (rel. diff {row['max_rel_diff']:.1e}, jit {row['jax_first_call_s']} s,"
                  f" repeat {repeat})", flush=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    emit()
    print(f"done in {report['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
