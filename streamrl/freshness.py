"""Freshness of a run: how soon what users did reaches the policy that serves them.

Freshness of an event: wall time from its production to the first moment the simulator was
served a policy version whose training had consumed the event's transition. The learner puts
the transition offsets its last gradient step had seen into each snapshot's metadata
(``trained_offsets``); the closed loop records when each event was produced
(``produced_wall.npy``) and when each version was first served (``served_at.json``). It is
measured for views produced after the first learned policy was served (the warm-up before the
first snapshot is not steady state) whose transition reached a served version before the end;
``freshness_unserved`` counts those whose transition had not (the run's tail).
``transition_lag_p50_s``/``_p99_s``: the processor's part, from a view's production to its
transition's timestamp (all views). ``streamrl demo`` reports these for its closed loop;
``bench/freshness.py`` measures them at a fixed rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamrl.config import Settings
from streamrl.kafka import read_all
from streamrl.producers.closed_loop import PRODUCED, SERVED
from streamrl.schema import decode_transitions


def snapshot_offsets(settings: Settings) -> dict[int, dict[int, int]]:
    """Published version -> trained transition offsets (partition -> next offset), from manifests."""
    from streamrl.errors import SnapshotRejected
    from streamrl.producers.snapshot import parse_manifest

    out: dict[int, dict[int, int]] = {}
    for rec in read_all(settings, "policy.snapshots"):
        if dict(rec.headers or []).get("streamrl.snapshot.kind") != b"manifest":
            continue
        try:
            m = parse_manifest(rec.value)
        except SnapshotRejected:
            continue
        offsets = m["metadata"].get("trained_offsets")
        if offsets is not None:
            out[int(m["version"])] = {int(p): int(o) for p, o in offsets.items()}
    return out


def freshness_latencies(settings: Settings, run_dir: Path, seed: int,
                        transition_lags: list[float] | None = None) -> tuple[np.ndarray, int]:
    """Seconds from each view's production to the first served version trained on its transition,
    for views produced after the first learned version was served; and how many such views had a
    transition no served version covered (yet). ``transition_lags``, when given, gets the seconds
    from each view's production to its transition's Kafka timestamp (all views: the processor's
    part of the latency, which the ranker's feedback layer waits on too)."""
    produced = np.load(run_dir / PRODUCED)
    served = {int(v): t for v, t in json.loads((run_dir / SERVED).read_text()).items()}
    trained = snapshot_offsets(settings)
    versions = sorted(v for v in served if v in trained)
    if not versions:
        return np.zeros(0), 0
    first_served = min(served[v] for v in versions)
    # served time of the first version covering each offset, per partition (offsets grow with versions)
    by_part: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in {p for v in versions for p in trained[v]}:
        offs = np.array([trained[v].get(p, 0) for v in versions])
        when = np.array([served[v] for v in versions])
        # a later version may have been served first (a swap between requests): earliest from here on
        by_part[p] = (np.maximum.accumulate(offs), np.minimum.accumulate(when[::-1])[::-1])
    prefix = f"tv:s{seed}-"
    lat, unserved = [], 0
    for rec in read_all(settings, "transitions"):
        offs, when = by_part.get(rec.partition, (np.zeros(0), np.zeros(0)))
        k = int(np.searchsorted(offs, rec.offset, side="right"))  # first version with offset < trained
        for t in decode_transitions(rec.value):
            tid = t["id"]
            if not tid.startswith(prefix):
                continue
            n = int(tid[len(prefix):])
            if transition_lags is not None and n < len(produced):
                transition_lags.append(rec.timestamp / 1000.0 - produced[n])
            if n < len(produced) and produced[n] >= first_served:
                if k < len(offs):
                    lat.append(when[k] - produced[n])
                else:
                    unserved += 1
    return np.asarray(lat), unserved


def freshness(settings: Settings, run_dir: Path, seed: int) -> dict[str, Any]:
    """p50/p99 seconds from a view's production to the first served version trained on its transition
    (:func:`freshness_latencies`; views not covered by the end are counted, not timed)."""
    tr: list[float] = []
    lat, unserved = freshness_latencies(settings, run_dir, seed, tr)
    lags = np.asarray(tr)
    return {**_p50_p99("freshness", lat), "freshness_samples": int(lat.size), "freshness_unserved": unserved,
            **_p50_p99("transition_lag", lags[np.isfinite(lags)])}


def _p50_p99(name: str, seconds: np.ndarray) -> dict[str, float | None]:
    """``{name}_p50_s`` and ``{name}_p99_s`` of ``seconds`` (None without samples).

    >>> _p50_p99("lag", np.array([1.0, 2.0, 3.0])), _p50_p99("lag", np.zeros(0))
    ({'lag_p50_s': 2.0, 'lag_p99_s': 2.98}, {'lag_p50_s': None, 'lag_p99_s': None})
    """
    return {f"{name}_p{q}_s": round(float(np.percentile(seconds, q)), 3) if seconds.size else None for q in (50, 99)}
