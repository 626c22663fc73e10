"""The ranking logic behind ``POST /rank``: user state → scores → explored slate → decision.

:meth:`Ranker.rank` reads the current policy once, so a swap in the middle of a request never
mixes two versions. Swaps (:meth:`Ranker.offer`) rebuild the snapshot outside any lock and then
replace one reference: requests are never blocked.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import orjson

from streamrl import metrics as M
from streamrl.catalog import ItemEmbeddings
from streamrl.config import Settings
from streamrl.consumers.state import UserView
from streamrl.errors import SnapshotRejected, StreamrlError
from streamrl.producers.snapshot import REJECT_REASONS, Snapshot
from streamrl.serving.exceptions import BadRankRequest, InvalidCandidates, NotReady
from streamrl.serving.explore import sample_slate
from streamrl.serving.session import centred_scores
from streamrl.serving.policy import Policy, build_policy

log = logging.getLogger(__name__)

DECISION_FORMAT = 1


def merge_recent(stored: list[str] | None, recent: list[str] | None) -> list[str] | None:
    """The stored history followed by the client's recent items that it does not end with yet.

    The processor applies engagement within a commit interval; a session's next request can be
    faster than that. Items of ``recent`` already among the stored history's last ``len(recent)``
    entries are taken as applied.

    >>> merge_recent(["a", "b"], ["b", "c"])
    ['a', 'b', 'c']
    >>> merge_recent(None, ["c"]), merge_recent(["a"], None)
    (['c'], ['a'])
    """
    if not recent:
        return stored
    stored = stored or []
    tail = set(stored[-len(recent):])
    return stored + [i for i in recent if i not in tail]


class Ranker:
    """Holds the served policy, the state store and the decisions producer.

    ``store`` is a :class:`~streamrl.consumers.store.StateStore` (None: every user is a cold
    start); ``decisions`` a :class:`~streamrl.serving.decisions.DecisionLog` (None: decisions are not
    logged, counted as disabled); ``feedback`` a :class:`~streamrl.serving.feedback.FeedbackLayer`
    whose correction is added to the policy's scores (None: the policy's scores alone).
    """

    def __init__(self, settings: Settings, text: ItemEmbeddings | None = None, store=None, decisions=None,
                 seed: int | None = None, feedback=None) -> None:
        self.settings = settings
        self.text = text if text is not None else ItemEmbeddings.empty()
        self.store = store
        self.decisions = decisions
        self.feedback = feedback
        self.rng = np.random.default_rng(seed)
        self.policy: Policy | None = None
        self._swap_lock = threading.Lock()   # serialises swappers, never taken by requests
        for r in REJECT_REASONS:
            M.SNAPSHOT_REJECTED.labels(r)

    # --- policy swaps ------------------------------------------------------------------------
    @property
    def version(self) -> int:
        p = self.policy
        return -1 if p is None else p.version

    def offer(self, snap: Snapshot) -> bool:
        """Swap ``snap`` in when it is newer and rebuilds cleanly; else count the rejection and keep
        serving the current policy. Returns whether it was swapped in."""
        t0 = time.perf_counter()
        with self._swap_lock:
            try:
                if snap.version <= self.version:
                    raise SnapshotRejected("stale_version", f"not newer than served v{self.version}", snap.version)
                policy = build_policy(snap, self.text)
            except SnapshotRejected as e:
                M.SNAPSHOT_REJECTED.labels(e.reason).inc()
                log.warning("snapshot v%d rejected, still serving v%d: %s", snap.version, self.version, e)
                return False
            self.policy = policy            # the atomic swap: one reference assignment
        M.SERVING_SWAPS.inc()
        M.SERVING_SWAP_SECONDS.observe(time.perf_counter() - t0)
        M.SERVING_POLICY_VERSION.set(policy.version)
        log.info("serving policy v%d (%d items, swap %.0f ms)", policy.version, len(policy.index),
                 (time.perf_counter() - t0) * 1000)
        return True

    # --- ranking -----------------------------------------------------------------------------
    def history(self, user_id: str) -> tuple[list[str], list[int]] | None:
        """The user's recent engaged items (oldest first) and their event times (ms), or None for
        a user with no state."""
        if self.store is None:
            return None
        blob = self.store.get_user(user_id)
        if blob is None:
            return None
        try:
            view = UserView.from_record(user_id, blob, self.settings.history_len)
        except (ValueError, KeyError, TypeError, IndexError) as e:  # an unreadable record: serve as cold start
            log.warning("unreadable state of a user (%s): cold start", e)
            return None
        return [item for _, item, _ in view.recent], [ts for ts, _, _ in view.recent]

    def rank(self, user_id: str, candidates: list[str], k: int, recent: list[str] | None = None) -> dict[str, Any]:
        """Rank ``candidates`` for ``user_id`` and return the response document (see README);
        ``recent``: the client's session context (see :func:`merge_recent`)."""
        out = self.rank_many([(user_id, candidates, k, recent)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def rank_many(self, requests: list[tuple]) -> list[dict[str, Any] | StreamrlError]:
        """Rank several requests with one batched forward pass; a request that cannot be ranked
        gets its exception in its place (NotReady, BadRankRequest, InvalidCandidates)."""
        policy = self.policy
        if policy is None:
            return [NotReady("no verified policy loaded yet") for _ in requests]
        out: list[Any] = [None] * len(requests)
        todo = []
        join = self.feedback.session if self.feedback is not None else None
        joined: list[tuple] = []   # the users' previous slates, joined to these requests' ``recent``
        for n, (user_id, candidates, k, *ctx) in enumerate(requests):
            try:
                rows, known, unknown = self.lookup(policy, candidates)
            except (BadRankRequest, InvalidCandidates) as e:
                out[n] = e
                continue
            recent = ctx[0] if ctx else None
            stored, times = self.history(user_id) or (None, [])
            history = merge_recent(stored, recent)
            if history is not None:      # the recent items not stored yet: no event time known
                times = times + [None] * (len(history) - len(times))
            if join is not None:
                joined += join.outcomes(user_id, recent)
            todo.append((n, history, rows, known, unknown, recent, times))
        scored = [t for t in todo if len(t[3])]
        scores = []
        if scored:
            states = np.concatenate([policy.state(t[1] or []) for t in scored])
            scores = policy.score_many(states, [t[2][t[3]] for t in scored])
        by_request = {t[0]: sc for t, sc in zip(scored, scores)}
        policy_scores = dict(by_request)    # before the layer's correction: what the layer learns against
        if self.feedback is not None:
            for n, history, _, known, _, _, times in scored:
                names = [requests[n][1][j] for j in known.tolist()]
                corr = self.feedback.correction(history, names, times)
                if corr is not None:        # the layer corrects; a user with nothing since the fall: a diverse slate
                    corrected = by_request[n] + corr
                    by_request[n] = self.feedback.diversify(corrected, names, times, requests[n][2])
                    if by_request[n] is not corrected:
                        M.SERVING_DIVERSIFIED.inc()
        for n, history, _, known, unknown, recent, times in todo:
            user_id, candidates, k = requests[n][:3]
            out[n], picked = self._slate(policy, user_id, candidates, k, history, known, unknown, by_request.get(n))
            if join is not None:
                items = out[n]["items"]
                join.served(user_id, history, [it["item_id"] for it in items], recent,
                            centred_scores(policy_scores.get(n), picked, len(items)), times)
        if join is not None:
            self.feedback.send(joined)      # to the layer's learning child (a write every SEND_EVERY_S)
        if self.decisions is not None:
            self.decisions.flush()          # the batch's decisions to the producer child in one write
        return out

    def lookup(self, policy: Policy, candidates: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Model rows of ``candidates`` (-1: unknown), the indices of the known ones and of the others.

        Raises BadRankRequest for a repeated id and InvalidCandidates for an id that breaks the
        schema: ids the policy knows were checked at load (``policy.longest_id``), so only the
        unknown ones (usually few) are checked here.
        """
        limit = self.settings.max_id_bytes
        try:
            rows = policy.rows(candidates)
        except TypeError:                            # unhashable: not a string
            raise InvalidCandidates("a candidate is not a string") from None
        is_known = rows >= 0
        known = np.flatnonzero(is_known)
        unknown_at = np.flatnonzero(~is_known).tolist()
        unknown = [candidates[j] for j in unknown_at]
        checked = candidates if policy.longest_id > limit else unknown
        for c in checked:
            if type(c) is not str or not 0 < len(c) <= limit:
                raise InvalidCandidates("a candidate is not a string of 1 to max_id_bytes characters")
        if _repeats(rows[known], policy.scorer.vectors.shape[0]) or len(set(unknown)) != len(unknown):
            raise BadRankRequest("candidates contain duplicate item ids")
        return rows, known, unknown_at

    def _slate(self, policy: Policy, user_id: str, candidates: list[str], k: int, history: list[str] | None,
               known: np.ndarray, unknown: list[int], scores: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
        """Explore over the scored candidates, append the unscored ones, log the decision. Returns
        the response and the picked positions in ``scores`` (None without scores)."""
        s = self.settings
        cold = not history
        k = min(k, len(candidates))
        items: list[dict[str, Any]] = []
        picked = None
        if scores is not None:
            picked, props = sample_slate(scores, k, s.serve_exploration, self.rng, epsilon=s.serve_epsilon,
                                         temperature=s.serve_temperature, pool=s.serve_softmax_pool)
            for pos, (j, sc, p) in enumerate(zip(known[picked].tolist(), scores[picked].tolist(), props.tolist())):
                items.append({"item_id": candidates[j], "score": sc, "position": pos, "propensity": p,
                              "unscored": False})
        for j in unknown[:k - len(items)]:            # no id, no text: last, flagged, certain
            items.append({"item_id": candidates[j], "score": None, "position": len(items), "propensity": 1.0,
                          "unscored": True})
        M.SERVING_CANDIDATES.observe(len(candidates))
        if cold:
            M.SERVING_COLD_STARTS.inc()
        if len(unknown):
            M.SERVING_UNSCORED.inc(len(unknown))
        out = {"request_id": uuid.uuid4().hex, "policy_version": policy.version, "user_id": user_id,
               "cold_start": cold, "exploration": s.serve_exploration, "items": items}
        self.log_decision(out)
        return out, picked

    def log_decision(self, response: dict[str, Any]) -> None:
        """Queue what was served for ``ranking.decisions`` (never blocks; keyed by user_id; written
        to the producer child once per batch by :meth:`rank_many`)."""
        if self.decisions is None:
            M.SERVING_DECISIONS.labels("disabled").inc()
            return
        items = response["items"]
        record = {"v": DECISION_FORMAT, "request_id": response["request_id"], "user_id": response["user_id"],
                  "policy_version": response["policy_version"], "ts": int(time.time() * 1000),
                  "exploration": response["exploration"], "cold_start": response["cold_start"],
                  "items": [it["item_id"] for it in items], "propensities": [it["propensity"] for it in items],
                  "scores": [it["score"] for it in items]}
        self.decisions.log(response["user_id"].encode(), orjson.dumps(record))

    def close(self) -> None:
        if self.feedback is not None:
            self.feedback.close()
        if self.decisions is not None:
            self.decisions.close()
        if self.store is not None:
            self.store.close()




def _repeats(rows: np.ndarray, n_rows: int) -> bool:
    """Whether ``rows`` (each in ``0..n_rows-1``) has a repeated value.

    >>> _repeats(np.array([3, 1, 3]), 5), _repeats(np.array([3, 1, 4]), 5)
    (True, False)
    """
    if n_rows <= 64 * len(rows):                     # a bitmap of the table is cheaper than a sort
        seen = np.zeros(n_rows, dtype=np.bool_)
        seen[rows] = True
        return int(np.count_nonzero(seen)) != len(rows)
    s = np.sort(rows)
    return bool((s[1:] == s[:-1]).any())
