"""Training: ``train(recipe)`` and its parts (optimizer, schedule, callbacks, distribution, summaries).

Importing this package registers the layers, losses, :class:`TorchSGD` and :class:`PolyLR` with
Keras' serialisation, which is what loading a training checkpoint needs.
"""

from lps_keras.train.distribute import environment_info, make_strategy, resolve_mixed_precision
from lps_keras.train.errors import NonFiniteLossError, TrainingError
from lps_keras.train.loop import resolve_run_dir, train
from lps_keras.train.optim import PolyLR, TorchSGD

__all__ = [
    "PolyLR", "TorchSGD", "TrainingError", "NonFiniteLossError", "train", "resolve_run_dir",
    "resolve_mixed_precision", "make_strategy", "environment_info",
]
