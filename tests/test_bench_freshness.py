"""`bench/freshness.py` shortened: the open-loop pipeline at a fixed rate gives a freshness figure.

Runs the real script (its own embedded broker; processor, learner and ranker as processes) for
a few seconds at 1500 events/s, and checks what it must produce: its machine-readable last
line, events at the asked rate, served versions and measured views. Not how fast: figures are
the benchmark's business.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_freshness_bench_measures_served_versions(settings, tmp_path):
    env = {**os.environ, "STREAMRL_CACHE_DIR": settings.cache_dir, "STREAMRL_METRICS_PORT": "-2"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "freshness.py"), "--rate", "1500", "--seconds", "12",
                          "--drain-s", "4", "--users", "120", "--run-dir", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("freshness ")
    fig = dict(kv.split("=") for kv in last.split()[1:])
    assert int(fig["events"]) == 18_000 and int(fig["rate"]) == 1500
    assert int(fig["versions"]) >= 1 and int(fig["samples"]) > 0
    assert float(fig["p50_s"]) > 0 and float(fig["p99_s"]) >= float(fig["p50_s"])
    assert (tmp_path / "run" / "learner.log").exists() and (tmp_path / "run" / "produced_wall.npy").exists()
