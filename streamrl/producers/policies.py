"""Feed policies the simulator serves slates with.

A policy is anything with ``rank(user_id, candidates, k, ts) -> [(item_id, propensity), ...]``:
the ``k`` items shown, best slot first, each with the probability the policy gave that item that
slot. ``version`` is the snapshot version that produced the last ranking (None for the built-ins).
A policy that learns from the stream it causes also has ``learn_one(event)``; the simulator calls
it for every event it emits, in event-time order. The closed loop plugs an HTTP ranker in here.
"""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

from streamrl.schema import Event

Ranking = list[tuple[str, float]]


@runtime_checkable
class Policy(Protocol):
    """What the simulator needs from a ranker."""

    version: int | None

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        """The ``k`` items to show ``user_id`` at event time ``ts``, with per-slot propensities."""
        ...


class RandomPolicy:
    """Uniformly random slate: every candidate lands in every slot with probability 1/n.

    >>> RandomPolicy(seed=0).rank("u1", ["a", "b", "c", "d"], 2, ts=0)
    [('d', 0.25), ('b', 0.25)]
    """

    version = None

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        p = 1.0 / len(candidates)
        return [(item, p) for item in self._rng.sample(candidates, min(k, len(candidates)))]


class PopularityPolicy:
    """Most-clicked candidates first (online, from the events it sees); deterministic, propensity 1.

    Ties keep the candidates' order. This is the myopic baseline: it learns what gets clicked,
    clickbait included, and ignores what an item does to the rest of the session.

    >>> pol = PopularityPolicy()
    >>> pol.learn_one(Event("e1", "click", "u1", "b", 0))
    >>> pol.rank("u2", ["a", "b", "c"], 2, ts=1)
    [('b', 1.0), ('a', 1.0)]
    """

    version = None

    def __init__(self, purchase_weight: float = 5.0) -> None:
        self.purchase_weight = purchase_weight
        self.counts: dict[str, float] = {}

    def learn_one(self, event: Event) -> None:
        if event.type == "click":
            self.counts[event.item_id] = self.counts.get(event.item_id, 0.0) + 1.0
        elif event.type == "purchase":
            self.counts[event.item_id] = self.counts.get(event.item_id, 0.0) + self.purchase_weight

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        get = self.counts.get
        top = sorted(candidates, key=lambda i: -get(i, 0.0))[:k]
        return [(item, 1.0) for item in top]


def make_policy(name: str, seed: int) -> Policy:
    """A built-in policy by name (``random`` or ``popularity``)."""
    if name == "random":
        return RandomPolicy(seed)
    if name == "popularity":
        return PopularityPolicy()
    raise ValueError(f"unknown policy {name!r} (random, popularity)")
