"""The ranker's fast feedback layer: :class:`~streamrl.serving.feedback_model.FeedbackModel`
learned in a child process, read by the ranker.

The model's matrix ``D`` and position effects live in a shared memory-mapped file
(:func:`shared_state`); the child (``python -m streamrl.serving.feedback``) learns from the
``transitions`` topic or, with the session source, from the slates the ranker joined to each
user's next request (:mod:`streamrl.serving.session`), and writes ``D`` after each read; the
serving process only reads it (a per-view Python loop in the serving process held the GIL every
request needs). Undecodable messages and records that are not transitions are counted and
skipped. What the model is and why: :mod:`streamrl.serving.feedback_model`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamrl import metrics as M
from streamrl.catalog import ItemEmbeddings
from streamrl.config import Settings
from streamrl.serving.feedback_model import POSITIONS, FeedbackModel
from streamrl.serving.session import SessionJoin, joined_views

log = logging.getLogger(__name__)

#: Seconds between the ranker's writes of joined slates to the learning child (session source).
SEND_EVERY_S = 0.05


class FeedbackLayer:
    """The ranker's side: a :class:`FeedbackModel` whose matrix a child process keeps learning.

    Applying transitions is a Python loop per view; in the serving process it would hold the GIL
    that every request needs (a closed-loop demo ran at half its event rate). The child
    (``python -m streamrl.serving.feedback DIR``) learns from its source and writes ``D``,
    ``beta`` and its counters into a shared memory-mapped file after every read; the ranker reads
    the matrix from there for each request (a torn read mixes two consecutive updates:
    harmless). With ``serve_feedback_source=transitions`` the child reads the ``transitions``
    topic from its end; with ``session`` the ranker joins slates to the next request's
    ``recent`` (:attr:`session`, a :class:`SessionJoin`) and hands each batch's joined views to
    the child's stdin with :meth:`send`, a non-blocking write: what the pipe cannot take is
    dropped and counted (``dropped``), serving never waits. The child exits when the ranker
    closes the layer or dies.
    """

    def __init__(self, settings: Settings, text: ItemEmbeddings) -> None:
        import json
        import subprocess
        import sys
        import tempfile

        self.model = FeedbackModel.from_settings(text, settings)
        self.dir = Path(tempfile.mkdtemp(prefix="streamrl-feedback-"))
        np.save(self.dir / "vectors.npy", self.model.vectors)
        (self.dir / "items.json").write_text(json.dumps(text.item_ids))
        self.shared = shared_state(self.dir, self.model.dim, create=True)
        self.shared[split_at(self.model.dim)] = np.nan    # no split until the child has one
        self._counted = np.zeros(3)
        self.session: SessionJoin | None = None
        self.dropped = 0
        self._pending, self._outbox, self._sent_at = b"", [], 0.0
        if settings.serve_feedback_source == "session":
            self.session = SessionJoin(settings.reward_click, settings.reward_purchase)
        env = {**os.environ, **settings.to_env(), "STREAMRL_FEEDBACK_PARENT": str(os.getpid())}
        self._proc = subprocess.Popen([sys.executable, "-m", "streamrl.serving.feedback", str(self.dir)], env=env,
                                      stdin=subprocess.PIPE if self.session is not None else None,
                                      start_new_session=True)   # stopped by close(), not by the server's Ctrl-C
        if self.session is not None:
            from streamrl.serving.decisions import nonblocking_pipe

            self._fd = nonblocking_pipe(self._proc.stdin.fileno())

    def send(self, slates: list[tuple]) -> None:
        """Hand joined slate records (session source) to the learning child, in one frame every
        :data:`SEND_EVERY_S` (fewer writes and wake-ups of the child); never waits: what the pipe
        cannot take is dropped (once the rest of a partly written frame is through)."""
        import struct

        import orjson

        if self.session is None:
            return
        self._outbox += slates
        now = time.monotonic()
        if self._pending:                                # the rest of a partly written frame first
            self._pending = self._pending[self._write(self._pending):]
        if not self._outbox or now - self._sent_at < SEND_EVERY_S:
            return
        views = sum(len(r[1]) for r in self._outbox)
        if self._pending:
            self._drop(views)
        else:
            body = orjson.dumps({"t": time.time(), "slates": self._outbox})
            frame = struct.pack("<I", len(body)) + body
            n = self._write(frame)
            if n == 0:
                self._drop(views)
            self._pending = frame[n:] if n else b""
        self._outbox, self._sent_at = [], now

    def _write(self, data: bytes) -> int:
        """Bytes of ``data`` the pipe took now (0: full, or the child is gone)."""
        try:
            return os.write(self._fd, data)
        except OSError:                                  # BlockingIOError: full; else the child is gone
            return 0

    def _drop(self, n: int) -> None:
        self.dropped += n
        M.SERVING_FEEDBACK.labels("dropped").inc(n)

    def _matrix(self) -> np.ndarray:
        """The child's current ``D``: a view of the shared file (no copy per request)."""
        d = self.model.dim
        return self.shared[:2 * d * d].reshape(2 * d, d)

    def _split_ts(self) -> float | None:
        """The child's :attr:`FeedbackModel.split_ts` (NaN in the file: None)."""
        x = float(self.shared[split_at(self.model.dim)])
        return None if math.isnan(x) else x

    def correction(self, history: list[str] | None, candidates: list[str],
                   times: list | None = None) -> np.ndarray | None:
        """The model's correction with the child's matrix and split; None while the matrix is zero
        (the layer is off between falls of engagement: most of the time), without building a
        context. ``times``: the history's event times (see :meth:`FeedbackModel.context`)."""
        D = self._matrix()
        if not D.any():
            return None
        self.model.split_ts = self._split_ts()
        return self.model.correction(history, candidates, times, D)

    def diversify(self, scores: np.ndarray, candidates: list[str], times: list | None, k: int) -> np.ndarray:
        """:meth:`FeedbackModel.diversify` with the child's split."""
        self.model.split_ts = self._split_ts()
        return self.model.diversify(scores, candidates, times, k)

    def sync_metrics(self) -> None:
        """Carry the child's counters and the matrix norm into this process's metrics."""
        counts = np.array(self.shared[-3:])
        for outcome, delta in zip(("applied", "skipped", "malformed"), counts - self._counted):
            if delta > 0:
                M.SERVING_FEEDBACK.labels(outcome).inc(delta)
        self._counted = counts
        M.SERVING_FEEDBACK_NORM.set(float(np.linalg.norm(self._matrix())))
        M.SERVING_FEEDBACK_LAG.set(float(self.shared[-4]))

    def describe(self) -> dict[str, Any]:
        out = self.model.describe()
        out["source"] = "session" if self.session is not None else "transitions"
        out["norm"] = round(float(np.linalg.norm(self._matrix())), 4)
        out["split_ts"] = self._split_ts()
        out["transitions"] = int(self.shared[-3])
        out["lag_s"] = round(float(self.shared[-4]), 3)
        out["learning"] = self._proc.poll() is None
        if self.session is not None:
            out["session_users"], out["dropped"] = len(self.session), self.dropped
        return out

    def close(self, timeout_s: float = 5.0) -> None:
        import shutil
        import subprocess

        if self.session is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def split_at(dim: int) -> int:
    """Where ``split_ts`` lies in the shared file of a model of ``dim`` (after ``D`` and ``beta``)."""
    return 2 * dim * dim + POSITIONS


