"""The fast feedback layer's model: a contextual click model that follows live transitions.

A served policy is the learner's Q-network as of its last snapshot; when users' interests move
(an interest drift), the Q-network needs new data, training and a publish to catch up, and
meanwhile it keeps ranking by the old mapping from a user's history to what they want next. This
layer adapts in the ranker itself, in the time the processor needs to emit a view's transition:

- **Space.** Items are their catalog text embeddings projected on the top ``dim`` principal
  axes of the catalog (fixed at start-up, so the model does not depend on snapshot versions;
  items the start-up catalog lacks get no correction). A user's context is the recency-weighted
  mean of their last ``context_len`` engaged items, unit length, in two halves (``2 * dim``): the
  items engaged before the current fall of engagement began and those since, by the items' event
  times (``state_ts``, the store's; an item of the request's ``recent`` not stored yet counts as
  since). Without times, or without a fall, the second half is zero.
- **Model.** ``P(engaged | context c, item g, position p) = sigmoid(beta_p + s / weight + c^T D g)``:
  ``beta`` the position effect, ``s`` the served policy's score of the item (less the mean over
  the request's candidates; 0 where the source does not carry it: the ``transitions`` topic) at
  the scale the ranker mixes it with the correction, ``D`` a ``2 dim x dim`` interaction matrix learned by SGD, one step per
  transition the processor emits (all rankers' traffic: the ``transitions`` topic) or, with the
  session source, per view the ranker joined to the user's next request
  (:class:`~streamrl.serving.session.SessionJoin`), with a decay toward zero per transition (a memory of ~``1 / decay`` transitions). An engaged transition's
  step on ``D`` is scaled by its reward in clicks (``reward / reward_unit``: a purchase 5, a click
  1), so ``D`` ranks by what an engagement is worth, as the policy does: as a plain click model
  it steered users to items that are clicked and not bought (clickbait), and a recovered
  policy slipped back (in-process, seed 1: purchases per 2k events fell from ~20 to 2-10).
- **When.** With ``hold`` > 0 (the service's default), the engagement rate of every transition
  is watched; when the recent rate (~2k transitions) falls 40% below the long-run one (~10k;
  :data:`FALL_SHARE`), or stays 40% below the long-run rate of the views before the last ~2k
  for :data:`PERSIST` transitions (a smaller fall pulls the first down with it; that earlier
  rate is held where it was while the recent rate slides below :data:`SLIDE_SHARE` of it, else
  the fall drags it down too), ``D`` starts
  from zero and learns for ``hold`` transitions, then is zero again. It starts with what it
  has missed: the transitions since the fall began (where the cumulative excess of engagement
  over the long-run rate peaked, in a backlog of the last :data:`BACKLOG`), and
  for its first :data:`REPLAY_FOR` transitions each new one also replays
  :data:`REPLAY_STEPS` random ones since the fall. The fall's start in event time (the latest
  history time the layer had seen at the change point: :attr:`FeedbackModel.split_ts`) splits
  contexts into the halves: after a drift a user who liked topic T before now wants T', and a
  user whose history caught up (items of T' engaged since) wants T' too, which one matrix over one
  context cannot both say (it learned a blend, and users with no item since the drift, most of
  a session's first requests, got ~0.45 of the best slate of their own request 8-24k events
  after a drift, those with 6 or more ~0.85; see ``bench/learning.py``'s ``same_request``
  figures). (At a fall of a fifth, demo runs on a fast
  machine had 1-3 false alarms before a drift, from the dips of new policy versions, and ``D``
  went into the drift holding a false alarm's matrix; a drift's fall is 60-75%.) A fall while
  it learns extends the time; it starts ``D`` over only if the rate fell below
  :data:`RESTART_BELOW` of the lowest rate since ``D`` started (a drift soon after a false
  alarm) or :data:`RESTART_AFTER` transitions after it started, not for the dips of a
  recovering policy. Off a drift the Q-network knows what
  ``D`` would learn, and a correction that restated it slowed the learner down (it changes
  what gets served).
- **Ranking.** The ranker adds ``weight * c^T D g`` to the policy's score of each candidate: it
  ranks by ``weight`` times the model's logit ``s / weight + c^T D g``. With the score in the model
  ``D`` learns the residual, what the policy gets wrong: after a drift it learns to take back the
  policy's old preference as well as the new one, and what the policy knows of items (quality)
  keeps its weight. (In-process, 16 seeds, drift at 200k: the learned/oracle ratio 12-20k events
  after the drift, over the one before, 0.989 against 0.833 with ``D`` a click model on its own;
  >= 0.9 on 10 seeds against 5.) The score's coefficient is fixed: a learned one (starting at
  ``1 / weight``, the correction divided by it) fell at the fall and then rose above its start
  within ~4-8k transitions, as the corrected slates served items the policy's score ranks well,
  which weighed the policy's score, old preference and all, back up against the correction;
  in-process, 16 seeds: 0.932 with it (>= 0.9 on 9, the lowest 0.605), 0.952 with it capped at its
  start, 0.960 fixed (>= 0.9 on 9, the lowest 0.688): no worse (paired +0.028, se 0.045) with one
  learned parameter fewer.
- **Diverse slates.** While ``D`` corrects, a user whose history has nothing since the fall
  (:meth:`FeedbackModel.stale`) gets a slate re-ordered by maximal marginal relevance in the
  layer's text space (:meth:`FeedbackModel.diversify`, strength ``serve_feedback_diversity``):
  the rows of ``D`` for rarer old topics learn slowly, and a diverse slate moves such users on.

After an interest drift, views of the items the old mapping favours stop being engaged and the
items users want now are; ``D`` learns that within a few thousand transitions, while the
learner gathers data, retrains and publishes. :class:`~streamrl.serving.feedback.FeedbackLayer`
runs the learning in a child process (the ranker only reads the matrix).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Iterable

import numpy as np

from streamrl.catalog import ItemEmbeddings
from streamrl.config import Settings
from streamrl.serving.explore import diversify

log = logging.getLogger(__name__)

#: Positions with their own engagement intercept; later ones share the last.
POSITIONS = 20
#: A fall of the engagement rate counts when the recent rate goes below this share of the long-run one.
FALL_SHARE = 0.6
#: Per-transition weights of the recent and the long-run engagement rate (averages over ~2k and ~10k).
RECENT_ALPHA, LONG_RUN_ALPHA = 1 / 2000, 1e-4
#: ... or when it stays below FALL_SHARE of the long-run rate before the last ~2k transitions for
#: this many transitions (a slower or smaller fall, which pulls the long-run rate down with it).
PERSIST = 1500
#: ... where that earlier rate is held once the recent rate slides below SLIDE_SHARE of it, until
#: the recent rate is back at 0.9 of it or for HOLD_REF_FOR transitions.
SLIDE_SHARE, HOLD_REF_FOR = 0.8, 20_000
#: A fall detected while D is on starts it over only below this share of the lowest engagement
#: rate since it started.
RESTART_BELOW = 0.8
#: ... or when it comes this many transitions after D started: a recovering policy's dips come
#: within the first ~10-20k transitions; a fall long after is news (a drift after a false alarm
#: whose dip set the lowest rate, in a demo run: D kept the false alarm's matrix through the drift).
RESTART_AFTER = 30_000
#: Latest transitions kept, so that a ``D`` started from zero learns at once from those since the
#: estimated start of the fall (the detector fires 1-2k transitions after it).
BACKLOG = 8000
#: For the first REPLAY_FOR transitions after ``D`` starts, each new transition also replays
#: REPLAY_STEPS random ones since the fall began: a few thousand transitions are all the new
#: world has shown yet (in-process, six seeds, transitions 3400 events late: the learned arm's
#: mean reward/oracle over the 20k events after a drift 0.674 of its pre-drift level without
#: replays, 0.687 with 1, 0.712-0.765 with 3; the comparison's noise is about +-0.05).
REPLAY_STEPS, REPLAY_FOR = 3, 20_000


class FeedbackModel:
    """The contextual engagement model (see the module docstring)."""

    def __init__(self, text: ItemEmbeddings, dim: int = 32, lr: float = 0.1, decay: float = 1e-4,
                 weight: float = 20.0, context_len: int = 10, recency: float = 0.85, project: bool = True,
                 hold: int = 0, reward_unit: float = 1.0, diversity: float = 0.0) -> None:
        if len(text) < 2:
            raise ValueError("the feedback layer needs the catalog's text embeddings (at least 2 items)")
        x = np.asarray(text.matrix, dtype=np.float64)
        if project:                                      # else: ``text`` holds projected unit vectors
            z = x - x.mean(0)
            _, _, vt = np.linalg.svd(z, full_matrices=False)
            z = z @ vt[:dim].T                           # the top ``dim`` principal axes
            x = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-9)
        self.dim = x.shape[1]
        self.text = text
        self.vectors = x                                 # (n_items, dim), unit rows
        if reward_unit <= 0:
            raise ValueError("reward_unit must be > 0")
        if weight <= 0:
            raise ValueError("weight must be > 0")
        if diversity < 0:
            raise ValueError("diversity must be >= 0")
        self.lr, self.decay, self.weight, self.reward_unit = lr, decay, weight, reward_unit
        self.diversity = diversity
        self.context_len, self.recency = context_len, recency
        self.D = np.zeros((2 * self.dim, self.dim))     # rows: the context's halves (before / since the fall)
        self.split_ts: float | None = None               # event time (ms) since which history items count as since
        self._clock = 0.0                                # the latest history time seen (the layer's event clock)
        self.beta = np.zeros(POSITIONS)
        self.updates = 0
        # hold > 0: learn (and correct) only for ``hold`` transitions after a detected fall of the
        # engagement rate, from a zero matrix; 0: always
        self.hold = hold
        self.seen, self.active_until, self.drifts, self._level, self.started = 0, 0, 0, 0.0, 0
        self._long_run, self._recent, self._low = 0.0, 0.0, False
        # the long-run rate of the views before the last ~2k (those the recent rate has taken)
        self._aging: deque = deque(maxlen=round(1 / RECENT_ALPHA))   # the views the long-run rate has yet to take
        self._before, self._aged, self._below_since = 0.0, 0, 0
        self._ref, self._held_since = 0.0, 0            # the reference rate, and since when it is held
        # (action row, state, state times, reward, position, score, event clock)
        self._backlog: deque = deque(maxlen=BACKLOG if hold else 0)
        self._fallen: list[tuple] = []       # (context, action row, reward, position, score) since the fall began
        self._rng = np.random.default_rng(0)

    @classmethod
    def from_settings(cls, text: ItemEmbeddings, settings: Settings, project: bool = True) -> "FeedbackModel":
        """The model the ``serve_feedback_*`` settings describe."""
        return cls(text, dim=settings.serve_feedback_dim, lr=settings.serve_feedback_lr,
                   decay=settings.serve_feedback_decay, weight=settings.serve_feedback_weight,
                   hold=settings.serve_feedback_hold, project=project,
                   reward_unit=settings.reward_click if settings.reward_click > 0 else 1.0,
                   diversity=settings.serve_feedback_diversity)

    def _rows(self, item_ids: Iterable[str]) -> np.ndarray:
        index = self.text.index
        return np.array([index.get(i, -1) for i in item_ids], dtype=np.int64)

    def context(self, history: list[str] | None, times: list | None = None) -> np.ndarray | None:
        """Context vector of a history (oldest first; ``times``: each item's event time in ms, None
        for one not stored yet): the halves before and since :attr:`split_ts`, together of unit
        length; None without a known item.

        >>> m = FeedbackModel(ItemEmbeddings(["a", "b", "c"], np.eye(3)), dim=2)
        >>> m.context(["zz"]) is None, round(float(np.linalg.norm(m.context(["a", "b"]))), 6)
        (True, 1.0)
        >>> m.split_ts = 100
        >>> old, new = m.context(["a", "b"], [50, 150]).reshape(2, 2)
        >>> bool(old.any() and new.any()), bool(m.context(["a", "b"], [50, 60])[2:].any())
        (True, False)
        """
        if not history:
            return None
        history = history[-self.context_len:]
        rows = self._rows(history)
        ok = rows >= 0
        w = (self.recency ** np.arange(len(rows))[::-1])[ok]
        if not len(w):
            return None
        x = self.vectors[rows[ok]]
        v = w @ x
        n = np.linalg.norm(v)
        if not n > 0:
            return None
        out = np.zeros(2 * self.dim)
        split = self.split_ts
        if split is None or times is None:
            out[:self.dim] = v / n
            return out
        times = list(times)[-len(history):]
        since = np.array([t is None or t >= split for t in times], dtype=bool)[ok] if len(times) == len(history) \
            else np.zeros(len(w), dtype=bool)
        out[:self.dim] = w[~since] @ x[~since] / n
        out[self.dim:] = w[since] @ x[since] / n
        return out

    def correction(self, history: list[str] | None, candidates: list[str], times: list | None = None,
                   D: np.ndarray | None = None) -> np.ndarray | None:
        """``weight * c^T D g`` for each candidate (0 for items without text); None: no context.
        ``times``: the history's event times (see :meth:`context`); ``D``: the matrix to use
        (default: this model's)."""
        D = self.D if D is None else D
        c = self.context(history, times)
        if c is None:
            return None
        rows = self._rows(candidates)
        out = np.zeros(len(candidates))
        ok = rows >= 0
        out[ok] = self.vectors[rows[ok]] @ (D.T @ c)
        return self.weight * out

    def stale(self, times: list | None) -> bool:
        """Whether a history (its items' event times, see :meth:`context`) has nothing engaged since
        the current fall began: :attr:`split_ts` is set and every time is before it (an item not
        stored yet, time None, counts as since).

        >>> m = FeedbackModel(ItemEmbeddings(["a", "b", "c"], np.eye(3)), dim=2)
        >>> m.stale([50, 60]), m.stale([])
        (False, False)
        >>> m.split_ts = 100
        >>> m.stale([50, 60]), m.stale([50, 150]), m.stale([50, None]), m.stale([])
        (True, False, False, False)
        """
        split = self.split_ts
        if split is None or not times:
            return False
        return all(t is not None and t < split for t in list(times)[-self.context_len:])

    def diversify(self, scores: np.ndarray, candidates: list[str], times: list | None, k: int) -> np.ndarray:
        """``scores`` re-ordered for a diverse top ``k`` in the text space
        (:func:`~streamrl.serving.explore.diversify`, strength :attr:`diversity`) when the user's
        history is :meth:`stale`; else ``scores`` unchanged.

        After a drift, the correction learns an old topic's new mapping from the requests of that
        topic's users; for the rarer topics it has few, and a user with nothing engaged since the
        fall gets a slate of what most users engage with now, slot after slot alike. A diverse
        slate shows such a user several directions at once, and the one they engage with moves
        their history on (the items since the fall are the context's second half, which the
        correction reads well): in-process, fewer requests 16-24k events after a drift came from
        users with nothing since (122 against 140 per seed) and ``same_request_recovery`` rose
        from 0.890 to 0.909 (16 seeds, paired +0.019, se 0.009; see docs/demo-findings.md).
        """
        if self.diversity <= 0 or not self.stale(times):
            return scores
        rows = self._rows(candidates)
        ok = rows >= 0
        vectors = np.zeros((len(candidates), self.dim))
        vectors[ok] = self.vectors[rows[ok]]
        return diversify(scores, vectors, k, self.diversity)

    def update(self, transitions: list[dict[str, Any]]) -> int:
        """Learn from ``transitions`` (processor records) in order; returns how many were read.

        Engaged = reward above zero; ``score`` (optional): the served policy's score of the action,
        less the request's mean. Every transition feeds the position intercepts (and, with
        ``hold``, the engagement drift detector); ``D`` learns from those with a known action and a
        history with a known item, while it is on. Records that are not transitions are skipped.
        """
        index = self.text.index
        D, beta, keep = self.D.copy(), self.beta.copy(), 1.0 - self.decay
        scale, read = 1.0, 0
        # per-transition SGD (a step per view: measured to turn D round after a drift far faster
        # than summed mini-batch steps); the decay is folded into one scale factor
        for t in transitions:
            try:
                a = index.get(t.get("action"))
                state = t.get("state")
                times = t.get("state_ts")
                reward = float(t.get("reward") or 0)
                engaged = 1.0 if reward > 0 else 0.0
                p = t.get("position")
                s = float(t.get("score") or 0.0)
            except (AttributeError, TypeError, ValueError):  # not a transition
                continue
            if not math.isfinite(s):
                s = 0.0
            read += 1
            self.seen += 1
            p = min(p, POSITIONS - 1) if isinstance(p, int) and p >= 0 else 0
            if isinstance(times, list):                      # the event clock: the latest history time seen
                latest = max((x for x in times if isinstance(x, (int, float))), default=None)
                if latest is not None and latest > self._clock:
                    self._clock = float(latest)
            else:
                times = None
            if self.hold:
                self._backlog.append((a, state, times, reward, p, s, self._clock))
                if self._engagement_fell(engaged):
                    self.drifts += 1
                    level = self._recent                     # the engagement rate after the fall
                    # a fall from a steady state, or well below the lowest rate since D started
                    # (a drift soon after a false alarm), starts over: what came before is the
                    # old world. A dip while D is on keeps what it learned (a recovering
                    # policy's engagement dips too; starting over threw the new mapping away)
                    fresh = (self.seen > self.active_until or level < RESTART_BELOW * self._level
                             or self.seen - self.started > RESTART_AFTER)
                    if fresh:
                        D, scale, self._level, self.started = np.zeros_like(D), 1.0, level, self.seen
                        backlog = self._learn_backlog(D, beta)
                    self.active_until = self.seen + self.hold
                    log.info("engagement fell to %.4f (drift %d) at transition %d: D %s for %d transitions", level,
                             self.drifts, self.seen, f"learns from zero ({backlog} since the fall began at once; history items since event time "
                             f"{self.split_ts} in the context's second half)"
                             if fresh else "keeps learning", self.hold)
                elif self.seen == self.active_until + 1:     # the learner has had its time: off again
                    D, scale, self.split_ts = np.zeros_like(D), 1.0, None
                elif self.seen <= self.active_until:         # the lowest rate since D started
                    self._level = min(self._level, self._recent)
            on = not self.hold or self.seen <= self.active_until
            c = self._view_context(a, state, times) if on else None
            scale *= keep
            if scale < 1e-3:                                 # fold the decay in before 1/scale grows large
                D *= scale
                scale = 1.0
            if c is None:                                    # the intercept alone
                beta[p] += 0.02 * (engaged - 1.0 / (1.0 + math.exp(-min(max(beta[p], -30.0), 30.0))))
                continue
            beta[p] += 0.02 * self._step(D, scale, beta, c, a, reward, p, s)
            self.updates += 1
            if self.hold and self.started and self.seen - self.started <= REPLAY_FOR:
                self._fallen.append((c, a, reward, p, s))
                for n in self._rng.integers(len(self._fallen), size=REPLAY_STEPS):
                    self._step(D, scale, beta, *self._fallen[n])
            elif self._fallen:
                self._fallen = []
        self.D, self.beta = D * scale, beta
        return read

    def _learn_backlog(self, D: np.ndarray, beta: np.ndarray) -> int:
        """Steps on ``D`` (in place) for the backlog's transitions since the fall began: the
        change point is where the cumulative excess of engagement over the long-run rate (which
        the fall has pulled part of the way down) peaks (CUSUM); the event clock there becomes
        :attr:`split_ts` (None without history times). Returns how many it learned from."""
        self._fallen, self.split_ts = [], None
        backlog = list(self._backlog)[:-1]               # the newest is learned by the caller
        if not backlog:
            return 0
        excess = np.cumsum([(1.0 if e[3] > 0 else 0.0) - self._long_run for e in backlog])
        since = backlog[int(np.argmax(excess)) + 1:]
        if since and since[0][6] > 0:
            self.split_ts = since[0][6]
        for a, state, times, reward, p, s, _ in since:
            c = self._view_context(a, state, times)
            if c is not None:
                self._step(D, 1.0, beta, c, a, reward, p, s)
                self._fallen.append((c, a, reward, p, s))
        return len(self._fallen)

    def _view_context(self, a: int | None, state: Any, times: list | None = None) -> np.ndarray | None:
        """The context ``D`` learns a view in: None for an unknown action or a history without a
        known item (or one that is not a list of ids)."""
        try:
            return self.context(state, times) if a is not None else None
        except TypeError:
            return None

    def _step(self, D: np.ndarray, scale: float, beta: np.ndarray, c: np.ndarray, a: int, reward: float,
              p: int, s: float = 0.0) -> float:
        """One SGD step on ``D`` (in place; its true value is ``scale * D``) for a view of item row
        ``a`` at position ``p`` in context ``c``, served with policy score ``s``, with ``reward``;
        returns the prediction error."""
        g = self.vectors[a]
        engaged = 1.0 if reward > 0 else 0.0
        logit = min(max(beta[p] + s / self.weight + scale * float(c @ D @ g), -30.0), 30.0)
        err = engaged - 1.0 / (1.0 + math.exp(-logit))
        w = reward / self.reward_unit if engaged else 1.0   # an engagement steps as far as it is worth
        D += (self.lr * err * w / scale) * np.outer(c, g)
        return err

    def _engagement_fell(self, engaged: float) -> bool:
        """Whether the recent engagement rate (a ~2k-transition average) just fell below
        :data:`FALL_SHARE` of the long-run one (~10k transitions, and not before 10k), or has
        stayed below that share of the long-run rate before the last ~2k transitions (which the
        fall has not pulled down yet) for :data:`PERSIST` transitions; it re-arms once the recent
        rate is back above 0.9 of the long-run one and above FALL_SHARE of that earlier rate. (Against the long-run rate of every view
        alone, a demo drift that halved engagement was never flagged: the long-run rate came
        down with it. Against the earlier views alone, falls were flagged ~1k transitions
        sooner, with less to learn from: in-process, six seeds, 0.77 instead of 0.89 of the
        pre-drift reward ratio over the 20k events after a drift.) (river's ADWIN, which cuts
        at any significant change of the mean, also fired at small dips, 2-4 times in some
        130 s demo runs, and D learning from zero in a steady world costs reward.)"""
        n = self.seen
        self._long_run += max(LONG_RUN_ALPHA, 1.0 / n) * (engaged - self._long_run)
        self._recent += max(RECENT_ALPHA, 1.0 / n) * (engaged - self._recent)
        if len(self._aging) == self._aging.maxlen:
            self._aged += 1
            self._before += max(LONG_RUN_ALPHA, 1.0 / self._aged) * (self._aging[0] - self._before)
        self._aging.append(engaged)
        # the reference: the earlier views' rate, held where it was while the recent rate slides
        # (else a slow fall drags it down as fast as the recent rate falls, and a fall of ~55% at a
        # demo's ~8% engagement was missed in 1-5 of 10 seeded streams)
        if self._held_since and (self._recent >= 0.9 * self._ref or n - self._held_since > HOLD_REF_FOR):
            self._held_since = 0
        if not self._held_since:
            self._ref = self._before
            if n >= 1.0 / LONG_RUN_ALPHA and self._recent < SLIDE_SHARE * self._ref:   # past the warm-up
                self._held_since = n
        below = self._recent < FALL_SHARE * self._ref
        self._below_since = (self._below_since or n) if below else 0
        if self._low:        # re-arm once the rate is back, not while still below the reference (that re-flagged a fall)
            self._low = self._recent < 0.9 * self._long_run or below
            return False
        self._low = n >= 1.0 / LONG_RUN_ALPHA and (self._recent < FALL_SHARE * self._long_run
                                                   or (below and n - self._below_since >= PERSIST))
        return self._low

    def describe(self) -> dict[str, Any]:
        return {"dim": self.dim, "weight": self.weight, "lr": self.lr, "decay": self.decay, "hold": self.hold,
                "transitions": self.updates, "norm": round(float(np.linalg.norm(self.D)), 4),
                "split_ts": self.split_ts}
