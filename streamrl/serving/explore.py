"""Slate exploration with exact per-position propensities (pure numpy, no I/O).

Each sampler draws a slate of ``k`` of ``n`` scored candidates and returns, for every slot, the
exact marginal probability that the served item lands in that slot (the ``propensity`` of the
event contract). Both samplers are defined so those marginals are computable exactly:

- ``epsilon``: slot by slot, with probability ε a uniformly random remaining candidate, otherwise
  the best-scored remaining one. Marginals by a dynamic programme over (greedy rank, how many
  better-ranked candidates are already placed); every candidate below rank ``k`` is exchangeable,
  so the programme is ``O(k^3)`` whatever ``n``.
- ``softmax``: Plackett-Luce (sampling without replacement, weights ``exp(score / T)``) among
  the ``pool`` best-scored candidates; slots beyond the pool are filled greedily. Marginals by a
  dynamic programme over the subsets of the pool (``2^pool * pool``).
- ``greedy``: the top ``k`` in score order, propensity 1.

:func:`diversify` re-orders scores before sampling (a diverse top ``k``); the samplers'
propensities are those of the re-ordered scores, so they stay exact.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MODES = ("greedy", "epsilon", "softmax")


def greedy_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices by decreasing score; ties keep request order.

    >>> greedy_order(np.array([0.5, 2.0, 0.5, 1.0])).tolist()
    [1, 3, 0, 2]
    """
    return np.argsort(-scores, kind="stable")


def slate_order(scores: np.ndarray, m: int) -> np.ndarray:
    """A permutation of the candidates whose first ``m`` are :func:`greedy_order`'s first ``m``;
    the rest follow in request order. Every sampler here treats greedy ranks ``>= m`` (``m``: the
    slate, or the softmax pool if larger) as exchangeable, so they need no sort: a partition
    finds the ``m``-th score, and only the ``m`` best are sorted.

    >>> scores = np.arange(100.0) % 7
    >>> slate_order(scores, 3)[:3].tolist(), sorted(slate_order(scores, 3)[3:].tolist())[:4]
    ([6, 13, 20], [0, 1, 2, 3])
    """
    n = len(scores)
    if m >= n or n <= 64:
        return greedy_order(scores)
    neg = -scores
    kth = np.partition(neg, m - 1)[m - 1]
    if np.isnan(kth):
        return greedy_order(scores)
    better = np.flatnonzero(neg < kth)
    top = np.concatenate([better, np.flatnonzero(neg == kth)[:m - len(better)]])   # ties: request order
    top = top[np.argsort(neg[top], kind="stable")]
    rest = np.ones(n, dtype=np.bool_)
    rest[top] = False
    return np.concatenate([top, np.flatnonzero(rest)])


@lru_cache(maxsize=512)
def epsilon_marginals(n: int, k: int, eps: float) -> np.ndarray:
    """``(n, k)`` matrix: probability that the candidate of greedy rank ``r`` fills slot ``j``.

    >>> epsilon_marginals(2, 2, 0.5).round(3).tolist()
    [[0.75, 0.25], [0.25, 0.75]]
    """
    k = min(k, n)
    top = k                          # ranks < k get their own row; ranks >= k share one (exchangeable)
    rank = np.arange(top + 1)[:, None]
    a = np.arange(k + 1)[None, :]    # better-ranked candidates already placed
    state = np.zeros((top + 1, k + 1))
    state[:, 0] = 1.0                # P(still unplaced, a)
    out = np.zeros((top + 1, k))
    for j in range(k):
        m = n - j                    # remaining candidates
        above = rank - a             # better-ranked ones still remaining
        above_rem = np.where(above > 0, above, 0)
        pick = (1 - eps) * (above == 0) + eps / m
        up = np.where(above > 0, (1 - eps) + eps * above_rem / m, 0.0)
        valid = above >= 0
        p_state = np.where(valid, state, 0.0)
        out[:, j] = (p_state * pick).sum(1)
        stay = np.clip(1 - pick - up, 0.0, 1.0)
        new = p_state * stay
        new[:, 1:] += (p_state * up)[:, :-1]
        state = new
    # row ``top`` is rank k; every rank >= k is picked with probability eps/m whatever ``a`` is
    out = out[:n] if n <= top else np.vstack([out[:top], np.repeat(out[top:top + 1], n - top, axis=0)])
    out.flags.writeable = False      # cached: shared between requests
    return out


def sample_epsilon(n: int, k: int, eps: float, rng: np.random.Generator) -> list[int]:
    """Greedy ranks placed in slots ``0..k-1`` by the ε-greedy slate sampler.

    Slot ``j`` explores with probability ε, then takes a uniform one of the ``n - j`` remaining
    ranks, else the best remaining one. The slots' coins come from one vectorised call; only the
    exploring slots draw a rank.
    """
    k = min(k, n)
    explore = (rng.random(k) < eps).tolist()
    if not any(explore):
        return list(range(k))
    remaining = list(range(n))
    return [remaining.pop(int(rng.integers(n - j)) if e else 0) for j, e in enumerate(explore)]


def plackett_luce_marginals(weights: np.ndarray, k: int) -> np.ndarray:
    """``(m, k)`` exact marginals of Plackett-Luce sampling of ``k`` of ``m`` items (``m`` ≤ 16).

    >>> plackett_luce_marginals(np.array([1.0, 1.0, 2.0]), 1).round(3).tolist()
    [[0.25], [0.25], [0.5]]
    """
    m = len(weights)
    k = min(k, m)
    if m > 16:
        raise ValueError("subset DP limited to 16 items")
    w = np.asarray(weights, dtype=np.float64)
    bits, layers = _subsets(m)
    free = (1 - bits) @ w               # weight not yet drawn, per subset (a sum: no cancellation)
    prob = np.zeros(1 << m)                                       # P(the first |S| slots hold S)
    prob[0] = 1.0
    out = np.zeros((m, k))
    for j in range(k):
        layer = layers[j]
        p = prob[layer][:, None] * (1 - bits[layer]) * (w[None, :] / free[layer][:, None])  # (|layer|, m)
        out[:, j] = p.sum(0)
        for i in range(m):           # for a fixed i the targets S | {i} are distinct: no add.at
            prob[layer | (1 << i)] += p[:, i]
    return out


