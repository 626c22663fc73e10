"""A seeded, reproducible user simulator that emits view, click and purchase events.

The world (see ARCHITECTURE.md, "Why a Q-network"):

- **Catalog.** Items belong to latent topics (a primary topic, weight 0.8, and a secondary one,
  0.2). Their title, category and description are built from the topic's English vocabulary
  (:mod:`streamrl.producers.vocab`). Hidden attributes — quality, clickbait, price — stay out of
  the catalog file and are available through :meth:`Simulator.hidden_items`.
- **Users.** Latent interests over topics drawn from a peaked Dirichlet whose base measure is a
  skewed topic popularity. Consumption pulls interests toward the consumed topics; ``drift_at``
  rotates everyone's interests (population-level drift).
- **Feed.** Each request samples ``n_candidates`` items and asks a :class:`Policy` for a slate.
- **Clicks.** A slot is examined with probability ``1 / (1 + position) ** position_bias``; an
  examined item is clicked with ``sigmoid(click_bias + w_aff * affinity + w_cb * clickbait)``.
  A fraction of clicks, larger for high quality and affinity, turns into a purchase.
- **Long-term effects.** A session has a patience budget: each request costs 1, each click adds
  ``satisfaction_gain * 2 * (quality - quality_threshold)`` (clickbait is attractive but low
  quality, so it ends sessions; quality lengthens them), a purchase adds 1. When patience runs
  out the session ends and the user returns after a gap that is shorter the more satisfied the
  session left them.

Time is one global simulated clock driven by a heap of scheduled actions, so the stream is
non-decreasing in ``ts``: views carry the request time, clicks follow seconds later, purchases
tens of seconds to minutes after the click, the session's next request after browsing and
dwell time. Everything random flows from ``SimConfig.seed``.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from streamrl.producers.policies import Policy, Ranking, make_policy
from streamrl.producers.vocab import TOPICS, item_text
from streamrl.schema import Event

log = logging.getLogger(__name__)

_EVENT, _REQUEST = 0, 1
_PRIMARY_WEIGHT = 0.8


@dataclass
class SimConfig:
    """Hyperparameters of the simulated world; ``seed`` fixes everything else."""

    n_users: int = 2000
    """Users, with ids ``u0 .. u{n_users-1}``."""
    n_items: int = 1000
    """Catalog items, with ids ``i0 .. i{n_items-1}``."""
    n_topics: int = 12
    """Latent topics (at most ``len(vocab.TOPICS)``, one English vocabulary each)."""
    slate_size: int = 10
    """Items shown per feed request (views per request)."""
    n_candidates: int = 100
    """Candidates sampled uniformly from the catalog for each request; the policy picks the slate."""
    seed: int = 0
    """Seed of every random draw: same seed and config, same catalog and event stream."""
    start_ts: int = 1_767_225_600_000
    """Simulated clock start, epoch ms (2026-01-01T00:00Z: fixed, and in the past)."""
    drift_at: list[int] = field(default_factory=list)
    """Emitted-event counts at which every user's interests rotate by a random topic shift."""
    policy: str = "random"
    """Built-in feed policy: ``random`` (propensity 1/n_candidates) or ``popularity`` (1.0)."""
    position_bias: float = 1.0
    """Examination probability of slot p is ``1 / (1 + p) ** position_bias``."""
    interest_concentration: float = 0.3
    """Dirichlet concentration per topic of user interests (small: peaked on a few topics)."""
    topic_skew: float = 0.8
    """Zipf exponent of topic popularity (the Dirichlet base measure)."""
    clickbait_share: float = 0.15
    """Fraction of items that are clickbait (attractive, low quality)."""
    click_bias: float = -4.0
    """Click logit intercept."""
    click_affinity_weight: float = 6.0
    """Click logit weight of user-item affinity (in [0, 1])."""
    click_clickbait_weight: float = 2.5
    """Click logit weight of the item's clickbait score (in [0, 1])."""
    purchase_rate: float = 0.3
    """Purchase probability of a click on a perfect-quality, on-interest item."""
    quality_threshold: float = 0.4
    """Quality below which a click disappoints (negative satisfaction)."""
    satisfaction_gain: float = 2.5
    """Patience (requests) gained per unit of click satisfaction."""
    patience_mean: float = 4.0
    """Mean initial patience of a session, in requests (1 + exponential)."""
    max_session_requests: int = 60
    """Hard cap on requests per session."""
    interest_rate: float = 0.03
    """How far one click pulls interests toward the item's topics (purchases: twice as far)."""
    return_gap_mean_s: float = 4 * 3600.0
    """Mean gap between sessions for a neutral session, seconds (minimum gap 30 min on top)."""
    return_satisfaction_weight: float = 0.5
    """Satisfied sessions shorten the return gap by ``exp(-weight * satisfaction)``."""
    first_arrival_s: float = 3600.0
    """Users' first sessions start uniformly within this many seconds of ``start_ts``."""

    def validate(self) -> None:
        if not 1 <= self.n_topics <= len(TOPICS):
            raise ValueError(f"n_topics must be in 1..{len(TOPICS)}")
        if self.n_users < 1 or self.n_items < 1 or self.slate_size < 1:
            raise ValueError("n_users, n_items and slate_size must be >= 1")
        if not self.slate_size <= self.n_candidates <= self.n_items:
            raise ValueError("need slate_size <= n_candidates <= n_items")
        if any(d < 0 for d in self.drift_at):
            raise ValueError("drift_at counts must be >= 0")


