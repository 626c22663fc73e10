"""A shortened `streamrl demo` end to end: every process, the closed loop, baselines, figures, report.

Runs the real command (``python -m streamrl.cli demo --json``) on the session broker: processor,
learner, ranker, closed-loop simulator and baseline arms as processes. Asserts what the run must
produce (the loop closed, every arm compared over the same events, freshness measured from
snapshot metadata, the report written), not how good the policy got in a short run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamrl.kafka import read_all
from streamrl.report import load_curves
from streamrl.schema import decode_transitions


@pytest.fixture()
def demo_run(settings, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "STREAMRL_CACHE_DIR": settings.cache_dir, "STREAMRL_METRICS_PORT": "-2"}
    cmd = [sys.executable, "-m", "streamrl.cli", "demo", "--json", "--quiet", "--events", "16000",
           "--duration", "60", "--users", "120", "--rate", "1500", "--drift-at", "9000",
           "--arms", "oracle,popularity,random", "--run-dir", str(run_dir),
           "--bootstrap-servers", settings.bootstrap_servers, "--topic-prefix", settings.topic_prefix]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), run_dir


def test_short_demo_closes_the_loop_and_reports(demo_run, settings):
    summary, run_dir = demo_run
    # every arm ran over the same simulated events; figures are machine-readable
    arms = summary["arms"]
    assert set(arms) == {"learned", "oracle", "popularity", "random"}
    totals = {a["events"] for a in arms.values()}
    assert len(totals) == 1 and totals.pop() == summary["events"] > 5000
    for key in ("reward_vs_oracle", "reward_vs_popularity", "freshness_p50_s", "freshness_p99_s",
                "drift_recovery_ratio", "pre_drift_oracle_ratio", "pre_drift_vs_random"):
        assert key in summary
    assert summary["reward_vs_oracle"] > 0
    assert arms["oracle"]["reward_per_view_tail"] > arms["random"]["reward_per_view_tail"]

    # the loop closed: the ranker served learned versions, and views carried them
    served = json.loads((run_dir / "served_at.json").read_text())
    assert served and summary["policy_version"] >= 1
    curves = load_curves(run_dir / "curves.jsonl")
    assert any(r["policy_version"] for r in curves["learned"])
    # random slates until the first version was served: the warm-up is counted, and no curve
    # window that ended before it carries a version
    assert 0 < summary["warmup_events"] < summary["events"]
    assert not any(r["policy_version"] for r in curves["learned"] if r["events"] <= summary["warmup_events"])
    # around the drift (here: the whole run) each learned slate was scored against the best slate
    # of its request, in expectation (the same-request figures)
    scored = [r for r in curves["learned"] if r.get("scored")]
    assert len(scored) == len(curves["learned"])
    assert all(0 < r["served_value"] <= r["best_value"] * (1 + 1e-9) for r in scored)

    # freshness came from snapshot metadata (trained offsets) and the produce times
    assert summary["freshness_samples"] > 0
    assert 0 < summary["freshness_p50_s"] <= summary["freshness_p99_s"]
    # the processor's part: production to the transition's append, shorter than to a served version
    assert 0 < summary["transition_lag_p50_s"] <= summary["transition_lag_p99_s"]
    assert summary["transition_lag_p50_s"] < summary["freshness_p50_s"]
    produced = np.load(run_dir / "produced_wall.npy")
    assert len(produced) == summary["events"] and np.all(np.diff(produced) >= 0)

    # transitions of served slates carry the ranker's request id, propensity and policy version
    settings = settings.replace(topic_prefix=settings.topic_prefix)
    served_tr = [t for r in read_all(settings, "transitions") for t in decode_transitions(r.value)
                 if t["policy_version"] is not None]
    assert served_tr
    assert all(0 < t["propensity"] <= 1 and t["request_id"] for t in served_tr)

    # report: plot, table, figures; every process left its log and exited
    for name in ("reward.png", "report.md", "summary.json", "figures.json", "cpu_seconds.json"):
        assert (run_dir / name).stat().st_size > 0
    assert "| learned |" in (run_dir / "report.md").read_text()
    for role in ("processor", "learner", "ranker", "simulator", "baselines"):
        assert (run_dir / f"{role}.log").exists()


def test_demo_refuses_a_run_directory_that_holds_a_previous_run(tmp_path):
    # the old run's learner checkpoint would resume at offsets of a broker that is gone
    (tmp_path / "learner").mkdir()
    out = subprocess.run([sys.executable, "-m", "streamrl.cli", "demo", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "holds a previous run (learner)" in out.stderr and "new --run-dir" in out.stderr


def _descendants(pid: int) -> set[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        todo.extend(kids)
    return tree


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_stopping_the_demo_stops_every_process(how, settings, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) and SIGTERM (kill, a supervisor) stop the
    run as its end does: every process stopped, the summary of what ran written. A demo killed
    outright (SIGKILL, no clean-up of its own) still takes its processes with it."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "STREAMRL_CACHE_DIR": settings.cache_dir, "STREAMRL_METRICS_PORT": "-2"}
    cmd = [sys.executable, "-m", "streamrl.cli", "demo", "--json", "--quiet", "--events", "1000000",
           "--duration", "120", "--users", "120", "--rate", "1500", "--arms", "random",
           "--run-dir", str(run_dir), "--bootstrap-servers", settings.bootstrap_servers,
           "--topic-prefix", settings.topic_prefix]
    demo = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not (run_dir / "simulator.log").exists():   # the closed loop has started
            assert demo.poll() is None, demo.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the closed loop never started"
            time.sleep(0.5)
        time.sleep(3)
        procs = _descendants(demo.pid)
        assert len(procs) >= 5   # processor, learner, ranker, baselines, simulator (and theirs)
        if how == "ctrl-c":
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        out, err = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    if how == "sigkill":
        assert demo.returncode == -signal.SIGKILL
    else:
        assert demo.returncode == 0, err[-3000:]
        summary = json.loads(out)
        assert summary["interrupted"] is True
        assert json.loads((run_dir / "summary.json").read_text())["interrupted"] is True
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120] for p in procs if _alive(p)}
    assert not left, f"processes left running after {how}: {left}"
