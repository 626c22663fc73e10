"""Learning on synthetic transitions: the policy beats popularity and ranks unseen items by text."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from learner_synth import TOPICS, join_events, make_world, transitions, warm_histories

from streamrl.learner.config import LearnerConfig
from streamrl.learner.evaluate import evaluate, model_scorer
from streamrl.learner.vocab import PAD
from streamrl.learner.worker import Learner

UNSEEN = {f"it{k}" for k in range(360, 400)}  # 40 items (5 per topic) never shown in training


@pytest.fixture(scope="module")
def trained(catalog_vectors):
    ids, vectors = catalog_vectors
    world = make_world(400, 300, seed=1)
    warm_histories(world, seed=1, exclude=UNSEEN)
    data = transitions(world, 20_000, seed=1, exclude=UNSEEN)
    cfg = LearnerConfig(dim=32, hidden=32, history_len=10, batch_size=128, lr=3e-3, min_buffer=500,
                        next_candidates=64, sup_negatives=64, eval_negatives=0, capacity=50_000, seed=1)
    learner = Learner(None, cfg, catalog_text=(ids, vectors))
    for k in range(0, len(data), 500):
        learner.ingest(data[k:k + 500], 0, k)
    t0 = time.monotonic()
    learner.train(300)
    return world, learner, time.monotonic() - t0


def test_learned_policy_beats_popularity_on_heldout(trained):
    """HR@10 of rewarded actions on held-out transitions, whole catalog ranked: >= 1.5x popularity."""
    _, learner, seconds = trained
    figures = learner.evaluate()
    cand, pop = figures["candidate"], figures["popularity"]
    print(f"\nlearning: HR@10 {cand.hr10:.3f} NDCG@10 {cand.ndcg10:.3f} vs popularity HR@10 {pop.hr10:.3f} "
          f"NDCG@10 {pop.ndcg10:.3f} (ratio {cand.hr10 / pop.hr10:.2f}) on {cand.n_rewarded} rewarded held-out "
          f"transitions; 300 updates in {seconds:.1f}s; SNIPS {cand.snips:.3f}")
    assert cand.n_rewarded >= 200
    assert cand.hr10 >= 1.5 * pop.hr10


@torch.no_grad()
def test_unseen_items_ranked_by_text_for_matching_users(trained):
    """Items never shown in training are scored through the text tower: for a history of one topic,
    unseen items of that topic outrank unseen items of other topics (AUC well above 0.5)."""
    world, learner, _ = trained
    model, vocab = learner.online, learner.vocab
    unseen = sorted(UNSEEN)
    idx = vocab.lookup(unseen)
    assert bool((idx != PAD).all()) and float(model.item_id.weight[idx].abs().max()) == 0.0  # text only
    topic = np.array([world.topic_of[i] for i in unseen])
    rng = np.random.default_rng(0)
    aucs = []
    for t in TOPICS:
        seen_t = [i for i, tt in world.topic_of.items() if tt == t and i not in UNSEEN]
        for _ in range(5):
            hist = list(rng.choice(seen_t, 6))
            state = torch.tensor([[PAD] * 4 + vocab.lookup(hist).tolist()])
            s = model.score(state, idx)[0].numpy()
            pos, neg = s[topic == t], s[topic != t]
            aucs.append(float((pos[:, None] > neg[None, :]).mean()))
    auc = float(np.mean(aucs))
    print(f"\nunseen items: AUC of matching-topic vs other unseen items {auc:.3f} (random 0.5), "
          f"{len(unseen)} unseen items, {len(aucs)} single-topic histories")
    assert auc >= 0.75


#: A simulated world where interests matter: clicks follow affinity more than clickbait. (With
#: the simulator's defaults even its own click model reaches only ~1.7x popularity's HR@10.)
SIM = dict(n_users=200, n_items=400, seed=1, click_affinity_weight=10.0, click_bias=-6.0,
           clickbait_share=0.05, interest_concentration=0.1)


def test_learned_policy_beats_popularity_on_simulator_transitions(embedder):
    """Simulator events -> the contract's reward join -> learner: HR@10 of rewarded actions on the
    most recent held-out transitions (whole catalog ranked) >= 1.5x the popularity baseline's."""
    from streamrl.catalog import item_text
    from streamrl.producers.simulator import SimConfig, Simulator

    t0 = time.monotonic()
    sim = Simulator(SimConfig(**SIM))
    data = join_events(sim.events(150_000))
    items = sim.catalog_items()
    vectors = embedder.embed([item_text(i) for i in items])
    cfg = LearnerConfig(dim=32, hidden=32, history_len=10, batch_size=128, lr=3e-3, min_buffer=500,
                        next_candidates=64, sup_negatives=64, eval_negatives=0, eval_size=20_000,
                        holdout_capacity=20_000, capacity=200_000, drift_response="none", seed=1)
    learner = Learner(None, cfg, catalog_text=([i["item_id"] for i in items], vectors))
    for k in range(0, len(data), 1000):
        learner.ingest(data[k:k + 1000], 0, k)
    t1 = time.monotonic()
    learner.train(300)
    t2 = time.monotonic()
    figures = learner.evaluate()
    cand, pop = figures["candidate"], figures["popularity"]
    print(f"\nsimulator: {len(data)} transitions ({sum(t['reward'] > 0 for t in data)} rewarded); HR@10 "
          f"{cand.hr10:.3f} NDCG@10 {cand.ndcg10:.3f} vs popularity HR@10 {pop.hr10:.3f} NDCG@10 {pop.ndcg10:.3f} "
          f"(ratio {cand.hr10 / pop.hr10:.2f}) on {cand.n_rewarded} rewarded held-out transitions; "
          f"data {t1 - t0:.1f}s, 300 updates {t2 - t1:.1f}s")
    assert cand.n_rewarded >= 100
    assert cand.hr10 >= 1.5 * pop.hr10


def test_evaluate_same_seed_same_figures(trained):
    _, learner, _ = trained
    batch = learner.buffer.eval_slice(500)
    cfg = learner.cfg.replace(eval_negatives=50)
    a = evaluate(model_scorer(learner.online), batch, len(learner.vocab), cfg, seed=3, model=learner.online)
    b = evaluate(model_scorer(learner.online), batch, len(learner.vocab), cfg, seed=3, model=learner.online)
    assert a == b
