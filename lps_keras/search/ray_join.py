"""Joining a Ray cluster in one line: checks that bound the wait, and Ray's own log kept quiet on failure.

``ray.init(address=...)`` on an address nobody answers on retries for minutes; on one where
something else listens (not a Ray head) it retries forever; and whatever fails, Ray first writes
its own log lines (INFO "Connecting to existing Ray cluster", C++ warnings from the GCS client) to
stderr. :func:`join_ray` checks the address first (a TCP connection, then a gRPC handshake, each
with a timeout) and captures file descriptor 2 during ``ray.init``: replayed when it succeeds,
dropped when it fails, so the user sees one :class:`ExecutorError` line.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from lps_keras.cli import CapturedStderr
from lps_keras.errors import LPSError


class ExecutorError(LPSError, RuntimeError):
    """An executor cannot be set up (Ray missing, cluster unreachable, a resource nobody offers)."""


def join_ray(ray, address: Optional[str], describe, timeout: float = 10.0, **kwargs) -> None:
    """``ray.init(address=address, log_to_driver=True, **kwargs)``, or one ExecutorError line.

    ``describe(error, limit)`` shortens Ray's error for the message.
    """
    check_ray_address(address, timeout)
    with CapturedStderr() as captured:
        try:
            ray.init(address=address, log_to_driver=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - unreachable address, bad token: one line, not a traceback
            captured.discard()
            raise ExecutorError(f"cannot join the Ray cluster at {address or 'a new local instance'}: "
                                f"{describe(e, 300)}") from None


def check_ray_address(address: Optional[str], timeout: float = 10.0) -> None:
    """ExecutorError unless a Ray head (a gRPC server) answers at ``address`` (``HOST:PORT``) within ``timeout``."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ExecutorError(f"--ray-address {address}: nothing answers there ({e}); start the head node with "
                            "ray start --head and pass the address it prints") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS head does not answer a plain handshake; ray.init checks it
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        # Something else listens there; ray.init would wait for it forever.
        raise ExecutorError(f"--ray-address {address}: something answers there, but no Ray head node (no gRPC "
                            f"handshake within {timeout:g} s); pass the address ray start --head prints") from None
    finally:
        channel.close()
