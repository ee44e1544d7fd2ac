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
    latencies_fn: Optional[Callable[[Sequence[Arch]], Sequence[float]]] = None,
) -> tuple[float, list[Candidate]]:
    """Steps 1-3: the target latency L_T and the de-duplicated candidates N + k_d d, in op order.

    An op whose N + d is not a valid architecture is skipped for this step. A candidate equal
    to N itself (an all-zero delta) is dropped: it is no expansion.

    k grows in rounds: round 1 times every N + d (whose maximum is L_T), each later round the next
    N + (k+1) d of every op still below L_T, with :func:`find_k`'s rule per op (stop at L_T, at
    ``max_k`` or at an invalid arch; the closer of the values seen, ties to the smaller k).
    ``latencies_fn(archs)`` times a round's networks *together* (the caller pairs them with the
    parent, so load drift between rounds and networks cancels); without it each network is timed
    alone with ``latency_fn``.
    """
    batch = latencies_fn or (lambda archs: [latency_fn(a) for a in archs])
    first: list[tuple[ExpansionOp, Arch]] = []
    for op in ops:
        try:
            first.append((op, arch.expand(op, 1)))
        except ArchError:
            continue
    if not first:
        raise SearchError(f"no expansion op gives a valid architecture from {arch}")
    lats1 = [float(v) for v in batch([a for _, a in first])]
    target = max(lats1)

    # Per op: {k: (arch, latency)} seen so far, and whether k may still grow.
    seen = [{1: (a1, lat1)} for (_, a1), lat1 in zip(first, lats1)]
    active = [lat1 < target and max_k > 1 for lat1 in lats1]
    while any(active):
        todo = []
        for i, (op, _) in enumerate(first):
            if not active[i]:
                continue
            k = max(seen[i]) + 1
            try:
                todo.append((i, k, arch.expand(op, k)))
            except ArchError:
                active[i] = False  # N + k d is not a valid arch: the op stops at the last valid k
        if not todo:
            break
        for (i, k, a), lat in zip(todo, batch([a for _, _, a in todo])):
            seen[i][k] = (a, float(lat))
            active[i] = lat < target and k < max_k

    candidates: list[Candidate] = []
    by_hash: dict[str, int] = {}
    for (op, _), values in zip(first, seen):
        k = min(values, key=lambda kk: (abs(values[kk][1] - target), kk))  # ties go to the smaller k
        cand_arch, lat = values[k]
        capped = values[max(values)][1] < target
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
