"""Optimizer and learning-rate schedule of the paper's training recipe.

Optimizer. :class:`TorchSGD` is PyTorch's ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)``
step for step: the L2 term is *coupled* (added to the gradient before the momentum buffer,
``buf = mu * buf + (g + wd * w); w -= lr * buf``) and covers every trainable weight, conv kernels,
biases and BN gamma/beta alike, as ``SGD(model.parameters(), ...)`` does in the official code.
Keras' own ``SGD(weight_decay=...)`` would instead decay decoupled (``w -= lr * wd * w`` outside
the momentum) and keep ``lr`` inside the velocity, which differs once the learning rate decays.

Learning rate. :class:`PolyLR`: ``base_lr * (1 - step / iterations) ** 0.9`` with ``step`` the
number of steps already taken (the first step uses ``base_lr``), optionally times a linear warmup.
:class:`CosineLR` (ImageNet pretraining): the same conventions with a half-cosine decay.
:class:`StepLR` (``train.lr_schedule: step``): ``base_lr`` times a factor that changes at given steps, as
the NDNet authors' scratch training (``Seg_NDNet/train.py``: lr 0.1, /10 at 35K, /100 at 60K, /200 at 80K).
"""

from __future__ import annotations

import math

import keras
from keras import ops

_PACKAGE = "lps_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolyLR(keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * (1 - step / total_steps) ** power``, times ``min(1, (step + 1) / warmup_steps)``.

    ``step`` counts the steps already taken, so step 0 (the first update) uses ``base_lr``
    (without warmup) and the rate reaches 0 only after the last step. Steps past ``total_steps``
    give 0.
    """

    def __init__(self, base_lr, total_steps, power=0.9, warmup_steps=0, name="poly_lr"):
        if not base_lr > 0:
            raise ValueError(f"PolyLR base_lr must be > 0, got {base_lr!r}")
        if int(total_steps) < 1:
            raise ValueError(f"PolyLR total_steps must be >= 1, got {total_steps!r}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        frac = ops.clip(step / float(self.total_steps), 0.0, 1.0)
        lr = self.base_lr * ops.power(1.0 - frac, self.power)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr, "total_steps": self.total_steps, "power": self.power,
            "warmup_steps": self.warmup_steps, "name": self.name,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CosineLR(keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * (1 + cos(pi * step / total_steps)) / 2``, times :class:`PolyLR`'s warmup factor.

    Same step convention as :class:`PolyLR`: step 0 (the first update) uses ``base_lr``.
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, name="cosine_lr"):
        PolyLR(base_lr, total_steps)  # same argument checks
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        frac = ops.clip(step / float(self.total_steps), 0.0, 1.0)
        lr = self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * frac))
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "name": self.name}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepLR(keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * factors[i]`` once ``step + 1 >= milestones[i]`` (the last milestone reached wins), else
    ``base_lr``; times :class:`PolyLR`'s warmup factor.

    ``step`` counts the steps already taken, so with milestones ``(35000,)`` the 35,000th update (step
    34999) is the first at the lower rate, as ``if (step + 1) < 35000: lr = base_lr`` in the NDNet code.
    """

    def __init__(self, base_lr, milestones, factors, warmup_steps=0, name="step_lr"):
        if not base_lr > 0:
            raise ValueError(f"StepLR base_lr must be > 0, got {base_lr!r}")
        if len(milestones) != len(factors) or list(milestones) != sorted(set(milestones)):
            raise ValueError(f"StepLR needs increasing milestones, one factor each, got {milestones!r}, {factors!r}")
        self.base_lr = float(base_lr)
        self.milestones = [int(m) for m in milestones]
        self.factors = [float(f) for f in factors]
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.full_like(step, self.base_lr)
        for m, f in zip(self.milestones, self.factors):
            lr = ops.where(step + 1.0 >= float(m), self.base_lr * f, lr)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "milestones": self.milestones, "factors": self.factors,
                "warmup_steps": self.warmup_steps, "name": self.name}


def training_schedule(cfg, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule of a recipe's ``train`` section (``train.lr_schedule``)."""
    if cfg.lr_schedule == "step":
        return StepLR(cfg.base_lr, cfg.lr_steps, cfg.lr_step_factors, cfg.warmup_iterations)
    return PolyLR(cfg.base_lr, total_steps, cfg.poly_power, cfg.warmup_iterations)


# --------------------------------------------------------------------------- optimizer
@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, as ``torch.optim.SGD`` (dampening 0, no Nesterov).

    Per variable: ``g = grad + l2 * w``; ``buf = momentum * buf + g``; ``w -= lr * buf``. The decay
    covers every trainable variable (PyTorch's default for ``model.parameters()``).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=0.0, name="torch_sgd", **kwargs):
        kwargs.pop("weight_decay", None)  # Keras' decoupled decay would apply on top of ours
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"TorchSGD momentum must be in [0, 1], got {momentum!r}")
        if l2 < 0:
            raise ValueError(f"TorchSGD l2 must be >= 0, got {l2!r}")
        self.momentum = float(momentum)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = ops.add(g, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        buf = self.momentums[self._get_variable_index(variable)]
        if self.momentum:
            self.assign(buf, ops.add(ops.multiply(buf, ops.cast(self.momentum, variable.dtype)), g))
            self.assign_sub(variable, ops.multiply(lr, buf))
        else:
            self.assign_sub(variable, ops.multiply(lr, g))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config
