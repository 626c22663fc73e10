"""The learner's Kafka loop: refill, consume, train, checkpoint, publish.

Start: read the snapshot topic so the next version goes above every one ever published → assign
every partition of ``transitions`` (no consumer group: offsets live in the checkpoint) → seek to
the refill offsets (the oldest message still in the buffer at the last checkpoint); records below
the checkpoint's consumed offsets are refill (no updates owed, no drift).
Each turn: poll → ingest → pay owed updates → on their intervals: catalog refresh, gate and
publish, checkpoint. A gate runs once there is something new to judge, at most one per
``publish_interval_s``: a fresh learner's first snapshot goes out as soon as it has seen
``min_transitions_to_publish`` transitions and taken a step, not an interval after start.
Stop (SIGTERM, --max-seconds, --until-idle): a last checkpoint.
"""

from __future__ import annotations

import logging
import time

from kafka import TopicPartition

from streamrl import metrics as M
from streamrl.kafka import make_consumer
from streamrl.producers.snapshot import SnapshotPublisher, published_versions
from streamrl.schema import decode_transitions

log = logging.getLogger(__name__)

CATALOG_REFRESH_S = 30.0
RATE_WINDOW_S = 5.0


def run_learner(learner, max_seconds: float | None = None, until_idle: bool = False, idle_s: float = 2.0):
    """Run ``learner`` (a :class:`~streamrl.learner.worker.Learner`) against the broker; returns its summary."""
    settings, cfg = learner.settings, learner.cfg
    floor = max(published_versions(settings) or [0])
    if floor > learner.last_version:
        log.warning("snapshot topic holds v%d above the checkpoint's v%d: continuing above it", floor, learner.last_version)
        learner.last_version = floor
    consumer = _assign(learner, settings)
    publisher = SnapshotPublisher(settings)
    learner.refresh_catalog()
    t_start = now = time.monotonic()
    last_ckpt = last_cat = last_rate = last_data = now
    last_pub = -float("inf")  # the first gate as soon as there is something to publish
    rate_updates = 0
    try:
        while not learner._stopping:
            busy = learner.owed >= 1 and len(learner.buffer) >= cfg.min_buffer
            batches = consumer.poll(timeout_ms=0 if busy else 100, max_records=settings.poll_max_records)
            for tp, records in batches.items():
                for rec in records:
                    ingest_record(learner, tp.partition, rec)
            if batches:
                last_data = time.monotonic()
            rate_updates += learner.pay_owed()
            now = time.monotonic()
            if now - last_rate >= RATE_WINDOW_S:
                M.LEARNER_UPDATES_RATE.set(rate_updates / (now - last_rate))
                last_rate, rate_updates = now, 0
            learner._set_buffer_gauges()
            if now - last_cat >= CATALOG_REFRESH_S:
                learner.refresh_catalog()
                last_cat = now
            if now - last_pub >= cfg.publish_interval_s and learner.gate_ready():
                learner.maybe_publish(publisher)
                last_pub = time.monotonic()
            if now - last_ckpt >= cfg.checkpoint_interval_s:
                learner.checkpoint()
                last_ckpt = time.monotonic()
            if max_seconds is not None and now - t_start >= max_seconds:
                break
            if until_idle and not batches and now - last_data >= idle_s and not busy:
                learner.maybe_publish(publisher)
                break
        learner.checkpoint()
    finally:
        consumer.close()
        publisher.close()
    return learner.finish_summary()


def _assign(learner, settings):
    """A group-less consumer on every transitions partition, positioned for refill."""
    topic = settings.topic("transitions")
    consumer = make_consumer(settings, group_id=None)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or range(settings.partitions))]
    consumer.assign(tps)
    start = getattr(learner, "_refill_from", {})
    for tp in tps:
        off = start.get(tp.partition, learner.consumed.get(tp.partition))
        if off is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, off)
    return consumer


def ingest_record(learner, partition: int, rec) -> None:
    """One transitions message into the buffer; an undecodable one is counted and skipped."""
    refill = rec.offset < learner.refill_until.get(partition, -1)
    try:
        transitions = decode_transitions(rec.value)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        M.LEARNER_REJECTED.labels("malformed").inc()
        learner.buffer.rejected["malformed"] += 1
        log.warning("undecodable transitions message at partition %d offset %d: %s", partition, rec.offset, e)
        transitions = []
    learner.ingest(transitions, partition, rec.offset, refill=refill)
    learner.consumed[partition] = max(learner.consumed.get(partition, 0), rec.offset + 1)
