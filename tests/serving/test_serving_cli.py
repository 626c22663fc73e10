"""`streamrl serve` end to end: a subprocess that loads a snapshot directory, answers over HTTP
and shuts down on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from serving_snapshots import make_snapshot

from streamrl.kafka import free_port
from streamrl.serving.snapdir import save_snapshot


def test_serve_command_answers_rank_and_stops_on_sigterm(tmp_path):
    save_snapshot(tmp_path / "snaps", make_snapshot(3))
    port = free_port()
    env = {**os.environ, "STREAMRL_BOOTSTRAP_SERVERS": "", "STREAMRL_SNAPSHOT_DIR": str(tmp_path / "snaps"),
           "STREAMRL_STATE_STORE": f"sqlite:///{tmp_path}/state.db", "STREAMRL_SERVE_PORT": str(port),
           "STREAMRL_SERVE_TOKEN": "tok", "STREAMRL_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "serve"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    assert json.loads(r.read())["policy_version"] == 3
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/rank", method="POST",
                                     data=json.dumps({"user_id": "u", "candidates": ["i1", "i2"], "k": 2}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer tok"})
        with urllib.request.urlopen(req, timeout=5) as r:
            out = json.loads(r.read())
        assert out["policy_version"] == 3 and {it["item_id"] for it in out["items"]} == {"i1", "i2"}
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the captured SIGTERM
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
