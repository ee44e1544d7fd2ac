"""Test-only helpers shared by several test files (kept out of the library)."""

import keras
import numpy as np

from lps_keras.layers import RepConvBlock


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Give every BN random statistics and affine parameters (for testing fusion).

    Fresh BNs are the identity (mean 0, var 1, gamma 1, beta 0), which would hide a wrong fold.
    """
    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))


def all_layers(model):
    """Every layer of a family model, the BNs inside RepConvBlock / ConvBN included."""
    from lps_keras.families.layers import ConvBN

    for layer in model.layers:
        yield layer
        if isinstance(layer, RepConvBlock):
            yield from (sub for sub in (layer.bn, layer.bn_1x1, layer.bn_identity) if sub is not None)
        elif isinstance(layer, ConvBN) and layer.bn is not None:
            yield layer.bn
        # Non-default blocks and interactions hold ConvBN units by name.
        for unit in getattr(layer, "units", {}).values() if isinstance(getattr(layer, "units", None), dict) else ():
            if isinstance(unit, ConvBN) and unit.bn is not None:
                yield unit.bn



def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def savedmodel_constants(model_dir) -> list[np.ndarray]:
    """Every float32 constant with more than three elements in a SavedModel's graph and function library:
    the weights of a network exported with its weights as graph constants (the ImageNet mean/std have three,
    so a network with a weight of three elements or fewer, e.g. a bias of <= 3 classes, is not counted whole)."""
    from pathlib import Path

    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((Path(model_dir) / "saved_model.pb").read_bytes())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    values = [tf.make_ndarray(n.attr["value"].tensor) for n in nodes if n.op == "Const"]
    return [v for v in values if v.dtype == np.float32 and v.size > 3]
