"""Drift detection on the learner's input (reward) and fit (TD error) with river's ADWIN."""

from __future__ import annotations

from river.drift import ADWIN

SIGNALS = ("reward", "td_error")


class DriftMonitor:
    """One ADWIN per signal and key; :meth:`update` says whether that value completed a detected drift.

    The key is the source partition for rewards: partitions are consumed interleaved and each
    is in event-time order only on its own, so one detector across them would see the
    interleaving as drift.

    >>> m = DriftMonitor(delta=0.002)
    >>> any(m.update("reward", 0.0) for _ in range(500)) or any(m.update("reward", 5.0) for _ in range(500))
    True
    """

    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self.detectors: dict[tuple[str, int], ADWIN] = {}

    def update(self, signal: str, value: float, key: int = 0) -> bool:
        if signal not in SIGNALS:
            raise ValueError(f"unknown drift signal {signal!r}")
        d = self.detectors.get((signal, key))
        if d is None:
            d = self.detectors[(signal, key)] = ADWIN(delta=self.delta)
        d.update(value)
        return d.drift_detected

    def get(self, signal: str, key: int = 0) -> float:
        """The detector's current window mean (NaN before any value)."""
        d = self.detectors.get((signal, key))
        return float(d.estimation) if d is not None else float("nan")
