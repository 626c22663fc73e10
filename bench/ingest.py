"""Ingest benchmark: event processor throughput vs a bare kafka-python consumer, same run.

Produces N simulated events to a fresh set of topics (embedded broker unless
--bootstrap-servers), then reads them twice from the same topics:

* raw: a bare kafka-python consumer with the processor's client settings (crc32c installed),
  doing nothing with the records;
* ingest: the event processor (parse, validate, state, reward join, transitions, checkpoints
  to the chosen store) until every event is applied and durable.

Both rates are measured from the first record received to the last (the group join is
excluded for both). Last line: ``ingest events_per_s=<x> raw_consume_per_s=<y> ratio=<x/y> store=<name>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid

from streamrl.catalog import write_catalog
from streamrl.config import Settings
from streamrl.consumers.processor import EventProcessor
from streamrl.kafka import EmbeddedBroker, ensure_topics, make_consumer
from streamrl.producers.simulator import SimConfig, Simulator
from streamrl.producers.sink import EventSink


def raw_consume(settings: Settings, n: int) -> float:
    c = make_consumer(settings, *settings.event_topics.values(), group_id=f"raw-{uuid.uuid4().hex[:6]}",
                      max_poll_records=settings.poll_max_records)
    got, t0 = 0, None
    while got < n:
        batch = c.poll(timeout_ms=200, max_records=settings.poll_max_records)
        for recs in batch.values():
            if t0 is None:
                t0 = time.perf_counter()
            got += len(recs)
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def ingest(settings: Settings, n: int) -> float:
    proc = EventProcessor(settings)
    marks: dict[str, float] = {}

    def on_batch(p: EventProcessor) -> None:
        if p.summary.records and "t0" not in marks:
            marks["t0"] = time.perf_counter()
        if p.summary.records >= n:
            p.stop()

    proc.run(on_batch=on_batch)  # stop() -> final checkpoint: everything durable before the clock stops
    return n / (time.perf_counter() - marks["t0"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="events to produce and ingest")
    ap.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--bootstrap-servers", default="", help="use this Kafka instead of the embedded broker")
    ap.add_argument("--users", type=int, default=20_000, help="simulated users")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    broker = None
    if not args.bootstrap_servers:
        broker = EmbeddedBroker().start()
    tag = uuid.uuid4().hex[:8]
    store = (f"sqlite:////tmp/streamrl-bench-{tag}.db" if args.store == "sqlite" else args.redis_url)
    s = Settings.from_env(bootstrap_servers=args.bootstrap_servers or broker.bootstrap_servers,
                          topic_prefix=f"bench{tag}.", group_id=f"bench{tag}", state_store=store,
                          state_namespace=f"bench{tag}", session_timeout_ms=2000, heartbeat_interval_ms=500,
                          catalog_path=f"/tmp/streamrl-bench-{tag}-catalog.jsonl")
    try:
        ensure_topics(s)
        print(f"producing {args.events} simulated events ...", file=sys.stderr)
        sim = Simulator(SimConfig(n_users=args.users, seed=1))
        write_catalog(s.catalog_path, sim.catalog_items())  # interest vectors are part of the work
        sink = EventSink(s)
        for ev in sim.events(args.events):
            sink.send(ev)
        sink.flush()
        raw = raw_consume(s, args.events)
        print(f"raw consumer: {raw:,.0f} records/s", file=sys.stderr)
        rate = ingest(s, args.events)
        print(f"processor ({args.store}): {rate:,.0f} events/s", file=sys.stderr)
    finally:
        if args.store == "redis":
            from streamrl.consumers.store import open_store
            with open_store(store, s.state_namespace) as st:
                st.drop()
        if broker:
            broker.stop()
    print(f"ingest events_per_s={rate:.0f} raw_consume_per_s={raw:.0f} ratio={rate / raw:.3f} store={args.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
