"""The user simulator: reproducible, time-ordered, contract-valid, and with the effects the learner needs."""

from __future__ import annotations

import collections
import json
import statistics

import numpy as np

import pytest

from streamrl.catalog import load_catalog
from streamrl.producers.simulator import SimConfig, Simulator, run_simulate
from streamrl.producers.vocab import TOPICS
from streamrl.schema import parse_event

SESSION_GAP_MS = 20 * 60 * 1000  # within-session gaps are seconds; between sessions >= 30 min


@pytest.fixture(scope="module")
def world():
    """One mid-sized run shared by the statistical tests: (simulator, events)."""
    sim = Simulator(SimConfig(seed=3, n_users=500))
    return sim, list(sim.events(120_000))


def _sessions(events):
    """request_id -> (user, session no, request index), and (user, session no) -> requests."""
    where, size, state = {}, {}, {}
    for e in events:
        if e.type != "view" or e.request_id in where:
            continue
        s, i, prev = state.get(e.user_id, (0, -1, None))
        if prev is not None and e.ts - prev > SESSION_GAP_MS:
            s, i = s + 1, -1
        i += 1
        state[e.user_id] = (s, i, e.ts)
        where[e.request_id] = (e.user_id, s, i)
        size[(e.user_id, s)] = i + 1
    return where, size


def test_events_same_seed_identical():
    cfg = dict(seed=11, n_users=100, n_items=200, n_candidates=50, drift_at=[1000])
    a = [e.to_dict() for e in Simulator(SimConfig(**cfg)).events(5000)]
    b = [e.to_dict() for e in Simulator(SimConfig(**cfg)).events(5000)]
    assert a == b
    assert a != [e.to_dict() for e in Simulator(SimConfig(**{**cfg, "seed": 12})).events(5000)]


def test_events_rerun_same_simulator_identical():
    sim = Simulator(SimConfig(seed=2, n_users=50, n_items=100, n_candidates=20))
    assert [e.to_dict() for e in sim.events(2000)] == [e.to_dict() for e in sim.events(2000)]


def test_events_ts_non_decreasing_ids_unique(world):
    _, events = world
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert len({e.event_id for e in events}) == len(events)
    assert events[0].event_id == "s3-0"


def test_events_pass_contract(world):
    _, events = world
    for e in events[:20_000] + [e for e in events[20_000:] if e.type != "view"]:
        parsed = parse_event(e.to_json(), e.type, e.user_id.encode())
        assert parsed == e


def test_propensities_valid_for_builtin_policies(world):
    _, events = world
    views = [e for e in events if e.type == "view"]
    assert {e.propensity for e in views} == {1 / 100}
    assert all(e.policy_version is None for e in views)
    pop = Simulator(SimConfig(seed=1, n_users=50, n_items=100, n_candidates=30, policy="popularity"))
    assert {e.propensity for e in pop.events(3000) if e.type == "view"} == {1.0}


def test_slate_has_every_position_once(world):
    _, events = world
    slates = collections.defaultdict(list)
    for e in events:
        if e.type == "view":
            slates[e.request_id].append(e.position)
    full = list(slates.values())[:-1]  # the last slate may be cut by max_events
    assert all(positions == list(range(10)) for positions in full)


def test_ctr_top_position_exceeds_bottom(world):
    _, events = world
    views = collections.Counter(e.position for e in events if e.type == "view")
    clicks = collections.Counter(e.position for e in events if e.type == "click")
    assert clicks[0] / views[0] > 3 * clicks[9] / views[9]


def test_engagement_follows_its_view(world):
    _, events = world
    view_ts = {(e.request_id, e.item_id): e.ts for e in events if e.type == "view"}
    engaged = [e for e in events if e.type != "view"]
    assert any(e.type == "purchase" for e in engaged)
    for e in engaged:
        assert e.ts > view_ts[(e.request_id, e.item_id)]
    assert all(e.value > 0 for e in engaged if e.type == "purchase")


def test_clickbait_click_shortens_rest_of_session(world):
    """Under the random policy what follows a click is independent of the item, so the rest of
    the session measures the click's effect: clickbait ends sessions, quality extends them."""
    sim, events = world
    hidden = sim.hidden_items()
    where, size = _sessions(events)
    last = {}
    for u, s in size:
        last[u] = max(last.get(u, 0), s)
    rest = {"bait": [], "quality": []}
    for e in events:
        if e.type != "click":
            continue
        u, s, i = where[e.request_id]
        if s == last[u]:  # possibly cut off by max_events
            continue
        h = hidden[e.item_id]
        kind = "bait" if h["clickbait"] > 0.5 else "quality" if h["quality"] > 0.6 else None
        if kind:
            rest[kind].append(size[(u, s)] - i - 1)
    assert len(rest["bait"]) > 100 and len(rest["quality"]) > 100
    assert statistics.mean(rest["quality"]) > 1.3 * statistics.mean(rest["bait"])


