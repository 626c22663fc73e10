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
#: Why the replayer skips a line: the event contract's reasons plus the CSV reader's own.
PRODUCER_SKIP_REASONS: tuple[str, ...] = (*INVALID_REASONS, "csv_field_count", "csv_unknown_event",
                                          "csv_bad_value")

# --- learner (learner/) and snapshots (producers/snapshot.py) -----------------------------------
LEARNER_BUFFER = Gauge("streamrl_learner_buffer_transitions",
                       "Transitions held in the replay buffer, by ring (train, holdout).", ["ring"])
LEARNER_TRANSITIONS = Counter("streamrl_learner_transitions_total",
                              "Transitions read from the transitions topic, by outcome (added, duplicate, rejected).",
                              ["outcome"])
LEARNER_REJECTED = Counter("streamrl_learner_rejected_transitions_total",
                           "Transitions refused at ingestion into the buffer, by reason.", ["reason"])
LEARNER_UPDATES = Counter("streamrl_learner_updates_total", "Gradient steps applied.")
LEARNER_UPDATES_RATE = Gauge("streamrl_learner_updates_per_second",
                             "Gradient steps per second over the last reporting interval.")
LEARNER_SKIPPED = Counter("streamrl_learner_skipped_updates_total",
                          "Gradient steps skipped by the guard rails, by reason.", ["reason"])
LEARNER_ROLLBACKS = Counter("streamrl_learner_rollbacks_total",
                            "Roll-backs to the last checkpoint after non-finite weights.")
