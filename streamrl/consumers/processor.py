"""The event processor: Kafka events -> user state, reward join, transitions.

One consumer group reads ``events.view``, ``events.click`` and ``events.purchase``; the range
assignor keeps partition ``p`` of all three on one member, which owns them as a unit
(:class:`~streamrl.consumers.partition.PartitionRuntime`). Several processes in the group split
the partitions and together produce exactly the result of one.

Error policy (one place, :meth:`EventProcessor._dead_letter`): a record that violates the event
contract is logged with topic, partition, offset and reason, copied with its original key and
bytes to ``events.dlq`` (reason and source in headers), and processing goes on.

Checkpoint order (:meth:`EventProcessor.checkpoint`), every ``commit_interval_ms`` and on
revocation or shutdown:

1. apply state in memory (done as records arrive; joins closed as watermarks advance);
2. flush produced records (transitions, dead letters) and wait until the broker has them;
3. store users, offsets, event-time maxima and timers in one store transaction, fenced by the
   partition epoch;
4. commit the offsets to Kafka (for lag tooling; the store's offsets are the truth on restart).

A crash between 2 and 3 re-produces the same transitions (same ids; consumers drop
duplicates); a crash between 3 and 4 is harmless because assignment seeks to the store's offsets.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from streamrl import metrics as m
from streamrl.catalog import ItemEmbeddings, TextEmbedder, load_catalog
from streamrl.config import Settings
from streamrl.consumers.partition import POS_INF, PartitionRuntime
from streamrl.consumers.state import JoinRules, UserState
from streamrl.consumers.store import StateStore, open_store
from streamrl.errors import DeliveryFailed, InvalidEvent, StaleEpochError
from streamrl.kafka import close_producer, ensure_topics, make_consumer, make_producer
from streamrl.schema import Event, dlq_headers, encode_transitions, parse_event

log = logging.getLogger(__name__)


@dataclass
class Summary:
    records: int = 0
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    late: int = 0
    transitions: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        return (f"processed records={self.records} events={self.events} invalid={self.invalid} "
                f"duplicates={self.duplicates} late={self.late} transitions={self.transitions} "
                f"checkpoints={self.checkpoints} seconds={self.seconds:.1f} records_per_s={rate:.0f}")


def applied_offsets(settings: Settings) -> int:
    """Events durably applied so far: the sum of the offsets stored with the state (progress)."""
    total = 0
    with open_store(settings.state_store, settings.state_namespace) as st:
        for p in range(settings.partitions):
            meta = st.load_partition(p)
            if meta:
                total += sum(json.loads(meta)["offsets"].values())
    return total


def load_item_embeddings(settings: Settings) -> ItemEmbeddings:
    """The catalog's text embeddings (empty when no catalog is configured)."""
    if not settings.catalog_path:
        return ItemEmbeddings.empty()
    return ItemEmbeddings.from_catalog(load_catalog(settings.catalog_path),
                                       TextEmbedder(settings.cache_dir, settings.embedding_model))


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, proc: "EventProcessor") -> None:
        self.proc = proc

    def on_partitions_revoked(self, revoked):
        self.proc._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.proc._on_assigned(assigned)


