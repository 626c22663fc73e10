"""Integration tests of the event processor against the real embedded broker and real stores."""

import json
import logging
from pathlib import Path
import random
import time

import pytest

from consumers.gen import synthetic_log
from consumers.kafka_util import (assert_matches_reference, produce, read_topic, read_transitions,
                                  start_processor, stored_users)
from consumers.reference import reference
from streamrl.catalog import write_catalog
from streamrl.consumers.processor import EventProcessor, applied_offsets, load_item_embeddings
from streamrl.producers.simulator import SimConfig, Simulator

pytestmark = pytest.mark.integration


def ref(settings, events, lookup=lambda i: None):
    return reference(events, settings.attribution_window_ms, settings.reward_weights,
                     settings.history_len, settings.interest_half_life_ms, lookup)


def test_process_matches_reference_with_redis(settings, redis_url):
    """Same log, Redis store: state and transitions equal the reference."""
    s = settings.replace(state_store=redis_url)
    events = synthetic_log(20_000, n_users=300, n_items=200, seed=7)
    produce(s, events)
    try:
        summary = EventProcessor(s).run(until_idle=True, max_seconds=120)
        assert summary.events == len(events) and summary.invalid == 0
        assert_matches_reference(s, *ref(s, events), read_transitions(s))
    finally:
        from streamrl.consumers.store import open_store
        with open_store(s.state_store, s.state_namespace) as st:
            st.drop()


def simulated(settings, n, users=2000):
    """n simulated events plus settings pointing at the simulator's catalog (for interest
    vectors), whose embeddings are cached before any processor starts."""
    sim = Simulator(SimConfig(n_users=users, seed=1))
    path = str(Path(settings.state_store.removeprefix("sqlite:///")).parent / "catalog.jsonl")
    write_catalog(path, sim.catalog_items())
    s = settings.replace(catalog_path=path)
    load_item_embeddings(s)
    return list(sim.events(n)), s


@pytest.mark.slow
def test_200k_simulated_events_match_reference(settings):
    """200k simulated events through the broker: user state (history, counts, interest vector)
    and the transition multiset equal the pure-Python reference over the same log."""
    events, s = simulated(settings, 200_000)
    produce(s, events)
    emb = load_item_embeddings(s)
    summary = EventProcessor(s, embeddings=emb).run(until_idle=True, max_seconds=600)
    assert summary.events == len(events) and summary.invalid == 0 and summary.late == 0
    users, trans = ref(s, events, emb.get)
    assert sum(t["reward"] > 0 for t in trans) > 1000  # the log exercises the join
    assert any(t["engagement"] == "purchase" for t in trans)
    assert_matches_reference(s, users, trans, read_transitions(s))


