"""Ranking-service benchmark: real HTTP against `streamrl serve` at concurrency 8.

Sets up an embedded broker, a 3000-item catalog (MiniLM text, disk-cached), a 2000-item policy
snapshot on ``policy.snapshots`` (default model shape: dim 64, GRU 64, history 20), 2000 users
with 20-item histories in a SQLite store, then starts ``streamrl serve`` as a subprocess (decisions
go to ``ranking.decisions``) and drives ``POST /rank`` from 8 keep-alive connections with 100 and
with 1000 candidates (k=20, 1% of candidates unknown). ``forward`` is the bare model
(``QNetwork.score``) on the same (state, candidates) inputs, timed in this process after the HTTP
phase. Latencies are client-side (request written → response read).

Last line: ``serving p50_ms=<a> p99_ms=<b> rps=<c> forward_p99_ms=<d> candidates=1000``.

    .venv/bin/python bench/serving.py [--seconds 10] [--exploration epsilon]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_CATALOG, N_POLICY, N_USERS, HISTORY, K = 3000, 2000, 2000, 20, 20


# --- world -----------------------------------------------------------------------------------------

def write_world(settings, workdir: Path):
    """Catalog file, user states; returns (catalog ids, user histories)."""
    from streamrl.catalog import write_catalog
    from streamrl.consumers.state import UserState
    from streamrl.consumers.store import open_store

    rng = random.Random(0)
    words = ["trail", "running", "shoe", "linen", "shirt", "coffee", "grinder", "novel", "mystery", "lamp",
             "desk", "oak", "wireless", "earbuds", "yoga", "mat", "cast", "iron", "pan", "garden", "hose"]
    cats = ["outdoor", "fashion", "kitchen", "books", "home", "audio", "sport", "garden"]
    items = [{"item_id": f"item-{k}", "title": " ".join(rng.sample(words, 3)) + f" {k % 97}",
              "category": cats[k % len(cats)], "description": " ".join(rng.sample(words, 5))}
             for k in range(N_CATALOG)]
    write_catalog(workdir / "catalog.jsonl", items)
    ids = [it["item_id"] for it in items]
    histories = {}
    store = open_store(settings.state_store, settings.state_namespace)
    users = {}
    for u in range(N_USERS):
        hist = rng.sample(ids[:N_POLICY], HISTORY)
        histories[f"u{u}"] = hist
        users[f"u{u}"] = UserState(f"u{u}", history=[(1000 + t, f"e{u}-{t}", i, "click") for t, i in enumerate(hist)]).encode(None)
    store.commit({}, {}, users, {})
    store.close()
    return ids, histories


def policy_parts(version: int, seed: int = 0):
    """A random policy over the first N_POLICY catalog items, shaped like the learner's."""
    import torch

    from streamrl.learner.model import ModelConfig, QNetwork

    torch.manual_seed(seed)
    ids = ["<pad>"] + [f"item-{k}" for k in range(N_POLICY)]
    cfg = ModelConfig(n_items=len(ids), history_len=HISTORY)
    model = QNetwork(cfg)
    with torch.no_grad():
        model.item_id.weight.normal_(0, 0.3)
        model.item_bias.weight.normal_(0, 0.1)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tensors, {"parent_version": version - 1 or None, "train_step": version, "model_config": cfg.to_dict()}, ids


def bench_settings(bootstrap: str, workdir: Path, port: int, exploration: str, workers: int = 1):
    import uuid

    from streamrl.config import Settings

    return Settings.from_env(bootstrap_servers=bootstrap, topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
                             state_store=f"sqlite:///{workdir}/state.db", catalog_path=str(workdir / "catalog.jsonl"),
                             cache_dir=str(ROOT / ".streamrl/cache"), serve_port=port, serve_exploration=exploration,
                             history_len=HISTORY, log_level="WARNING", partitions=2, serve_workers=workers)


def start_server(settings, timeout_s: float = 180.0) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{settings.serve_port}/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server not ready in time")