def test_drift_changes_clicked_topics():
    """Rotating interests at event n moves the clicked-topic mix far more than no drift does."""
    n = 40_000

    def shift(drift_at):
        sim = Simulator(SimConfig(seed=5, n_users=300, n_items=300, n_candidates=50, drift_at=drift_at))
        topic = {i: h["topic"] for i, h in sim.hidden_items().items()}
        events = list(sim.events(2 * n))
        before = collections.Counter(topic[e.item_id] for e in events[:n] if e.type == "click")
        after = collections.Counter(topic[e.item_id] for e in events[n:] if e.type == "click")
        tv = 0.5 * sum(abs(before[t] / sum(before.values()) - after[t] / sum(after.values()))
                       for t in set(before) | set(after))
        return tv, sim.drifts

    (tv_still, drifts_still), (tv_drift, drifts) = shift([]), shift([n])
    assert (drifts_still, drifts) == (0, 1)
    assert tv_drift > 2 * tv_still


def test_every_arm_gets_the_same_rotation():
    """The drift's shift comes from the seed and the drift's number, not from what was served:
    arms served by different policies (different random draws before the drift) rotate alike."""
    def shifts(policy: str) -> set[int]:
        sim = Simulator(SimConfig(seed=3, n_users=50, n_items=100, n_candidates=20, drift_at=[2000], policy=policy))
        before = None
        for n, _ in enumerate(sim.events(2050)):
            if n == 1999:
                before = np.array(sim._theta)
        after = np.array(sim._theta)
        peaked = before.max(1) > 0.5                    # a clear favourite topic to follow
        return set(((after.argmax(1) - before.argmax(1)) % before.shape[1])[peaked].tolist())

    random_shift, popularity_shift = shifts("random"), shifts("popularity")
    assert len(random_shift) == 1 and random_shift == popularity_shift and random_shift != {0}


def test_a_drift_records_its_shift_and_the_oracle_helpers_read_the_rotated_interests():
    """``shifts`` holds each drift's shift (new interest in topic j = old interest in j + shift);
    ``affinity_under`` is ``true_affinity``'s rule for given interests; ``item_topics`` are the
    hidden primary topics (bench/learning.py's ``--informed`` bounds are built on these)."""
    cfg = dict(seed=3, n_users=1, n_items=100, n_candidates=20)
    before = Simulator(SimConfig(**cfg)).mean_interests()
    sim = Simulator(SimConfig(**cfg, drift_at=[0]))
    next(iter(sim.events(1)))                     # the drift comes before the first request
    assert sim.drifts == 1 and len(sim.shifts) == 1 and 1 <= sim.shifts[0] < sim.cfg.n_topics
    top = lambda theta: set(np.argsort(theta)[-3:].tolist())   # (the request's clicks pull interests a little)
    assert top(sim.mean_interests()) == top(np.roll(before, -sim.shifts[0])) != top(before)
    # one user: the mean interests are theirs
    assert np.allclose(sim.affinity_under(sim.mean_interests(), sim.item_ids), sim.true_affinity("u0", sim.item_ids))
    hidden = sim.hidden_items()
    assert [sim.topics[t].name for t in sim.item_topics(sim.item_ids)] == [hidden[i]["topic"] for i in sim.item_ids]
    assert sim.item_topics(["nope"]) == [-1]


def test_catalog_items_text_carries_topic():
    sim = Simulator(SimConfig(seed=4, n_items=200))
    hidden = sim.hidden_items()
    by_name = {t.name: t for t in TOPICS}
    for item in sim.catalog_items():
        assert set(item) == {"item_id", "title", "category", "description"}
        topic = by_name[hidden[item["item_id"]]["topic"]]
        assert item["category"] == topic.category
        text = (item["title"] + " " + item["description"]).lower()
        assert sum(noun in text for noun in topic.nouns) >= 2


