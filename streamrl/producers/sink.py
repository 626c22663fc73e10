"""Where produced events go: the event topics (:class:`EventSink`) or a JSONL log (:func:`write_jsonl`)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from kafka.errors import KafkaTimeoutError

from streamrl import metrics
from streamrl.config import Settings
from streamrl.errors import BrokerError
from streamrl.schema import EVENT_TYPES, Event

log = logging.getLogger(__name__)


class EventSink:
    """Sends events to ``settings.event_topics[event.type]``, key = user_id, value = the event JSON.

    Delivery failures are recorded as they happen and raised by :meth:`flush` (nothing is
    dropped silently). A sink that built its own producer closes it on :meth:`close`.
    """

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        self.topics = settings.event_topics
        self.close_timeout_s = settings.stop_timeout_s
        self._own_producer = producer is None
        if producer is None:
            from streamrl.kafka import make_producer

            producer = make_producer(settings)
        self.producer = producer
        self.counts: Counter[str] = Counter({t: 0 for t in EVENT_TYPES})
        self.failed = 0
        self._first_error: BaseException | None = None
        self._metric = {t: metrics.PRODUCER_EVENTS.labels(t) for t in EVENT_TYPES}

    def send(self, event: Event) -> None:
        """Queue one event for delivery (asynchronous; :meth:`flush` waits for it)."""
        future = self.producer.send(self.topics[event.type], key=event.user_id.encode(),
                                    value=event.to_json())
        future.add_errback(self._on_error)
        self.counts[event.type] += 1
        self._metric[event.type].inc()

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self._first_error is None:
            self._first_error = exc
            log.error("event delivery failed: %s", exc)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued event is acknowledged (at most ``timeout_s``; None: until each is
        delivered or expired by the producer's delivery timeout); raise if any delivery failed or
        events are still queued when the time is up."""
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            raise BrokerError(f"events still queued after {timeout_s:g}s were not delivered "
                              f"({self.failed} failed before): is the broker reachable?") from None
        if self._first_error is not None:
            raise BrokerError(f"{self.failed} events not delivered: {self._first_error}")

    def close(self) -> None:
        """Flush (at most the ``stop_timeout_s`` setting), then close the producer it built."""
        try:
            self.flush(self.close_timeout_s)
        finally:
            if self._own_producer:
                from streamrl.kafka import close_producer

                close_producer(self.producer, 0)   # the flush above waited; nothing more to wait for

    def __enter__(self) -> "EventSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike, events: Iterable[Event]) -> dict[str, int]:
    """Write events one JSON object per line (the replayer's format); return counts per type.

    The file appears atomically (written to ``<path>.tmp``, then renamed).
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    counts = Counter({t: 0 for t in EVENT_TYPES})
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        for ev in events:
            f.write(ev.to_json() + b"\n")
            counts[ev.type] += 1
    os.replace(tmp, path)
    return dict(counts)
