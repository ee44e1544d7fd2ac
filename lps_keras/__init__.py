"""lps-keras: LPS-Net for Keras 3 / TensorFlow."""

from lps_keras.arch import EXPANSION_OPS, Arch, ArchError, ExpansionOp
from lps_keras.presets import PRESETS, get_preset
from lps_keras.recipe import Recipe, RecipeError, load_recipe

__version__ = "0.1.0"


def load_model(path, **kwargs):
    """``keras.models.load_model`` with every lps_keras layer, model, loss, optimizer and schedule registered.

    Training checkpoints reference the coupled-L2 SGD, poly schedule and losses; importing their
    modules registers them with Keras' serialisation before loading.
    """
    import keras

    import lps_keras.layers  # noqa: F401
    import lps_keras.losses  # noqa: F401
    import lps_keras.model  # noqa: F401
    import lps_keras.train  # noqa: F401
    from lps_keras.families import register_models

    register_models()  # NDNet, MRMS, ... classes
    return keras.models.load_model(path, **kwargs)


def __getattr__(name):
    # Keras/TF are imported lazily so that `lps_keras.arch`, recipes and the search logic stay
    # cheap to import (the search runs where only latencies are needed).
    lazy = {
        "LPSNet": ("lps_keras.model", "LPSNet"),
        "build_model": ("lps_keras.model", "build_model"),
        "reparameterize": ("lps_keras.reparam", "reparameterize"),
        "grow_model": ("lps_keras.grow", "grow_model"),
        "load_official_weights": ("lps_keras.official", "load_official_weights"),
        "load_weights_file": ("lps_keras.weights", "load_weights_file"),
        "build_dataset": ("lps_keras.data", "build_dataset"),
        "measure_latency": ("lps_keras.latency", "measure_latency"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lps_keras' has no attribute {name!r}")


__all__ = [
    "Arch", "ArchError", "ExpansionOp", "EXPANSION_OPS", "PRESETS", "get_preset", "Recipe", "RecipeError",
    "load_recipe", "load_model", "LPSNet", "build_model", "reparameterize", "grow_model", "load_official_weights",
    "load_weights_file", "build_dataset", "measure_latency",
]
