"""The learner against the embedded broker: kill -9 and restart, poisoned transitions."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from learner_synth import make_world, transitions, warm_histories

from streamrl.kafka import make_consumer, make_producer
from streamrl.learner.checkpoint import FILENAME, load_checkpoint
from streamrl.learner.config import LearnerConfig
from streamrl.learner.worker import Learner
from streamrl.producers.snapshot import SnapshotReader, published_versions
from streamrl.schema import encode_transitions

pytestmark = pytest.mark.integration

SMALL = ["--dim", "16", "--hidden", "16", "--history-len", "10", "--batch-size", "64", "--min-buffer", "200",
         "--capacity", "50000", "--holdout-capacity", "5000", "--min-transitions-to-publish", "500",
         "--publish-interval-s", "2", "--checkpoint-interval-s", "1", "--gate-tolerance", "1",
         "--snips-tolerance", "1", "--updates-per-transition", "0.25", "--max-updates-per-poll", "8",
         "--eval-negatives", "50", "--next-candidates", "32", "--sup-negatives", "32"]


def produce(settings, batch: list[dict], per_message: int = 100) -> None:
    producer = make_producer(settings)
    topic = settings.topic("transitions")
    for k in range(0, len(batch), per_message):
        producer.send(topic, value=encode_transitions(batch[k:k + per_message]),
                      partition=(k // per_message) % settings.partitions)
    producer.flush()
    producer.close()


def manifest_counts(settings) -> Counter:
    from kafka import TopicPartition

    tp = TopicPartition(settings.topic("policy.snapshots"), 0)
    c = make_consumer(settings, group_id=None)
    c.assign([tp])
    c.seek_to_beginning(tp)
    counts: Counter = Counter()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            for r in recs:
                h = dict(r.headers)
                if h.get("streamrl.snapshot.kind") == b"manifest":
                    counts[int(h["streamrl.snapshot.version"])] += 1
        hw = c.highwater(tp)
        if hw is not None and c.position(tp) >= hw:
            break
    c.close()
    return counts


def learn_cmd(settings, learner_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamrl.cli", "learn", "--bootstrap-servers", settings.bootstrap_servers,
            "--topic-prefix", settings.topic_prefix, "--partitions", str(settings.partitions),
            "--learner-dir", str(learner_dir), "--metrics-port", "-2", *SMALL, *extra]


def test_kill9_restart_resumes_refills_and_publishes_higher_version(settings, tmp_path):
    """kill -9 mid-training; on restart the learner resumes from its checkpoint, refills the buffer
    from the topic, drops redelivered transitions, and publishes a version above every earlier one."""
    world = make_world(200, 100, seed=3)
    warm_histories(world, seed=3)
    first = transitions(world, 3000, seed=3)
    produce(settings, first)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(learn_cmd(settings, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = load_checkpoint(tmp_path) if (tmp_path / FILENAME).exists() else None
            if state is not None and state["last_version"] >= 1 and state["train_step"] > 20:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.3)
        else:
            pytest.fail("learner published nothing within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = set(published_versions(settings))
    assert before
    ckpt = load_checkpoint(tmp_path)

    second = transitions(world, 1000, seed=4)
    produce(settings, second + first[:500])  # 500 redelivered duplicates
    out = subprocess.run(learn_cmd(settings, tmp_path, "--until-idle", "--max-seconds", "150"),
                         capture_output=True, env=env, timeout=240)
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    assert out.returncode == 0, stderr[-3000:]
    m = re.search(r"resumed from checkpoint: step (\d+), published v(\d+)", stderr)
    assert m and int(m.group(1)) == ckpt["train_step"], stderr[-3000:]
    summary = dict(kv.split("=") for kv in stdout.strip().splitlines()[-1].split()[1:])
    print("\nkill -9 restart:", stdout.strip().splitlines()[-1], "| earlier versions", sorted(before))
    published = [int(v) for v in summary["published"].split(",") if v != "-"]
    assert published and min(published) > max(before)
    assert int(summary["refilled"]) > 0
    n_unique = len({t["id"] for t in first + second})
    assert int(summary["buffer"]) + int(summary["holdout"]) == int(summary["unique_ids"]) == n_unique
    assert int(summary["duplicates"]) >= 500
    counts = manifest_counts(settings)
    assert all(c == 1 for c in counts.values()), counts  # no version published twice


def test_nan_rewards_never_reach_a_published_snapshot(settings, tmp_path):
    """Transitions with NaN/Inf rewards are refused at ingestion and counted; every published
    snapshot verifies finite and the learner keeps training on the clean ones."""
    world = make_world(200, 100, seed=5)
    warm_histories(world, seed=5)
    data = transitions(world, 2000, seed=5)
    poisoned = 0
    for k, t in enumerate(data):
        if k % 7 == 0:
            t["reward"] = math.nan if k % 2 else math.inf
            poisoned += 1
    produce(settings, data)
    cfg = LearnerConfig(dim=16, hidden=16, history_len=10, batch_size=64, min_buffer=200, capacity=20_000,
                        holdout_capacity=5000, min_transitions_to_publish=500, publish_interval_s=0.5,
                        gate_tolerance=1.0, snips_tolerance=1.0, updates_per_transition=0.2,
                        max_updates_per_poll=8, eval_negatives=50, next_candidates=32, sup_negatives=32)
    learner = Learner(settings, cfg, checkpoint_dir=str(tmp_path))
    from prometheus_client import REGISTRY

    metric = {"reason": "non_finite_reward"}
    counted = REGISTRY.get_sample_value("streamrl_learner_rejected_transitions_total", metric) or 0.0
    summary = learner.run(until_idle=True, max_seconds=120)
    assert summary.rejected.get("non_finite_reward") == poisoned
    assert REGISTRY.get_sample_value("streamrl_learner_rejected_transitions_total", metric) - counted == poisoned
    assert summary.published
    reader = SnapshotReader(settings)
    try:
        snap = reader.latest(timeout_s=30)
        assert snap is not None and snap.version == summary.published[-1] and not reader.rejected
    finally:
        reader.close()
    json.dumps(snap.metadata)  # metadata is plain JSON (hyperparameters, eval figures)
    assert snap.metadata["hyperparameters"]["gamma"] == cfg.gamma


def test_the_first_snapshot_goes_out_without_waiting_a_publish_interval(settings, tmp_path):
    """A fresh learner gates as soon as it has seen min_transitions_to_publish transitions and taken
    a step, not one publish interval after it started (the demo's closed loop serves random slates
    until then); later gates keep the interval."""
    world = make_world(200, 100, seed=8)
    warm_histories(world, seed=8)
    produce(settings, transitions(world, 2000, seed=8))
    cfg = LearnerConfig(dim=16, hidden=16, history_len=10, batch_size=64, min_buffer=200, capacity=20_000,
                        holdout_capacity=5000, min_transitions_to_publish=500, publish_interval_s=600,
                        gate_tolerance=1.0, snips_tolerance=1.0, updates_per_transition=0.2,
                        max_updates_per_poll=8, eval_negatives=50, next_candidates=32, sup_negatives=32)
    learner = Learner(settings, cfg, checkpoint_dir=str(tmp_path))
    assert not learner.gate_ready()                 # nothing seen, no step
    summary = learner.run(max_seconds=15)           # no last gate at the end: only a run's own gates
    assert summary.published == [1]                 # the first at once, the next not before 600 s
    assert learner.gate_ready() and learner.train_step > learner._gated_step   # steps the interval held back


def test_simulator_processor_learner_pipeline_publishes_a_usable_policy(settings, tmp_path):
    """The contract end to end: simulated events -> processor -> transitions -> learner ->
    snapshot -> Policy that scores catalog items (text vectors from the catalog)."""
    from streamrl.catalog import ItemEmbeddings, TextEmbedder, load_catalog
    from streamrl.consumers.processor import EventProcessor
    from streamrl.learner.policy import load_policy
    from streamrl.producers.simulator import SimConfig, run_simulate

    s = settings.replace(catalog_path=str(tmp_path / "catalog.jsonl"), learner_dir=str(tmp_path / "learner"))
    run_simulate(s, SimConfig(n_users=100, n_items=200, seed=2), 15_000, progress=False)
    EventProcessor(s).run(until_idle=True, max_seconds=120)
    cfg = LearnerConfig(dim=16, hidden=16, history_len=10, batch_size=64, min_buffer=500, capacity=50_000,
                        min_transitions_to_publish=1000, publish_interval_s=60, updates_per_transition=0.02,
                        eval_negatives=50, next_candidates=32, sup_negatives=32, gate_tolerance=1.0, snips_tolerance=1.0)
    summary = Learner(s, cfg).run(until_idle=True, max_seconds=120)
    assert summary.published and summary.ingested > 10_000 and not summary.rejected
    reader = SnapshotReader(s)
    try:
        snap = reader.latest(timeout_s=30)
    finally:
        reader.close()
    assert snap.version == summary.published[-1]
    catalog = load_catalog(s.catalog_path)
    policy = load_policy(snap, ItemEmbeddings.from_catalog(catalog, TextEmbedder(s.cache_dir)))
    scores = policy.score(["i1", "i2"], list(catalog)[:50])
    assert scores.shape == (50,) and np.isfinite(scores).all() and scores.std() > 0


def test_version_published_before_a_crash_is_never_reused(settings, tmp_path):
    """Crash between publishing v5 and checkpointing it: the checkpoint says v0, the topic says v5
    (plus orphan chunks of an unfinished v6); the restarted learner publishes v7."""
    import torch

    from streamrl.producers.snapshot import SnapshotPublisher, chunk_headers

    pub = SnapshotPublisher(settings)
    pub.publish(5, {"w": torch.ones(2)}, {}, ["a"])
    pub.producer.send(pub.topic, value=b"x", partition=0, headers=chunk_headers(6, 0, 2, b"x")).get(timeout=10)
    pub.close()
    world = make_world(100, 50, seed=6)
    warm_histories(world, seed=6)
    produce(settings, transitions(world, 1200, seed=6))
    cfg = LearnerConfig(dim=8, hidden=8, history_len=5, batch_size=32, min_buffer=200, capacity=5000,
                        holdout_capacity=1000, min_transitions_to_publish=500, publish_interval_s=60,
                        updates_per_transition=0.02, eval_negatives=20, next_candidates=16, sup_negatives=16)
    summary = Learner(settings, cfg, checkpoint_dir=str(tmp_path)).run(until_idle=True, max_seconds=60)
    assert summary.published == [7]
    assert load_checkpoint(tmp_path)["last_version"] == 7


def test_sigterm_stops_after_the_current_turn_with_a_checkpoint(settings, tmp_path):
    """SIGTERM only asks the loop to stop: the learner writes a last checkpoint and exits 0."""
    world = make_world(100, 50, seed=7)
    warm_histories(world, seed=7)
    produce(settings, transitions(world, 1500, seed=7))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(learn_cmd(settings, tmp_path, "--checkpoint-interval-s", "600"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / FILENAME).exists():  # first publish writes the first checkpoint
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip().splitlines()[-1].startswith("learn updates=")
    state = load_checkpoint(tmp_path)
    assert sum(state["consumed"].values()) == 15  # every message read is in the last checkpoint