def shared_state(directory: Path, dim: int, create: bool = False) -> np.ndarray:
    """The shared file: ``D`` (2*dim*dim), ``beta`` (POSITIONS), ``split_ts`` (NaN: None), the lag
    (seconds from a message's Kafka timestamp to its application, last poll), counters
    applied/skipped/malformed."""
    size = split_at(dim) + 5
    return np.lib.format.open_memmap(directory / "state.npy", mode="w+" if create else "r+",
                                     dtype=np.float64, shape=(size,) if create else None)


def _transitions(settings: Settings, stop: list):
    """The transitions source of the learning child: per poll, ``[(batch or error, Kafka
    timestamp, where)]`` of the ``transitions`` topic from its end; ``[]`` on a quiet poll."""
    from kafka import TopicPartition

    from streamrl.kafka import make_consumer
    from streamrl.schema import decode_transitions

    topic = settings.topic("transitions")
    consumer = make_consumer(settings, group_id=None, auto_offset_reset="latest")
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or range(settings.partitions))]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)                           # what happens from now on, not the topic's history
    try:
        while not stop[0]:
            try:
                polled = consumer.poll(timeout_ms=100)
            except Exception as e:  # broker trouble: the ranker keeps the matrix as it is; retry
                log.warning("poll failed (%s); retrying", e)
                time.sleep(1.0)
                continue
            out = []
            for records in polled.values():
                for rec in records:
                    try:
                        batch = decode_transitions(rec.value)
                    except (ValueError, TypeError, KeyError, AttributeError) as e:
                        batch = e
                    out.append((batch, rec.timestamp / 1000.0, f"partition {rec.partition} offset {rec.offset}"))
            yield out
    finally:
        consumer.close()


