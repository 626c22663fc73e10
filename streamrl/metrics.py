"""Every Prometheus metric, defined once.

Names: ``streamrl_<component>_<name>_<unit>``; counters end in ``_total``; labels are bounded
(topic, type, reason, kind) and never carry user or item ids. Bounded label values are
pre-created so their series exist at zero. Each process serves them with :func:`serve`.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from streamrl.schema import EVENT_TYPES, INVALID_REASONS

log = logging.getLogger(__name__)

# --- event processor (consumers/) ---------------------------------------------------------------
PROCESSOR_EVENTS = Counter("streamrl_processor_events_total",
                           "Valid events applied to user state, by event type.", ["type"])
PROCESSOR_RECORDS = Counter("streamrl_processor_records_total",
                            "Records read from the event topics (valid or not), by topic.", ["topic"])
PROCESSOR_INVALID = Counter("streamrl_processor_invalid_events_total",
                            "Records dead-lettered to events.dlq, by reason.", ["reason"])
PROCESSOR_DUPLICATES = Counter("streamrl_processor_duplicate_events_total",
                               "Events whose event_id was already applied (ignored).")
PROCESSOR_LATE = Counter("streamrl_processor_late_events_total",
                         "Events that arrived behind their partition's watermark, by type.", ["type"])
PROCESSOR_ORGANIC = Counter("streamrl_processor_organic_events_total",
                            "Clicks/purchases with no view to join to (state only), by type.", ["type"])
PROCESSOR_PENDING = Gauge("streamrl_processor_pending_joins",
                          "Open reward joins held in this process, by kind (view, engagement).", ["kind"])
PROCESSOR_CLOSED = Counter("streamrl_processor_closed_joins_total",
                           "Views whose join closed, by outcome (rewarded, unrewarded).", ["outcome"])
PROCESSOR_TRANSITIONS = Counter("streamrl_processor_transitions_total",
                                "Transitions produced to the transitions topic.")
PROCESSOR_BATCH_SECONDS = Histogram("streamrl_processor_batch_duration_seconds",
                                    "Time to apply one polled batch of records.",
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
PROCESSOR_COMMIT_SECONDS = Histogram("streamrl_processor_commit_duration_seconds",
                                     "Time of one checkpoint (flush transitions, store state+offsets, commit).",
                                     buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
PROCESSOR_LAG = Gauge("streamrl_processor_consumer_lag_records",
                      "Records behind the high watermark, summed over assigned partitions, by topic.", ["topic"])
PROCESSOR_WATERMARK_DELAY = Gauge("streamrl_processor_watermark_delay_seconds",
                                  "Wall clock minus the lowest partition event-time watermark.")
PROCESSOR_PARTITIONS = Gauge("streamrl_processor_assigned_partitions",
                             "Event partitions (co-partitioned groups) owned by this process.")

# --- producers/ ----------------------------------------------------------------------------------
PRODUCER_EVENTS = Counter("streamrl_producer_events_total",
                          "Events produced by the simulator or the replayer, by type.", ["type"])
PRODUCER_SKIPPED = Counter("streamrl_producer_skipped_lines_total",
                           "Input lines the replayer could not read, by reason.", ["reason"])

for _t in EVENT_TYPES:
    PROCESSOR_EVENTS.labels(_t)
    PRODUCER_EVENTS.labels(_t)
    PROCESSOR_LATE.labels(_t)
for _t in ("click", "purchase"):
    PROCESSOR_ORGANIC.labels(_t)
for _r in INVALID_REASONS:
    PROCESSOR_INVALID.labels(_r)
for _k in ("view", "engagement"):
    PROCESSOR_PENDING.labels(_k)
for _o in ("rewarded", "unrewarded"):
    PROCESSOR_CLOSED.labels(_o)


def serve(port: int, default: int) -> int | None:
    """Start the /metrics endpoint: ``port`` -1 uses ``default``, 0 a free port, -2 disables.

    Returns the bound port (logged), or None when disabled.
    """
    if port == -2:
        return None
    if port == -1:
        port = default
    server, _ = start_http_server(port, addr="0.0.0.0")
    bound = server.server_address[1]
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)
    return bound
