"""Per-user state and the reward join, as pure logic (no I/O).

A user's state is a function of the *set* of their events, not of arrival order:

* ``history``: engaged items (clicks, purchases, organic or not) sorted by (ts, event_id);
  the exposed state is its last ``history_len`` entries.
* ``counts``: events per type.
* ``interest``: a time-decayed mean of the text embeddings of the exposed history.
* the reward join: a click/purchase joins the latest view of the same item with
  ``view.ts <= ts <= view.ts + window``; a view's reward is the largest weight among the view
  itself and its joined engagements. Engagements are resolved once the partition watermark has
  passed their ts (every view that could match has arrived); a view is closed when the
  watermark passes ``view.ts + window``, or early once it holds the largest possible reward.
  Early-emitted views stay (marked) until their window ends, so later engagements still find
  them instead of an older view.

The processor feeds events with :meth:`UserState.apply` and watermarks with
:meth:`UserState.advance`; both are deterministic, so a crash-and-replay gives the same result.
"""

from __future__ import annotations

import struct
from bisect import insort
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamrl.schema import Event, transition_record

TYPE_RANK = {"view": 0, "click": 1, "purchase": 2}

# pending view fields (a list, so it serialises compactly and mutates in place)
PV_TS, PV_EID, PV_ITEM, PV_PROP, PV_VER, PV_REQ, PV_POS, PV_REWARD, PV_ENG, PV_EMITTED = range(10)


@dataclass(frozen=True)
class JoinRules:
    """The parameters of the reward join and the state (from Settings)."""

    window_ms: int
    weights: dict[str, float]
    history_len: int
    half_life_ms: float
    dedupe_window_ms: int

    @property
    def max_weight(self) -> float:
        return max(self.weights.values())

    @classmethod
    def from_settings(cls, s: Any) -> "JoinRules":
        return cls(s.attribution_window_ms, s.reward_weights, s.history_len,
                   float(s.interest_half_life_ms), s.dedupe_window_ms)


def transition_id(view_event_id: str) -> str:
    """Deterministic transition id: one transition per view.

    >>> transition_id("e42")
    'tv:e42'
    """
    return "tv:" + view_event_id


def decayed_mean(vectors: np.ndarray, ts: np.ndarray, half_life_ms: float) -> np.ndarray:
    """Mean of ``vectors`` weighted by ``0.5 ** ((max(ts) - ts) / half_life_ms)``.

    >>> decayed_mean(np.array([[1., 0.], [0., 1.]]), np.array([0, 10]), 10.).round(3).tolist()
    [0.333, 0.667]
    """
    w = np.power(0.5, (ts.max() - ts) / half_life_ms)
    return (w @ vectors) / w.sum()


