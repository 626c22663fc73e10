"""The gate's ranking figures, counted per action or weighted by reward."""

from __future__ import annotations

import numpy as np
import torch

from streamrl.learner.config import LearnerConfig
from streamrl.learner.evaluate import evaluate, gate, popularity_scorer
from streamrl.learner.replay import Batch


def _batch(actions: list[int], rewards: list[float]) -> Batch:
    n = len(actions)
    return Batch(state=torch.zeros(n, 4, dtype=torch.long), action=torch.tensor(actions),
                 reward=torch.tensor(rewards), next_state=torch.zeros(n, 4, dtype=torch.long),
                 propensity=torch.full((n,), float("nan")),
                 weight=torch.ones(n), slots=np.arange(n))


def test_reward_weighting_counts_a_purchase_by_its_reward():
    n_items = 60
    # item 1 (bought, reward 5) ranks first; item 2 (clicked, reward 1) ranks last; item 3: a view
    scores = torch.linspace(1.0, 0.0, n_items)
    scores[1], scores[2] = 10.0, -10.0
    batch = _batch([1, 2, 3], [5.0, 1.0, 0.0])
    counted = LearnerConfig(eval_negatives=0)
    weighted = counted.replace(eval_reward_weighted=True)
    a = evaluate(popularity_scorer(scores), batch, n_items, counted)
    b = evaluate(popularity_scorer(scores), batch, n_items, weighted)
    assert a.n_rewarded == b.n_rewarded == 2          # the view is in neither population
    assert a.hr10 == 0.5 and a.ndcg10 == 0.5          # one of two engaged actions at rank 0
    assert abs(b.hr10 - 5 / 6) < 1e-9 and abs(b.ndcg10 - 5 / 6) < 1e-9
    # a policy that gets the purchase right passes a gate against one that only gets the click
    flipped = scores.clone()
    flipped[1], flipped[2] = -10.0, 10.0
    c = evaluate(popularity_scorer(flipped), batch, n_items, weighted)
    assert gate(b, c, weighted) == (True, "pass")
    assert gate(c, b, weighted)[0] is False
