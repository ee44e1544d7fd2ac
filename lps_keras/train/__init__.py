"""Training: ``train(recipe)``, ``pretrain(recipe)`` (ImageNet classification) and their parts.

Parts: optimizer, schedule, callbacks, distribution, summaries.

Importing this package registers the layers, losses, :class:`TorchSGD` and :class:`PolyLR` with
Keras' serialisation, which is what loading a training checkpoint needs.
"""

from lps_keras.train.distribute import environment_info, make_strategy, resolve_mixed_precision
from lps_keras.train.errors import NonFiniteLossError, TrainingError
from lps_keras.train.loop import resolve_run_dir, train
from lps_keras.train.optim import CosineLR, PolyLR, StepLR, TorchSGD
from lps_keras.train.pretrain import pretrain

__all__ = [
    "CosineLR", "PolyLR", "StepLR", "TorchSGD", "TrainingError", "NonFiniteLossError", "train", "pretrain",
    "resolve_run_dir",
    "resolve_mixed_precision", "make_strategy", "environment_info",
]