@dataclass
class UserState:
    """One user's state, pending joins and recently seen event ids."""

    user_id: str
    history: list[tuple[int, str, str, str]] = field(default_factory=list)  # (ts, eid, item, type)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    pending_views: dict[str, list] = field(default_factory=dict)
    pending_eng: list[tuple[int, str, str, str]] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    organic: int = 0

    # --- applying events ------------------------------------------------------------------------
    def apply(self, ev: Event) -> bool:
        """Apply one event; False when its event_id was already applied (a duplicate)."""
        if ev.event_id in self.seen:
            return False
        self.seen[ev.event_id] = ev.ts
        t = ev.type
        self.counts[TYPE_RANK[t]] += 1
        if t == "view":
            self.pending_views[ev.event_id] = [ev.ts, ev.event_id, ev.item_id, ev.propensity,
                                               ev.policy_version, ev.request_id, ev.position,
                                               None, None, False]
        else:
            entry = (ev.ts, ev.event_id, ev.item_id, t)
            h = self.history
            if not h or entry >= h[-1]:
                h.append(entry)
            else:
                insort(h, entry)
            self.pending_eng.append(entry)
        return True

    def deadline(self, window_ms: int) -> int | None:
        """Earliest watermark at which :meth:`advance` has work for this user."""
        d = None
        if self.pending_eng:
            d = min(e[0] for e in self.pending_eng)
        if self.pending_views:
            dv = min(v[PV_TS] for v in self.pending_views.values()) + window_ms
            d = dv if d is None or dv < d else d
        return d

    def advance(self, wm: int, rules: JoinRules) -> list[dict[str, Any]]:
        """Resolve engagements and close views up to watermark ``wm``; return transitions."""
        out: list[dict[str, Any]] = []
        if self.pending_eng:
            ready = sorted(e for e in self.pending_eng if e[0] <= wm)
            if ready:
                self.pending_eng = [e for e in self.pending_eng if e[0] > wm]
                for e in ready:
                    self._resolve(e, rules, out)
        if self.pending_views:
            closing = sorted((v for v in self.pending_views.values()
                              if v[PV_TS] + rules.window_ms <= wm), key=lambda v: (v[PV_TS], v[PV_EID]))
            for v in closing:
                del self.pending_views[v[PV_EID]]
                if not v[PV_EMITTED]:
                    out.append(self._transition(v, rules))
        return out

    def _resolve(self, e: tuple[int, str, str, str], rules: JoinRules, out: list) -> None:
        ts, _, item, etype = e
        best = None
        for v in self.pending_views.values():
            if v[PV_ITEM] == item and v[PV_TS] <= ts and ts - v[PV_TS] <= rules.window_ms:
                if best is None or (v[PV_TS], v[PV_EID]) > (best[PV_TS], best[PV_EID]):
                    best = v
        if best is None:
            self.organic += 1
            return
        cur = best[PV_ENG]
        if cur is None or (rules.weights[etype], TYPE_RANK[etype]) > (rules.weights[cur], TYPE_RANK[cur]):
            best[PV_ENG] = etype
        if not best[PV_EMITTED] and self._reward(best, rules) >= rules.max_weight:
            best[PV_EMITTED] = True
            out.append(self._transition(best, rules))

    @staticmethod
    def _reward(v: list, rules: JoinRules) -> float:
        r = rules.weights["view"]
        if v[PV_ENG] is not None:
            r = max(r, rules.weights[v[PV_ENG]])
        return r

    def _transition(self, v: list, rules: JoinRules) -> dict[str, Any]:
        vts = v[PV_TS]
        n = rules.history_len
        before = [h[2] for h in self.history if h[0] < vts][-n:]
        after = (before + [v[PV_ITEM]])[-n:] if v[PV_ENG] is not None else before
        return transition_record(
            tid=transition_id(v[PV_EID]), user_id=self.user_id, state=before, action=v[PV_ITEM],
            reward=self._reward(v, rules), next_state=after, ts=vts, propensity=v[PV_PROP],
            policy_version=v[PV_VER], request_id=v[PV_REQ], position=v[PV_POS], engagement=v[PV_ENG])

    # --- housekeeping ---------------------------------------------------------------------------
    def prune(self, wm: int, rules: JoinRules) -> None:
        """Drop what no future computation needs: old history, old dedupe ids."""
        n = rules.history_len
        if len(self.history) > n:
            # a view still open, or one yet to arrive (ts >= wm), needs the n items before it
            t0 = min([v[PV_TS] for v in self.pending_views.values() if not v[PV_EMITTED]], default=wm)
            t0 = min(t0, wm)
            keep_from = sum(1 for h in self.history if h[0] < t0) - n
            keep_from = min(keep_from, len(self.history) - n)
            if keep_from > 0:
                del self.history[:keep_from]
        if self.seen and wm > -(1 << 62):
            horizon = wm - rules.dedupe_window_ms
            if min(self.seen.values()) < horizon:
                self.seen = {k: t for k, t in self.seen.items() if t >= horizon}

    def recent(self, n: int) -> list[tuple[int, str, str, str]]:
        return self.history[-n:]

    def interest(self, n: int, half_life_ms: float, lookup) -> np.ndarray | None:
        """Decayed mean of the text embeddings of the last ``n`` engaged items (None: none known)."""
        rows, ts = [], []
        for h in self.history[-n:]:
            vec = lookup(h[2])
            if vec is not None:
                rows.append(vec)
                ts.append(h[0])
        if not rows:
            return None
        return decayed_mean(np.asarray(rows, dtype=np.float64), np.asarray(ts, dtype=np.float64),
                            half_life_ms).astype(np.float32)

    # --- serialisation --------------------------------------------------------------------------
    def encode(self, interest: np.ndarray | None) -> bytes:
        """``uint32 json length | json | float32 interest vector (may be empty)``."""
        doc = orjson.dumps({"v": 1, "h": self.history, "c": self.counts,
                            "pv": list(self.pending_views.values()), "pe": self.pending_eng,
                            "s": self.seen, "o": self.organic})
        vec = b"" if interest is None else interest.astype(np.float32).tobytes()
        return struct.pack("<I", len(doc)) + doc + vec

    @classmethod
    def decode(cls, user_id: str, blob: bytes) -> "UserState":
        doc, _ = split_record(blob)
        return cls(user_id=user_id, history=[tuple(h) for h in doc["h"]], counts=doc["c"],
                   pending_views={v[PV_EID]: v for v in doc["pv"]},
                   pending_eng=[tuple(e) for e in doc["pe"]], seen=doc["s"], organic=doc.get("o", 0))


def split_record(blob: bytes) -> tuple[dict, np.ndarray | None]:
    """Decode a stored user record into its JSON document and interest vector."""
    (n,) = struct.unpack_from("<I", blob)
    doc = orjson.loads(blob[4:4 + n])
    if doc.get("v") != 1:
        raise ValueError(f"unknown user record version {doc.get('v')!r}")
    rest = blob[4 + n:]
    return doc, (np.frombuffer(rest, dtype=np.float32).copy() if rest else None)


@dataclass
class UserView:
    """What other components read of a user: the public part of the stored state."""

    user_id: str
    recent: list[tuple[int, str, str]]  # (ts, item_id, type), oldest first
    counts: dict[str, int]
    interest: np.ndarray | None

    @classmethod
    def from_record(cls, user_id: str, blob: bytes, history_len: int) -> "UserView":
        doc, vec = split_record(blob)
        recent = [(h[0], h[2], h[3]) for h in doc["h"][-history_len:]]
        return cls(user_id, recent, dict(zip(("view", "click", "purchase"), doc["c"])), vec)
