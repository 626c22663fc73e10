"""Exploration: the propensities the ranker returns are the exact slot marginals of its sampler.

Exactness is checked twice: against brute-force enumeration of the sampling process on small
slates, and statistically, by drawing many slates for one fixed user state through
:meth:`Ranker.rank` and comparing each (item, slot) frequency with the returned propensity.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from serving_snapshots import catalog_text, make_snapshot

from streamrl.config import Settings
from streamrl.consumers.state import UserState
from streamrl.consumers.store import open_store
from streamrl.serving.explore import (diversify, epsilon_marginals, greedy_order, plackett_luce_marginals,
                                      sample_slate, slate_order)
from streamrl.serving.ranker import Ranker


def _brute_epsilon(n: int, k: int, eps: float) -> np.ndarray:
    """Enumerate every path of the per-slot ε-greedy process (greedy rank 0 is the best)."""
    out = np.zeros((n, k))

    def walk(remaining: list[int], j: int, p: float) -> None:
        if j == k:
            return
        m = len(remaining)
        for idx, r in enumerate(remaining):
            q = eps / m + (1 - eps) * (idx == 0)
            out[r, j] += p * q
            walk(remaining[:idx] + remaining[idx + 1:], j + 1, p * q)

    walk(list(range(n)), 0, 1.0)
    return out


def _brute_plackett_luce(w: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(w), k))
    for perm in itertools.permutations(range(len(w)), k):
        p, left = 1.0, w.sum()
        for i in perm:
            p *= w[i] / left
            left -= w[i]
        for j, i in enumerate(perm):
            out[i, j] += p
    return out


@pytest.mark.parametrize("n,k", [(1, 1), (3, 2), (5, 3), (6, 6), (8, 4), (9, 2)])
@pytest.mark.parametrize("eps", [0.0, 0.15, 0.6, 1.0])
def test_epsilon_marginals_equal_enumeration(n, k, eps):
    np.testing.assert_allclose(epsilon_marginals(n, k, eps), _brute_epsilon(n, k, eps), atol=1e-12)


@pytest.mark.parametrize("m,k", [(1, 1), (3, 2), (5, 5), (7, 3)])
def test_plackett_luce_marginals_equal_enumeration(m, k):
    w = np.random.default_rng(m * 10 + k).random(m) + 0.05
    np.testing.assert_allclose(plackett_luce_marginals(w, k), _brute_plackett_luce(w, k), atol=1e-12)


def test_marginals_are_distributions_over_slots_and_items():
    for marg in (epsilon_marginals(1000, 20, 0.1), plackett_luce_marginals(np.linspace(0.1, 3, 10), 6)):
        np.testing.assert_allclose(marg.sum(0), 1.0, atol=1e-9)    # each slot holds exactly one item
        assert (marg.sum(1) <= 1 + 1e-9).all()                      # an item holds at most one slot


def test_greedy_slate_is_top_k_with_certain_propensities():
    picked, props = sample_slate(np.array([0.1, 3.0, 2.0, -1.0]), 3, "greedy", np.random.default_rng(0))
    assert picked.tolist() == [1, 2, 0] and props.tolist() == [1.0, 1.0, 1.0]


def _brute_mmr(scores: np.ndarray, vectors: np.ndarray, k: int, strength: float) -> list[int]:
    """Maximal marginal relevance, written out: each slot the best score less strength * sd * max(0, cos)."""
    step, placed = strength * float(np.std(scores)), []
    for _ in range(k):
        rest = [j for j in range(len(scores)) if j not in placed]
        value = [scores[j] - step * max([0.0] + [float(vectors[j] @ vectors[i]) for i in placed]) for j in rest]
        placed.append(rest[int(np.argmax(value))])
    return placed


def test_diversify_spreads_the_top_of_the_slate_over_directions():
    """Three text clusters, the best scores all in one: the diverse top 3 has one of each, the
    order is maximal marginal relevance's, the others follow in score order; strength 0 (or a
    slate of one) changes nothing, and a weak one leaves a wide gap of scores alone."""
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    groups = np.repeat(np.arange(3), 10)
    vectors = centres[groups] + 0.2 * rng.standard_normal((30, 3))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = np.where(groups == 0, 2.0, np.where(groups == 1, 1.5, 1.2)) + 0.05 * rng.standard_normal(30)
    out = diversify(scores, vectors, 3, 3.0)
    order = greedy_order(out)
    assert sorted(groups[order[:3]].tolist()) == [0, 1, 2] and groups[order[0]] == 0
    assert order[0] == int(np.argmax(scores))                        # the first slot keeps the best score
    assert order[:3].tolist() == _brute_mmr(scores, vectors, 3, 3.0)
    rest = order[3:]
    assert (np.diff(scores[rest]) <= 0).all()                         # the others: in score order below
    assert greedy_order(diversify(scores, vectors, 3, 0.0)).tolist() == greedy_order(scores).tolist()
    assert greedy_order(diversify(scores, vectors, 1, 3.0)).tolist() == greedy_order(scores).tolist()
    assert greedy_order(diversify(scores, vectors, 3, 1.0))[:3].tolist() == greedy_order(scores)[:3].tolist()  # weak
    for trial in range(50):                                           # random worlds: always the brute order
        n, k = int(rng.integers(2, 40)), int(rng.integers(2, 12))
        v = rng.standard_normal((n, 5))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v[rng.random(n) < 0.1] = 0.0                                  # items without text: similar to nothing
        sc, strength = rng.standard_normal(n), float(rng.uniform(0.1, 3.0))
        assert greedy_order(diversify(sc, v, k, strength))[:min(k, n)].tolist() == _brute_mmr(sc, v, min(k, n), strength)


def test_slate_order_keeps_the_greedy_prefix_with_ties_in_request_order():
    rng = np.random.default_rng(5)
    for trial in range(300):
        n, m = int(rng.integers(65, 300)), int(rng.integers(1, 30))
        scores = (rng.integers(0, 20, n) if trial % 2 else rng.standard_normal(n)).astype(np.float32)
        order = slate_order(scores, m)
        assert order[:m].tolist() == greedy_order(scores)[:m].tolist()
        assert sorted(order.tolist()) == list(range(n))


def test_epsilon_slates_of_many_candidates_match_their_propensities():
    """Beyond the sorted prefix (n > 64): each returned propensity is the exact marginal of the
    item's greedy rank, and observed (item, slot) frequencies agree with it."""
    rng = np.random.default_rng(11)
    scores = np.round(rng.standard_normal(100), 1).astype(np.float32)   # ties included
    n, k, eps, draws = len(scores), 3, 0.6, 20000
    rank = np.empty(n, dtype=np.int64)
    rank[greedy_order(scores)] = np.arange(n)
    marg = epsilon_marginals(n, k, eps)
    counts = np.zeros((n, k))
    for _ in range(draws):
        picked, props = sample_slate(scores, k, "epsilon", rng, epsilon=eps)
        assert len(set(picked.tolist())) == k
        np.testing.assert_allclose(props, marg[rank[picked], np.arange(k)], rtol=1e-12)
        counts[picked, np.arange(k)] += 1
    expect = draws * marg[rank]                                          # (item, slot)
    sd = np.sqrt(expect * (1 - expect / draws))
    assert (np.abs(counts - expect) <= 4.5 * sd + 1).all()