class EventProcessor:
    """Consumes the event topics and maintains user state and reward joins."""

    def __init__(self, settings: Settings, store: StateStore | None = None,
                 embeddings: ItemEmbeddings | None = None) -> None:
        self.s = settings
        self.rules = JoinRules.from_settings(settings)
        self.store = store or open_store(settings.state_store, settings.state_namespace)
        self.embeddings = embeddings if embeddings is not None else load_item_embeddings(settings)
        self.topic_type = {topic: t for t, topic in settings.event_topics.items()}
        self.parts: dict[int, PartitionRuntime] = {}
        self.users: dict[str, UserState] = {}
        self.user_part: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.out: dict[int, list[dict[str, Any]]] = {}
        self.summary = Summary()
        self._sends: list = []  # futures of records produced since the last checkpoint
        self._stopping = False
        self._revoke_failed: DeliveryFailed | None = None   # a revoked partition's flush the broker did not acknowledge
        self._last_checkpoint = time.monotonic()
        ensure_topics(settings)
        self.producer = make_producer(settings)
        self.consumer = make_consumer(settings, group_id=settings.group_id,
                                      max_poll_records=settings.poll_max_records)
        self.consumer.subscribe(list(self.topic_type), listener=_Rebalance(self))

    # --- main loop ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def run(self, until_idle: bool = False, max_seconds: float | None = None,
            on_batch: Callable[["EventProcessor"], None] | None = None) -> Summary:
        """Process until stopped; ``until_idle`` drains: exit once caught up and idle (end of stream)."""
        start = time.monotonic()
        idle_s = self.s.idle_timeout_ms / 1000
        last_record = time.monotonic()
        last_metrics = 0.0
        last_log, last_records = start, 0
        try:
            while not self._stopping:
                batch = self.consumer.poll(timeout_ms=100, max_records=self.s.poll_max_records)
                if self._revoke_failed is not None:   # as a failed flush in checkpoint(): stop, uncommitted
                    raise self._revoke_failed
                now = time.monotonic()
                if batch:
                    last_record = now
                    with m.PROCESSOR_BATCH_SECONDS.time():
                        self._apply_batch(batch, now)
                self._update_caught_up()
                self._advance_all(now)
                if now - self._last_checkpoint >= self.s.commit_interval_ms / 1000:
                    self.checkpoint()
                if now - last_metrics >= 1.0:
                    self._export_gauges(now)
                    last_metrics = now
                if now - last_log >= 10.0:
                    self._log_progress(now - last_log, last_records)
                    last_log, last_records = now, self.summary.records
                if on_batch is not None:
                    on_batch(self)
                if max_seconds is not None and now - start >= max_seconds:
                    break
                if until_idle and self.parts and now - last_record >= idle_s and self._all_caught_up():
                    self._drain()
                    break
            self.checkpoint()
            if self._revoke_failed is not None:
                raise self._revoke_failed
        finally:
            self.summary.seconds = time.monotonic() - start
            self.close()
        return self.summary

    def close(self) -> None:
        wait_ms = int(self.s.stop_timeout_s * 1000)
        try:
            self.consumer.close(autocommit=False, timeout_ms=wait_ms)
        finally:
            try:
                if not close_producer(self.producer, self.s.stop_timeout_s):
                    # a broker gone: the state was not committed past what it did not acknowledge
                    log.warning("producer closed with records unacknowledged")
            finally:
                self.store.close()

    # --- applying records -----------------------------------------------------------------------
    def _apply_batch(self, batch, now: float) -> None:
        s = self.s
        parsed: list[tuple[PartitionRuntime, Event]] = []
        now_ms = int(time.time() * 1000)
        for tp, records in batch.items():
            rt = self.parts.get(tp.partition)
            if rt is None:  # revoked during this poll
                continue
            etype = self.topic_type[tp.topic]
            m.PROCESSOR_RECORDS.labels(tp.topic).inc(len(records))
            self.summary.records += len(records)
            next_offset = rt.offsets.get(etype, 0)
            for rec in records:
                if rec.offset < next_offset:  # already applied (stored offsets are the truth)
                    continue
                next_offset = rec.offset + 1
                try:
                    ev = parse_event(rec.value, etype, rec.key, now_ms=now_ms, max_bytes=s.max_event_bytes,
                                     max_id_bytes=s.max_id_bytes, max_future_ms=s.max_future_ms)
                except InvalidEvent as e:
                    self._dead_letter(rec, e)
                    continue
                parsed.append((rt, ev))
                rt.record(etype, ev.ts, now)
            rt.offsets[etype] = next_offset
            rt.last_record_wall[etype] = now
        self._load_users({ev.user_id: rt.partition for rt, ev in parsed})
        users, dirty = self.users, self.dirty
        window = self.rules.window_ms
        applied = {t: 0 for t in self.topic_type.values()}
        late = dict(applied)
        duplicates = 0
        for rt, ev in parsed:
            uid = ev.user_id
            if not users[uid].apply(ev):
                duplicates += 1
                continue
            applied[ev.type] += 1
            if ev.ts < rt.watermark:
                late[ev.type] += 1
            dirty.add(uid)
            # adding an event can only bring the user's deadline forward
            due = ev.ts + window if ev.type == "view" else ev.ts
            current = rt.scheduled.get(uid)
            if current is None or due < current:
                rt.schedule(uid, due)
        self._count(applied, late, duplicates)

    def _count(self, applied: dict[str, int], late: dict[str, int], duplicates: int) -> None:
        s = self.summary
        s.events += sum(applied.values())
        s.late += sum(late.values())
        s.duplicates += duplicates
        for t, n in applied.items():
            if n:
                m.PROCESSOR_EVENTS.labels(t).inc(n)
            if late[t]:
                m.PROCESSOR_LATE.labels(t).inc(late[t])
        if duplicates:
            m.PROCESSOR_DUPLICATES.inc(duplicates)

    def _dead_letter(self, rec, err: InvalidEvent) -> None:
        """The one error policy: log, copy the original record to events.dlq, go on."""
        log.warning("dead-letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, err)
        self.summary.invalid += 1
        self.summary.invalid_by_reason[err.reason] = self.summary.invalid_by_reason.get(err.reason, 0) + 1
        m.PROCESSOR_INVALID.labels(err.reason).inc()
        self._sends.append(self.producer.send(
            self.s.topic("events.dlq"), key=rec.key, value=rec.value,
            headers=dlq_headers(err.reason, err.detail, rec.topic, rec.partition, rec.offset),
            partition=rec.partition % self.s.partitions))

    def _load_users(self, wanted: dict[str, int]) -> None:
        missing = [u for u in wanted if u not in self.users]
        if not missing:
            return
        found = self.store.get_users(missing)
        for u in missing:
            blob = found.get(u)
            self.users[u] = UserState.decode(u, blob) if blob is not None else UserState(u)
            self.user_part[u] = wanted[u]

    # --- watermarks and joins ------------------------------------------------------------------
    def _advance_all(self, now: float) -> None:
        for rt in self.parts.values():
            wm = rt.compute_watermark(now, self.s.idle_timeout_ms / 1000, self.s.max_lateness_ms)
            self._fire(rt, wm)

    def _fire(self, rt: PartitionRuntime, wm: int) -> None:
        due = rt.due(wm)
        if not due:
            return
        self._load_users({u: rt.partition for u in due})
        out = self.out.setdefault(rt.partition, [])
        for uid in due:
            u = self.users[uid]
            before = len(out)
            out.extend(u.advance(wm, self.rules))
            for t in out[before:]:
                m.PROCESSOR_CLOSED.labels("rewarded" if t["engagement"] else "unrewarded").inc()
            self.dirty.add(uid)
            rt.schedule(uid, u.deadline(self.rules.window_ms))

    def _drain(self) -> None:
        """End of stream: close every open join as if the watermark were +inf."""
        log.info("caught up and idle: closing all open joins")
        for rt in self.parts.values():
            self._fire(rt, POS_INF)

    # --- checkpoint -----------------------------------------------------------------------------
    def checkpoint(self, partitions: list[int] | None = None, in_rebalance: bool = False) -> None:
        """Make state, transitions and offsets durable, in the order of the module docstring.

        ``in_rebalance``: called from the rebalance listener, which runs on the consumer's IO
        thread, so the Kafka commit must not block there. Once a stop is asked for, each wait on
        the broker lasts at most ``stop_timeout_s``.
        """
        parts = self.parts if partitions is None else {p: self.parts[p] for p in partitions if p in self.parts}
        if not parts:
            self._last_checkpoint = time.monotonic()
            return
        t0 = time.monotonic()
        # 2. flush produced records
        n_tr = 0
        for p in parts:
            batch = self.out.pop(p, None)
            if batch:
                for i in range(0, len(batch), 2000):
                    self._sends.append(self.producer.send(
                        self.s.topic("transitions"), key=str(p).encode(),
                        value=encode_transitions(batch[i:i + 2000]), partition=p))
                n_tr += len(batch)
        self._await_sends()
        self.summary.transitions += n_tr
        m.PROCESSOR_TRANSITIONS.inc(n_tr)
        # 3. store users, offsets and timers atomically
        users = {}
        wms = {p: rt.watermark for p, rt in parts.items()}
        lookup = self.embeddings.get
        for uid in [u for u in self.dirty if self.user_part.get(u) in parts]:
            u = self.users[uid]
            u.prune(wms[self.user_part[uid]], self.rules)
            users[uid] = u.encode(u.interest(self.rules.history_len, self.rules.half_life_ms, lookup))
            self.dirty.discard(uid)
        timers = {p: rt.timer_changes for p, rt in parts.items()}
        try:
            self.store.commit({p: rt.epoch for p, rt in parts.items()},
                              {p: rt.meta() for p, rt in parts.items()}, users, timers)
        except StaleEpochError as e:
            log.error("lost ownership, dropping partitions %s without committing: %s", sorted(parts), e)
            self._forget(list(parts))
            return
        for rt in parts.values():
            rt.timer_changes = {}
        # 4. commit offsets to Kafka
        offsets = {TopicPartition(self.s.event_topics[t], p): OffsetAndMetadata(o, "", -1)
                   for p, rt in parts.items() for t, o in rt.offsets.items()}
        if offsets:
            try:
                if in_rebalance:
                    self.consumer.commit_async(offsets)
                else:
                    self.consumer.commit(offsets, timeout_ms=int(self.s.stop_timeout_s * 1000) if self._stopping else None)
            except KafkaError as e:  # the store holds the truth; a failed Kafka commit only delays lag tooling
                log.warning("Kafka offset commit failed (store is authoritative): %s", e)
        self.summary.checkpoints += 1
        m.PROCESSOR_COMMIT_SECONDS.observe(time.monotonic() - t0)
        self._last_checkpoint = time.monotonic()
        if len(self.users) > self.s.user_cache_size:
            self._evict_clean()

    def _await_sends(self) -> None:
        """Wait until the broker has every produced record; a failed send stops the processor
        before its state is committed, so a restart re-produces it (nothing is lost). The wait
        ends with the producer's delivery timeout, or ``stop_timeout_s`` after a stop was asked
        for (the broker may be what is going away)."""
        stop_by = None
        while True:
            try:
                self.producer.flush(timeout=1.0)
                break
            except KafkaTimeoutError as e:
                if self._stopping:
                    stop_by = stop_by or time.monotonic() + self.s.stop_timeout_s
                    if time.monotonic() >= stop_by:
                        raise DeliveryFailed(f"produced records not acknowledged {self.s.stop_timeout_s:g}s "
                                             "after the stop was asked for") from e
        sends, self._sends = self._sends, []
        for f in sends:
            try:
                f.get(timeout=30)
            except KafkaError as e:
                raise DeliveryFailed(f"a produced record was not acknowledged: {e}") from e

    def _evict_clean(self) -> None:
        for uid in [u for u in self.users if u not in self.dirty]:
            del self.users[uid]
            self.user_part.pop(uid, None)

    # --- rebalancing ----------------------------------------------------------------------------
    def _on_revoked(self, revoked) -> None:
        gone = sorted({tp.partition for tp in revoked} & set(self.parts))
        if not gone:
            return
        log.info("partitions revoked: %s", gone)
        try:
            self.checkpoint(gone, in_rebalance=True)
        except DeliveryFailed as e:
            # raised here it would reach the caller as kafka-python's "User rebalance callback
            # throws an error", the reason lost (and from close(), in place of the error the
            # processor was stopping with). The partitions' state stays at its last commit, from
            # which their next owner replays; run() stops on it after the poll.
            log.error("partitions %s revoked with produced records not acknowledged: their state stays at the "
                      "last commit: %s", gone, e)
            self._revoke_failed = self._revoke_failed or e
        self._forget(gone)

    def _forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self.parts.pop(p, None)
            self.out.pop(p, None)
        drop = [u for u, p in self.user_part.items() if p in partitions]
        for u in drop:
            self.users.pop(u, None)
            self.user_part.pop(u, None)
            self.dirty.discard(u)
        m.PROCESSOR_PARTITIONS.set(len(self.parts))

    def _on_assigned(self, assigned) -> None:
        by_p: dict[int, list[TopicPartition]] = {}
        for tp in assigned:
            by_p.setdefault(tp.partition, []).append(tp)
        new = sorted(p for p in by_p if p not in self.parts)
        for p, tps in by_p.items():
            if len(tps) != len(self.topic_type):
                log.error("partition %d assigned for %d of %d event topics: are the topics co-partitioned "
                          "and the range assignor in use?", p, len(tps), len(self.topic_type))
        epochs = self.store.claim(new) if new else {}
        for p in new:
            rt = PartitionRuntime.restore(p, epochs[p], self.store.load_partition(p), self.store.load_timers(p))
            self.parts[p] = rt
            for tp in by_p[p]:
                etype = self.topic_type[tp.topic]
                if etype in rt.offsets:
                    self.consumer.seek(tp, rt.offsets[etype])
                else:
                    self.consumer.seek_to_beginning(tp)
        log.info("partitions assigned: %s (now own %s)", new, sorted(self.parts))
        m.PROCESSOR_PARTITIONS.set(len(self.parts))

    # --- progress -------------------------------------------------------------------------------
    def _update_caught_up(self) -> None:
        for tp in self.consumer.assignment():
            rt = self.parts.get(tp.partition)
            if rt is None:
                continue
            hw = self.consumer.highwater(tp)
            etype = self.topic_type[tp.topic]
            pos = rt.offsets.get(etype, 0)
            rt.caught_up[etype] = hw is not None and pos >= hw

    def _all_caught_up(self) -> bool:
        return all(rt.caught_up.get(t, False) for rt in self.parts.values() for t in self.topic_type.values())

    def _log_progress(self, seconds: float, records_before: int) -> None:
        s = self.summary
        log.info("progress: %d records (%.0f/s), %d events, %d transitions, %d dead letters, partitions %s",
                 s.records, (s.records - records_before) / seconds, s.events, s.transitions, s.invalid,
                 sorted(self.parts))

    def _export_gauges(self, now: float) -> None:
        lag: dict[str, int] = {t: 0 for t in self.topic_type}
        for tp in self.consumer.assignment():
            rt = self.parts.get(tp.partition)
            hw = self.consumer.highwater(tp)
            if rt is not None and hw is not None:
                lag[tp.topic] += max(0, hw - rt.offsets.get(self.topic_type[tp.topic], 0))
        for topic, n in lag.items():
            m.PROCESSOR_LAG.labels(topic).set(n)
        pv = sum(len(u.pending_views) for u in self.users.values())
        pe = sum(len(u.pending_eng) for u in self.users.values())
        m.PROCESSOR_PENDING.labels("view").set(pv)
        m.PROCESSOR_PENDING.labels("engagement").set(pe)
        wms = [rt.watermark for rt in self.parts.values() if rt.watermark > -(1 << 61)]
        if wms:
            m.PROCESSOR_WATERMARK_DELAY.set(max(0.0, time.time() - min(wms) / 1000))
