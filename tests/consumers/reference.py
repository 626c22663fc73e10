"""A pure-Python reference of the processor's semantics, written from the contract, not the code.

Given the whole log at once (end of stream), compute every user's state and the multiset of
transitions by definition:

* events are deduplicated by event_id;
* a click/purchase joins the latest view (by ts, then event_id) of the same user and item with
  view.ts <= ts <= view.ts + window;
* a view's reward is the max of the view weight and its joined engagements' weights; its
  engagement label is the strongest joined type;
* state = last N engaged items with ts < view.ts; next_state = state + action if engaged;
* user state: last N engaged items, counts per type, decayed-mean interest.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

RANK = {"view": 0, "click": 1, "purchase": 2}


def reference(events, window_ms, weights, n, half_life_ms, lookup=lambda item: None):
    seen, by_user = set(), defaultdict(list)
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        by_user[e.user_id].append(e)
    users, transitions = {}, []
    for uid, evs in by_user.items():
        evs.sort(key=lambda e: (e.ts, e.event_id))
        views = [e for e in evs if e.type == "view"]
        engaged = [e for e in evs if e.type != "view"]
        best: dict[str, str] = {}
        for e in engaged:
            cands = [v for v in views if v.item_id == e.item_id and v.ts <= e.ts <= v.ts + window_ms]
            if not cands:
                continue
            v = max(cands, key=lambda v: (v.ts, v.event_id))
            cur = best.get(v.event_id)
            if cur is None or (weights[e.type], RANK[e.type]) > (weights[cur], RANK[cur]):
                best[v.event_id] = e.type
        for v in views:
            eng = best.get(v.event_id)
            reward = max(weights["view"], weights[eng]) if eng else weights["view"]
            state = [h.item_id for h in engaged if h.ts < v.ts][-n:]
            nxt = (state + [v.item_id])[-n:] if eng else state
            transitions.append({"id": "tv:" + v.event_id, "user_id": uid, "state": state,
                                "action": v.item_id, "reward": reward, "next_state": nxt, "ts": v.ts,
                                "propensity": v.propensity, "policy_version": v.policy_version,
                                "request_id": v.request_id, "position": v.position, "engagement": eng})
        recent = engaged[-n:]
        vecs = [(lookup(h.item_id), h.ts) for h in recent]
        vecs = [(vec, ts) for vec, ts in vecs if vec is not None]
        interest = None
        if vecs:
            ts = np.array([t for _, t in vecs], dtype=np.float64)
            w = np.power(0.5, (ts.max() - ts) / half_life_ms)
            interest = ((w @ np.array([v for v, _ in vecs], dtype=np.float64)) / w.sum()).astype(np.float32)
        users[uid] = {"recent": [(h.ts, h.item_id, h.type) for h in recent],
                      "counts": {t: sum(1 for e in evs if e.type == t) for t in RANK},
                      "interest": interest}
    return users, transitions
