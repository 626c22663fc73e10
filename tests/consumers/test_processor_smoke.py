import pytest

from consumers.gen import synthetic_log
from consumers.reference import reference
from streamrl.consumers.processor import EventProcessor
from streamrl.consumers.store import open_store
from streamrl.consumers.state import UserView
from streamrl.kafka import make_producer
from streamrl.schema import decode_transitions
from streamrl.kafka import make_consumer
from kafka import TopicPartition


def produce(settings, events):
    p = make_producer(settings)
    for e in events:
        p.send(settings.event_topics[e.type], key=e.user_id.encode(), value=e.to_json())
    p.flush()
    p.close()


def read_transitions(settings):
    c = make_consumer(settings, group_id=None)
    tps = [TopicPartition(settings.topic("transitions"), p) for p in range(settings.partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = []
    empty = 0
    while empty < 5:
        batch = c.poll(timeout_ms=200)
        if not batch:
            empty += 1
        for recs in batch.values():
            for r in recs:
                out.extend(decode_transitions(r.value))
    c.close()
    return out


def test_process_matches_reference(settings):
    events = synthetic_log(3000)
    produce(settings, events)
    summary = EventProcessor(settings).run(until_idle=True, max_seconds=60)
    assert summary.events == len(events)
    users, trans = reference(events, settings.attribution_window_ms, settings.reward_weights,
                             settings.history_len, settings.interest_half_life_ms)
    got = read_transitions(settings)
    assert sorted(got, key=lambda t: t["id"]) == sorted(trans, key=lambda t: t["id"])
    with open_store(settings.state_store, settings.state_namespace) as st:
        stored = {u: UserView.from_record(u, b, settings.history_len) for u, b in st.scan_users()}
    assert set(stored) == set(users)
    for u, ref in users.items():
        assert [tuple(x) for x in stored[u].recent] == ref["recent"]
        assert stored[u].counts == ref["counts"]
