"""The DQN update, its guard rails, item-table growth, checkpoints, rollback, drift response."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrl.learner.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from streamrl.learner.config import LearnerConfig
from streamrl.learner.dqn import dqn_update, sync_target
from streamrl.learner.model import build_model, grow_optimizer
from streamrl.learner.worker import Learner

CFG = dict(dim=8, hidden=8, history_len=4, batch_size=32, min_buffer=32, capacity=5000, holdout_fraction=0.2,
           next_candidates=16, sup_negatives=16, eval_negatives=20, min_transitions_to_publish=100, text_dim=384)


def data(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(start, start + n):
        topic = int(rng.integers(4))
        state = [f"i{topic}-{int(rng.integers(10))}" for _ in range(int(rng.integers(0, 5)))]
        a_topic = int(rng.integers(4))
        a = f"i{a_topic}-{int(rng.integers(10))}"
        r = float(a_topic == topic and rng.random() < 0.7)
        out.append({"id": f"t{k}", "user_id": "u", "state": state, "action": a, "reward": r,
                    "next_state": state + [a] if r else state, "ts": k, "propensity": 0.1,
                    "policy_version": 0, "request_id": None, "position": 0, "engagement": None})
    return out


class FakePublisher:
    def __init__(self):
        self.sent = []

    def publish(self, version, tensors, metadata, item_ids):
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
        self.sent.append((version, metadata, item_ids))
        return {}


class Source:
    def __init__(self, batch, pool):
        self.batch, self.pool = batch, pool

    def sample(self, n):
        return self.batch

    def item_pool(self):
        return self.pool

    def update_priorities(self, slots, td):
        pass


def learner(tmp_path=None, n: int = 600, **kw) -> Learner:
    lr = Learner(None, LearnerConfig(**{**CFG, **kw}), checkpoint_dir=str(tmp_path) if tmp_path else None)
    lr.ingest(data(n), 0, 0)
    return lr


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_update_lowers_loss_and_applies_step():
    lr = learner()
    before = _params(lr.online)
    assert lr.train(30) == 30 and lr.train_step == 30
    assert any(not torch.equal(a, b) for a, b in zip(before, lr.online.parameters()))
    assert lr.buffer.max_priority >= 1.0


@pytest.mark.parametrize("encoder", ["mean", "gru"])
def test_a_step_on_the_whole_item_table_equals_the_per_call_step(encoder, monkeypatch):
    """A small catalog's step projects every item once (every_item_once); the loss, the gradients
    and so the step are those of projecting each call's items (a large catalog's path)."""
    import contextlib
    import copy

    from streamrl.learner.model import QNetwork

    torch.manual_seed(0)
    lr = learner(encoder=encoder)
    batch, pool = lr.buffer.sample(256), lr.buffer.item_pool()   # touches more rows than the table has
    whole = QNetwork.every_item_once
    used = []

    def counted(self):
        used.append(self)
        return whole(self)

    out = []
    for once in (counted, lambda self: contextlib.nullcontext()):
        monkeypatch.setattr(QNetwork, "every_item_once", once)
        online, target = copy.deepcopy(lr.online), copy.deepcopy(lr.target)
        opt = torch.optim.Adam(online.parameters(), lr=1e-3)
        res = dqn_update(online, target, opt, Source(batch, pool), lr.cfg, 1, torch.Generator().manual_seed(3))
        assert res.skipped is None and online._table is None and target._table is None
        out.append((res, _params(online)))
    assert len(used) == 2                  # the small catalog took the whole-table path, both networks
    (a, pa), (b, pb) = out
    assert math.isclose(a.loss, b.loss, rel_tol=1e-5) and math.isclose(a.grad_norm, b.grad_norm, rel_tol=1e-4)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(pa, pb))


def test_evaluation_on_the_whole_item_table_gives_the_per_call_figures(monkeypatch):
    """A small catalog's held-out evaluation projects every item once; its figures are those of
    projecting each call's items."""
    import contextlib

    from streamrl.learner.evaluate import evaluate, model_scorer
    from streamrl.learner.model import QNetwork

    torch.manual_seed(0)
    lr = learner(n=4000)                  # a held-out slice that touches the 1024-row table twice over
    lr.train(20)
    batch = lr.buffer.eval_slice(lr.cfg.eval_size)
    whole, used, out = QNetwork.every_item_once, [], []

    def counted(self):
        used.append(self)
        return whole(self)

    for once in (counted, lambda self: contextlib.nullcontext()):
        monkeypatch.setattr(QNetwork, "every_item_once", once)
        out.append(evaluate(model_scorer(lr.online), batch, len(lr.vocab), lr.cfg, 7, model=lr.online))
    assert used == [lr.online] and lr.online._table is None
    a, b = out
    assert (a.hr10, a.n_rewarded, a.n_logged) == (b.hr10, b.n_rewarded, b.n_logged)
    assert math.isclose(a.ndcg10, b.ndcg10, rel_tol=1e-6) and math.isclose(a.td_error, b.td_error, rel_tol=1e-5)
    assert math.isclose(a.snips, b.snips, rel_tol=1e-5)


