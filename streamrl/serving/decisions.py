"""The ``ranking.decisions`` log, produced from a child process.

kafka-python spends a few hundred microseconds of Python per record, on the serving process's
one core. :class:`DecisionLog` instead queues each record (a C queue, no lock held), a writer
thread writes it to a child process's stdin, and the child (``python -m
streamrl.serving.decisions``) runs the Kafka producer on another core. Order of a record's life: ``log`` (queue) → writer thread (pipe) → child
(``producer.send``, batched by linger) → broker. At shutdown the queue is drained, the pipe
closed, and the child flushes its producer before it exits; a killed parent also closes the
pipe, so the child flushes what it has and exits. The child runs in its own session: a Ctrl-C
meant for the server does not cut the log short. Delivery failures are logged by the child.

A full queue (``max_pending`` records: the broker or the child cannot keep up) drops the
record and counts it as ``failed``: serving never waits for the decision log.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import subprocess
import sys
import threading

from streamrl import metrics as M
from streamrl.config import Settings

log = logging.getLogger(__name__)

TOPIC = "ranking.decisions"
_STOP = None


class DecisionLog:
    """``log(key, value)`` sends one record to ``ranking.decisions`` without blocking the caller."""

    def __init__(self, settings: Settings, max_pending: int = 100_000) -> None:
        env = {**os.environ, **settings.to_env()}
        self._proc = subprocess.Popen([sys.executable, "-m", "streamrl.serving.decisions"], stdin=subprocess.PIPE,
                                      env=env, start_new_session=True)   # Ctrl-C of the server is not its signal
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.max_pending = max_pending
        self._thread = threading.Thread(target=self._pump, name="decisions-pipe", daemon=True)
        self._thread.start()

    def log(self, key: bytes, value: bytes) -> None:
        if self._queue.qsize() >= self.max_pending:
            M.SERVING_DECISIONS.labels("failed").inc()
            return
        self._queue.put(struct.pack("<HI", len(key), len(value)) + key + value)
        M.SERVING_DECISIONS.labels("sent").inc()

    def _pump(self) -> None:
        out = self._proc.stdin
        while True:
            frame = self._queue.get()
            if frame is _STOP:
                break
            try:
                out.write(frame)
                if self._queue.empty():
                    out.flush()
            except (OSError, ValueError) as e:  # the child died: nothing more can be logged
                log.error("decision log child gone (%s): decisions are dropped", e)
                break
        try:
            out.close()
        except OSError:
            pass

    def close(self, timeout_s: float = 10.0) -> None:
        """Drain the queue, close the pipe and let the child flush its producer."""
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("decision log child did not exit in %.0f s: terminating it", timeout_s)
            self._proc.terminate()


def main() -> None:
    """The producer process: stdin frames → ``producer.send`` until stdin closes, then flush."""
    from streamrl.kafka import make_producer

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s decisions: %(message)s")
    settings = Settings.from_env()
    producer = make_producer(settings, linger_ms=50)   # not latency-bound: batch
    topic = settings.topic(TOPIC)
    failed = [0]

    def on_error(exc: BaseException) -> None:
        failed[0] += 1
        log.warning("decision not logged to %s (%d so far): %s", topic, failed[0], exc)

    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(6)
        if len(head) < 6:
            break
        nk, nv = struct.unpack("<HI", head)
        body = stdin.read(nk + nv)
        if len(body) < nk + nv:
            break
        producer.send(topic, key=body[:nk], value=body[nk:]).add_errback(on_error)
    producer.flush(timeout=30)
    producer.close(timeout=10)


if __name__ == "__main__":
    main()
