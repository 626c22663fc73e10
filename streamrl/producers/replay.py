"""Replay an event log in event-time order, as fast as possible or at N× real time.

Two formats, detected from the extension or the first line:

- ``jsonl``: the project's own log, one event object per line (the event contract; what
  ``streamrl simulate --out`` writes). Each line is validated with :func:`streamrl.schema.parse_event`.
- ``retailrocket``: ``timestamp,visitorid,event,itemid,transactionid`` (the RetailRocket dataset):
  view → view, addtocart → click, transaction → purchase; ``event_id`` is ``rr-<line number>``;
  no ``value``.

Logs need not be sorted (RetailRocket's are not). Replay makes two passes: an index pass reads
every line, counts unreadable ones by reason (never raising) and keeps only (ts, byte range) of
the good ones; a stable sort by ts gives (ts, file order); the replay pass re-reads the good
lines in that order through ``mmap``. Memory stays ~40 bytes per event whatever the file size.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
import time
from array import array
from collections import Counter
from typing import Any, Iterator

import numpy as np

from streamrl import metrics
from streamrl.config import Settings
from streamrl.errors import InvalidEvent
from streamrl.schema import EVENT_TYPES, Event, parse_event

log = logging.getLogger(__name__)

RR_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
RR_TYPES = {b"view": "view", b"addtocart": "click", b"transaction": "purchase"}
_JSONL_EXT = (".jsonl", ".ndjson", ".json")
_MAX_LOGGED = 10


def detect_format(path: str | os.PathLike) -> str:
    """``jsonl`` or ``retailrocket``, from the extension, else from the first non-blank line."""
    name = str(path).lower()
    if name.endswith(_JSONL_EXT):
        return "jsonl"
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return sniff_format(line)
    return "jsonl" if not name.endswith(".csv") else "retailrocket"


def sniff_format(first_line: bytes) -> str:
    """Format of a log from its first non-blank line.

    >>> sniff_format(b'{"event_id": "e1"}')
    'jsonl'
    >>> sniff_format(b"timestamp,visitorid,event,itemid,transactionid")
    'retailrocket'
    """
    text = first_line.lstrip(b"\xef\xbb\xbf").strip()
    if text.startswith(b"{"):
        return "jsonl"
    if set(RR_COLUMNS) <= set(text.decode("utf-8", "replace").split(",")):
        return "retailrocket"
    raise ValueError(f"unknown log format (first line {text[:80]!r}): expected JSONL events or a "
                     f"RetailRocket CSV header {','.join(RR_COLUMNS)}")


class LogReplayer:
    """Reads a log once to index it, then yields its events sorted by (ts, file order).

    ``skipped`` counts unreadable lines by reason (also metric ``streamrl_producer_skipped_lines_total``).
    Limits match the processor's (``max_event_bytes``, ``max_id_bytes``, ``max_future_ms``).
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, *, max_event_bytes: int = 64 * 1024,
                 max_id_bytes: int = 256, max_future_ms: int = 24 * 3600 * 1000) -> None:
        self.path = str(path)
        self.format = fmt or detect_format(path)
        if self.format not in ("jsonl", "retailrocket"):
            raise ValueError(f"unknown format {self.format!r} (jsonl, retailrocket)")
        self.limits = {"max_bytes": max_event_bytes, "max_id_bytes": max_id_bytes, "max_future_ms": max_future_ms}
        self.now_ms = int(time.time() * 1000)  # fixed, so both passes judge a line alike
        self.skipped: Counter[str] = Counter()
        self.lines = 0
        self._order: np.ndarray | None = None
        self._columns: dict[str, int] = {}

    # --- parsing one line -------------------------------------------------------------------
    def _parse(self, line: bytes, line_no: int) -> Event:
        """The event on one line; raises InvalidEvent with a bounded reason."""
        if self.format == "jsonl":
            return parse_event(line, None, None, now_ms=self.now_ms, check_key=False, **self.limits)
        return self._parse_rr(line, line_no)

    def _parse_rr(self, line: bytes, line_no: int) -> Event:
        fields = line.split(b",")
        cols = self._columns
        if len(fields) != len(cols):
            raise InvalidEvent("csv_field_count", f"{len(fields)} fields, header has {len(cols)}")
        etype = RR_TYPES.get(fields[cols["event"]].strip())
        if etype is None:
            raise InvalidEvent("csv_unknown_event", fields[cols["event"]][:40].decode("utf-8", "replace"))
        try:
            ts = int(fields[cols["timestamp"]])
            user = fields[cols["visitorid"]].strip().decode()
            item = fields[cols["itemid"]].strip().decode()
        except ValueError:  # int() of a non-number or UnicodeDecodeError
            raise InvalidEvent("csv_bad_value", line[:80].decode("utf-8", "replace")) from None
        if not user or not item:
            raise InvalidEvent("empty_id", "visitorid" if not user else "itemid")
        if ts < 0:
            raise InvalidEvent("ts_negative", str(ts))
        if ts > self.now_ms + self.limits["max_future_ms"]:
            raise InvalidEvent("ts_future", str(ts))
        for name, v in (("user_id", user), ("item_id", item)):
            if len(v.encode()) > self.limits["max_id_bytes"]:
                raise InvalidEvent(f"id_too_long:{name}", str(len(v.encode())))
        return Event(f"rr-{line_no}", etype, user, item, ts)

    def _read_header(self, line: bytes) -> None:
        names = [c.strip() for c in line.lstrip(b"\xef\xbb\xbf").decode("utf-8", "replace").split(",")]
        missing = [c for c in RR_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{self.path}: RetailRocket header lacks {missing} (got {names})")
        self._columns = {c: names.index(c) for c in names}

    # --- index pass -----------------------------------------------------------------------------
    def index(self) -> int:
        """Read every line; count bad ones; sort the good ones. Returns the number of events."""
        ts, start, length, line_nos = array("q"), array("q"), array("q"), array("q")
        offset = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                line = raw.rstrip(b"\r\n")
                pos, offset = offset, offset + len(raw)
                if self.format == "retailrocket" and not self._columns:
                    if line.strip():
                        self._read_header(line)
                    continue
                if not line.strip():
                    continue
                self.lines += 1
                try:
                    ev = self._parse(line, line_no)
                except InvalidEvent as e:
                    self._skip(e, line_no)
                    continue
                ts.append(ev.ts)
                start.append(pos)
                length.append(len(line))
                line_nos.append(line_no)
        self._ts = np.frombuffer(ts, dtype=np.int64) if ts else np.zeros(0, np.int64)
        self._start, self._length, self._line_nos = start, length, line_nos
        self._order = np.argsort(self._ts, kind="stable")
        if self.skipped:
            log.warning("%s: %d of %d lines skipped: %s", self.path, sum(self.skipped.values()),
                        self.lines, dict(self.skipped))
        return len(self._order)

    def _skip(self, e: InvalidEvent, line_no: int) -> None:
        self.skipped[e.reason] += 1
        metrics.PRODUCER_SKIPPED.labels(e.reason).inc()
        if sum(self.skipped.values()) <= _MAX_LOGGED:
            log.warning("%s:%d skipped: %s", self.path, line_no, e)

    # --- replay pass ------------------------------------------------------------------------------
    def events(self, speed: float | None = None, stop: threading.Event | None = None) -> Iterator[Event]:
        """Events sorted by (ts, file order); ``speed`` N paces them at N× event time (None: no pacing).

        ``stop`` (set from another thread or a signal handler) ends the replay early.
        """
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (None: as fast as possible)")
        if self._order is None:
            self.index()
        if not len(self._order):
            return
        ts0, wall0 = int(self._ts[self._order[0]]), time.monotonic()
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for k in self._order.tolist():
                if stop is not None and stop.is_set():
                    return
                s = self._start[k]
                ev = self._parse(mm[s:s + self._length[k]], self._line_nos[k])
                if speed is not None and not self._pace(wall0 + (ev.ts - ts0) / 1000.0 / speed, stop):
                    return
                yield ev

    @staticmethod
    def _pace(due: float, stop: threading.Event | None) -> bool:
        """Sleep until monotonic time ``due``; False when ``stop`` was set meanwhile."""
        delay = due - time.monotonic()
        if delay > 0.001:
            if stop is not None:
                return not stop.wait(delay)
            time.sleep(delay)
        return True


def run_replay(settings: Settings, path: str, speed: float | None = None, progress: bool = True,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """Replay the log at ``path`` into the event topics; return a summary (counts, skips, timing)."""
    from tqdm import tqdm

    from streamrl.kafka import ensure_topics
    from streamrl.producers.sink import EventSink

    replayer = LogReplayer(path, max_event_bytes=settings.max_event_bytes,
                           max_id_bytes=settings.max_id_bytes, max_future_ms=settings.max_future_ms)
    started = time.monotonic()
    total = replayer.index()
    log.info("%s: %d events (%s), %d lines skipped", path, total, replayer.format, sum(replayer.skipped.values()))
    ensure_topics(settings, ["events.view", "events.click", "events.purchase"])
    first = last = None
    with EventSink(settings) as sink, tqdm(total=total, file=sys.stderr, mininterval=1, unit="ev",
                                           disable=not progress, desc="replay") as bar:
        for ev in replayer.events(speed, stop):
            first = ev.ts if first is None else first
            last = ev.ts
            sink.send(ev)
            bar.update(1)
    seconds = time.monotonic() - started
    sent = sum(sink.counts.values())
    return {"events": sent, "by_type": {t: sink.counts[t] for t in EVENT_TYPES}, "format": replayer.format,
            "lines": replayer.lines, "skipped": dict(replayer.skipped), "first_ts": first, "last_ts": last,
            "seconds": round(seconds, 3), "speed": speed, "path": path,
            "topics": list(settings.event_topics.values())}
