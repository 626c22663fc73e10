"""Runtime of one event partition: offsets, event-time watermark and join timers.

Event topics are co-partitioned by user_id, so partition ``p`` of ``events.view``,
``events.click`` and ``events.purchase`` together hold every event of a set of users; the
processor owns the three as one unit.

The watermark of ``p`` is the minimum, over its three topic-partitions, of the largest event
time read there, minus one (more events at that very ms may follow), minus the allowed lateness. A topic-partition that is caught up and has had
no record for ``idle_timeout_ms`` stops holding the watermark back; when all three are idle the
watermark advances with the wall clock from the last event time seen, so a quiet partition
still closes its windows.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field

from streamrl.schema import EVENT_TYPES

NEG_INF = -(1 << 62)
POS_INF = 1 << 62


@dataclass
class PartitionRuntime:
    partition: int
    epoch: int
    offsets: dict[str, int] = field(default_factory=dict)     # type -> next offset to apply
    max_ts: dict[str, int] = field(default_factory=dict)      # type -> largest event ts read
    last_record_wall: dict[str, float] = field(default_factory=dict)
    caught_up: dict[str, bool] = field(default_factory=dict)
    watermark: int = NEG_INF
    timers: list[tuple[int, str]] = field(default_factory=list)  # heap of (deadline, user_id)
    scheduled: dict[str, int] = field(default_factory=dict)      # user_id -> live deadline
    timer_changes: dict[str, int | None] = field(default_factory=dict)

    # --- persistence ------------------------------------------------------------------------
    def meta(self) -> bytes:
        return json.dumps({"v": 1, "offsets": self.offsets, "max_ts": self.max_ts}).encode()

    @classmethod
    def restore(cls, partition: int, epoch: int, meta: bytes | None, timers: dict[str, int]) -> "PartitionRuntime":
        rt = cls(partition, epoch)
        if meta:
            doc = json.loads(meta)
            rt.offsets = {k: int(v) for k, v in doc["offsets"].items()}
            rt.max_ts = {k: int(v) for k, v in doc["max_ts"].items()}
        now = time.monotonic()
        rt.last_record_wall = {t: now for t in EVENT_TYPES}
        rt.scheduled = dict(timers)
        rt.timers = [(d, u) for u, d in timers.items()]
        heapq.heapify(rt.timers)
        return rt

    # --- timers -------------------------------------------------------------------------------
    def schedule(self, user_id: str, deadline: int | None) -> None:
        if self.scheduled.get(user_id) == deadline:
            return
        if deadline is None:
            self.scheduled.pop(user_id, None)
        else:
            self.scheduled[user_id] = deadline
            heapq.heappush(self.timers, (deadline, user_id))
        self.timer_changes[user_id] = deadline

    def due(self, wm: int) -> list[str]:
        """Users whose live deadline is at or below ``wm`` (stale heap entries are skipped)."""
        out = []
        heap = self.timers
        while heap and heap[0][0] <= wm:
            d, u = heapq.heappop(heap)
            if self.scheduled.get(u) == d:
                del self.scheduled[u]
                out.append(u)
        return out

    # --- watermark ----------------------------------------------------------------------------
    def record(self, etype: str, ts: int | None, now: float) -> None:
        self.last_record_wall[etype] = now
        self.caught_up[etype] = False
        if ts is not None and ts > self.max_ts.get(etype, NEG_INF):
            self.max_ts[etype] = ts

    def compute_watermark(self, now: float, idle_timeout_s: float, lateness_ms: int) -> int:
        """The partition's watermark now (never moves backwards)."""
        active, idle_since = [], []
        for t in EVENT_TYPES:
            quiet = now - self.last_record_wall.get(t, now)
            if self.caught_up.get(t, False) and quiet >= idle_timeout_s:
                idle_since.append(quiet)
            else:
                active.append(self.max_ts.get(t, NEG_INF))
        if active:
            wm = min(active)
        elif self.max_ts:
            # everything quiet: let event time follow the wall clock from the newest event
            wm = max(self.max_ts.values()) + int(1000 * (min(idle_since) - idle_timeout_s))
        else:
            wm = NEG_INF
        if wm > NEG_INF:
            # events at exactly max_ts may still follow on that topic-partition: complete below it
            wm -= lateness_ms + 1
        if wm > self.watermark:
            self.watermark = wm
        return self.watermark
