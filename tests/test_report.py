"""Reports from recorded curves: figures, table and a real PNG."""

import json

from streamrl.producers.baselines import RiverCTRPolicy
from streamrl.producers.simulator import SimConfig, Simulator
from streamrl.report import CurveRecorder, load_curves, render_run, summarize

W = {"view": 0.0, "click": 1.0, "purchase": 5.0}


def test_recorded_arms_render_table_and_plot(tmp_path):
    cfg = SimConfig(n_users=200, n_items=200, seed=2)
    for arm in ("random", "popularity"):
        rec = CurveRecorder(tmp_path / "curves.jsonl", arm, W, window=1000)
        sim = Simulator(SimConfig(**{**cfg.__dict__, "policy": arm}))
        for ev in sim.events(12_000):
            rec.learn_one(ev)
        rec.flush()
    (tmp_path / "figures.json").write_text(json.dumps({"freshness_p99_s": 1.5}))
    summary = render_run(tmp_path)
    assert summary["arms"]["popularity"]["reward_per_view_tail"] > summary["arms"]["random"]["reward_per_view_tail"]
    assert summary["arms"]["random"]["events"] == 12_000
    assert (tmp_path / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| popularity |" in md and "freshness_p99_s = 1.5" in md


def test_summary_ratios_against_baselines():
    arms = {"learned": [{"events": 100, "views": 10, "reward": 4.0, "clicks": 4}],
            "oracle": [{"events": 100, "views": 10, "reward": 5.0, "clicks": 5}],
            "popularity": [{"events": 100, "views": 10, "reward": 2.0, "clicks": 2}]}
    s = summarize(arms)
    assert s["reward_vs_oracle"] == 0.8 and s["reward_vs_popularity"] == 2.0