@lru_cache(maxsize=17)
def _subsets(m: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Membership bits ``(2^m, m)`` of every subset of ``m`` items, and the subsets by size."""
    masks = np.arange(1 << m)
    bits = ((masks[:, None] >> np.arange(m)[None, :]) & 1).astype(np.float64)
    size = bits.sum(1)
    return bits, [masks[size == j] for j in range(m + 1)]


def sample_plackett_luce(weights: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``weights`` drawn without replacement with probability ∝ weight (slots 0..k-1)."""
    w = np.array(weights, dtype=np.float64)
    out = []
    for _ in range(min(k, len(w))):
        i = int(rng.choice(len(w), p=w / w.sum()))
        out.append(i)
        w[i] = 0.0
    return out


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``exp((s - max s) / T)``, overflow-safe.

    >>> softmax_weights(np.array([0.0, np.log(2.0)]), 1.0).round(3).tolist()
    [0.5, 1.0]
    """
    z = (scores - scores.max()) / temperature
    return np.exp(np.maximum(z, -700.0))   # never exactly 0: every pool item keeps a positive propensity


def diversify(scores: np.ndarray, vectors: np.ndarray, k: int, strength: float) -> np.ndarray:
    """Scores whose greedy order is a diverse top ``k`` (maximal marginal relevance).

    Slot 0 keeps the best-scored candidate; each next slot takes the candidate with the highest
    ``score - strength * sd * max(0, cos)``, ``cos`` its largest cosine similarity to the
    candidates already placed and ``sd`` the scores' standard deviation over the candidates (so
    ``strength`` is in units of the request's own spread of scores). ``vectors``: ``(n, d)``
    unit rows (a zero row, an item without text, is similar to nothing). The ``k`` placed
    candidates get their penalised scores (made strictly decreasing); the others their scores,
    all shifted by one amount to below the last placed one. ``strength`` 0 or ``k`` < 2 changes
    nothing.

    >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> greedy_order(diversify(np.array([3.0, 2.9, 2.5, 1.0]), v, 2, 1.0)).tolist()
    [0, 2, 1, 3]
    >>> greedy_order(diversify(np.array([3.0, 2.9, 2.5, 1.0]), v, 2, 0.0)).tolist()
    [0, 1, 2, 3]
    """
    n = len(scores)
    k = min(k, n)
    sd = float(np.std(scores)) if n else 0.0
    if strength <= 0 or k < 2 or not np.isfinite(sd):  # unchanged (the same array); a score that is not
        return scores                                  # finite: left to the sampler
    scores = np.asarray(scores, dtype=np.float64)
    step = strength * (sd or 1.0)
    out = scores.copy()
    free = np.ones(n, dtype=np.bool_)
    sim = np.zeros(n)                                  # largest max(0, cos) to the placed candidates
    last = np.inf
    for _ in range(k):
        value = np.where(free, scores - step * sim, -np.inf)
        j = int(np.argmax(value))                      # ties: request order
        last = min(float(value[j]), float(np.nextafter(last, -np.inf)))
        out[j], free[j] = last, False
        sim = np.maximum(sim, vectors @ vectors[j])
    if free.any():                                     # the others: shifted below, in their own order
        rest = scores[free] - max(0.0, float(scores[free].max()) - last)
        out[free] = np.minimum(rest, np.nextafter(last, -np.inf))
    return out


def sample_slate(scores: np.ndarray, k: int, mode: str, rng: np.random.Generator, *, epsilon: float = 0.1,
                 temperature: float = 1.0, pool: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Draw a slate: candidate indices for slots ``0..k'-1`` (``k' = min(k, n)``) and each slot's
    exact propensity (probability that this candidate is served in this slot)."""
    picked, props = _sample_slate(scores, min(k, len(scores)), mode, rng, epsilon, temperature, pool)
    return picked, np.clip(props, np.finfo(np.float64).tiny, 1.0)   # rounding never leaves (0, 1]


def _sample_slate(scores: np.ndarray, k: int, mode: str, rng: np.random.Generator, epsilon: float,
                  temperature: float, pool: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(scores)
    order = slate_order(scores, max(k, pool) if mode == "softmax" else k)
    if mode == "greedy" or n == 1 or (mode == "epsilon" and epsilon == 0.0):
        return order[:k], np.ones(k)
    if mode == "epsilon":
        ranks = sample_epsilon(n, k, epsilon, rng)
        marg = epsilon_marginals(n, k, epsilon)
        return order[ranks], marg[ranks, np.arange(k)]
    if mode == "softmax":
        m = min(pool, n)
        top = order[:m]
        w = softmax_weights(scores[top].astype(np.float64), temperature)
        drawn = sample_plackett_luce(w, k, rng)
        marg = plackett_luce_marginals(w, k)
        props = list(marg[drawn, np.arange(len(drawn))])
        rest = [int(i) for i in order[m:k]] if k > m else []   # greedy fill beyond the pool: certain
        picked = np.array([int(top[i]) for i in drawn] + rest, dtype=np.int64)
        return picked, np.array(props + [1.0] * len(rest))
    raise ValueError(f"unknown exploration mode {mode!r}")
