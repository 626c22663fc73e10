"""Replay buffer: validation, dedupe, capacity, sampling, refill offsets; the sum tree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrl.learner.config import LearnerConfig
from streamrl.learner.replay import ReplayBuffer, is_holdout
from streamrl.learner.sumtree import SumTree
from streamrl.learner.vocab import PAD, ItemVocab


def tr(k: int, reward: float = 1.0, state=None, action=None, propensity=0.5) -> dict:
    state = [f"i{k % 7}", f"i{k % 5}"] if state is None else state
    action = action or f"i{k % 11}"
    return {"id": f"t{k}", "user_id": "u", "state": state, "action": action, "reward": reward,
            "next_state": state + [action], "ts": k, "propensity": propensity, "policy_version": 1,
            "request_id": None, "position": 0, "engagement": "click"}


def buf(**kw) -> ReplayBuffer:
    cfg = LearnerConfig(capacity=kw.pop("capacity", 1000), batch_size=kw.pop("batch_size", 4), holdout_fraction=kw.pop("holdout_fraction", 0.0),
                        history_len=kw.pop("history_len", 4), **kw)
    return ReplayBuffer(cfg, ItemVocab(text_dim=cfg.text_dim))


def test_add_stores_left_padded_index_histories():
    b = buf()
    b.add([tr(1, state=["a", "b"], action="c")], partition=2, offset=9)
    v = b.vocab
    assert b.train.state[0].tolist() == [PAD, PAD, v.index["a"], v.index["b"]]
    assert b.train.next_state[0].tolist() == [PAD, v.index["a"], v.index["b"], v.index["c"]]
    assert int(b.train.action[0]) == v.index["c"] and int(b.train.partition[0]) == 2 and int(b.train.offset[0]) == 9


def test_history_longer_than_history_len_keeps_the_most_recent():
    b = buf(history_len=2)
    b.add([tr(1, state=["a", "b", "c"], action="d")])
    assert b.train.state[0].tolist() == [b.vocab.index["b"], b.vocab.index["c"]]


def test_duplicate_ids_are_dropped_within_and_across_messages():
    b = buf()
    b.add([tr(1), tr(2), tr(1)])
    b.add([tr(2), tr(3)])
    assert len(b) == 3 and b.duplicates == 2


@pytest.mark.parametrize("reward,reason", [(math.nan, "non_finite_reward"), (math.inf, "non_finite_reward"),
                                           (-math.inf, "non_finite_reward"), (None, "non_finite_reward"),
                                           ("1", "malformed"), (True, "malformed")])
def test_bad_rewards_are_rejected_and_counted(reward, reason):
    b = buf()
    b.add([tr(1, reward=reward), tr(2)])
    assert len(b) == 1 and b.rejected[reason] == 1 and "t1" not in b


def test_malformed_and_bad_propensity_rejected():
    b = buf()
    bad = tr(1)
    del bad["action"]
    b.add([bad, tr(2, propensity=0.0), tr(3, propensity=1.5), {"x": 1}, "junk", tr(4, propensity=None)])
    assert b.rejected == {"malformed": 3, "bad_propensity": 2} and len(b) == 1
    assert math.isnan(float(b.train.propensity[0]))


def test_capacity_is_bounded_and_evicted_ids_forgotten():
    b = buf(capacity=10)
    for k in range(0, 25, 5):
        b.add([tr(i) for i in range(k, k + 5)], partition=0, offset=k)
    assert len(b) == 10 and len(b.where) == 10
    assert "t0" not in b and "t24" in b
    assert b.refill_offsets({0: 25}) == {0: 15}  # the oldest message still held


def test_holdout_split_is_by_id_and_never_sampled():
    b = buf(holdout_fraction=0.3, batch_size=64)
    b.add([tr(k) for k in range(500)])
    held = {f"t{k}" for k in range(500) if is_holdout(f"t{k}", 0.3)}
    assert b.holdout.size == len(held) and 100 < len(held) < 200
    assert len(b) + b.holdout.size == 500
    assert all(b.where[i][0] == 1 for i in held)  # held-out rows live only in the held-out ring
    s = b.sample(64)
    assert len(s) == 64 and len(b.eval_slice(1000)) == len(held)


def test_uniform_sampling_covers_the_buffer():
    b = buf(prioritized=False, batch_size=256, positive_share=0.0)
    b.add([tr(k) for k in range(50)])
    slots = np.concatenate([b.sample(256).slots for _ in range(20)])
    assert set(slots.tolist()) == set(range(50))


def test_prioritized_sampling_follows_priorities_and_weights_correct_bias():
    b = buf(alpha=1.0, beta=1.0, batch_size=1000, priority_eps=0.0, positive_share=0.0)
    b.add([tr(k) for k in range(4)])
    b.update_priorities(np.arange(4), np.array([1.0, 1.0, 1.0, 7.0]))
    s = b.sample(1000)
    share = float((s.slots == 3).mean())
    assert 0.65 < share < 0.75
    w = s.weight.numpy()
    assert w[s.slots == 3].max() < w[s.slots == 0].min()  # rarer samples weigh more


def test_rewarded_share_oversamples_sparse_rewards_with_exact_is_weights():
    """With 1 rewarded transition in 100 and positive_share 0.5, half the batch is that one; its
    importance weight (beta = 1) is P(other) / P(it) relative to the others: unbiased TD loss."""
    b = buf(prioritized=False, batch_size=10_000, positive_share=0.5, beta=1.0, capacity=1000)
    b.add([tr(k, reward=1.0 if k == 42 else 0.0) for k in range(100)])
    s = b.sample(10_000)
    pos = s.reward > 0
    assert 0.49 < float(pos.float().mean()) < 0.52
    p_pos, p_other = 0.5 / 100 + 0.5, 0.5 / 100
    assert float(s.weight[pos][0] / s.weight[~pos][0]) == pytest.approx(p_other / p_pos, rel=1e-4)
    assert float((s.weight * s.reward).sum() / s.weight.sum()) == pytest.approx(0.01, abs=0.003)


def test_recent_share_draws_from_newest_transitions():
    b = buf(capacity=1000, batch_size=100, drift_recent_window=10, prioritized=False, positive_share=0.0)
    b.add([tr(k) for k in range(500)])
    b.recent_share = 0.5
    s = b.sample(100)
    assert set(s.slots[50:].tolist()) <= set(range(490, 500))


def test_item_pool_holds_only_logged_actions():
    b = buf()
    b.vocab.add(["never-shown"])
    b.add([tr(1, state=["x"], action="a"), tr(2, state=["y"], action="b")])
    assert sorted(b.vocab.ids[i] for i in b.item_pool().tolist()) == ["a", "b"]


def test_sumtree_matches_bruteforce():
    rng = np.random.default_rng(0)
    t = SumTree(37)
    p = rng.random(37)
    t.update(np.arange(37), p)
    t.update(np.array([3, 3, 5]), np.array([9.0, 2.0, 0.0]))
    p[3], p[5] = 2.0, 0.0
    assert t.total == pytest.approx(p.sum())
    mass = rng.random(1000) * p.sum()
    assert (t.find(mass) == np.searchsorted(np.cumsum(p), mass, side="right")).all()
    assert 5 not in t.sample(500, rng)


def test_vocab_grows_and_keeps_text():
    v = ItemVocab(text_dim=3, capacity=2)
    v.set_text(["a", "b", "c"], np.eye(3, dtype=np.float32))
    assert v.text.shape[0] >= 4 and torch.equal(v.text_matrix()[1:], torch.eye(3))
    assert v.missing_text() == [] and v.add(["d"]).tolist() == [4] and v.missing_text() == ["d"]
    assert v.lookup(["zz", "a"]).tolist() == [PAD, 1]