def examination(position: int, bias: float) -> float:
    """Probability that a user looks at slot ``position`` (0 = top).

    >>> [round(examination(p, 1.0), 2) for p in (0, 1, 9)]
    [1.0, 0.5, 0.1]
    """
    return 1.0 / (1.0 + position) ** bias


def slate_reward(values: list[float], order, bias: float) -> float:
    """Expected reward of a slate: the candidates at ``order`` (indices, top first), each worth
    ``values[n]`` at the top slot (:meth:`Simulator.expected_reward`), times its slot's examination.

    >>> slate_reward([1.0, 2.0, 4.0], [2, 0], 1.0)
    4.5
    """
    return sum(examination(p, bias) * values[n] for p, n in enumerate(order))


def best_order(values: list[float], k: int) -> list[int]:
    """The best slate of ``k`` from candidates worth ``values`` at the top slot: the indices by value,
    ties to the earlier candidate (the oracle's ranking rule; by :func:`slate_reward` no order does better).

    >>> best_order([1.0, 4.0, 2.0, 4.0], 3)
    [1, 3, 2]
    """
    return sorted(range(len(values)), key=lambda n: (-values[n], n))[:k]


#: What :attr:`Simulator.on_slate` is called with: user id, candidates, the slate served (ranked ids).
SlateHook = Callable[[str, list[str], list[str]], None]


