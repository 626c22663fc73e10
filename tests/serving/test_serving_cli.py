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


def _serve(tmp_path, port: int) -> subprocess.Popen:
    """`streamrl serve` on ``port`` with snapshot version 3 loaded (token ``tok``), once ready."""
    save_snapshot(tmp_path / "snaps", make_snapshot(3))
    env = {**os.environ, "STREAMRL_BOOTSTRAP_SERVERS": "", "STREAMRL_SNAPSHOT_DIR": str(tmp_path / "snaps"),
           "STREAMRL_STATE_STORE": f"sqlite:///{tmp_path}/state.db", "STREAMRL_SERVE_PORT": str(port),
           "STREAMRL_SERVE_TOKEN": "tok", "STREAMRL_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "serve"], env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                assert json.loads(r.read())["policy_version"] == 3
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("server did not become ready")
            time.sleep(0.2)


def test_serve_command_answers_rank_and_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = _serve(tmp_path, port)
    try:
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


def test_closed_loop_client_keeps_requests_in_flight_and_falls_back_when_the_ranker_goes(tmp_path):
    from streamrl.producers.closed_loop import RankerWithFallback

    port = free_port()
    proc = _serve(tmp_path, port)
    client = RankerWithFallback(f"http://127.0.0.1:{port}", token="tok", concurrency=4)
    try:
        candidates = [f"i{k}" for k in range(8)]
        futures = [client.submit(f"u{n}", candidates, 3, ts=n) for n in range(12)]
        answers = [f.result(timeout=30) for f in futures]
        assert client.live and client.failures == 0
        assert {version for _, version, _ in answers} == {3}
        assert len({rid for _, _, rid in answers}) == 12            # each request named by the ranker
        assert all(len(slate) == 3 and {i for i, _ in slate} <= set(candidates) for slate, _, _ in answers)
        assert set(client.served_at) == {3} and len(client._clients) > 2  # several connections were used
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    try:
        slate, version, rid = client.submit("u0", candidates, 3, ts=99).result(timeout=30)
        assert (version, rid) == (None, None) and len(slate) == 3      # a random slate, exact propensity 1/n
        assert {p for _, p in slate} == {1 / 8}
        assert client.failures == 1 and not client.live
        assert client.submit("u1", candidates, 3, ts=100).result(timeout=30)[1] is None
    finally:
        client.close()


def test_closed_loop_client_asks_a_ranker_without_a_policy_and_serves_random_slates(tmp_path):
    """Before its first policy the ranker answers /rank with 503; the client still sends every
    request (the warm-up runs at the loop's own pace) and serves a random slate for each, which is
    not a failure."""
    from streamrl.producers.closed_loop import RankerWithFallback

    port = free_port()
    (tmp_path / "snaps").mkdir()
    env = {**os.environ, "STREAMRL_BOOTSTRAP_SERVERS": "", "STREAMRL_SNAPSHOT_DIR": str(tmp_path / "snaps"),
           "STREAMRL_STATE_STORE": f"sqlite:///{tmp_path}/state.db", "STREAMRL_SERVE_PORT": str(port),
           "STREAMRL_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "serve"], env=env)
    client = RankerWithFallback(f"http://127.0.0.1:{port}", concurrency=4, check_every_s=0.05)
    try:
        deadline = time.monotonic() + 60
        while not client.up:                      # the ranker answers (503: no policy yet)
            assert proc.poll() is None and time.monotonic() < deadline, "ranker did not come up"
            client.submit("u", ["i1", "i2"], 2, ts=0).result(timeout=30)
            time.sleep(0.05)
        candidates = [f"i{k}" for k in range(8)]
        answers = [f.result(timeout=30) for f in [client.submit(f"u{n}", candidates, 3, ts=n) for n in range(12)]]
        assert all((version, rid) == (None, None) and len(slate) == 3 and {p for _, p in slate} == {1 / 8}
                   for slate, version, rid in answers)   # random slates, exact propensity 1/n
        assert client.up and not client.live and client.failures == 0
        assert len(client._clients) > 1                  # the requests went to /rank, on the pool's connections
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_every_serving_setting_is_a_flag_of_serve():
    """A ``serve_*`` setting added to Settings is a ``streamrl serve`` flag too (and so in its --help)."""
    from dataclasses import fields

    from streamrl.cli import SERVE_FLAGS
    from streamrl.config import Settings

    assert {f.name for f in fields(Settings) if f.name.startswith("serve_")} <= set(SERVE_FLAGS)
