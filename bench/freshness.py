"""Freshness at a fixed event rate: an event's production to the first served policy trained on it.

``streamrl demo`` measures freshness in its closed loop, at whatever rate the machine leaves it
(the simulator waits on the ranker for every slate, and every process shares the cores). This
bench holds the rate fixed, 5000 events/s by default, in an open loop, so the pipeline's
freshness is measured at the rate it is specified for:

- the demo's world (same users, items, seed) with uniformly random slates (propensity 1/n) is
  produced to Kafka at ``--rate`` events/s by this process (the wall time each event is handed to
  the producer is recorded);
- the processor, the learner (the demo's flags, ``streamrl.demo.DEMO_LEARNER``) and the ranker
  run as separate processes, exactly as ``streamrl demo`` starts them, on the embedded broker;
- a thread asks the ranker's ``GET /readyz`` every 20 ms which policy version it serves and
  records when each version was first served.

Freshness of a view is computed as in the demo (:func:`streamrl.freshness.freshness`): served time of
the first version whose snapshot metadata says its last gradient step had consumed the view's
transition, minus the view's production time, for views produced after the first learned version
was served. After production stops, the pipeline runs ``--drain-s`` more seconds; a view whose
transition no served version covered by then (``unserved``) counts as infinitely late in the
percentiles, so a stalled tail shows as ``inf`` rather than dropping out.

Last line::

    freshness p50_s=<a> p99_s=<b> rate=<target> events_per_s=<achieved> events=<n> samples=<n> \
unserved=<n> versions=<n>

    .venv/bin/python bench/freshness.py [--rate 5000] [--seconds 60] [--drain-s 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def poll_served(url: str, served: dict[int, float], stop: threading.Event, every_s: float = 0.02) -> None:
    """Record the wall time each policy version was first answered by ``GET {url}/readyz``."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                v = json.loads(r.read()).get("policy_version")
            if v is not None and int(v) not in served:
                served[int(v)] = time.time()
        except OSError:
            pass  # not ready yet (503) or busy: ask again
        stop.wait(every_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="events per second produced [5000]")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of production [60]")
    ap.add_argument("--drain-s", type=float, default=10.0, help="seconds the pipeline runs after production [10]")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default=None, help="logs and recorded times [a temp dir]")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from streamrl.config import Settings
    from streamrl.demo import DEMO_LEARNER, demo_settings, embed_catalog, start_pipeline, wait_listening
    from streamrl.freshness import freshness_latencies
    from streamrl.kafka import EmbeddedBroker, ensure_topics
    from streamrl.producers.closed_loop import PRODUCED, SERVED
    from streamrl.producers.simulator import SimConfig, Simulator
    from streamrl.producers.sink import EventSink

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-freshness-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = SimConfig(n_users=args.users, n_items=args.items, seed=args.seed)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    broker = EmbeddedBroker().start()
    settings = demo_settings(Settings.from_env(), run_dir, set()).replace(bootstrap_servers=broker.bootstrap_servers)
    children = None
    served: dict[int, float] = {}
    stop = threading.Event()
    try:
        ensure_topics(settings)
        embed_catalog(settings, cfg, say)
        children, settings, ports = start_pipeline(settings, run_dir, DEMO_LEARNER)
        ranker_port = settings.serve_port
        wait_listening({"learner": ports["learner"], "ranker": ranker_port}, children, timeout_s=120)
        poller = threading.Thread(target=poll_served, args=(f"http://127.0.0.1:{ranker_port}", served, stop),
                                  daemon=True)
        poller.start()

        total = int(args.rate * args.seconds)
        produced = np.full(total, np.nan)
        say(f"[freshness] producing {total:,} events at {args.rate:,.0f}/s; logs in {run_dir}")
        n = 0
        with EventSink(settings) as sink:
            started = last = time.monotonic()
            for ev in Simulator(cfg).events(total):
                sink.send(ev)
                produced[n] = time.time()
                n += 1
                now = time.monotonic()
                ahead = n / args.rate - (now - started)
                if ahead > 0.002:
                    time.sleep(ahead)
                if now - last >= 5.0:
                    last = now
                    failed = children.failed()
                    if failed:
                        raise RuntimeError(f"{', '.join(failed)} exited with an error; see logs in {run_dir}")
                    say(f"[freshness {now - started:4.0f}s] {n:,} events ({n / (now - started):,.0f}/s), "
                        f"policy v{max(served, default=None)}")
            sink.flush()
            seconds = time.monotonic() - started
        say(f"[freshness] produced {n:,} events in {seconds:.1f}s; draining {args.drain_s:.0f}s")
        time.sleep(args.drain_s)
        cpu = children.cpu_seconds()
    finally:
        stop.set()
        if children is not None:
            children.stop()
    try:
        np.save(run_dir / PRODUCED, produced[:n])
        (run_dir / SERVED).write_text(json.dumps({str(v): t for v, t in sorted(served.items())}))
        lat, unserved = freshness_latencies(settings, run_dir, cfg.seed)
    finally:
        broker.stop()
    say(f"[freshness] CPU seconds by process: {cpu}")
    # a view no served version covered by the end (>= drain-s after production) counts as infinitely late
    timed = np.concatenate([lat, np.full(unserved, np.inf)])
    pct = {q: (round(float(np.percentile(timed, q)), 3) if timed.size else None) for q in (50, 99)}
    out = {"p50_s": pct[50], "p99_s": pct[99], "rate": round(args.rate), "events_per_s": round(n / seconds),
           "events": n, "samples": int(lat.size), "unserved": unserved, "versions": len(served)}
    print("freshness " + " ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
