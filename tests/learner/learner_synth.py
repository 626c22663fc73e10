"""A small self-contained transition generator for learner tests (until the simulator lands).

Items belong to topics and carry topic words in their text; users like one or two topics; a
logging policy shows items (popularity-biased, with its propensity logged); a shown item is
clicked with high probability when its topic matches the user's interests and rarely otherwise.
So the history reveals the interests, the text reveals the topic, and popularity alone is weak.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from streamrl.schema import transition_record

TOPICS = {
    "football": ["football", "goal", "striker", "league", "stadium", "penalty"],
    "cooking": ["recipe", "pasta", "kitchen", "baking", "sauce", "chef"],
    "space": ["rocket", "planet", "astronaut", "galaxy", "orbit", "telescope"],
    "music": ["guitar", "concert", "album", "piano", "song", "drummer"],
    "finance": ["stocks", "investing", "bank", "interest rates", "budget", "dividend"],
    "gardening": ["tomato plants", "compost", "flowers", "seeds", "garden", "pruning"],
    "cars": ["engine", "sports car", "electric vehicle", "tyres", "racing", "gearbox"],
    "pets": ["puppy", "kitten", "dog training", "cat food", "aquarium", "veterinarian"],
}
STYLES = ["guide to", "best", "top ten", "story of", "review:", "how to enjoy", "news about", "tips on"]


@dataclass
class World:
    items: list[dict]                      # catalog entries
    topic_of: dict[str, str]
    popularity: np.ndarray                 # logging-policy weights over items
    users: dict[str, list[str]]            # user -> liked topics
    history: dict[str, list[str]] = field(default_factory=dict)


def make_world(n_items: int = 400, n_users: int = 300, seed: int = 0) -> World:
    rng = random.Random(seed)
    topics = list(TOPICS)
    items, topic_of = [], {}
    for k in range(n_items):
        t = topics[k % len(topics)]
        words = rng.sample(TOPICS[t], 2)
        iid = f"it{k}"
        items.append({"item_id": iid, "title": f"{rng.choice(STYLES)} {words[0]}", "category": t,
                      "description": f"all about {words[1]}"})
        topic_of[iid] = t
    pop = np.random.default_rng(seed).zipf(1.6, n_items).astype(np.float64)
    pop = np.minimum(pop, 50.0)
    users = {f"u{u}": rng.sample(topics, rng.choice([1, 2])) for u in range(n_users)}
    return World(items, topic_of, pop / pop.sum(), users)


def transitions(world: World, n: int, seed: int = 0, exclude: set[str] | None = None,
                tid_prefix: str = "t") -> list[dict]:
    """``n`` transitions from the logging policy (items in ``exclude`` are never shown)."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    ids = [it["item_id"] for it in world.items]
    p = world.popularity.copy()
    if exclude:
        p[[i for i, x in enumerate(ids) if x in exclude]] = 0.0
    p = 0.5 * p / p.sum() + 0.5 * (p > 0) / (p > 0).sum()  # popularity-biased, every item possible
    users = list(world.users)
    out = []
    shown = np_rng.choice(len(ids), size=n, p=p)
    for k in range(n):
        u = rng.choice(users)
        hist = world.history.setdefault(u, [])
        a = ids[shown[k]]
        match = world.topic_of[a] in world.users[u]
        r = 1.0 if rng.random() < (0.6 if match else 0.03) else 0.0
        if r and rng.random() < 0.1:
            r = 5.0
        state = hist[-20:]
        nxt = (hist + [a])[-20:] if r else state
        out.append(transition_record(tid=f"{tid_prefix}{seed}-{k}", user_id=u, state=list(state), action=a,
                                     reward=r, next_state=list(nxt), ts=1_767_225_600_000 + k,
                                     propensity=float(p[shown[k]]), policy_version=0, request_id=None,
                                     position=0, engagement="click" if r else None))
        if r:
            hist.append(a)
    return out


def warm_histories(world: World, per_user: int = 5, seed: int = 0, exclude: set[str] | None = None) -> None:
    """Give every user a few engaged items of their topics (so states are informative from the start)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for iid, t in world.topic_of.items():
        if not exclude or iid not in exclude:
            by_topic.setdefault(t, []).append(iid)
    for u, topics in world.users.items():
        world.history[u] = [rng.choice(by_topic[rng.choice(topics)]) for _ in range(per_user)]


def join_events(events, window_ms: int = 30 * 60 * 1000, weights=None, history_len: int = 20) -> list[dict]:
    """Transitions from an event stream sorted by ts, by the contract's join: a click/purchase
    rewards the latest view of the same (user, item) within the window; state = engaged items
    before the view; next_state = state + action when rewarded. (The processor does this over
    Kafka; here it lets learner tests run on the simulator's events without a broker.)"""
    weights = weights or {"view": 0.0, "click": 1.0, "purchase": 5.0}
    history: dict[str, list[str]] = {}
    latest_view: dict[tuple[str, str], dict] = {}
    out: list[dict] = []
    for e in events:
        hist = history.setdefault(e.user_id, [])
        if e.type == "view":
            state = hist[-history_len:]
            t = transition_record(tid=f"tr-{e.event_id}", user_id=e.user_id, state=list(state), action=e.item_id,
                                  reward=weights["view"], next_state=list(state), ts=e.ts,
                                  propensity=e.propensity, policy_version=e.policy_version,
                                  request_id=e.request_id, position=e.position, engagement=None)
            latest_view[(e.user_id, e.item_id)] = t
            out.append(t)
            continue
        hist.append(e.item_id)
        t = latest_view.get((e.user_id, e.item_id))
        if t is not None and t["ts"] <= e.ts <= t["ts"] + window_ms and weights[e.type] > t["reward"]:
            t["reward"] = weights[e.type]
            t["engagement"] = e.type
            t["next_state"] = (t["state"] + [e.item_id])[-history_len:]
    return out
