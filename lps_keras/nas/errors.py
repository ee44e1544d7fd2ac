"""The search's user-facing error (kept free of Keras, so recipes can name the spaces cheaply)."""

from __future__ import annotations

from lps_keras.errors import LPSError


class NASError(LPSError, ValueError):
    """A bad search setting: a space, a latency table, a schedule (names the field, quotes the value)."""