def _session_frames(stop: list):
    """The session source of the learning child: per read of stdin, ``[(views or error, the
    ranker's send time, where)]`` of the frames :meth:`FeedbackLayer.send` wrote; ends with stdin."""
    import select
    import struct
    import sys

    import orjson

    fd, buf, n = sys.stdin.buffer.fileno(), b"", 0
    while not stop[0]:
        if not select.select([fd], [], [], 0.1)[0]:
            yield []
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:                                    # the ranker closed the pipe (or died)
            return
        buf += chunk
        out, at = [], 0
        while len(buf) - at >= 4:
            end = at + 4 + struct.unpack_from("<I", buf, at)[0]
            if len(buf) < end:                           # the rest of this frame comes with the next read
                break
            body, at = buf[at + 4:end], end
            n += 1
            try:
                doc = orjson.loads(body)
                out.append((joined_views(doc["slates"]), float(doc["t"]), f"frame {n}"))
            except (ValueError, TypeError, KeyError) as e:
                out.append((e, time.time(), f"frame {n}"))
        buf = buf[at:]
        yield out


def main() -> None:
    """The learning child of :class:`FeedbackLayer`: its source → model → shared file."""
    import json
    import signal
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s feedback: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    directory = Path(sys.argv[1])
    settings = Settings.from_env()
    parent = int(os.environ.get("STREAMRL_FEEDBACK_PARENT", os.getppid()))
    ids = json.loads((directory / "items.json").read_text())
    vectors = np.load(directory / "vectors.npy")
    model = FeedbackModel.from_settings(ItemEmbeddings(ids, vectors), settings, project=False)
    shared = shared_state(directory, model.dim)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    session = settings.serve_feedback_source == "session"
    source = _session_frames(stop) if session else _transitions(settings, stop)
    what = "joined views" if session else "transitions"
    counts, lag = np.zeros(3), 0.0
    d2 = 2 * model.dim * model.dim
    last_log, lags = time.monotonic(), []
    for messages in source:
        if os.getppid() != parent:
            break
        for batch, sent, where in messages:
            if not isinstance(batch, list):
                counts[2] += 1
                log.warning("undecodable %s message at %s: %s", what, where,
                            batch if isinstance(batch, Exception) else "not a list")
                continue
            n = model.update(batch)
            counts[0] += n
            counts[1] += len(batch) - n
            lag = max(0.0, time.time() - sent)
        if messages:
            shared[:d2] = model.D.ravel()
            shared[d2:d2 + POSITIONS] = model.beta
            shared[split_at(model.dim)] = np.nan if model.split_ts is None else model.split_ts
            shared[-4] = lag
            shared[-3:] = counts
            lags.append(lag)
        if time.monotonic() - last_log >= 10 and lags:
            log.info("%d %s applied (%d skipped, %d malformed messages); lag p50 %.2f s, max %.2f s; "
                     "D norm %.3f", counts[0], what, counts[1], counts[2],
                     float(np.median(lags)), max(lags), float(np.linalg.norm(model.D)))
            last_log, lags = time.monotonic(), []
    source.close()


if __name__ == "__main__":
    main()