LEARNER_LOSS = Gauge("streamrl_learner_loss", "Loss of the last applied step, by kind (td, supervised, total).", ["kind"])
LEARNER_TD_ERROR = Gauge("streamrl_learner_td_error", "Mean |TD error| of the last applied step's batch.")
LEARNER_Q_MEAN = Gauge("streamrl_learner_q_mean", "Mean Q(s, a) of the last applied step's batch.")
LEARNER_GRAD_NORM = Gauge("streamrl_learner_grad_norm", "Global gradient norm (before clipping) of the last step.")
LEARNER_CATALOG = Gauge("streamrl_learner_items", "Items known to the learner's item table.")
LEARNER_VERSION = Gauge("streamrl_learner_published_version", "Version of the last published snapshot.")
LEARNER_PUBLISH_SECONDS = Histogram("streamrl_learner_publish_duration_seconds",
                                    "Time to serialise and publish one snapshot.",
                                    buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
LEARNER_CHECKPOINT_SECONDS = Histogram("streamrl_learner_checkpoint_duration_seconds",
                                       "Time to write one checkpoint atomically.",
                                       buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
LEARNER_GATES = Counter("streamrl_learner_gate_decisions_total",
                        "Evaluation gate outcomes, by result (published, rejected).", ["result"])
LEARNER_EVAL = Gauge("streamrl_learner_eval", "Evaluation figures of the last gate, by policy and metric (the "
                     "published policy's at every gate with --gate-baseline published, else every 10 s).",
                     ["policy", "metric"])
LEARNER_DRIFT = Counter("streamrl_learner_drift_events_total", "ADWIN drift detections for the worse (reward fell, TD error rose), by signal.", ["signal"])
SNAPSHOT_REJECTED = Counter("streamrl_snapshot_rejected_total",
                            "Snapshots refused by a reader's verification, by reason.", ["reason"])


# --- ranking service (serving/) ------------------------------------------------------------------
#: Routes of the ranking service (a bounded label); anything else is counted as "other".
SERVING_ROUTES = ("/rank", "/healthz", "/readyz", "/policy", "/metrics", "other")
SERVING_REQUEST_SECONDS = Histogram("streamrl_serving_request_duration_seconds",
                                    "Time from request arrival to response start, by route.", ["route"],
                                    buckets=(.0005, .001, .0025, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1))
SERVING_REQUESTS = Counter("streamrl_serving_requests_total", "HTTP requests answered, by route and status code.",
                           ["route", "status"])
SERVING_CANDIDATES = Histogram("streamrl_serving_candidates_per_request", "Candidates in one /rank request.",
                               buckets=(1, 10, 50, 100, 250, 500, 1000, 2500))
SERVING_BATCH = Histogram("streamrl_serving_batch_requests", "Requests ranked together in one batched forward pass.",
                          buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
SERVING_COLD_STARTS = Counter("streamrl_serving_cold_starts_total",
                              "Ranked requests of users with no stored state (share: divide by /rank 200s).")
SERVING_UNSCORED = Counter("streamrl_serving_unscored_candidates_total",
                           "Candidates neither in the policy nor in the catalog (placed last, flagged).")
SERVING_POLICY_VERSION = Gauge("streamrl_serving_policy_version", "Snapshot version being served (-1: none).")
SERVING_SWAPS = Counter("streamrl_serving_swaps_total", "Policy snapshots swapped in.")
SERVING_SWAP_SECONDS = Histogram("streamrl_serving_swap_duration_seconds",
                                 "Time to rebuild a verified snapshot into a policy and swap it in.",
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
SERVING_DECISIONS = Counter("streamrl_serving_decisions_total",
                            "Served slates sent to ranking.decisions, by outcome (sent, failed, disabled).",
                            ["outcome"])
SERVING_FEEDBACK = Counter("streamrl_serving_feedback_transitions_total",
                           "Transitions (or, with serve_feedback_source=session, joined views) read by the ranker's "
                           "fast feedback layer, by outcome (applied; skipped: a record that is not a transition; "
                           "malformed: an undecodable message; dropped: joined views the learning child could not "
                           "take in time).", ["outcome"])
SERVING_DIVERSIFIED = Counter("streamrl_serving_diversified_total",
                              "Slates re-ordered for diversity: users with nothing engaged since a detected fall of "
                              "engagement, while the fast feedback layer corrects (serve_feedback_diversity).")
SERVING_FEEDBACK_NORM = Gauge("streamrl_serving_feedback_norm",
                              "Frobenius norm of the fast feedback layer's interaction matrix (0: not learned or off).")
SERVING_FEEDBACK_LAG = Gauge("streamrl_serving_feedback_lag_seconds",
                             "Seconds from a transitions message's Kafka timestamp (session source: from the join "
                             "in the ranker) to its application by the fast feedback layer (last poll).")
SERVING_POLICY_VERSION.set(-1)
for _o in ("sent", "failed", "disabled"):
    SERVING_DECISIONS.labels(_o)
for _o in ("applied", "skipped", "malformed", "dropped"):
    SERVING_FEEDBACK.labels(_o)
for _r in SERVING_ROUTES:
    SERVING_REQUEST_SECONDS.labels(_r)

def precreate_learner_series() -> None:
    """Pre-create the learner's and snapshot reader's bounded series (called by those components,
    so that importing this module does not import torch)."""
    from streamrl.learner.dqn import SKIP_REASONS
    from streamrl.learner.replay import REJECT_REASONS
    from streamrl.producers.snapshot import REJECT_REASONS as SNAPSHOT_REASONS

    for ring in ("train", "holdout"):
        LEARNER_BUFFER.labels(ring)
    for o in ("added", "duplicate", "rejected"):
        LEARNER_TRANSITIONS.labels(o)
    for r in REJECT_REASONS:
        LEARNER_REJECTED.labels(r)
    for r in SKIP_REASONS + ("non_finite_weights",):
        LEARNER_SKIPPED.labels(r)
    for k in ("td", "supervised", "total"):
        LEARNER_LOSS.labels(k)
    for r in ("published", "rejected"):
        LEARNER_GATES.labels(r)
    for p in ("candidate", "published", "popularity"):
        for m in ("hr10", "ndcg10", "td_error", "snips"):
            LEARNER_EVAL.labels(p, m)
    for s in ("reward", "td_error"):
        LEARNER_DRIFT.labels(s)
    for r in SNAPSHOT_REASONS:
        SNAPSHOT_REJECTED.labels(r)


for _t in EVENT_TYPES:
    PROCESSOR_EVENTS.labels(_t)
    PRODUCER_EVENTS.labels(_t)
    PROCESSOR_LATE.labels(_t)
for _t in ("click", "purchase"):
    PROCESSOR_ORGANIC.labels(_t)
for _r in INVALID_REASONS:
    PROCESSOR_INVALID.labels(_r)
for _r in PRODUCER_SKIP_REASONS:
    PRODUCER_SKIPPED.labels(_r)
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