@pytest.mark.parametrize("baseline", ["published", "popularity"])
def test_the_published_policy_is_evaluated_at_every_gate_that_compares_with_it(tmp_path, baseline, monkeypatch):
    """With gate_baseline published every gate evaluates the published policy; with popularity
    its figures only feed a metric and are refreshed every PUBLISHED_EVAL_EVERY_S seconds."""
    import streamrl.learner.worker as worker

    lr = learner(tmp_path, gate_baseline=baseline, gate_tolerance=1.0)
    lr.train(10)
    assert lr.maybe_publish(FakePublisher()) == 1
    clock = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    seen = []
    for dt in (0.0, 1.0, worker.PUBLISHED_EVAL_EVERY_S - 1.5, 1.0, 1.0):
        clock[0] += dt
        seen.append("published" in lr.evaluate())
    assert seen == ([True] * 5 if baseline == "published" else [True, False, False, True, False])


@pytest.mark.parametrize("poison,reason", [("nan_reward", "non_finite_loss"), ("inf_reward", "non_finite_loss"),
                                           ("huge_gradient", "exploding_gradient")])
def test_guard_skips_bad_steps_without_touching_weights(poison, reason):
    """A non-finite loss or an exploding gradient is skipped: weights and optimizer untouched."""
    lr = learner()
    b = lr.buffer.sample(32)
    b.reward = b.reward.clone()
    cfg = lr.cfg
    if poison == "huge_gradient":  # a gradient norm above skip_grad_norm
        with torch.no_grad():
            lr.online.q_head.weight.mul_(1e12)
        cfg = cfg.replace(skip_grad_norm=1e3)
    else:
        b.reward[0] = math.nan if poison == "nan_reward" else math.inf
    before = _params(lr.online)
    r = dqn_update(lr.online, lr.target, lr.opt, Source(b, lr.buffer.item_pool()), cfg, 1, torch.Generator())
    assert r.skipped == reason
    assert all(torch.equal(a, p) for a, p in zip(before, lr.online.parameters()))
    assert not lr.opt.state


def test_huge_reward_keeps_gradient_bounded_by_huber():
    lr = learner()
    b = lr.buffer.sample(32)
    b.reward = b.reward.clone()
    b.reward[0] = 1e30
    r = dqn_update(lr.online, lr.target, lr.opt, Source(b, lr.buffer.item_pool()), lr.cfg, 1, torch.Generator())
    assert r.skipped is None and r.grad_norm < 100 and lr.weights_finite()


def test_without_supervised_loss_the_policy_ranks_by_q_alone():
    lr = learner(sup_weight=0.0, q_weight=3.0)
    assert lr.train(20) == 20
    head = lr.online.sup_head
    assert not head.weight.detach().any() and not head.bias.detach().any()  # never trained
    with torch.no_grad():
        state = lr.buffer.sample(4).state
        h = lr.online.encode(state)
        q = lr.online.q_cands(h)
        assert float(q.abs().sum()) > 0
        assert torch.allclose(lr.online.score(state), 3.0 * q)


def test_target_sync_hard_and_soft():
    cfg = LearnerConfig(**{**CFG, "target_sync_every": 5})
    online, target = build_model(10, cfg), build_model(10, cfg)
    sync_target(online, target, cfg, 4)
    assert not torch.equal(online.q_head.weight, target.q_head.weight)
    sync_target(online, target, cfg, 5)
    assert torch.equal(online.q_head.weight, target.q_head.weight)
    soft = cfg.replace(target_tau=0.5)
    with torch.no_grad():
        online.q_head.weight.add_(1.0)
    sync_target(online, target, soft, 1)
    assert torch.allclose(target.q_head.weight, online.q_head.weight - 0.5)


