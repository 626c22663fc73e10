"""Joining a user's last served slate to the engagements their next request reports.

The ranker's fast feedback layer (:mod:`streamrl.serving.feedback`) learns a view's outcome
from the user's next request with the session source: :class:`SessionJoin` holds each user's
last slate and turns the request's ``recent`` into the slate's rewards, :func:`joined_views`
makes them the transition-like records the layer learns from, and :func:`centred_scores` the
policy scores a slate is remembered with.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Iterable

import numpy as np

class SessionJoin:
    """Each user's last served slate, joined to the engagements their next request reports.

    A feed client sends the items its user engaged with lately (``recent``, oldest first: one
    entry per click or purchase) with every request. What ``recent`` gained since the user's
    previous request, against the slate served then, is that slate's outcome: an item whose
    entries grew by one was clicked (``reward_click``), by two bought (``reward_purchase``), an
    item that did not grow was not engaged (0). A purchase usually comes a request or two after
    its click: a clicked item that gains an entry within the user's next ``pending`` requests
    adds a view with the difference (``reward_purchase - reward_click``), so its steps on ``D``
    add up to a purchase's. :meth:`outcomes` returns them as slate records ``(history, items,
    rewards, positions, scores)`` (``scores``: the policy's scores the items were served with, less
    the request's mean; :func:`joined_views` turns them into the transition-like records
    :meth:`~streamrl.serving.feedback_model.FeedbackModel.update` learns from): a view's outcome seconds of user time after it,
    where the ``transitions`` topic has it once the attribution window has closed.

    It needs requests of a user to reach the same ranker (user-sticky routing; with ``n``
    unsticky replicas ~1/n of slates join) and a client that sends ``recent``; slates of
    sessions that end are never joined. At most ``max_users`` users are remembered (least
    recently served dropped first).

    >>> j = SessionJoin(reward_click=1.0, reward_purchase=5.0)
    >>> j.outcomes("u", ["a"]), j.served("u", ["a"], ["x", "y", "z"], ["a"], [0.5, 0.25, -0.75])
    ([], None)
    >>> j.outcomes("u", ["a", "y", "z", "z"])
    [(['a'], ['x', 'y', 'z'], [0.0, 1.0, 5.0], [0, 1, 2], [0.5, 0.25, -0.75])]
    >>> j.outcomes("u", ["a", "y", "z", "z"])          # joined once
    []
    >>> j.served("u", ["a", "y"], ["w"], ["a", "y", "z", "z"])     # no scores: 0
    >>> j.outcomes("u", ["a", "y", "z", "z", "y"])      # y, clicked a request ago, bought since
    [(['a'], ['y'], [4.0], [1], [0.25]), (['a', 'y'], ['w'], [0.0], [0], [0.0])]
    """

    def __init__(self, reward_click: float, reward_purchase: float, pending: int = 3,
                 max_users: int = 200_000) -> None:
        self.reward_click, self.reward_purchase = reward_click, reward_purchase
        self.pending, self.max_users = pending, max_users
        # user -> (history, items, Counter of recent | None once joined,
        #          clicked: [(item, history, position, score, requests left, history times)], scores,
        #          history times)
        self._last: OrderedDict[str, tuple] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def outcomes(self, user_id: str, recent: list[str] | None) -> list[tuple]:
        """Slate records of ``user_id``'s last served slate, with rewards from ``recent``, and of the
        purchases of items clicked in the slates before ([]: nothing to join); a slate is joined once."""
        last = self._last.get(user_id)
        if last is None or last[2] is None:
            return []
        history, items, before, clicked, scores, times = last
        gained = Counter(recent or ())
        gained.subtract(before)
        out, still = [], []
        for item, h, pos, sc, left, ht in clicked:       # earlier clicks: bought since?
            if gained.get(item, 0) > 0:
                gained[item] -= 1
                out.append(_record(h, [item], [self.reward_purchase - self.reward_click], [pos], [sc], ht))
            elif left > 1:
                still.append((item, h, pos, sc, left - 1, ht))
        rewards = []
        for pos, item in enumerate(items):
            g = gained.get(item, 0)
            rewards.append(0.0 if g <= 0 else self.reward_purchase if g >= 2 else self.reward_click)
            if g == 1 and self.pending:
                still.append((item, history, pos, scores[pos], self.pending, times))
        out.append(_record(history, items, rewards, list(range(len(items))), scores, times))
        self._last[user_id] = (None, None, None, still, None, None)
        return out

    def served(self, user_id: str, history: list[str] | None, items: list[str], recent: list[str] | None,
               scores: list[float] | None = None, history_ts: list | None = None) -> None:
        """Remember the slate ``items`` served to ``user_id`` with ``history`` (the policy's state),
        the policy's ``scores`` of the items (less the request's mean; None: 0), the request's
        ``recent`` (call :meth:`outcomes` with it first) and the history's event times
        (``history_ts``, None for an item not stored yet; the records then carry them)."""
        last = self._last.get(user_id)
        clicked = last[3] if last is not None and last[2] is None else []
        scores = [0.0] * len(items) if scores is None else list(scores)
        times = None if history_ts is None else list(history_ts)
        self._last[user_id] = (list(history or ()), list(items), Counter(recent or ()), clicked, scores, times)
        self._last.move_to_end(user_id)
        while len(self._last) > self.max_users:
            self._last.popitem(last=False)


def _record(history: list, items: list, rewards: list, positions: list, scores: list, times: list | None) -> tuple:
    """A slate record: ``(history, items, rewards, positions, scores[, history_ts])``."""
    rec = (history, items, rewards, positions, scores)
    return rec if times is None else rec + (times,)


def centred_scores(scores: np.ndarray | None, picked: np.ndarray | None, n_served: int) -> list[float] | None:
    """The policy's ``scores`` of the ``picked`` candidates less the mean over the request's scored
    candidates, then 0 for the unscored items served after them (``n_served`` in all): the
    ``scores`` :meth:`SessionJoin.served` takes. None without scores.

    >>> centred_scores(np.array([1.0, 3.0, 5.0]), np.array([2, 0]), 3)
    [2.0, -2.0, 0.0]
    """
    if scores is None or picked is None or not len(scores):
        return None
    out = (scores[picked] - scores.mean()).tolist()
    return out + [0.0] * (n_served - len(out))


def joined_views(slates: Iterable) -> list[dict[str, Any] | None]:
    """Transition-like records (``action``, ``state``, ``reward``, ``position``, ``score``, and
    ``state_ts`` where the record has the history's times) of slate records ``(history, items,
    rewards, positions[, scores[, history_ts]])`` (no scores: 0); a record of another shape gives
    None (which :meth:`~streamrl.serving.feedback_model.FeedbackModel.update` counts as skipped).

    >>> joined_views([(["a"], ["x", "y"], [0.0, 1.0], [0, 1], [0.5, -0.5]), "junk"])[1:]
    [{'action': 'y', 'state': ['a'], 'reward': 1.0, 'position': 1, 'score': -0.5}, None]
    >>> joined_views([(["a"], ["x"], [1.0], [0])])
    [{'action': 'x', 'state': ['a'], 'reward': 1.0, 'position': 0, 'score': 0.0}]
    >>> joined_views([(["a", "b"], ["x"], [1.0], [0], [0.5], [1000, None])])[0]["state_ts"]
    [1000, None]
    """
    out: list[dict[str, Any] | None] = []
    for rec in slates:
        try:
            history, items, rewards, positions, *rest = rec
            if len(rest) > 2:
                raise TypeError("not a slate record")
            scores = rest[0] if rest else [0.0] * len(items)
            times = rest[1] if len(rest) > 1 else None
            if not all(isinstance(x, list) for x in (items, rewards, positions, scores)) or \
                    not (times is None or isinstance(times, list)):
                raise TypeError("not a slate record")
            extra = {} if times is None else {"state_ts": times}
            out += [{"action": i, "state": history, "reward": r, "position": p, "score": sc, **extra}
                    for i, r, p, sc in zip(items, rewards, positions, scores, strict=True)]
        except (TypeError, ValueError):
            out.append(None)
    return out
