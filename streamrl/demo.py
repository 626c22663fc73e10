"""``streamrl demo``: the end-to-end run on one machine.

Starts the embedded broker (unless ``--bootstrap-servers``), the SQLite store and the event
processor as its own process, drives the simulator into Kafka, waits until the processor has
applied every event and closed every join, and prints a summary of what came out (user state,
transitions, rewards by slot, dead letters). Everything lands in a run directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamrl.config import Settings
from streamrl.consumers.processor import applied_offsets
from streamrl.consumers.state import split_record
from streamrl.consumers.store import open_store
from streamrl.kafka import EmbeddedBroker, ensure_topics, read_all
from streamrl.producers.simulator import SimConfig, run_simulate
from streamrl.schema import decode_transitions

log = logging.getLogger(__name__)


def summarize(settings: Settings, produced: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Figures of a finished run, from the store and the output topics."""
    transitions = [t for r in read_all(settings, "transitions") for t in decode_transitions(r.value)]
    dlq = read_all(settings, "events.dlq")
    by_pos: dict[int, list[float]] = {}
    for t in transitions:
        if t["position"] is not None:
            by_pos.setdefault(t["position"], []).append(t["reward"])
    users = 0
    counts: Counter = Counter()
    with open_store(settings.state_store, settings.state_namespace) as st:
        for _, blob in st.scan_users():
            doc, _ = split_record(blob)
            users += 1
            counts.update(dict(zip(("view", "click", "purchase"), doc["c"])))
    n = len(transitions)
    return {
        "events_produced": produced.get("events"), "events_applied": sum(counts.values()),
        "by_type": dict(counts), "users": users, "transitions": n,
        "unique_transition_ids": len({t["id"] for t in transitions}),
        "rewarded_share": round(sum(t["reward"] > 0 for t in transitions) / n, 4) if n else 0.0,
        "mean_reward": round(sum(t["reward"] for t in transitions) / n, 4) if n else 0.0,
        "purchases_joined": sum(t["engagement"] == "purchase" for t in transitions),
        "reward_by_position": {p: round(sum(r) / len(r), 4) for p, r in sorted(by_pos.items())},
        "dead_letters": len(dlq), "seconds": round(seconds, 1),
    }


def render(summary: dict[str, Any]) -> str:
    lines = ["", "streamrl demo summary", "---------------------"]
    for k in ("events_produced", "events_applied", "by_type", "users", "transitions",
              "unique_transition_ids", "rewarded_share", "mean_reward", "purchases_joined",
              "dead_letters", "seconds"):
        lines.append(f"{k:>22}: {summary[k]}")
    lines.append(f"{'reward by slot':>22}: " + "  ".join(f"{p}:{r:.3f}" for p, r in summary["reward_by_position"].items()))
    return "\n".join(lines)


def run_demo(settings: Settings, cfg: SimConfig, events: int, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """The whole run; returns the summary (also written to ``run_dir/summary.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if not settings.bootstrap_servers:
        broker = EmbeddedBroker().start()
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
    settings = settings.replace(
        state_store=settings.state_store if "STREAMRL_STATE_STORE" in os.environ else f"sqlite:///{run_dir / 'state.db'}",
        catalog_path=str(run_dir / "catalog.jsonl"))
    started = time.monotonic()
    processor = None
    try:
        ensure_topics(settings)
        from streamrl.catalog import write_catalog
        from streamrl.producers.simulator import Simulator

        write_catalog(settings.catalog_path, Simulator(cfg).catalog_items())
        env = {**os.environ, **settings.to_env(), "STREAMRL_METRICS_PORT": "0"}
        with open(run_dir / "processor.log", "w") as plog:
            processor = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "process", "--until-idle"],
                                         env=env, stdout=plog, stderr=subprocess.STDOUT)
        print(f"[demo] broker {settings.bootstrap_servers}; processor pid {processor.pid} "
              f"(log {run_dir / 'processor.log'}); simulating {events} events", file=sys.stderr, flush=True)
        produced = run_simulate(settings, cfg, events, progress=progress)
        bar = tqdm(total=produced["events"], desc="process", unit="ev", file=sys.stderr, mininterval=1,
                   disable=not progress)
        while processor.poll() is None:
            bar.n = min(applied_offsets(settings), produced["events"])
            bar.refresh()
            time.sleep(0.5)
        bar.n = applied_offsets(settings)
        bar.close()
        if processor.returncode != 0:
            raise RuntimeError(f"processor exited with {processor.returncode}; see {run_dir / 'processor.log'}")
        summary = summarize(settings, produced, time.monotonic() - started)
    finally:
        if processor is not None and processor.poll() is None:
            processor.send_signal(signal.SIGTERM)
            try:
                processor.wait(timeout=15)
            except subprocess.TimeoutExpired:
                processor.kill()
        if broker is not None:
            broker.stop()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