def make_bodies(ids: list[str], users: list[str], n_cands: int, count: int, seed: int) -> list[tuple[dict, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        cands = rng.sample(ids, n_cands - n_cands // 100) + [f"unknown-{rng.random():.12f}" for _ in range(n_cands // 100)]
        req = {"user_id": rng.choice(users), "candidates": cands, "k": K}
        out.append((req, json.dumps(req, separators=(",", ":")).encode()))
    return out


# --- HTTP load (raw asyncio HTTP/1.1 keep-alive: the lightest client Python has) --------------------

class Load:
    """Closed-loop load: ``concurrency`` connections, each sends the next body when the last answered."""

    def __init__(self, port: int, bodies: list[bytes], concurrency: int = 8) -> None:
        self.port, self.bodies, self.concurrency = port, bodies, concurrency
        self.latencies: list[float] = []
        self.versions: list[tuple[float, int]] = []   # (response time, policy_version)
        self.failed = 0
        self.statuses: dict[int, int] = {}
        self.track_versions = False

    async def _conn(self, stop_at: float, offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        i = offset
        while time.monotonic() < stop_at:
            body = self.bodies[i % len(self.bodies)]
            i += self.concurrency
            head = (f"POST /rank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            try:
                writer.write(head + body)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                data = await reader.readexactly(length)
                status = int(status_line.split()[1])
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                self.failed += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                continue
            t1 = time.perf_counter()
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status != 200:
                self.failed += 1
                continue
            self.latencies.append(t1 - t0)
            if self.track_versions:
                j = data.find(b'"policy_version":')
                self.versions.append((time.monotonic(), int(data[j + 17:data.index(b",", j)])))
        writer.close()

    async def run(self, seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(self._conn(stop_at, n) for n in range(self.concurrency)))


def run_load(port: int, bodies: list[bytes], seconds: float, warmup_s: float = 2.0) -> Load:
    import uvloop

    uvloop.install()   # the client shares the 2 cores with the server: keep it light
    asyncio.run(Load(port, bodies).run(warmup_s))
    load = Load(port, bodies)
    t0 = time.monotonic()
    asyncio.run(load.run(seconds))
    load.elapsed = time.monotonic() - t0
    return load


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def forward_times(settings, snap, requests: list[dict], histories: dict[str, list[str]], reps: int = 1) -> list[float]:
    """The bare model (QNetwork.score) on the same (state, candidates) inputs as the HTTP phase."""
    import torch

    from streamrl.serving.policy import build_policy
    from streamrl.serving.server import catalog_text

    torch.set_num_threads(1)
    policy = build_policy(snap, catalog_text(settings))
    out = []
    with torch.inference_mode():
        for _ in range(reps):
            for req in requests:
                state = torch.from_numpy(policy.state(histories.get(req["user_id"], [])))
                rows = policy.rows(req["candidates"])
                cands = torch.from_numpy(rows[rows >= 0])
                t0 = time.perf_counter()
                policy.model.score(state, cands)
                out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured load per candidate count")
    ap.add_argument("--exploration", default="epsilon", choices=("greedy", "epsilon", "softmax"))
    ap.add_argument("--workers", type=int, default=1, help="server processes (--serve-workers)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streamrl.kafka import EmbeddedBroker, ensure_topics, free_port
    from streamrl.producers.snapshot import SnapshotPublisher, SnapshotReader

    broker = EmbeddedBroker().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = bench_settings(broker.bootstrap_servers, workdir, free_port(), args.exploration, args.workers)
    ensure_topics(settings)
    ids, histories = write_world(settings, workdir)
    pub = SnapshotPublisher(settings)
    pub.publish(1, *policy_parts(1))
    pub.close()
    server = start_server(settings)
    results = {}
    try:
        users = list(histories)
        for n in (100, 1000):
            reqs = make_bodies(ids, users, n, 400, seed=n)
            load = run_load(settings.serve_port, [b for _, b in reqs], args.seconds)
            results[n] = (load, reqs)
            print(f"candidates={n}: requests={len(load.latencies)} failed={load.failed} statuses={load.statuses} "
                  f"p50_ms={pct(load.latencies, 50):.2f} p99_ms={pct(load.latencies, 99):.2f} "
                  f"rps={len(load.latencies) / load.elapsed:.0f} load={os.getloadavg()[0]:.2f}", flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.serve_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        batch = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                 if ln.startswith("streamrl_serving_batch_requests_")}
        if batch.get("streamrl_serving_batch_requests_count"):
            print(f"server: mean batch {batch['streamrl_serving_batch_requests_sum'] / batch['streamrl_serving_batch_requests_count']:.2f} requests")
    finally:
        server.terminate()
        server.wait(timeout=30)
    reader = SnapshotReader(settings)
    snap = reader.latest(timeout_s=30)
    reader.close()
    fwd = {n: forward_times(settings, snap, [r for r, _ in results[n][1]], histories, reps=2) for n in (100, 1000)}
    for n in (100, 1000):
        print(f"forward candidates={n}: p50_ms={pct(fwd[n], 50):.3f} p99_ms={pct(fwd[n], 99):.3f}")
    broker.stop()
    load = results[1000][0]
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"server workers={args.workers}, exploration={args.exploration}, k={K}")
    print(f"serving p50_ms={pct(load.latencies, 50):.2f} p99_ms={pct(load.latencies, 99):.2f} "
          f"rps={len(load.latencies) / load.elapsed:.0f} forward_p99_ms={pct(fwd[1000], 99):.2f} candidates=1000")


if __name__ == "__main__":
    main()