def _ranker_with_user(tmp_path, mode: str, seed: int) -> Ranker:
    s = Settings.from_env(state_store=f"sqlite:///{tmp_path}/state.db", serve_exploration=mode,
                          serve_epsilon=0.3, serve_temperature=0.7, serve_softmax_pool=5)
    store = open_store(s.state_store, s.state_namespace)
    user = UserState("u1", history=[(1000 + t, f"e{t}", f"i{t}", "click") for t in range(4)])
    store.commit({}, {}, {"u1": user.encode(None)}, {})
    r = Ranker(s, catalog_text(), store, None, seed=seed)
    assert r.offer(make_snapshot(1))
    return r


@pytest.mark.parametrize("mode", ["epsilon", "softmax"])
def test_observed_slot_frequencies_match_returned_propensities(tmp_path, mode):
    """For one fixed state, N slates: every (item, slot) count lies within 4.5 binomial standard
    deviations of N * propensity, and the whole table passes a chi-square test per slot."""
    ranker = _ranker_with_user(tmp_path, mode, seed=7)
    cands = [f"i{k}" for k in range(10, 18)] + ["c1", "c2"]   # 10 candidates (2 scored by text only)
    n, k = 4000, 4
    counts: Counter = Counter()
    returned: dict[tuple[str, int], float] = {}
    for _ in range(n):
        out = ranker.rank("u1", cands, k)
        assert not out["cold_start"]
        for it in out["items"]:
            key = (it["item_id"], it["position"])
            counts[key] += 1
            prev = returned.setdefault(key, it["propensity"])
            assert prev == pytest.approx(it["propensity"], abs=1e-12)   # fixed state: fixed propensity
    for j in range(k):
        slot = {i: p for (i, pos), p in returned.items() if pos == j}
        assert sum(slot.values()) <= 1 + 1e-9
        chi2, cells = 0.0, 0
        for item, p in slot.items():
            c = counts[(item, j)]
            sd = math.sqrt(n * p * (1 - p)) or 1e-9
            assert abs(c - n * p) <= 4.5 * sd + 1, (mode, item, j, c, n * p)
            if n * p >= 5:
                chi2 += (c - n * p) ** 2 / (n * p)
                cells += 1
        # chi-square upper 1e-4 quantile for `cells` degrees of freedom (Wilson-Hilferty approximation)
        df = max(cells - 1, 1)
        crit = df * (1 - 2 / (9 * df) + 3.72 * math.sqrt(2 / (9 * df))) ** 3
        assert chi2 <= crit, (mode, j, chi2, crit)
    # items never drawn into a slot must have propensity ~0 there: every drawn pair was returned
    assert set(counts) == set(returned)


@pytest.mark.parametrize("mode", ["epsilon", "softmax"])
def test_propensities_stay_in_unit_interval_for_extreme_scores(mode):
    """Huge score gaps and a tiny temperature neither underflow to 0 nor round above 1."""
    rng = np.random.default_rng(3)
    for scores in (np.array([1e4, 0.0, -1e4, 5.0]), np.array([0.0, 0.0]), rng.normal(0, 50, 12)):
        for k in (1, 2, len(scores)):
            picked, props = sample_slate(scores, k, mode, rng, epsilon=0.999, temperature=1e-3, pool=8)
            assert len(set(picked.tolist())) == len(picked) == min(k, len(scores))
            assert np.isfinite(props).all() and (props > 0).all() and (props <= 1.0).all()
    w = np.exp(np.maximum(np.array([0.0, -1000.0, -1000.0]), -700))
    np.testing.assert_allclose(plackett_luce_marginals(w, 3).sum(0), 1.0)