def test_new_catalog_items_grow_tables_and_optimizer_without_restart():
    lr = learner()
    lr.train(5)
    rows = lr.online.n_items
    old = lr.online.item_id.weight[:len(lr.vocab)].detach().clone()
    new_ids = [f"new{k}" for k in range(3000)]
    lr.add_items(new_ids, np.ones((3000, 384), dtype=np.float32))
    assert lr.online.n_items > rows and lr.target.n_items == lr.online.n_items
    assert torch.equal(lr.online.item_id.weight[:old.shape[0]], old)
    lr.ingest([{**data(1, start=10_000)[0], "action": "new5"}], 0, 1)
    assert lr.train(5) == 5  # Adam moments were padded to the grown tables
    idx = lr.vocab.index["new7"]
    g = lr.online.item_vectors(torch.tensor([idx]))
    assert torch.allclose(g, lr.online.text_proj(torch.ones(1, 384)))  # text-only vector


def test_grow_optimizer_pads_adam_state():
    cfg = LearnerConfig(**CFG)
    m = build_model(4, cfg)
    opt = torch.optim.Adam(m.parameters())
    m.item_id.weight.sum().backward()
    opt.step()
    grow_optimizer(opt, m.grow(9))
    st = opt.state[m.item_id.weight]
    assert st["exp_avg"].shape == (9, 8) and float(st["exp_avg"][4:].abs().sum()) == 0


def test_checkpoint_roundtrip_resumes_state(tmp_path):
    lr = learner(tmp_path)
    lr.consumed = {0: 1}
    lr.train(10)
    pub = FakePublisher()
    assert lr.maybe_publish(pub) == 1
    assert (tmp_path / FILENAME).exists()
    lr2 = Learner(None, LearnerConfig(**CFG), checkpoint_dir=str(tmp_path))
    assert lr2.train_step == 10 and lr2.last_version == 1 and lr2.vocab.ids == lr.vocab.ids
    assert torch.equal(lr2.online.item_id.weight, lr.online.item_id.weight)
    assert lr2.published is not None and lr2.opt.state
    state = torch.load(tmp_path / FILENAME, weights_only=True)  # plain tensors and primitives
    assert state["refill"] == {0: 0}


def test_checkpoint_with_more_items_than_half_the_table_resumes(tmp_path):
    # 600 items fill a 1024-row table past half: the restored vocabulary must not double its
    # capacity before the saved tables load (it did: "size mismatch for item_id.weight")
    lr = learner(tmp_path)
    items = [f"x{k}" for k in range(600)]
    lr.add_items(items, np.random.default_rng(0).normal(size=(600, 384)).astype(np.float32))
    lr.train(5)
    lr.checkpoint()
    rows = lr.online.n_items
    lr2 = Learner(None, LearnerConfig(**CFG), checkpoint_dir=str(tmp_path))
    assert lr2.vocab.ids == lr.vocab.ids and lr2.online.n_items == rows
    assert torch.equal(lr2.online.item_id.weight, lr.online.item_id.weight)
    lr2.train(5)  # and it trains on


def test_checkpoint_of_another_network_shape_is_refused(tmp_path):
    from streamrl.errors import CheckpointError

    learner(tmp_path).checkpoint()
    with pytest.raises(CheckpointError, match="network shape"):
        Learner(None, LearnerConfig(**{**CFG, "dim": 16}), checkpoint_dir=str(tmp_path))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"x": torch.ones(2)})

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(Exception):
        save_checkpoint(tmp_path, {"x": torch.zeros(2)})
    assert torch.equal(load_checkpoint(tmp_path)["x"], torch.ones(2))


def test_non_finite_weights_roll_back_and_never_publish(tmp_path):
    """Weights that went NaN (say, a bad step slipped through) are rolled back to the last
    checkpoint before any gate, and nothing is published from them."""
    lr = learner(tmp_path)
    lr.train(5)
    lr.checkpoint()
    good = lr.online.q_head.weight.detach().clone()
    with torch.no_grad():
        lr.online.q_head.weight[0, 0] = math.nan
    pub = FakePublisher()
    assert lr.maybe_publish(pub) is None and not pub.sent
    assert torch.equal(lr.online.q_head.weight, good)
    assert lr.maybe_publish(pub) == 1


