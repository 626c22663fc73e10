"""Hot swap under load: 20 snapshots published during a 30 s load on `streamrl serve`.

Same world as ``bench/serving.py`` (embedded broker, 3000-item catalog, 2000-item policy, 2000
users). While 8 keep-alive connections drive ``POST /rank`` (100 candidates, k=20), this process
publishes snapshots v2..v21 to ``policy.snapshots`` every 1.4 s. For each version, the swap delay
is the time from the publisher's last acknowledged record (the manifest) to the first response
that carries that version or a newer one. Any non-200 answer or connection error is a failure.

Last line: ``serving_swap snapshots=20 failed=<n> requests=<n> swap_p50_ms=<a> swap_p99_ms=<b> swap_max_ms=<c> served_all=<bool>``

    .venv/bin/python bench/serving_swap.py [--seconds 30] [--snapshots 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import Load, bench_settings, make_bodies, policy_parts, start_server, write_world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--snapshots", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streamrl.kafka import EmbeddedBroker, ensure_topics, free_port
    from streamrl.producers.snapshot import SnapshotPublisher

    broker = EmbeddedBroker().start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    settings = bench_settings(broker.bootstrap_servers, workdir, free_port(), "epsilon")
    ensure_topics(settings)
    ids, histories = write_world(settings, workdir)
    pub = SnapshotPublisher(settings)
    pub.publish(1, *policy_parts(1))
    parts = {v: policy_parts(v, seed=v) for v in range(2, args.snapshots + 2)}   # built before the clock starts
    server = start_server(settings)
    published: dict[int, float] = {}

    def publisher() -> None:
        interval = (args.seconds - 2.0) / args.snapshots
        time.sleep(1.0)
        for v in range(2, args.snapshots + 2):
            t_next = time.monotonic() + interval
            pub.publish(v, *parts[v])
            published[v] = time.monotonic()
            time.sleep(max(0.0, t_next - time.monotonic()))

    try:
        load = Load(settings.serve_port, [b for _, b in make_bodies(ids, list(histories), 100, 400, seed=1)])
        load.track_versions = True
        import uvloop

        uvloop.install()
        th = threading.Thread(target=publisher, daemon=True)
        th.start()
        t0 = time.monotonic()
        asyncio.run(load.run(args.seconds))
        elapsed = time.monotonic() - t0
        th.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
        pub.close()
        broker.stop()
    delays = []
    versions = load.versions
    for v, t_pub in sorted(published.items()):
        first = next((t for t, ver in versions if ver >= v and t >= t_pub), None)
        delays.append(float("inf") if first is None else first - t_pub)
    d = np.array(delays) * 1000
    finite = d[np.isfinite(d)]
    print(f"requests={len(load.latencies)} rps={len(load.latencies) / elapsed:.0f} "
          f"request_p99_ms={np.percentile(np.array(load.latencies) * 1000, 99):.1f} statuses={load.statuses} "
          f"swap_delays_ms={[round(x) for x in d.tolist()]} load={os.getloadavg()[0]:.2f}")
    print(f"serving_swap snapshots={len(published)} failed={load.failed} requests={len(load.latencies)} "
          f"swap_p50_ms={np.percentile(finite, 50):.0f} swap_p99_ms={np.percentile(finite, 99):.0f} "
          f"swap_max_ms={d.max():.0f} served_all={bool(np.isfinite(d).all())}")


if __name__ == "__main__":
    main()
