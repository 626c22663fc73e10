"""The numpy scorer that serves requests equals the torch network it was built from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from serving_snapshots import catalog_text, make_snapshot

from streamrl.learner.model import ModelConfig, QNetwork
from streamrl.learner.policy import FrozenScorer
from streamrl.learner.vocab import PAD
from streamrl.serving.policy import build_policy

ENCODERS = ["gru"] + (["mean"] if "encoder" in {f.name for f in dataclasses.fields(ModelConfig)} else [])


def _network(encoder: str, n_items: int = 300, history_len: int = 20, q_weight: float = 0.7) -> QNetwork:
    """A random network of the learner's default width, with non-zero id, bias, text and start."""
    torch.manual_seed(0)
    kw = {"encoder": encoder} if encoder != "gru" else {}
    model = QNetwork(ModelConfig(n_items=n_items, history_len=history_len, q_weight=q_weight, **kw))
    with torch.no_grad():
        model.item_id.weight.normal_(0, 0.3)
        model.item_bias.weight.normal_(0, 0.2)
        model.text.normal_(0, 0.05)
        model.start.normal_(0, 0.3)
    return model.eval()


def _states(n_items: int, history_len: int) -> np.ndarray:
    """Histories of every length, left-padded, some with unknown (PAD) items inside."""
    rng = np.random.default_rng(1)
    states = rng.integers(1, n_items, (history_len + 3, history_len))
    for b in range(history_len + 1):
        states[b, :b] = PAD
    states[-2, [3, 7]] = PAD
    states[-1, :] = PAD
    return states


@pytest.mark.parametrize("encoder", ENCODERS)
def test_numpy_scores_equal_the_torch_network(encoder):
    model = _network(encoder)
    scorer = FrozenScorer.from_model(model)
    states = _states(300, 20)
    cands = np.random.default_rng(2).choice(np.arange(1, 300), 120, replace=False)
    with torch.no_grad():
        ref = model.score(torch.from_numpy(states), torch.from_numpy(cands)).numpy()
        ref_all = model.score(torch.from_numpy(states)).numpy()
    np.testing.assert_allclose(scorer.score(states, cands), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.score(states), ref_all, rtol=1e-5, atol=1e-5)
    for b in (0, 5, len(states) - 1):      # one state alone: its own leading PADs are skipped
        np.testing.assert_allclose(scorer.score(states[b:b + 1], cands), ref[b:b + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_cands", [5, 45])
def test_policy_scores_by_gather_and_by_full_matmul_equal_the_network(n_cands):
    """Few candidates are scored from their gathered vectors, many by one matmul over all items."""
    policy = build_policy(make_snapshot(1), catalog_text())
    ids = [f"i{k}" for k in range(40)] + [f"c{k}" for k in range(10)]
    rows = policy.rows(ids[:n_cands])
    states = np.concatenate([policy.state(h) for h in ([], ["i3"], ["c1", "nope", "i2", "i9", "i1", "i4"])])
    with torch.no_grad():
        ref = policy.model.score(torch.from_numpy(states), torch.from_numpy(rows)).numpy()
    for got, want in zip(policy.score_many(states, [rows] * len(states)), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scorer_tables_are_read_only():
    scorer = FrozenScorer.from_model(_network("gru", n_items=20, history_len=4))
    for table in scorer.tables():
        assert not table.flags.writeable