def test_oracle_affinity_bounded_and_predictive(world):
    sim, events = world
    assert sim.true_affinity("u0", ["i0", "nope"])[1] == 0.0
    assert all(0.0 <= a <= 1.0 for a in sim.true_affinity("u1", sim.item_ids))
    probs = sim.click_probability("u1", sim.item_ids[:50], position=9)
    assert all(0.0 < p <= 0.1 for p in probs)


def test_custom_policy_sets_version_and_propensity():
    class Top:
        version = 7

        def rank(self, user_id, candidates, k, ts):
            return [(c, 0.5) for c in sorted(candidates)[:k]]

    sim = Simulator(SimConfig(seed=1, n_users=20, n_items=50, n_candidates=20), policy=Top())
    views = [e for e in sim.events(500) if e.type == "view"]
    assert {(e.policy_version, e.propensity) for e in views} == {(7, 0.5)}


def test_config_rejects_too_many_topics():
    with pytest.raises(ValueError):
        Simulator(SimConfig(n_topics=len(TOPICS) + 1))


def test_run_simulate_writes_jsonl_and_catalog(tmp_path):
    from streamrl.config import Settings

    cfg = SimConfig(seed=8, n_users=50, n_items=80, n_candidates=40)
    out, cat = tmp_path / "ev.jsonl", tmp_path / "cat.jsonl"
    summary = run_simulate(Settings(), cfg, 1500, out_path=str(out), catalog_out=str(cat), progress=False)
    lines = out.read_bytes().splitlines()
    assert summary["events"] == len(lines) == 1500
    assert sum(summary["by_type"].values()) == 1500
    assert [json.loads(x)["event_id"] for x in lines[:2]] == ["s8-0", "s8-1"]
    assert len(load_catalog(cat)) == 80


@pytest.mark.integration
def test_run_simulate_to_broker_events_readable(settings, tmp_path):
    from kafka import TopicPartition

    from streamrl.kafka import make_consumer

    cfg = SimConfig(seed=9, n_users=100, n_items=100, n_candidates=50)
    settings = settings.replace(catalog_path=str(tmp_path / "catalog.jsonl"))
    summary = run_simulate(settings, cfg, 3000, progress=False)
    assert summary["events"] == 3000 and (tmp_path / "catalog.jsonl").exists()

    consumer = make_consumer(settings)
    topic_type = {t: k for k, t in settings.event_topics.items()}
    parts = [TopicPartition(t, p) for t in topic_type for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = []
    for _ in range(100):
        for tp, records in consumer.poll(timeout_ms=200).items():
            got += [parse_event(r.value, topic_type[tp.topic], r.key) for r in records]
        if len(got) >= 3000:
            break
    consumer.close()
    expected = Simulator(cfg).events(3000)
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in expected)
    counts = collections.Counter(e.type for e in got)
    assert dict(counts) == {k: v for k, v in summary["by_type"].items() if v}


