"""One step's candidates: k for each op (``find_k``), the candidate set (``propose_candidates``) and the
choice of d* by slope with its guard and ties (``select_candidate``). Pure logic, no TensorFlow; used by
:func:`lps_keras.search.algorithm.run_expansion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

from lps_keras.arch import Arch, ArchError, ExpansionOp
from lps_keras.errors import LPSError
from lps_keras.search.journal import Candidate

DIMENSIONS = ("depth", "width", "resolution")


class SearchError(LPSError, RuntimeError):
    """The search cannot go on (no valid op, bad latency or score value, no eligible candidate)."""



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


def select_candidate(candidates: Sequence[Candidate], latency: float, score: float) -> tuple[int, list[Candidate]]:
    """Step 5: pick d* = argmax (P_d - P) / (L_d - L) over scored candidates.

    The slope is undefined or misleading when a candidate is not slower than N (L_d <= L,
    which only measurement noise or an odd op set produces). Guard:

    * L_d <= L and P_d > P: the candidate *dominates* N (better at no latency cost). Any
      dominating candidate is preferred to every regular one; among them the higher P_d wins.
    * L_d <= L and P_d <= P: no gain, so it is *excluded* and never chosen.
    * L_d > L: ranked by its slope (possibly negative: if every candidate lowers the score, the
      least harmful per unit of latency is taken, as the plain argmax of Algorithm 1 would).

    Ties (equal slope, or equal P_d between dominating candidates) are broken by higher P_d,
    then lower L_d, then the earlier op in the operation order. Returns the index of the choice
    and the candidates annotated with ``slope`` and ``rank``. Raises :class:`SearchError` when
    every candidate is excluded.
    """
    annotated = []
    keys = []
    for i, c in enumerate(candidates):
        if c.error is not None:  # its evaluation failed (see CandidateFailed): never chosen
            annotated.append(dataclasses.replace(c, slope=None, rank="failed"))
            keys.append(None)
            continue
        if c.score is None:
            raise SearchError(f"candidate {c.op} (k={c.k}) has no score")
        d_lat, d_score = c.latency - latency, c.score - score
        if d_lat > 0:
            c = dataclasses.replace(c, slope=d_score / d_lat, rank="slope")
            keys.append((1, c.slope, c.score, -c.latency, -i))
        elif d_score > 0:
            c = dataclasses.replace(c, slope=None, rank="dominates")
            keys.append((2, c.score, c.score, -c.latency, -i))
        else:
            c = dataclasses.replace(c, slope=None, rank="excluded")
            keys.append(None)
        annotated.append(c)
    eligible = [i for i, key in enumerate(keys) if key is not None]
    if not eligible and all(c.error is not None for c in candidates):
        raise SearchError("every candidate's evaluation failed: " + "; ".join(f"{c.op}: {c.error}" for c in candidates))
    if not eligible:
        raise SearchError(
            f"no candidate is slower or better than the current network (latency {latency}, score {score}); "
            "the latency measurements are probably too noisy to drive the search"
        )
    best = max(eligible, key=lambda i: keys[i])
    return best, annotated