class Simulator:
    """Users browsing feeds; :meth:`events` yields their views, clicks and purchases.

    ``policy`` overrides ``cfg.policy`` (the closed loop passes an HTTP ranker). Each call of
    :meth:`events` restarts users and clock from the seed; the catalog is fixed at construction.
    """

    def __init__(self, cfg: SimConfig | None = None, policy: Policy | None = None) -> None:
        self.cfg = cfg = cfg or SimConfig()
        cfg.validate()
        self._external_policy = policy
        self.policy: Policy = policy or make_policy(cfg.policy, cfg.seed)
        #: Called with every request's user, candidates and served slate (:data:`SlateHook`), as it is
        #: served: the closed loop scores the learned arm's slates with it (:class:`SameRequest`).
        self.on_slate: SlateHook | None = None
        self.topics = TOPICS[:cfg.n_topics]
        self.item_ids = [f"i{n}" for n in range(cfg.n_items)]
        self.user_ids = [f"u{n}" for n in range(cfg.n_users)]
        self._item_index = {i: n for n, i in enumerate(self.item_ids)}
        self._user_index = {u: n for n, u in enumerate(self.user_ids)}
        self._make_catalog(np.random.default_rng([cfg.seed, 1]), random.Random(cfg.seed * 7919 + 1))
        self._reset()

    def use_policy(self, policy: Policy) -> None:
        """Serve slates with ``policy`` from now on (e.g. an oracle built on this simulator)."""
        self._external_policy = self.policy = policy

    # --- world ------------------------------------------------------------------------------
    def _make_catalog(self, rng: np.random.Generator, text_rng: random.Random) -> None:
        cfg, k = self.cfg, self.cfg.n_topics
        popularity = 1.0 / np.arange(1, k + 1) ** cfg.topic_skew
        self.topic_popularity = rng.permutation(popularity / popularity.sum())
        primary = rng.integers(0, k, cfg.n_items)
        secondary = (primary + rng.integers(1, k, cfg.n_items)) % k if k > 1 else primary
        is_bait = rng.random(cfg.n_items) < cfg.clickbait_share
        bait = np.where(is_bait, rng.beta(5, 2, cfg.n_items), rng.beta(1, 8, cfg.n_items))
        quality = np.clip(rng.beta(3, 2, cfg.n_items) - 0.6 * bait, 0.02, 1.0)
        price = np.exp(rng.normal(3.0, 0.7, cfg.n_items)).round(2)
        self._primary, self._secondary = primary.tolist(), secondary.tolist()
        self._bait, self._quality, self._price = bait.tolist(), quality.tolist(), price.tolist()
        self._texts = [item_text(self.topics[t], text_rng) for t in self._primary]

    def _reset(self) -> None:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 2])
        alpha = cfg.interest_concentration * cfg.n_topics * self.topic_popularity
        self._theta: list[list[float]] = rng.dirichlet(alpha, cfg.n_users).tolist()
        self._arrival = (rng.random(cfg.n_users) * cfg.first_arrival_s * 1000).astype(np.int64).tolist()
        self._rng = random.Random(cfg.seed * 7919 + 2)
        if self._external_policy is None:
            self.policy = make_policy(cfg.policy, cfg.seed)
        n = cfg.n_users
        self._patience = [0.0] * n
        self._requests = [0] * n  # requests so far in the current session (0: between sessions)
        self._satisfaction = [0.0] * n
        self._pending: list[list[int]] = [[] for _ in range(n)]  # each user's scheduled clicks/purchases (ts)
        self._in_flight: dict[int, tuple[Future, list[str]]] = {}   # user -> next request sent ahead (submit), candidates
        self.drifts = 0
        self.shifts: list[int] = []      # each drift's topic shift so far (new interest j = old j + shift)

    def catalog_items(self) -> list[dict[str, Any]]:
        """The catalog file's items: ``item_id, title, category, description`` (no hidden fields)."""
        return [{"item_id": i, "title": t, "category": self.topics[p].category, "description": d}
                for i, (t, d), p in zip(self.item_ids, self._texts, self._primary)]

    def hidden_items(self) -> dict[str, dict[str, Any]]:
        """What the catalog hides: topic, secondary topic, quality, clickbait score, price."""
        return {i: {"topic": self.topics[self._primary[n]].name,
                    "secondary_topic": self.topics[self._secondary[n]].name,
                    "quality": self._quality[n], "clickbait": self._bait[n], "price": self._price[n]}
                for n, i in enumerate(self.item_ids)}

    def _affinity(self, theta: list[float], n: int) -> float:
        return _PRIMARY_WEIGHT * theta[self._primary[n]] + (1 - _PRIMARY_WEIGHT) * theta[self._secondary[n]]

    def true_affinity(self, user_id: str, item_ids: list[str]) -> list[float]:
        """Oracle: the user's current latent affinity (in [0, 1]) to each item; 0 for unknown items."""
        return self.affinity_under(self._theta[self._user_index[user_id]], item_ids)

    def item_topics(self, item_ids: list[str]) -> list[int]:
        """Oracle: each item's primary topic index (-1 for unknown items)."""
        index = self._item_index
        return [self._primary[index[i]] if i in index else -1 for i in item_ids]

    def affinity_under(self, theta: list[float], item_ids: list[str]) -> list[float]:
        """Oracle: the affinity of each item for interests ``theta`` over topics (the rule of
        :meth:`true_affinity`, for interests a diagnostic supposes); 0 for unknown items.

        >>> sim = Simulator(SimConfig(n_users=2, n_topics=3))
        >>> theta = sim.mean_interests()
        >>> sim.affinity_under(theta, ["i0", "zz"])[1], round(sum(theta), 6)
        (0.0, 1.0)
        """
        index = self._item_index
        return [self._affinity(theta, index[i]) if i in index else 0.0 for i in item_ids]

    def mean_interests(self) -> list[float]:
        """Oracle: the users' current interests over topics, averaged."""
        return np.mean(np.asarray(self._theta), axis=0).tolist()

    def click_probability(self, user_id: str, item_ids: list[str], position: int = 0) -> list[float]:
        """Oracle: probability that each item, shown at ``position``, is clicked right now."""
        cfg = self.cfg
        exam = examination(position, cfg.position_bias)
        out = []
        for i, aff in zip(item_ids, self.true_affinity(user_id, item_ids)):
            n = self._item_index.get(i)
            bait = 0.0 if n is None else self._bait[n]
            logit = self._click_logit(aff, bait)
            out.append(exam / (1.0 + math.exp(-logit)))
        return out

    def purchase_probability(self, user_id: str, item_ids: list[str]) -> list[float]:
        """Oracle: probability that a click on each item turns into a purchase right now."""
        cfg, index = self.cfg, self._item_index
        out = []
        for i, aff in zip(item_ids, self.true_affinity(user_id, item_ids)):
            n = index.get(i)
            out.append(0.0 if n is None else self._purchase_chance(n, aff))
        return out

    def expected_reward(self, user_id: str, item_ids: list[str], click_weight: float,
                        purchase_weight: float) -> list[float]:
        """Oracle: each item's expected immediate reward shown at the top slot right now,
        ``P(click) * (click_weight + purchase_weight * P(purchase | click))`` (one pass: the oracle
        arm asks this for every candidate of every request)."""
        cfg, index, exp = self.cfg, self._item_index, math.exp
        theta = self._theta[self._user_index[user_id]]
        exam = examination(0, cfg.position_bias)
        out = []
        for i in item_ids:
            n = index.get(i)
            if n is None:
                out.append(exam / (1.0 + exp(-cfg.click_bias)) * click_weight)
                continue
            aff = self._affinity(theta, n)
            logit = self._click_logit(aff, self._bait[n])
            out.append(exam / (1.0 + exp(-logit)) * (click_weight + purchase_weight * self._purchase_chance(n, aff)))
        return out

    def _click_logit(self, aff: float, bait: float) -> float:
        """Click logit of an examined item with affinity ``aff`` and clickbait score ``bait``."""
        cfg = self.cfg
        return cfg.click_bias + cfg.click_affinity_weight * aff + cfg.click_clickbait_weight * bait

    def _purchase_chance(self, n: int, aff: float) -> float:
        cfg = self.cfg
        return cfg.purchase_rate * self._quality[n] * min(1.0, aff * cfg.n_topics / 4.0)

    def _drift(self) -> None:
        # the shift comes from the seed and the drift's number alone, not from the event stream's
        # generator: every arm served the same world gets the same rotation whatever it served
        k = self.cfg.n_topics
        shift = random.Random(f"{self.cfg.seed}-drift-{self.drifts}").randrange(1, k) if k > 1 else 0
        self._theta = [th[shift:] + th[:shift] for th in self._theta]
        self.drifts += 1
        self.shifts.append(shift)
        log.info("interest drift #%d: topics rotated by %d", self.drifts, shift)

    # --- the event loop -----------------------------------------------------------------------
    def events(self, max_events: int) -> Iterator[Event]:
        """Yield ``max_events`` events in non-decreasing ``ts``; ids are ``s<seed>-<n>``."""
        self._reset()
        cfg = self.cfg
        heap: list[tuple] = [(cfg.start_ts + a, u, _REQUEST, u) for u, a in enumerate(self._arrival)]
        heapq.heapify(heap)
        self._seq = cfg.n_users
        self._n_requests = 0
        drifts = sorted(cfg.drift_at)
        prefix = f"s{cfg.seed}-"
        learn = getattr(self.policy, "learn_one", None)
        n = 0
        while n < max_events and heap:
            ts, _, kind, payload = heapq.heappop(heap)
            if kind == _EVENT:
                u, ev = payload
                self._pending[u].remove(ts)
                batch = (ev,)
            else:
                while drifts and n >= drifts[0]:
                    drifts.pop(0)
                    self._drift()
                batch = self._request(payload, ts, heap)
            for ev in batch:
                ev.event_id = prefix + str(n)
                n += 1
                if learn is not None:
                    learn(ev)
                yield ev
                if n >= max_events:
                    return

    def _push(self, heap: list, ts: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(heap, (ts, self._seq, kind, payload))

    def _event(self, heap: list, u: int, ev: Event) -> None:
        self._pending[u].append(ev.ts)
        self._push(heap, ev.ts, _EVENT, (u, ev))

    def _slate(self, u: int, t: int, heap: list) -> tuple[Ranking, int | None, str | None, list[str]]:
        """User ``u``'s slate at ``t`` with the version and request id that served it, and the candidates.

        A policy with ``submit`` (the closed loop's ranking service) is asked for the next
        ``concurrency`` requests at once, as a service's many clients would: the requests due next on
        the clock, of users with nothing of their own still due before them (so the session context
        a request carries is what it would be at its own time), are sent ahead; each is answered
        when the clock reaches it. The built-in policies rank one request at a time.
        """
        cfg, policy = self.cfg, self.policy
        submit = getattr(policy, "submit", None)
        args = lambda v, ts: (self.user_ids[v], self._rng.sample(self.item_ids, cfg.n_candidates), cfg.slate_size, ts)
        if submit is None:
            a = args(u, t)
            return policy.rank(*a), policy.version, getattr(policy, "last_request_id", None), a[1]

        def send(v: int, ts: int) -> tuple[Future, list[str]]:
            a = args(v, ts)
            return submit(*a), a[1]

        fut, candidates = self._in_flight.pop(u, None) or send(u, t)
        ahead = max(1, int(getattr(policy, "concurrency", 1)))
        if len(self._in_flight) < (ahead + 1) // 2:  # refill in bursts: scanning the heap costs
            for ts, _, kind, v in heapq.nsmallest(3 * ahead, heap):
                if len(self._in_flight) >= ahead - 1:
                    break
                if kind == _REQUEST and v not in self._in_flight and not any(p < ts for p in self._pending[v]):
                    self._in_flight[v] = send(v, ts)
        return (*fut.result(), candidates)

    def _request(self, u: int, t: int, heap: list) -> list[Event]:
        """Serve user ``u`` a slate at ``t``: return its views, schedule clicks and what comes next."""
        cfg, rng = self.cfg, self._rng
        if self._requests[u] == 0:  # a new session
            self._patience[u] = 1.0 + rng.expovariate(1.0 / cfg.patience_mean)
            self._satisfaction[u] = 0.0
        self._requests[u] += 1
        uid = self.user_ids[u]
        slate, version, rid, candidates = self._slate(u, t, heap)
        if self.on_slate is not None:          # before this request's clicks move the user's interests
            self.on_slate(uid, candidates, [i for i, _ in slate])
        # a ranking service names its requests (so decisions join to views); built-ins do not
        rid = rid or f"s{cfg.seed}-q{self._n_requests}"
        self._n_requests += 1
        views, dwell_ms = [], 0
        for pos, (iid, prop) in enumerate(slate):
            views.append(Event("", "view", uid, iid, t, rid, pos, prop, version))
            n = self._item_index.get(iid)
            if n is None or rng.random() >= examination(pos, cfg.position_bias):
                continue
            theta = self._theta[u]
            aff = self._affinity(theta, n)
            logit = self._click_logit(aff, self._bait[n])
            if rng.random() * (1.0 + math.exp(-logit)) >= 1.0:
                continue
            dwell_ms += self._click(u, n, aff, t, rid, pos, heap)
        self._patience[u] -= 1.0
        if self._patience[u] <= 0 or self._requests[u] >= cfg.max_session_requests:
            self._requests[u] = 0
            s = max(-2.0, min(2.0, self._satisfaction[u]))
            mean_s = cfg.return_gap_mean_s * math.exp(-cfg.return_satisfaction_weight * s)
            gap_ms = int((1800.0 + rng.expovariate(1.0 / mean_s)) * 1000)
        else:
            gap_ms = 3000 + int(rng.expovariate(1 / 8000.0)) + dwell_ms
        self._push(heap, t + gap_ms, _REQUEST, u)
        return views

    def _click(self, u: int, n: int, aff: float, t: int, rid: str, pos: int, heap: list) -> int:
        """Schedule a click (and maybe a purchase) on item ``n``; apply its effects; return dwell ms."""
        cfg, rng = self.cfg, self._rng
        uid, iid, quality = self.user_ids[u], self.item_ids[n], self._quality[n]
        click_ts = t + 1000 + 400 * pos + int(rng.expovariate(1 / 3000.0))
        self._event(heap, u, Event("", "click", uid, iid, click_ts, rid, pos))
        satisfaction = 2.0 * (quality - cfg.quality_threshold)
        self._satisfaction[u] += satisfaction
        self._patience[u] += cfg.satisfaction_gain * satisfaction
        rate = cfg.interest_rate
        if rng.random() < self._purchase_chance(n, aff):
            buy_ts = click_ts + 20_000 + int(rng.expovariate(1 / 90_000.0))
            self._event(heap, u, Event("", "purchase", uid, iid, buy_ts, rid, pos, value=self._price[n]))
            self._patience[u] += 1.0
            rate *= 2
        self._pull_interest(u, n, rate)
        return 10_000 + int(60_000 * quality)

    def _pull_interest(self, u: int, n: int, rate: float) -> None:
        theta = [x * (1.0 - rate) for x in self._theta[u]]
        theta[self._primary[n]] += rate * _PRIMARY_WEIGHT
        theta[self._secondary[n]] += rate * (1.0 - _PRIMARY_WEIGHT)
        self._theta[u] = theta


def run_simulate(settings, cfg: SimConfig, max_events: int, out_path: str | None = None,
                 catalog_out: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the catalog, then simulate ``max_events`` events to Kafka (or to ``out_path`` JSONL).

    The catalog goes to ``catalog_out``, else ``settings.catalog_path``, else nowhere.
    """
    from tqdm import tqdm

    from streamrl.catalog import write_catalog
    from streamrl.producers.sink import EventSink, write_jsonl

    sim = Simulator(cfg)
    catalog_path = catalog_out or settings.catalog_path or None
    if catalog_path:
        write_catalog(catalog_path, sim.catalog_items())
        log.info("catalog of %d items written to %s", cfg.n_items, catalog_path)
    bar = tqdm(total=max_events, file=sys.stderr, mininterval=1, unit="ev", disable=not progress,
               desc="simulate")
    span = [None, None]

    def tracked() -> Iterator[Event]:
        for ev in sim.events(max_events):
            span[0] = ev.ts if span[0] is None else span[0]
            span[1] = ev.ts
            bar.update(1)
            yield ev

    started = time.monotonic()
    try:
        if out_path:
            counts = write_jsonl(out_path, tracked())
        else:
            from streamrl.kafka import ensure_topics

            ensure_topics(settings, ["events.view", "events.click", "events.purchase"])
            with EventSink(settings) as sink:
                for ev in tracked():
                    sink.send(ev)
            counts = dict(sink.counts)
    finally:
        bar.close()
    seconds = time.monotonic() - started
    total = sum(counts.values())
    if span[1] is not None and span[1] > time.time() * 1000:
        log.warning("simulated clock passed the wall clock (last ts %d): consumers may reject events", span[1])
    return {"events": total, "by_type": counts, "seconds": round(seconds, 3),
            "events_per_s": round(total / seconds) if seconds > 0 else None,
            "first_ts": span[0], "last_ts": span[1], "policy": cfg.policy, "seed": cfg.seed,
            "drifts": sim.drifts, "out": out_path or list(settings.event_topics.values()),
            "catalog": catalog_path}
