"""One step's candidates: k for each op (``find_k``) and the candidate set (``propose_candidates``). Pure logic,
no TensorFlow; used by :class:`lps_keras.search.algorithm.Expansion`. The choice among them is
:func:`lps_keras.search.decision.judge`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

from lps_keras.arch import Arch, ArchError, ExpansionOp
from lps_keras.errors import LPSError
from lps_keras.search.records import Candidate

DIMENSIONS = ("depth", "width", "resolution")


class SearchError(LPSError, RuntimeError):
    """The search cannot go on (no valid op, bad latency or score value, the start network failing)."""

# --------------------------------------------------------------------------- step pieces
def find_k(lat_of_k: Callable[[int], Optional[float]], target: float, max_k: int) -> tuple[int, float, bool]:
    """``k = argmin_{1 <= k <= max_k} |lat_of_k(k) - target|``, searched by growing k.

    k grows from 1 until the latency reaches ``target`` (``>=``), ``max_k`` is hit, or
    ``lat_of_k`` returns None (N + k d is not a valid arch, e.g. a negative custom delta);
    the answer is the argmin over the k measured so far, ties going to the smaller k. With a
    latency that grows with k this is exactly "the closer of the last two"; with a noisy one
    it is still the best of the values seen. Returns ``(k, latency, capped)``, where ``capped``
    says the target was never reached. ``lat_of_k(1)`` must not be None.
    """
    if max_k < 1:
        raise SearchError(f"max_k must be >= 1, got {max_k!r}")
    best_k, best_lat = 1, lat_of_k(1)
    if best_lat is None:
        raise SearchError("find_k: N + 1*d is not a valid arch")
    lat = best_lat
    k = 1
    while lat < target and k < max_k:
        nxt = lat_of_k(k + 1)
        if nxt is None:
            break
        k, lat = k + 1, nxt
        if abs(lat - target) < abs(best_lat - target):
            best_k, best_lat = k, lat
    return best_k, best_lat, lat < target


def propose_candidates(
    arch: Arch,
    ops: Sequence[ExpansionOp],
    latency_fn: Callable[[Arch], float],
    max_k: int,
) -> tuple[float, list[Candidate]]:
    """Steps 1-3: the target latency L_T and the de-duplicated candidates N + k_d d, in op order.

    An op whose N + d is not a valid architecture is skipped for this step. A candidate equal
    to N itself (an all-zero delta) is dropped: it is no expansion.
    """
    first: list[tuple[ExpansionOp, Arch, float]] = []
    for op in ops:
        try:
            a1 = arch.expand(op, 1)
        except ArchError:
            continue
        first.append((op, a1, latency_fn(a1)))
    if not first:
        raise SearchError(f"no expansion op gives a valid architecture from {arch}")
    target = max(lat for _, _, lat in first)

    candidates: list[Candidate] = []
    by_hash: dict[str, int] = {}
    for op, a1, lat1 in first:
        archs = {1: a1}

        def lat_of_k(k: int, op=op, archs=archs, lat1=lat1) -> Optional[float]:
            if k == 1:
                return lat1
            try:
                archs[k] = arch.expand(op, k)
            except ArchError:
                return None
            return latency_fn(archs[k])

        k, lat, capped = find_k(lat_of_k, target, max_k)
        cand_arch = archs[k]
        if cand_arch.hash == arch.hash:
            continue
        if cand_arch.hash in by_hash:
            i = by_hash[cand_arch.hash]
            candidates[i] = dataclasses.replace(candidates[i], aliases=candidates[i].aliases + (op.name,))
            continue
        by_hash[cand_arch.hash] = len(candidates)
        candidates.append(Candidate(op=op.name, dimension=op.dimension, k=k, arch=cand_arch, latency=lat,
                                    capped=capped))
    return target, candidates
