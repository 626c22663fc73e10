"""Learning reports: per-arm reward curves recorded during a run, rendered as a table and a plot.

A run directory holds ``curves.jsonl``: one line per arm and window of events,
``{"arm", "events", "views", "reward", "clicks", "purchases", "policy_version", "wall"}``, where
``events`` is the arm's cumulative event count at the end of the window and the other counts are
the window's own. :func:`summarize` turns that into the figures the demo prints (each arm's
reward over the last 20% of events, the learned arm's ratios), :func:`drift_recovery` into the
drift figures; ``streamrl report RUN_DIR`` renders ``report.md`` and ``reward.png`` from it.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from streamrl.schema import Event

ARM_ORDER = ("learned", "oracle", "river", "popularity", "random")


class CurveRecorder:
    """Accumulates one arm's rewards per window of ``window`` events and appends them to a file."""

    def __init__(self, path: str | os.PathLike, arm: str, weights: dict[str, float], window: int = 2000) -> None:
        self.path, self.arm, self.weights, self.window = Path(path), arm, weights, window
        self.events = 0
        self._reset()

    def _reset(self) -> None:
        self.views = self.clicks = self.purchases = 0
        self.reward = 0.0
        self.version: int | None = None
        self.scored, self.served_value, self.best_value = 0, 0.0, 0.0

    def add_slate_values(self, served: float, best: float) -> None:
        """One request's served slate and the best slate of its candidates, in expected reward
        (:class:`~streamrl.producers.closed_loop.SameRequest`): summed per window as
        ``served_value``/``best_value`` (with ``scored``, the requests), for the same-request figures."""
        self.scored += 1
        self.served_value += served
        self.best_value += best

    def learn_one(self, ev: Event) -> None:
        """Count one event (river's verb: the recorder is an online statistic)."""
        self.events += 1
        if ev.type == "view":
            self.views += 1
            if ev.policy_version is not None:
                self.version = ev.policy_version
        elif ev.type == "click":
            self.clicks += 1
        else:
            self.purchases += 1
        self.reward += self.weights[ev.type]
        if self.events % self.window == 0:
            self.flush()

    def flush(self) -> None:
        if not self.views and not self.clicks and not self.purchases:
            return
        row = {"arm": self.arm, "events": self.events, "views": self.views, "reward": self.reward,
               "clicks": self.clicks, "purchases": self.purchases, "policy_version": self.version,
               "wall": time.time()}
        if self.scored:
            row.update(scored=self.scored, served_value=round(self.served_value, 6), best_value=round(self.best_value, 6))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._reset()


