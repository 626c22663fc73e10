"""Drift detection on the learner's input (reward) and fit (TD error) with river's ADWIN."""

from __future__ import annotations

from river.drift import ADWIN

SIGNALS = ("reward", "td_error")


class DriftMonitor:
    """One ADWIN per signal; :meth:`update` says whether that value completed a detected drift.

    >>> m = DriftMonitor(delta=0.002)
    >>> any(m.update("reward", 0.0) for _ in range(500)) or any(m.update("reward", 5.0) for _ in range(500))
    True
    """

    def __init__(self, delta: float = 0.002) -> None:
        self.detectors = {s: ADWIN(delta=delta) for s in SIGNALS}

    def update(self, signal: str, value: float) -> bool:
        d = self.detectors[signal]
        d.update(value)
        return d.drift_detected

    def get(self, signal: str) -> float:
        """The detector's current window mean."""
        return float(self.detectors[signal].estimation)