def test_gate_rejects_worse_candidate_and_records_figures(tmp_path):
    lr = learner(tmp_path, gate_tolerance=0.0, snips_tolerance=0.0)
    lr.train(40)
    pub = FakePublisher()
    assert lr.maybe_publish(pub) == 1
    meta = pub.sent[0][1]
    assert set(meta["eval"]) >= {"candidate", "popularity", "gate"} and meta["hyperparameters"]["gamma"] == lr.cfg.gamma
    assert meta["model_config"]["n_items"] == len(lr.vocab) == len(pub.sent[0][2])
    with torch.no_grad():  # sabotage the candidate: scores no longer depend on the items
        for p in (lr.online.item_id.weight, lr.online.text_proj.weight, lr.online.item_bias.weight):
            p.zero_()
    lr.train_step += 1
    assert lr.maybe_publish(pub) is None and len(pub.sent) == 1


def _rewards_then(lr, first: float, then: float) -> None:
    for k in range(20):
        batch = data(200, seed=k, start=1000 + 200 * k)
        for t in batch:
            t["reward"] = first if k < 10 else then
        lr.ingest(batch, 0, k)


def test_reward_drop_switches_sampling_to_recent():
    lr = learner(n=0, drift_recent_share=0.5, drift_boost_updates=3)
    _rewards_then(lr, 5.0, 0.0)
    assert lr.buffer.recent_share == 0.5 and lr.boost_left == 3
    assert lr.drift.improvements["reward"] == 0
    lr.train(3)
    assert lr.buffer.recent_share == 0.0


