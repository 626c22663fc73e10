"""Snapshot watcher against the real broker: start-up load, hot swap, and every corrupt kind.

Each corrupt snapshot (bad sha256, a NaN weight, a wrong shape, missing chunks, a lower version)
must be rejected, counted under its reason, and the ranker must keep serving the previous
version; a good snapshot published afterwards is served within seconds.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from prometheus_client import REGISTRY
from serving_snapshots import catalog_text, make_snapshot, policy_parts

from streamrl.producers.snapshot import (SnapshotPublisher, build_manifest, chunk_headers, encode_weights,
                                         manifest_headers)
from streamrl.serving.ranker import Ranker
from streamrl.serving.snapdir import iter_snapshots, save_snapshot
from streamrl.serving.watcher import SnapshotWatcher

pytestmark = pytest.mark.integration


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("streamrl_snapshot_rejected_total", {"reason": reason}) or 0.0


def _send_raw(pub: SnapshotPublisher, version: int, tensors, meta, ids, *, drop_chunk: int | None = None,
              forge_sha: bool = False, forge_shape: bool = False) -> None:
    """Publish by hand, damaging the snapshot on the way."""
    weights = encode_weights(tensors, ids)
    manifest, chunks = build_manifest(version, weights, meta, tensors, chunk_bytes=4096)
    if forge_sha:
        manifest["sha256"] = "0" * 64
    if forge_shape:
        manifest["metadata"]["tensors"]["q_head.weight"]["shape"] = [8, 9]
    for i, c in enumerate(chunks):
        if i != drop_chunk:
            pub.producer.send(pub.topic, key=b"v%d" % version, value=c, partition=0,
                              headers=chunk_headers(version, i, len(chunks), c))
    pub.producer.send(pub.topic, key=b"v%d" % version, value=json.dumps(manifest).encode(), partition=0,
                      headers=manifest_headers(version)).get(timeout=30)


def _wait(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_startup_serves_newest_valid_snapshot_of_topic_or_directory(settings, tmp_path):
    pub = SnapshotPublisher(settings)
    for v in (1, 2):
        pub.publish(v, *policy_parts(v))
    pub.close()
    # topic only: v2
    ranker = Ranker(settings, catalog_text())
    w = SnapshotWatcher(settings, ranker)
    assert w.load_initial(timeout_s=10) == 2
    w.stop()
    # directory holds v4 (good) and v5 (weights damaged on disk): v5 rejected, v4 beats the topic's v2
    d = tmp_path / "snaps"
    save_snapshot(d, make_snapshot(4))
    save_snapshot(d, make_snapshot(5, seed=5))
    path = d / f"v{5:012d}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    before = _rejected("checksum")
    ranker = Ranker(settings.replace(snapshot_dir=str(d)), catalog_text())
    w = SnapshotWatcher(ranker.settings, ranker)
    assert w.load_initial(timeout_s=10) == 4
    assert _rejected("checksum") == before + 1
    w.stop()
    assert [s.version for s in iter_snapshots(d)] == [4]


def test_corrupt_snapshots_are_rejected_by_reason_and_serving_continues(settings, tmp_path):
    settings = settings.replace(snapshot_dir=str(tmp_path / "snaps"))
    pub = SnapshotPublisher(settings, chunk_bytes=4096)
    pub.publish(1, *policy_parts(1))
    ranker = Ranker(settings, catalog_text(), seed=0)
    watcher = SnapshotWatcher(settings, ranker, poll_ms=50)
    assert watcher.load_initial() == 1
    watcher.start()
    try:
        pub.publish(2, *policy_parts(2, seed=2))
        assert _wait(lambda: ranker.version == 2), "good v2 not swapped in"
        served = ranker.rank("u", ["i1", "i2", "i3"], 3)
        t, meta, ids = policy_parts(3)
        nan = {k: v.clone() for k, v in t.items()}
        nan["q_head.weight"][0, 0] = float("nan")
        misfit = dict(t)
        misfit["q_head.weight"] = torch.zeros(8, 4)              # consistent manifest, wrong for the model
        cases = [  # (reason, how)
            ("checksum", lambda: _send_raw(pub, 3, t, meta, ids, forge_sha=True)),
            ("non_finite", lambda: pub.publish(4, nan, meta, ids)),
            ("shape_mismatch", lambda: _send_raw(pub, 5, t, meta, ids, forge_shape=True)),
            ("shape_mismatch", lambda: pub.publish(6, misfit, meta, ids)),
            ("missing_chunk", lambda: _send_raw(pub, 7, t, meta, ids, drop_chunk=2)),
            ("stale_version", lambda: pub.publish(1, *policy_parts(1))),
        ]
        for reason, publish in cases:
            before = _rejected(reason)
            publish()
            assert _wait(lambda: _rejected(reason) >= before + 1), f"{reason} not counted"
            assert ranker.version == 2, reason
            out = ranker.rank("u", ["i1", "i2", "i3"], 3)
            assert out["policy_version"] == 2
        assert served["policy_version"] == 2
        t0 = time.monotonic()
        pub.publish(8, *policy_parts(8, seed=8))
        assert _wait(lambda: ranker.version == 8), "good v8 not swapped in after the rejections"
        assert time.monotonic() - t0 < 5
        # the watcher saves a snapshot right after swapping it in
        assert _wait(lambda: [s.version for s in iter_snapshots(settings.snapshot_dir)] == [8, 2, 1])
    finally:
        watcher.stop()
        pub.close()