def bad_records(s):
    """(reason, topic, key, value) for every kind of bad input of the contract."""
    now = int(time.time() * 1000)
    good = {"event_id": "bad-x", "type": "click", "user_id": "ub", "item_id": "i1", "ts": now - 5000}

    def ev(**kw):
        d = dict(good, event_id=f"bad-{len(kw)}-{sorted(kw)}")
        for k, v in kw.items():
            if v is KeyError:
                d.pop(k)
            else:
                d[k] = v
        return json.dumps(d).encode()

    click = s.event_topics["click"]
    rows = [("not_utf8", b"\xff\xfe\xfa"), ("not_json", b"{oops"), ("not_object", b'"a string"'),
            ("empty_value", b""), ("unknown_type", ev(type="like")), ("type_topic_mismatch", ev(type="purchase")),
            ("ts_negative", ev(ts=-5)), ("ts_future", ev(ts=now + 3 * 86_400_000)),
            ("propensity_out_of_range", ev(propensity=0.0)), ("propensity_out_of_range", ev(propensity=1.5)),
            ("non_finite", ev(propensity=0.5).replace(b"0.5", b"NaN")),
            ("non_finite", ev(value=1.5).replace(b"1.5", b"Infinity")),
            ("id_too_long:item_id", ev(item_id="i" * 300)),
            ("too_large", b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}')]
    for f in ("event_id", "type", "user_id", "item_id", "ts"):
        rows.append((f"missing_field:{f}", ev(**{f: KeyError})))
    for f, v in {"event_id": 1, "type": 2, "user_id": 3, "item_id": 4.5, "ts": "x", "request_id": 1,
                 "position": "1", "propensity": "p", "policy_version": 1.5, "value": [1]}.items():
        rows.append((f"wrong_type:{f}", ev(**{f: v})))
    out = [(r, click, b"ub", v) for r, v in rows]
    long_user = "u" * 300
    out.append(("id_too_long:user_id", click, long_user.encode(), ev(user_id=long_user)))
    out.append(("key_mismatch", click, b"not-ub", ev()))
    return out


def test_bad_input_dead_lettered_while_valid_traffic_goes_on(settings):
    """Every kind of bad record lands in events.dlq with its own reason, the original bytes and
    its source; valid events around them (and one duplicate) are processed exactly."""
    s = settings
    events = synthetic_log(3000, n_users=40, n_items=30, seed=3)
    bad = bad_records(s)
    mid = len(events) // 2
    produce(s, events[:mid], raw=[(t, k, v) for _, t, k, v in bad])
    produce(s, events[mid:] + events[100:101])  # the last one is a duplicate event_id
    summary = EventProcessor(s).run(until_idle=True, max_seconds=120)
    assert summary.duplicates == 1
    assert summary.invalid == len(bad)
    dlq = read_topic(s, "events.dlq")
    assert len(dlq) == len(bad)
    got = sorted((dict(r.headers)["streamrl.reason"].decode(), r.value) for r in dlq)
    assert got == sorted((reason, value) for reason, _, _, value in bad)
    for r in dlq:
        h = dict(r.headers)
        assert h["streamrl.source.topic"].decode() == s.event_topics["click"]
        assert int(h["streamrl.source.offset"]) >= 0
    kinds = {reason for reason, *_ in bad}
    assert len(kinds) == 29  # every kind of the list, each with its own reason
    assert_matches_reference(s, *ref(s, events), read_transitions(s))


@pytest.mark.slow
def test_kill9_at_random_moments_loses_and_doubles_nothing(settings):
    """kill -9 of `streamrl process` at 5 random moments of a 200k-event run, restarting each
    time: final state equals the reference (= a clean run); transitions equal it after dropping
    duplicates by id (a duplicate is byte-identical)."""
    events, s = simulated(settings.replace(commit_interval_ms=100), 200_000)
    produce(s, events)
    rng = random.Random(1234)
    # random moments spread over the run, chosen by progress rather than by time, so that a fast
    # machine cannot finish the run between two kills: each kill comes once the committed offsets
    # passed a random point of the run, plus a random fraction of a commit interval. Commits every
    # 100 ms: a machine that applies 80k events/s covered the last 20% of the run within one
    # 500 ms commit interval, so the last kill came after the end
    targets = sorted(rng.sample(range(len(events) // 10, len(events) * 7 // 10), 5))
    kills, progress = 0, []
    while kills < 5:
        p = start_processor(s)
        before = max(progress[-1] if progress else 0, targets[kills])
        deadline = time.monotonic() + 60
        while applied_offsets(s) <= before and time.monotonic() < deadline:  # joined and committing
            if p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.02))
        if p.poll() is not None:
            pytest.fail(f"processor exited early: {p.communicate()[1][-2000:]}")
        p.kill()
        p.wait()
        kills += 1
        progress.append(applied_offsets(s))
    assert progress[-1] < len(events), "every kill must land mid-run"
    assert progress == sorted(set(progress)), f"the run must make progress between kills: {progress}"
    p = start_processor(s, "--until-idle")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    transitions = read_transitions(s)
    assert_matches_reference(s, *ref(s, events, load_item_embeddings(s).get), transitions, allow_duplicates=True)


@pytest.mark.slow
def test_two_processors_in_one_group_equal_one(settings):
    """Two processes in one group split the partitions; together they give the reference."""
    events, s = simulated(settings, 60_000)
    produce(s, events)
    a = start_processor(s, "--until-idle")
    time.sleep(1.0)
    b = start_processor(s, "--until-idle")
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert_matches_reference(s, *ref(s, events, load_item_embeddings(s).get), read_transitions(s),
                             allow_duplicates=True)
    assert len(stored_users(s)) == len({e.user_id for e in events})


def test_processor_asked_to_stop_after_its_broker_died_stops_in_bounded_time(tmp_path):
    """The demo's broker dies with the demo, and the processor is then told to stop: its last
    flush and offset commit wait at most ``stop_timeout_s`` (they waited for the producer's
    2-minute delivery timeout and 30 s commit retries), and it leaves its state uncommitted
    past what the broker did not acknowledge."""
    import threading

    from streamrl.config import Settings
    from streamrl.kafka import EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker().start()
    try:
        s = Settings.from_env(bootstrap_servers=broker.bootstrap_servers, topic_prefix="gone.", group_id="gone",
                              state_store=f"sqlite:///{tmp_path}/state.db", session_timeout_ms=2000,
                              heartbeat_interval_ms=500, commit_interval_ms=200, stop_timeout_s=1.0)
        ensure_topics(s)
        events = synthetic_log(40_000, n_users=300, n_items=200, seed=3)
        produce(s, events)
        proc = EventProcessor(s)
        errors = []

        def run():
            try:
                proc.run()
            except Exception as e:  # an unacknowledged last flush is reported, not hidden
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + 60   # the broker dies with transitions to deliver
        while proc.summary.transitions < 2000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.summary.transitions >= 2000
    finally:
        broker.stop()
    proc.stop()
    t.join(timeout=25)   # bounded: 1 s per wait on the broker, not minutes
    assert not t.is_alive(), "the processor did not stop after its broker died"
    assert all("not acknowledged" in str(e) for e in errors), errors


def test_a_revoked_partitions_unacknowledged_flush_stops_the_processor_with_its_reason(tmp_path, caplog):
    """Partitions revoked (a rebalance, or the consumer's close) after the broker died: their last
    flush is not acknowledged. The listener does not raise into kafka-python (which would replace
    the reason with "User rebalance callback throws an error", and from close() the error the
    processor was stopping with, as CI once saw); it logs, forgets the partitions uncommitted, and
    the processor stops with the reason."""
    from kafka import TopicPartition

    from streamrl.config import Settings
    from streamrl.consumers.processor import _Rebalance
    from streamrl.errors import DeliveryFailed
    from streamrl.kafka import EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker().start()
    try:
        s = Settings.from_env(bootstrap_servers=broker.bootstrap_servers, topic_prefix="revoked.", group_id="revoked",
                              state_store=f"sqlite:///{tmp_path}/state.db", commit_interval_ms=60_000,
                              stop_timeout_s=1.0)
        ensure_topics(s)
        produce(s, synthetic_log(40_000, n_users=300, n_items=200, seed=3))
        proc = EventProcessor(s)
        revoked = []

        def revoke_once_the_broker_is_gone(p: EventProcessor) -> None:
            if revoked or not p.out or sum(len(b) for b in p.out.values()) < 500:
                return
            broker.stop()                          # transitions not flushed yet go nowhere
            p.stop()
            revoked.extend(p.parts)
            _Rebalance(p).on_partitions_revoked({TopicPartition(s.event_topics["view"], n) for n in revoked})

        with caplog.at_level(logging.ERROR, logger="streamrl.consumers.processor"):
            with pytest.raises(DeliveryFailed, match="not acknowledged"):
                proc.run(on_batch=revoke_once_the_broker_is_gone)
    finally:
        broker.stop()
    assert revoked and not proc.parts                                 # forgotten, not committed
    assert "revoked with produced records not acknowledged" in caplog.text
