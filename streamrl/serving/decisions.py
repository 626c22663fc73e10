"""The ``ranking.decisions`` log, produced from a child process.

kafka-python spends a few hundred microseconds of Python per record, on the serving process's
one core. :class:`DecisionLog` instead queues each record (a C queue, no lock held), a writer
thread hands it to a child process over a pipe, and the child runs the Kafka producer on
another core. Order of a record's life: ``log`` (queue) → writer thread (pipe) → child
(``producer.send``, batched by linger) → broker. At shutdown the queue is drained, the pipe
closed, and the child flushes its producer before it exits; a killed parent also closes the
pipe, so the child flushes what it has and exits.

A full queue (``max_pending`` records: the broker or the child cannot keep up) drops the
record and counts it as failed: serving never waits for the decision log.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading

from streamrl import metrics as M
from streamrl.config import Settings

log = logging.getLogger(__name__)

TOPIC = "ranking.decisions"
_STOP = None


class DecisionLog:
    """``log(key, value)`` sends one record to ``ranking.decisions`` without blocking the caller."""

    def __init__(self, settings: Settings, max_pending: int = 100_000) -> None:
        ctx = multiprocessing.get_context("spawn")
        reader, self._writer = ctx.Pipe(duplex=False)
        self._failed = ctx.Value("q", 0, lock=False)   # written by the child only
        self._failed_seen = 0
        self._proc = ctx.Process(target=_child, args=(settings.to_env(), reader, self._failed),
                                 name="streamrl-decisions", daemon=True)
        self._proc.start()
        reader.close()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.max_pending = max_pending
        self._thread = threading.Thread(target=self._pump, name="decisions-pipe", daemon=True)
        self._thread.start()

    def log(self, key: bytes, value: bytes) -> None:
        if self._queue.qsize() >= self.max_pending:
            M.SERVING_DECISIONS.labels("failed").inc()
            return
        self._queue.put(len(key).to_bytes(2, "big") + key + value)
        M.SERVING_DECISIONS.labels("sent").inc()
        failed = self._failed.value
        if failed > self._failed_seen:
            M.SERVING_DECISIONS.labels("failed").inc(failed - self._failed_seen)
            self._failed_seen = failed

    def _pump(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is _STOP:
                break
            try:
                self._writer.send_bytes(frame)
            except OSError as e:  # the child died: nothing more can be logged
                log.error("decision log child gone (%s): decisions are dropped", e)
                break
        self._writer.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Drain the queue, close the pipe and let the child flush its producer."""
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)
        self._proc.join(timeout=timeout_s)
        if self._proc.is_alive():
            log.warning("decision log child did not exit in %.0f s: terminating it", timeout_s)
            self._proc.terminate()


def _child(env: dict[str, str], reader, failed) -> None:
    """The producer process: pipe frames → ``producer.send`` until the pipe closes, then flush."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # shutdown comes as end of pipe, after the drain
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from streamrl.kafka import make_producer

    settings = Settings.from_env(env)
    producer = make_producer(settings, linger_ms=50)   # not latency-bound: batch
    topic = settings.topic(TOPIC)

    def on_error(exc: BaseException) -> None:
        failed.value += 1
        log.warning("decision not logged to %s: %s", topic, exc)

    while True:
        try:
            frame = reader.recv_bytes()
        except (EOFError, OSError):
            break
        n = int.from_bytes(frame[:2], "big")
        producer.send(topic, key=frame[2:2 + n], value=frame[2 + n:]).add_errback(on_error)
    producer.flush(timeout=30)
    producer.close(timeout=10)