class _Service:
    """A ranking service with several requests in flight (``submit``), answered from a thread
    pool; it records what it knew of each user when each request was sent."""

    version = 5

    def __init__(self, concurrency: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(concurrency)
        self.seen = collections.defaultdict(list)   # user -> engagement timestamps, as emitted
        self.sent: dict[str, tuple[str, int, int]] = {}  # request id -> (user, ts, engagements known)
        self.answered: set[str] = set()
        self.most_in_flight = 0

    def learn_one(self, ev):
        if ev.type == "view":
            self.answered.add(ev.request_id)
        else:
            self.seen[ev.user_id].append(ev.ts)

    def submit(self, user_id, candidates, k, ts):
        rid = f"r{len(self.sent)}"
        self.sent[rid] = (user_id, ts, len(self.seen[user_id]))
        self.most_in_flight = max(self.most_in_flight, len(self.sent) - len(self.answered))
        slate = [(c, 1.0 / len(candidates)) for c in sorted(candidates)[:k]]
        return self.pool.submit(lambda: (slate, self.version, rid))


def test_requests_sent_ahead_carry_what_their_time_would_know():
    service = _Service(concurrency=6)
    sim = Simulator(SimConfig(seed=4, n_users=200, n_items=300, n_candidates=40), policy=service)
    events = list(sim.events(30_000))
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert service.most_in_flight >= 4          # requests really were in flight together
    engaged = collections.defaultdict(list)
    for e in events:
        if e.type != "view":
            engaged[e.user_id].append(e.ts)
    views = [e for e in events if e.type == "view"]
    assert {(e.policy_version, e.propensity) for e in views} == {(5, 1.0 / 40)}
    for e in views:                             # each slate went to the user and time it was asked for
        user, ts, known = service.sent[e.request_id]
        assert (e.user_id, e.ts) == (user, ts)
        # every engagement of the user before the request had been emitted when it was sent
        assert known >= sum(1 for t in engaged[user] if t < ts)


def test_one_request_in_flight_is_the_sequential_stream():
    service = _Service(concurrency=1)
    cfg = SimConfig(seed=4, n_users=200, n_items=300, n_candidates=40)
    sequential = Simulator(cfg, policy=service)
    ahead = [(e.type, e.user_id, e.item_id, e.ts) for e in sequential.events(5_000)]
    assert service.most_in_flight == 1

    class Plain:
        version = 5

        def rank(self, user_id, candidates, k, ts):
            return [(c, 1.0 / len(candidates)) for c in sorted(candidates)[:k]]

    plain = [(e.type, e.user_id, e.item_id, e.ts) for e in Simulator(cfg, policy=Plain()).events(5_000)]
    assert ahead == plain


def test_event_sink_close_does_not_wait_minutes_for_a_broker_that_is_gone(tmp_path):
    """A producer stopping after its broker died (the demo's broker dies with the demo) reports
    the undelivered events after ``stop_timeout_s`` instead of blocking the stop for
    the producer's 2-minute delivery timeout."""
    from streamrl.config import Settings
    from streamrl.errors import BrokerError
    from streamrl.kafka import EmbeddedBroker, ensure_topics
    from streamrl.producers.sink import EventSink
    from streamrl.schema import Event

    broker = EmbeddedBroker().start()
    try:
        s = Settings.from_env(bootstrap_servers=broker.bootstrap_servers, topic_prefix="gone.",
                              stop_timeout_s=1.0)
        ensure_topics(s)
        sink = EventSink(s)
        sink.send(Event("e0", "view", "u1", "i1", 1))
        sink.flush(30)                                   # delivered while the broker is up
        assert sink.counts["view"] == 1
    finally:
        broker.stop()
    sink.send(Event("e1", "view", "u1", "i2", 2))
    with pytest.raises(BrokerError, match="still queued after 1s were not delivered"):
        sink.close()


def test_each_slate_around_a_drift_is_scored_against_the_best_slate_of_its_request(tmp_path):
    """The simulator hands every request's user, candidates and slate to ``on_slate`` as it is
    served, without changing the world (the same events with and without); ``SameRequest`` sums,
    per curve window, the served slate's and the best slate's expected reward for the requests
    from ``before`` events before the drift to ``after`` after it: the oracle's slates are the best
    of their requests, random slates far below."""
    from streamrl.config import Settings
    from streamrl.producers.closed_loop import SameRequest, arm_policy, reward_weights
    from streamrl.report import CurveRecorder, load_curves

    cfg = SimConfig(seed=5, n_users=100, n_items=200, n_candidates=40, drift_at=[6000])
    weights = reward_weights(Settings())
    plain = [e.to_dict() for e in Simulator(cfg).events(12_000)]
    ratios = {}
    for arm in ("oracle", "random"):
        sim = Simulator(cfg)
        sim.use_policy(arm_policy(arm, sim, Settings()))
        rec = CurveRecorder(tmp_path / "curves.jsonl", arm, weights, window=1000)
        sim.on_slate = SameRequest.around_drift(sim, rec, weights, before=3000, after=3000)
        events = []
        for ev in sim.events(12_000):
            rec.learn_one(ev)
            events.append(ev.to_dict())
        rec.flush()
        if arm == "random":
            assert events == plain                                       # the hook changes nothing
        rows = load_curves(tmp_path / "curves.jsonl")[arm]
        scored = [r for r in rows if r.get("scored")]
        # requests at 3000-8999 events, in the windows ending at 4000-9000 (a window's row is
        # written at its last event, before the next request)
        assert [r["events"] for r in scored] == list(range(4000, 9001, 1000))
        assert all(0 < r["served_value"] <= r["best_value"] * (1 + 1e-9) for r in scored)
        first_view = {}
        for n, e in enumerate(events):
            if e["type"] == "view":
                first_view.setdefault(e["request_id"], n)
        assert sum(r["scored"] for r in scored) == sum(3000 <= n < 9000 for n in first_view.values())
        ratios[arm] = sum(r["served_value"] for r in scored) / sum(r["best_value"] for r in scored)
    assert ratios["oracle"] == pytest.approx(1.0) and ratios["random"] < 0.6
