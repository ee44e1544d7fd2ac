"""Differentiable architecture search (HMSeg's; built so that LGCNet's cell space can be added).

* :mod:`.space`: what a space is (decisions, latency terms, supernet, derivation);
  :data:`SPACES` is the table of spaces (``hmseg``; LGCNet's cell space would be a second entry).
* :mod:`.gumbel`: straight-through Gumbel-softmax and the temperature schedule.
* :mod:`.latency_table`: the per-operator latency lookup table, its builder and the cost loss.
* :mod:`.layers`, :mod:`.hmseg`: supernet layers and HMSeg's space over MRMS.
* :mod:`.search_tf`: the TensorFlow search loop (weights and alphas in one step, resumable).
* :mod:`.run`: a whole search from a recipe (``search.py``): budget, table, search, derived network;
  :mod:`.batches`: its training batches; :mod:`.cost`: its wall time per phase (``cost.json``).

The derived architecture is a plain family config (``MRMSConfig`` with ``blocks`` and
``branch_ratios``): it trains, exports and is timed like any other model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lps_keras.nas.errors import NASError


@dataclasses.dataclass(frozen=True)
class SpaceEntry:
    """One search space: the model family its derived networks belong to (the recipe's ``model.family``
    and base network), what its base network is called in messages, and its constructor (keyword
    arguments of the space; imported on first use: Keras)."""

    family: str
    base: str
    make: Callable


def _hmseg(**kwargs):
    from lps_keras.nas.hmseg import HMSegSpace
    return HMSegSpace(**kwargs)


#: Space name -> entry. A second space (LGCNet's cells) is a second entry.
SPACES = {"hmseg": SpaceEntry(family="mrms", base="an MRMS network (preset 'mrms' or 'tinymrms' as its base)",
                              make=_hmseg)}


def space_entry(name: str) -> SpaceEntry:
    try:
        return SPACES[name]
    except KeyError:
        raise NASError(f"unknown search space {name!r}; choose from {sorted(SPACES)}") from None


def get_space(name: str, **kwargs):
    return space_entry(name).make(**kwargs)


def __getattr__(name):
    # Keras-dependent names load on first use: recipes read SPACES without importing Keras.
    if name in ("TemperatureSchedule", "gumbel_softmax"):
        from lps_keras.nas import gumbel

        return getattr(gumbel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NASError", "SPACES", "SpaceEntry", "TemperatureSchedule", "get_space", "gumbel_softmax", "space_entry"]
