"""One step's candidates: k for each op (``find_k``, ``nearest_k``) and the candidate set
(``propose_candidates``). Pure logic, no TensorFlow; used by :class:`lps_keras.search.algorithm.Expansion`. The
choice among them is :func:`lps_keras.search.decision.judge`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
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


def nearest_k(values: Mapping[int, tuple[float, float]], target: float, z: float = 2.0) -> int:
    """The k whose latency is closest to ``target``, from ``{k: (latency, SE)}``; ties to the smaller k.

    When the two nearest are not told apart by the measurement, | |L_a - T| - |L_b - T| | <= ``z`` x
    sqrt(SE_a^2 + SE_b^2) (the values come from separate paired rounds, so their errors are independent),
    the smaller k is taken: it is cheaper, and the same on a second measurement of the same set, where the
    bare argmin flips with the noise (two measurements of the same step 30 minutes apart must give the same k
    for every op). With SE 0 (single measurements, MACs) this is the bare argmin.
    """
    ranked = sorted(values, key=lambda kk: (abs(values[kk][0] - target), kk))
    k = ranked[0]
    if len(ranked) > 1:
        k2 = ranked[1]
        (lat, se), (lat2, se2) = values[k], values[k2]
        noise = z * math.hypot(se, se2)
        if k2 < k and noise > 0 and abs(lat2 - target) - abs(lat - target) <= noise:
            k = k2
    return k


def propose_candidates(
    arch: Arch,
    ops: Sequence[ExpansionOp],
    latency_fn: Callable[[Arch], float],
    max_k: int,
    latencies_fn: Optional[Callable[[Sequence[Arch]], Sequence[float]]] = None,
    latency_se_fn: Optional[Callable[[Arch], float]] = None,
    latency_z: float = 2.0,
) -> tuple[float, list[Candidate]]:
    """Steps 1-3: the target latency L_T and the de-duplicated candidates N + k_d d, in op order.

    An op whose N + d is not a valid architecture is skipped for this step. A candidate equal
    to N itself (an all-zero delta) is dropped: it is no expansion.

    k grows in rounds: round 1 times every N + d (whose maximum is L_T), each later round the next
    N + (k+1) d of every op still below L_T, with :func:`find_k`'s rule per op (stop at L_T, at
    ``max_k`` or at an invalid arch; the closer of the values seen, ties to the smaller k).
    ``latencies_fn(archs)`` times a round's networks *together* (the caller pairs them with the
    parent, so load drift between rounds and networks cancels); without it each network is timed
    alone with ``latency_fn``. ``latency_se_fn(arch)`` (the SE of a network's paired difference to the
    parent, 0 when unknown) lets :func:`nearest_k` take the smaller of two k that ``latency_z`` SEs do
    not separate; without it k is the bare argmin.
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
        se_of = latency_se_fn or (lambda _a: 0.0)
        k = nearest_k({kk: (lat, float(se_of(a))) for kk, (a, lat) in values.items()}, target, latency_z)
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
