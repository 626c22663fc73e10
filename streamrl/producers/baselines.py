"""Baseline feed policies the learned policy is measured against (beside random and popularity).

* :class:`RiverCTRPolicy`: a myopic contextual model from river — online logistic regression on
  user-interest x item-category features, trained on its own impressions; it ranks by the
  predicted probability of the next click, the bar a next-click optimiser sets.
* :class:`OraclePolicy`: knows the simulated users' latent state and ranks by the true
  immediate expected reward (click probability x (click + purchase weight x purchase chance)).

Both follow :class:`streamrl.producers.policies.Policy`: ``rank(user_id, candidates, k, ts)``
and, for the learner, ``learn_one(event)``; both are deterministic (propensity 1).
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from river import linear_model, optim

from streamrl.producers.policies import Ranking
from streamrl.producers.simulator import best_order
from streamrl.schema import Event


class RiverCTRPolicy:
    """Online logistic regression (river) predicting a click from interest-match features.

    Features of (user, item): the item's category, the share of the user's recent clicks in that
    category, their product with the item's running click rate, and a bias per item.

    >>> pol = RiverCTRPolicy({"a": "hiking", "b": "cooking"})
    >>> for n in range(30):
    ...     pol.learn_one(Event(f"v{n}", "view", "u1", "a", n))
    ...     pol.learn_one(Event(f"c{n}", "click", "u1", "a", n))
    ...     pol.learn_one(Event(f"w{n}", "view", "u1", "b", n))
    >>> [item for item, _ in pol.rank("u1", ["b", "a"], 2, ts=99)]
    ['a', 'b']
    """

    version = None

    def __init__(self, categories: dict[str, str], history: int = 20, lr: float = 0.05) -> None:
        self.categories = categories
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
        self.recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=history))
        self._shown: dict[tuple[str, str], dict[str, float]] = {}

    def _features(self, user_id: str, item_id: str) -> dict[str, float]:
        cat = self.categories.get(item_id, "?")
        recent = self.recent.get(user_id)
        share = recent.count(cat) / len(recent) if recent else 0.0
        return {f"cat={cat}": 1.0, "share": share, f"share*cat={cat}": share, f"item={item_id}": 1.0}

    def learn_one(self, event: Event) -> None:
        key = (event.user_id, event.item_id)
        if event.type == "view":
            x = self._features(event.user_id, event.item_id)
            self._shown[key] = x
            if len(self._shown) > 200_000:  # forget the oldest impressions
                for k in list(self._shown)[:100_000]:
                    del self._shown[k]
            self.model.learn_one(x, False)
        elif event.type == "click":
            x = self._shown.pop(key, None)
            if x is not None:  # relabel the impression: learn the positive twice to undo the negative
                self.model.learn_one(x, True)
                self.model.learn_one(x, True)
            self.recent[event.user_id].append(self.categories.get(event.item_id, "?"))

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        scored = [(self.model.predict_proba_one(self._features(user_id, i)).get(True, 0.0), n, i)
                  for n, i in enumerate(candidates)]
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [(i, 1.0) for _, _, i in scored[:k]]


class OraclePolicy:
    """Ranks by the simulator's true expected immediate reward for the user right now."""

    version = None

    def __init__(self, simulator: Any, click_weight: float = 1.0, purchase_weight: float = 5.0) -> None:
        self.sim = simulator
        self.click_weight = click_weight
        self.purchase_weight = purchase_weight

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        value = self.sim.expected_reward(user_id, candidates, self.click_weight, self.purchase_weight)
        order = best_order(value, k)
        return [(candidates[n], 1.0) for n in order]