def load_curves(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                arms[row["arm"]].append(row)
    for rows in arms.values():
        rows.sort(key=lambda r: r["events"])
    return dict(arms)


def _rate(rows: Iterable[dict[str, Any]]) -> tuple[float, float]:
    rows = list(rows)
    views = sum(r["views"] for r in rows)
    if not views:
        return 0.0, 0.0
    return sum(r["reward"] for r in rows) / views, sum(r["clicks"] for r in rows) / views


def window_rate(rows: list[dict[str, Any]], start: int, end: int) -> float:
    """Reward per view over windows ending in (start, end] events."""
    return _rate(r for r in rows if start < r["events"] <= end)[0]


def summarize(arms: dict[str, list[dict[str, Any]]], tail: float = 0.2) -> dict[str, Any]:
    """Per-arm reward per view and CTR over the last ``tail`` of each arm's events, and ratios."""
    out: dict[str, Any] = {"arms": {}}
    for arm, rows in arms.items():
        total = rows[-1]["events"] if rows else 0
        last = [r for r in rows if r["events"] > total * (1 - tail)]
        reward, ctr = _rate(last)
        all_reward, _ = _rate(rows)
        out["arms"][arm] = {"events": total, "reward_per_view_tail": round(reward, 5), "ctr_tail": round(ctr, 5),
                            "reward_per_view_all": round(all_reward, 5)}
    learned = out["arms"].get("learned", {}).get("reward_per_view_tail")
    for base in ("oracle", "popularity", "river", "random"):
        b = out["arms"].get(base, {}).get("reward_per_view_tail")
        if learned is not None and b:
            out[f"reward_vs_{base}"] = round(learned / b, 4)
    return out


#: Below this pre-drift reward over random's, the learned arm had not learned anything to lose.
UNLEARNED_AT_DRIFT = 1.5


def _oracle_ratio(arms: dict[str, list[dict]], start: int, end: int, arm: str = "learned") -> float | None:
    rate, oracle = window_rate(arms[arm], start, end), window_rate(arms["oracle"], start, end)
    return rate / oracle if oracle else None


def _same_request_ratio(rows: list[dict], start: int, end: int) -> float | None:
    """Served over best slate value (:class:`~streamrl.producers.closed_loop.SameRequest`) of the
    requests scored in the windows ending in (start, end] events; None where none was scored."""
    rows = [r for r in rows if start < r["events"] <= end and r.get("scored")]
    best = sum(r["best_value"] for r in rows)
    return sum(r["served_value"] for r in rows) / best if best else None


def drift_recovery(arms: dict[str, list[dict]], drift_at: int, horizon: int = 20_000,
                   span: int = 8_000) -> dict[str, Any]:
    """Learned/oracle reward ratio before a drift, and how much of it is back ``horizon`` events later.

    Pre-drift: the ``2 * span`` events before the drift. After: the ``span`` events ending
    ``horizon`` after it (``drift_recovery_ratio`` = after / pre). ``drift_recovered_after_events``:
    the first curve point within the horizon whose trailing ``span`` ratio reaches 90% of pre-drift.
    ``drift_recovery_by_arm``: the same after / pre ratio of every arm but the oracle (how far the
    baselines come back in the same window: the yardstick of the learned arm's figure).
    ``pre_drift_vs_random``: the learned arm's pre-drift reward over the random arm's; near 1 the
    learned policy had not learned anything yet when the drift came, and the recovery ratio
    says nothing (a policy that knows nothing loses nothing). ``same_request_pre``/``_post``/
    ``_recovery``: the same windows and ratio, with each learned request's served slate scored
    against the best slate of the same request in expectation (curve rows with ``scored``): the
    policy's own ratio, without the +-0.1-0.2 that two trajectories of the world add per window.

    >>> rows = lambda rate: [{"events": e, "views": 1000, "reward": rate(e) * 1000, "clicks": 0} for e in range(1000, 41_000, 1000)]
    >>> arms = {"oracle": rows(lambda e: 0.2), "learned": rows(lambda e: 0.1 if e <= 20_000 else 0.05),
    ...         "random": rows(lambda e: 0.02)}
    >>> out = drift_recovery(arms, 20_000)
    >>> out["pre_drift_oracle_ratio"], out["drift_recovery_ratio"], out["drift_recovery_by_arm"]
    (0.5, 0.5, {'learned': 0.5, 'random': 1.0})
    >>> out["pre_drift_vs_random"], "same_request_recovery" in out
    (5.0, False)
    >>> for r in arms["learned"]:   # each window's requests scored: 0.8 of their best slates, 0.72 after
    ...     r.update(scored=10, best_value=10.0, served_value=8.0 if r["events"] <= 20_000 else 7.2)
    >>> out = drift_recovery(arms, 20_000)
    >>> out["same_request_pre"], out["same_request_post"], out["same_request_recovery"]
    (0.8, 0.72, 0.9)
    """
    if "learned" not in arms or "oracle" not in arms or not arms["learned"]:
        return {}
    total = arms["learned"][-1]["events"]
    before, after = (max(0, drift_at - 2 * span), drift_at), (drift_at + horizon - span, drift_at + horizon)
    pre = _oracle_ratio(arms, *before)
    out: dict[str, Any] = {"pre_drift_oracle_ratio": None if pre is None else round(pre, 4)}
    if arms.get("random"):
        rnd = window_rate(arms["random"], *before)
        out["pre_drift_vs_random"] = round(window_rate(arms["learned"], *before) / rnd, 4) if rnd else None
    if pre is None or total < drift_at + horizon:
        out["drift_recovery_ratio"] = None
        return out
    by_arm = {}
    for arm in (a for a in arms if a != "oracle" and arms[a]):
        a_pre, a_post = _oracle_ratio(arms, *before, arm), _oracle_ratio(arms, *after, arm)
        by_arm[arm] = round(a_post / a_pre, 4) if a_pre and a_post is not None else None
    post = _oracle_ratio(arms, *after)
    out["post_drift_oracle_ratio"] = None if post is None else round(post, 4)
    out["drift_recovery_ratio"] = by_arm["learned"]
    sr_pre, sr_post = (_same_request_ratio(arms["learned"], *w) for w in (before, after))
    if sr_pre and sr_post is not None:
        out.update(same_request_pre=round(sr_pre, 4), same_request_post=round(sr_post, 4),
                   same_request_recovery=round(sr_post / sr_pre, 4))
    out["drift_recovered_after_events"] = None
    for row in arms["learned"]:
        end = row["events"]
        if drift_at + span <= end <= drift_at + horizon:  # whole windows after the drift only
            r = _oracle_ratio(arms, end - span, end)
            if r is not None and r >= 0.9 * pre:
                out["drift_recovered_after_events"] = end - drift_at
                break
    out["drift_recovery_by_arm"] = by_arm
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| arm | events | reward/view (last 20%) | CTR (last 20%) | reward/view (all) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    arms = summary["arms"]
    for arm in sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99):
        a = arms[arm]
        lines.append(f"| {arm} | {a['events']} | {a['reward_per_view_tail']:.4f} | {a['ctr_tail']:.4f} | "
                     f"{a['reward_per_view_all']:.4f} |")
    ratios = [f"{k} = {v}" for k, v in summary.items() if k.startswith("reward_vs_") or k.endswith("_s")
              or k.endswith("_ratio")]
    if ratios:
        lines += ["", "; ".join(ratios)]
    return "\n".join(lines)


def plot(arms: dict[str, list[dict[str, Any]]], path: str | os.PathLike, smooth: int = 5,
         drift_at: list[int] | None = None) -> None:
    """Reward per view over events, one line per arm (moving average over ``smooth`` windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    for arm in sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99):
        rows = arms[arm]
        xs, ys = [], []
        for n in range(len(rows)):
            win = rows[max(0, n - smooth + 1):n + 1]
            views = sum(r["views"] for r in win)
            if views:
                xs.append(rows[n]["events"])
                ys.append(sum(r["reward"] for r in win) / views)
        ax.plot(xs, ys, label=arm, linewidth=2.2 if arm == "learned" else 1.4)
    for d in drift_at or []:
        ax.axvline(d, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("events (per arm)")
    ax.set_ylabel("reward per view")
    ax.set_title("streamrl: learned policy vs baselines")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``report.md`` and ``reward.png`` for a run directory; return the summary."""
    run_dir = Path(run_dir)
    arms = load_curves(run_dir / "curves.jsonl")
    summary = summarize(arms)
    extra_path = run_dir / "figures.json"
    extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
    summary.update({k: v for k, v in extra.items() if k not in summary})
    plot(arms, run_dir / "reward.png", drift_at=extra.get("drift_at"))
    (run_dir / "report.md").write_text("![reward over time](reward.png)\n\n" + markdown_table(summary) + "\n")
    return summary
