"""The ``ranking.decisions`` log, produced from a child process.

kafka-python spends a few hundred microseconds of Python per record, on the serving process's
one core. :class:`DecisionLog` instead frames each record into memory, and the ranker writes the
frames of a whole batch of requests to a child process's stdin with one non-blocking ``writev``;
the child (``python -m streamrl.serving.decisions``) runs the Kafka producer on another core.
No thread is woken per record and serving never waits on the pipe. Order of a record's life:
``log`` (frame in memory) → ``flush`` after the batch (pipe; what the pipe cannot take now stays
queued and a drainer thread retries every 50 ms) → child (``producer.send``, batched by linger)
→ broker. At shutdown the queue is written out, the pipe closed, and the child flushes its
producer before it exits; a killed parent also closes the pipe, so the child flushes what it
has and exits. The child runs in its own session: a Ctrl-C meant for the server does not cut
the log short. Delivery failures are logged by the child.

A full queue (``max_pending`` records: the broker or the child cannot keep up) drops the
record and counts it as ``failed``: serving never waits for the decision log.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import subprocess
import sys
import threading

from streamrl import metrics as M
from streamrl.config import Settings

log = logging.getLogger(__name__)

TOPIC = "ranking.decisions"
_PIPE_BYTES = 1 << 20      # ask for a 1 MiB pipe (Linux F_SETPIPE_SZ): bursts fit without a backlog
_IOV_MAX = 512             # frames per writev


def nonblocking_pipe(fd: int) -> int:
    """Make the write end ``fd`` of a pipe to a child non-blocking and ask for a 1 MiB pipe (Linux
    F_SETPIPE_SZ: bursts fit); returns ``fd``."""
    os.set_blocking(fd, False)
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except OSError:   # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe size
        pass
    return fd


class DecisionLog:
    """``log(key, value)`` queues one record for ``ranking.decisions``; ``flush()`` hands what is
    queued to the producer child. Neither blocks the caller."""

    def __init__(self, settings: Settings, max_pending: int = 100_000, drain_s: float = 0.05) -> None:
        env = {**os.environ, **settings.to_env()}
        self._proc = subprocess.Popen([sys.executable, "-m", "streamrl.serving.decisions"], stdin=subprocess.PIPE,
                                      env=env, start_new_session=True)   # Ctrl-C of the server is not its signal
        self._fd = nonblocking_pipe(self._proc.stdin.fileno())
        self._queue: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()          # one writer at a time: the ranker or the drainer
        self._dead = False
        self.max_pending = max_pending
        self._sent, self._failed = M.SERVING_DECISIONS.labels("sent"), M.SERVING_DECISIONS.labels("failed")
        self._stop = threading.Event()
        self._drain_s = drain_s
        self._thread = threading.Thread(target=self._drain, name="decisions-drain", daemon=True)
        self._thread.start()

    def log(self, key: bytes, value: bytes) -> None:
        if len(self._queue) >= self.max_pending or self._dead:
            self._failed.inc()
            return
        self._queue.append(struct.pack("<HI", len(key), len(value)) + key + value)
        self._sent.inc()

    def flush(self) -> None:
        """Write as many queued frames as the pipe takes now (never waits)."""
        if self._queue and self._lock.acquire(blocking=False):   # the drainer is at it: it takes them
            try:
                self._write()
            finally:
                self._lock.release()

    def _write(self) -> None:
        q = self._queue
        while q:
            frames = [q[i] for i in range(min(len(q), _IOV_MAX))]
            try:
                n = os.writev(self._fd, frames)
            except BlockingIOError:            # pipe full: the child is behind; retried later
                return
            except OSError as e:               # the child died: nothing more can be logged
                self._gone(e)
                return
            for f in frames:
                if n < len(f):
                    if n:
                        q[0] = f[n:]          # partly written: the rest goes first next time
                    return
                n -= len(f)
                q.popleft()

    def _gone(self, e: BaseException) -> None:
        log.error("decision log child gone (%s): decisions are dropped", e)
        self._dead = True
        M.SERVING_DECISIONS.labels("failed").inc(len(self._queue))
        self._queue.clear()

    def _drain(self) -> None:
        while not self._stop.wait(self._drain_s):
            if self._queue:
                with self._lock:
                    self._write()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write out the queue, close the pipe and let the child flush its producer."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        with self._lock:
            if not self._dead:
                os.set_blocking(self._fd, True)
                try:
                    while self._queue:
                        frame = memoryview(self._queue[0])
                        while frame:
                            frame = frame[os.write(self._fd, frame):]
                        self._queue.popleft()
                except OSError as e:
                    self._gone(e)
        try:
            self._proc.stdin.close()
        except OSError:
            pass
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
