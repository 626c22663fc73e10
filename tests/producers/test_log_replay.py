"""The log replayer: event-time order for JSONL and RetailRocket CSV, bad lines counted, never raised.

(Named test_log_replay.py, not test_replay.py: tests have no __init__.py, so basenames must be
unique across tests/, and the learner's replay buffer has its own tests.)
"""

from __future__ import annotations

import collections
import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from streamrl.producers.replay import LogReplayer, detect_format, run_replay
from streamrl.producers.simulator import SimConfig, Simulator
from streamrl.producers.sink import write_jsonl
from streamrl.schema import parse_event

RR_CSV = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,111016,addtocart,318965,
1433221955914,483717,transaction,253185,9914
1433221332117,287857,view,5206,
1433221999999,111016,wishlist,318965,
1433221999999,111016,view,318965
not-a-number,111016,view,318965,
"""


def _event(eid, ts, etype="view", user="u1", item="i1"):
    return {"event_id": eid, "type": etype, "user_id": user, "item_id": item, "ts": ts}


def _skipped(reason):
    return REGISTRY.get_sample_value("streamrl_producer_skipped_lines_total", {"reason": reason})


def test_replay_jsonl_orders_by_ts_then_file_order(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [_event("a", 30), _event("b", 10), _event("c", 20, "click"), _event("d", 10), _event("e", 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replayer = LogReplayer(path)
    assert [e.event_id for e in replayer.events()] == ["e", "b", "d", "c", "a"]
    assert replayer.format == "jsonl" and not replayer.skipped


def test_replay_retailrocket_maps_types_and_sorts(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(RR_CSV)
    events = list(LogReplayer(path).events())
    assert [(e.event_id, e.type, e.user_id, e.item_id) for e in events] == [
        ("rr-2", "view", "257597", "355908"),
        ("rr-6", "view", "287857", "5206"),
        ("rr-5", "purchase", "483717", "253185"),
        ("rr-4", "click", "111016", "318965"),
        ("rr-3", "view", "992329", "248676"),
    ]
    assert all(e.value is None and e.propensity is None for e in events)
    for e in events:
        assert parse_event(e.to_json(), e.type, e.user_id.encode()) == e


def test_replay_retailrocket_bad_lines_counted_not_raised(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(RR_CSV)
    before = _skipped("csv_unknown_event")
    replayer = LogReplayer(path)
    assert replayer.index() == 5
    assert replayer.skipped == {"csv_unknown_event": 1, "csv_field_count": 1, "csv_bad_value": 1}
    assert replayer.lines == 8
    assert _skipped("csv_unknown_event") == before + 1


def test_replay_jsonl_bad_lines_counted_not_raised(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps(_event("ok1", 2)), "{not json", json.dumps({"event_id": "x", "type": "view"}),
             "", json.dumps(_event("neg", -1)), json.dumps({**_event("p", 3), "propensity": 1.5}),
             json.dumps(_event("ok2", 1))]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    replayer = LogReplayer(path)
    assert [e.event_id for e in replayer.events()] == ["ok2", "ok1"]
    assert replayer.skipped == {"not_json": 1, "missing_field:user_id": 1, "ts_negative": 1,
                                "propensity_out_of_range": 1, "not_utf8": 1}


def test_replay_simulated_log_roundtrips(tmp_path):
    events = list(Simulator(SimConfig(seed=6, n_users=40, n_items=60, n_candidates=30)).events(2000))
    path = tmp_path / "sim.jsonl"
    assert sum(write_jsonl(path, events).values()) == 2000
    assert [e.to_dict() for e in LogReplayer(path).events()] == [e.to_dict() for e in events]


def test_detect_format_by_extension_and_header(tmp_path):
    (tmp_path / "a.log").write_text("\n" + json.dumps(_event("a", 1)) + "\n")
    (tmp_path / "b.txt").write_text(RR_CSV)
    (tmp_path / "c.csv").write_text("x,y\n1,2\n")
    assert detect_format(tmp_path / "a.log") == "jsonl"
    assert detect_format(tmp_path / "b.txt") == "retailrocket"
    with pytest.raises(ValueError):
        detect_format(tmp_path / "c.csv")


def test_replay_empty_log_yields_nothing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert list(LogReplayer(path).events()) == []


def test_replay_speed_paces_event_time(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(_event(str(n), 1000 + 100 * n)) + "\n" for n in range(3)))
    started = time.monotonic()
    assert len(list(LogReplayer(path).events(speed=2.0))) == 3
    assert time.monotonic() - started >= 0.09  # 200 ms of event time at 2x


def test_replay_stop_ends_early(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(_event(str(n), 1000 + 60_000 * n)) + "\n" for n in range(3)))
    stop = threading.Event()
    got = []
    for e in LogReplayer(path).events(speed=1.0, stop=stop):
        got.append(e)
        stop.set()
    assert len(got) == 1


@pytest.mark.integration
def test_run_replay_to_broker_by_type(settings, tmp_path):
    from kafka import TopicPartition

    from streamrl.kafka import make_consumer

    path = tmp_path / "events.csv"
    path.write_text(RR_CSV)
    summary = run_replay(settings, str(path), progress=False)
    assert summary["events"] == 5 and sum(summary["skipped"].values()) == 3
    consumer = make_consumer(settings)
    parts = [TopicPartition(t, p) for t in settings.event_topics.values() for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = collections.Counter()
    for _ in range(50):
        for tp, records in consumer.poll(timeout_ms=200).items():
            got[tp.topic] += len(records)
        if sum(got.values()) >= 5:
            break
    consumer.close()
    topics = settings.event_topics
    assert got == {topics["view"]: 3, topics["click"]: 1, topics["purchase"]: 1}
