"""Drift detection on the learner's input (reward) and fit (TD error) with river's ADWIN.

Only a change for the worse counts: a fall of the reward rate, a rise of the TD error. ADWIN
detects a change of the mean either way, and an improving policy raises its own reward rate
(in the demo that fired every few seconds, so the drift response was always on)."""

from __future__ import annotations

from river.drift import ADWIN

SIGNALS = ("reward", "td_error")
#: The direction of a change that counts as drift, per signal: +1 a rise, -1 a fall.
WORSE = {"reward": -1, "td_error": +1}


class DriftMonitor:
    """One ADWIN per signal; :meth:`update` says whether that value completed a detected drift
    for the worse (:data:`WORSE`); changes for the better are counted in ``improvements``.

    The learner feeds every training transition's reward into one detector across the
    transition partitions: a live consumer keeps its partitions within a commit interval of each
    other, so their interleaving is a shuffle of near-simultaneous views. One detector per
    partition saw an eighth of the views each, and in the demo (8 partitions) the reward drop of
    an interest drift was flagged 15-70 s (100k-500k events) after it, or not at all. A consumer
    replaying a backlog with one partition far behind the others mixes older rewards in; a
    false alarm costs a temporary shift of sampling to recent transitions (``--drift-response``).

    >>> m = DriftMonitor(delta=0.002)
    >>> any(m.update("reward", 5.0) for _ in range(500)) or any(m.update("reward", 0.0) for _ in range(500))
    True
    >>> m = DriftMonitor(delta=0.002)
    >>> any(m.update("reward", 0.0) for _ in range(500)) or any(m.update("reward", 5.0) for _ in range(500))
    False
    >>> m.improvements["reward"] > 0
    True
    """

    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self.detectors: dict[str, ADWIN] = {}
        self.improvements: dict[str, int] = {s: 0 for s in SIGNALS}

    def update(self, signal: str, value: float) -> bool:
        if signal not in SIGNALS:
            raise ValueError(f"unknown drift signal {signal!r}")
        d = self.detectors.get(signal)
        if d is None:
            d = self.detectors[signal] = ADWIN(delta=self.delta)
        before = d.estimation
        d.update(value)
        if not d.drift_detected:
            return False
        if (d.estimation - before) * WORSE[signal] > 0:  # the window kept (recent) against the whole one
            return True
        self.improvements[signal] += 1
        return False

    def get(self, signal: str) -> float:
        """The detector's current window mean (NaN before any value)."""
        d = self.detectors.get(signal)
        return float(d.estimation) if d is not None else float("nan")