def test_reward_drop_is_seen_across_partitions():
    """One reward detector across the transition partitions: 8 partitions each see an eighth of the
    views, and a drop from 0.2 to 0.05 clicks per view is found within 600 views after it (one
    detector per partition needed ~1,100-1,800 in the same stream)."""
    lr = learner(n=0, drift_recent_share=0.5, drift_boost_updates=3)
    rng = np.random.default_rng(0)
    for k in range(230):                    # messages of 20 transitions, round robin over 8 partitions
        batch = data(20, seed=k, start=1000 + 20 * k)
        for t in batch:
            t["reward"] = float(rng.random() < (0.2 if k < 200 else 0.05))
            t["next_state"] = t["state"] + [t["action"]] if t["reward"] else t["state"]
        lr.ingest(batch, k % 8, k // 8)
        if k < 200:
            assert lr.buffer.recent_share == 0.0, f"false alarm at message {k}"
    assert lr.buffer.recent_share == 0.5 and lr.boost_left == 3


def test_reward_rise_is_not_a_drift():
    """An improving policy raises its own reward rate: detected by ADWIN, not responded to."""
    lr = learner(n=0, drift_recent_share=0.5, drift_boost_updates=3)
    _rewards_then(lr, 0.0, 5.0)
    assert lr.drift.improvements["reward"] >= 1
    assert lr.buffer.recent_share == 0.0 and lr.boost_left == 0


def test_catalog_file_changes_are_picked_up_without_restart(tmp_path, embedder):
    """New catalog lines get rows and text vectors while the learner runs (no restart)."""
    from streamrl.catalog import write_catalog
    from streamrl.config import Settings

    path = tmp_path / "catalog.jsonl"
    items = [{"item_id": f"c{k}", "title": f"rocket launch {k}", "category": "space"} for k in range(5)]
    write_catalog(path, items)
    s = Settings.from_env(catalog_path=str(path), cache_dir=str(tmp_path / "cache"))
    lr = Learner(s, LearnerConfig(**CFG))
    assert lr.refresh_catalog(embedder) == 5 and lr.refresh_catalog(embedder) == 0
    lr.ingest(data(300), 0, 0)
    lr.train(3)
    write_catalog(path, items + [{"item_id": "c-new", "title": "pasta recipe", "category": "cooking"}])
    import os
    os.utime(path, (os.path.getmtime(path) + 5,) * 2)
    assert lr.refresh_catalog(embedder) == 1
    idx = lr.vocab.index["c-new"]
    assert bool(lr.vocab.has_text[idx]) and float(lr.online.text[idx].norm()) == pytest.approx(1.0, abs=1e-4)
    assert lr.train(3) == 3


def test_metrics_exported_after_training(tmp_path):
    from prometheus_client import REGISTRY

    lr = learner(tmp_path)
    lr.train(5)
    lr.maybe_publish(FakePublisher())
    lr._set_buffer_gauges()
    names = {m.name for m in REGISTRY.collect()}
    for n in ("streamrl_learner_buffer_transitions", "streamrl_learner_updates", "streamrl_learner_updates_per_second",
              "streamrl_learner_loss", "streamrl_learner_td_error", "streamrl_learner_q_mean",
              "streamrl_learner_grad_norm", "streamrl_learner_published_version",
              "streamrl_learner_publish_duration_seconds", "streamrl_learner_eval",
              "streamrl_learner_drift_events", "streamrl_learner_skipped_updates",
              "streamrl_learner_rejected_transitions"):
        assert n in names, n
    assert REGISTRY.get_sample_value("streamrl_learner_buffer_transitions", {"ring": "train"}) == len(lr.buffer)
    assert REGISTRY.get_sample_value("streamrl_learner_eval", {"policy": "candidate", "metric": "hr10"}) is not None


def test_mean_encoder_trains_publishes_and_serves_the_same_scores(tmp_path):
    """encoder='mean': the order-free state encoder learns, its snapshot rebuilds exactly, and a
    checkpoint of one encoder is refused by a learner configured with the other."""
    from streamrl.learner.policy import load_policy
    from streamrl.producers.snapshot import Snapshot

    lr = learner(tmp_path, encoder="mean", q_weight=5.0)
    assert not hasattr(lr.online, "gru")
    before = lr.train(0)
    lr.train(60)
    assert before == 0 and lr.train_step == 60
    pub = FakePublisher()
    assert lr.maybe_publish(pub) == 1
    version, meta, item_ids = pub.sent[0]
    assert meta["model_config"]["encoder"] == "mean"
    tensors, _ = lr.snapshot_tensors()
    policy = load_policy(Snapshot(version, meta, b"", tensors, item_ids))
    hist, cands = ["i1-3", "i1-4"], ["i1-5", "i2-5", "i3-1"]
    idx = lambda ids: torch.tensor([lr.vocab.index[i] for i in ids])  # noqa: E731
    with torch.no_grad():
        state = torch.tensor([[0] * (lr.cfg.history_len - 2) + idx(hist).tolist()])
        want = lr.online.score(state, idx(cands))[0].numpy()
    assert np.allclose(policy.score(hist, cands), want, atol=1e-5)
    with pytest.raises(Exception, match="encoder"):
        Learner(None, LearnerConfig(**{**CFG, "encoder": "gru"}), checkpoint_dir=str(tmp_path))


def test_snapshot_metadata_records_the_transition_offsets_it_trained_on():
    lr = learner(n=0)
    lr.ingest(data(300), partition=2, offset=0)
    lr.consumed[2] = 1
    lr.ingest(data(300, start=300), partition=2, offset=1)
    lr.consumed[2] = 2
    lr.train(5)
    lr.ingest(data(300, start=600), partition=2, offset=2)
    lr.consumed[2] = 3  # arrived after the last step: not trained on yet
    pub = FakePublisher()
    assert lr.maybe_publish(pub) == 1
    assert pub.sent[0][1]["trained_offsets"] == {"2": 2}
    assert lr.maybe_publish(pub) is None  # no step since the last gate: no new gate


def test_gate_against_popularity_in_a_closed_loop():
    """gate_baseline='popularity': the bar is the popularity scorer on the same held-out data
    (the published policy chose those items itself), so a useless candidate is still refused."""
    lr = learner(n=3000, gate_baseline="popularity", gate_tolerance=0.1)
    lr.train(200)
    pub = FakePublisher()
    assert lr.maybe_publish(pub) == 1 and pub.sent[0][1]["eval"]["gate"] == "pass"
    with torch.no_grad():
        for p in (lr.online.item_id.weight, lr.online.text_proj.weight, lr.online.item_bias.weight):
            p.zero_()
    lr.train_step += 1
    assert lr.maybe_publish(pub) is None
    with pytest.raises(ValueError, match="gate_baseline"):
        LearnerConfig(gate_baseline="nope").validate()


def test_learner_flags_parse_booleans_strictly_and_refuse_unknown_names():
    """``--prioritized false`` is False (a non-empty string is truthy: it once meant True), a
    misspelt boolean or flag is an error, not silently the default (bench/learning.py --set too)."""
    import argparse

    from streamrl.learner.config import add_learner_args, config_from_args

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_learner_args(parser)
    assert config_from_args(parser.parse_args(["--prioritized", "false"])).prioritized is False
    assert config_from_args(parser.parse_args(["--prioritized", "On"])).prioritized is True
    assert config_from_args(parser.parse_args([])).prioritized is LearnerConfig().prioritized
    with pytest.raises(argparse.ArgumentError, match="not a boolean"):
        parser.parse_args(["--prioritized", "flase"])
    with pytest.raises(SystemExit):   # argparse reports unknown flags itself (exit 2)
        parser.parse_args(["--prioritised", "false"])
