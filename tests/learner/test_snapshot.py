"""Snapshots: chunking, reassembly, verification, and a 200k-item round trip through the broker."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from streamrl.errors import SnapshotRejected
from streamrl.producers.snapshot import (SnapshotAssembler, SnapshotPublisher, SnapshotReader, build_manifest,
                                         chunk_headers, encode_weights, manifest_headers, published_versions)


def _tensors(n_items: int, dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"item_id.weight": torch.randn(n_items, dim, generator=g), "item_bias.weight": torch.randn(n_items, 1, generator=g),
            "q_head.weight": torch.randn(dim, dim, generator=g)}


def _records(version: int, tensors, item_ids, chunk_bytes: int, meta=None):
    weights = encode_weights(tensors, item_ids)
    manifest, chunks = build_manifest(version, weights, meta or {"model_config": {"n_items": len(item_ids)}},
                                      tensors, chunk_bytes)
    recs = [(c, chunk_headers(version, i, len(chunks), c)) for i, c in enumerate(chunks)]
    return recs, (json.dumps(manifest).encode(), manifest_headers(version)), manifest


def _feed(asm, recs, manifest_rec):
    for value, headers in recs:
        assert asm.add(value, headers) is None
    return asm.add(*manifest_rec)


def test_assemble_chunked_snapshot_roundtrips():
    ids = [f"i{k}" for k in range(300)]
    t = _tensors(300)
    recs, man, manifest = _records(1, t, ids, chunk_bytes=1000)
    assert len(recs) > 5
    snap = _feed(SnapshotAssembler(), recs, man)
    assert snap.version == 1 and snap.item_ids == ids
    assert snap.metadata["weights_sha256"] == hashlib.sha256(snap.weights).hexdigest()
    for k, v in t.items():
        assert torch.equal(snap.tensors[k], v)


@pytest.mark.parametrize("damage,reason", [
    ("drop_middle", "missing_chunk"), ("drop_last", "missing_chunk"), ("flip_byte", "chunk_checksum"),
    ("truncate_chunk", "chunk_checksum"), ("forge_chunk", "checksum"), ("bad_manifest", "bad_manifest"),
])
def test_damaged_chunk_set_is_rejected(damage, reason):
    """Missing, corrupted or truncated chunks (or a forged chunk list) never yield a snapshot."""
    ids = [f"i{k}" for k in range(300)]
    recs, (mval, mh), manifest = _records(1, _tensors(300), ids, chunk_bytes=1000)
    if damage == "drop_middle":
        del recs[3]
    elif damage == "drop_last":
        recs.pop()
    elif damage == "flip_byte":
        v, h = recs[2]
        recs[2] = (v[:10] + bytes([v[10] ^ 1]) + v[11:], h)
    elif damage == "truncate_chunk":
        v, h = recs[-1]
        recs[-1] = (v[:-7], h)
    elif damage == "forge_chunk":  # attacker rewrites a chunk and its checksum in the manifest
        v, h = recs[2]
        forged = bytes(len(v))
        recs[2] = (forged, h)
        manifest["chunk_sha256"][2] = hashlib.sha256(forged).hexdigest()
        mval = json.dumps(manifest).encode()
    elif damage == "bad_manifest":
        mval = b'{"format": 1, "version": "x"}'
    with pytest.raises(SnapshotRejected) as e:
        _feed(SnapshotAssembler(), recs, (mval, mh))
    assert e.value.reason == reason


def test_non_finite_or_misshapen_weights_are_rejected():
    ids = ["a", "b", "c"]
    t = _tensors(3)
    t["q_head.weight"][0, 0] = float("nan")
    recs, man, _ = _records(1, t, ids, chunk_bytes=10_000)
    with pytest.raises(SnapshotRejected, match="non_finite"):
        _feed(SnapshotAssembler(), recs, man)
    recs, man, _ = _records(2, _tensors(3), ids, chunk_bytes=10_000, meta={"model_config": {"n_items": 4}})
    with pytest.raises(SnapshotRejected, match="shape_mismatch"):
        _feed(SnapshotAssembler(), recs, man)


def test_orphan_chunks_of_an_unfinished_publish_are_ignored():
    ids = ["a", "b"]
    recs1, _, _ = _records(1, _tensors(2, seed=1), ids, chunk_bytes=100)  # publisher died: no manifest
    recs2, man2, _ = _records(2, _tensors(2, seed=2), ids, chunk_bytes=100)
    asm = SnapshotAssembler()
    for v, h in recs1:
        asm.add(v, h)
    snap = _feed(asm, recs2, man2)
    assert snap.version == 2 and not asm.pending


@pytest.mark.integration
def test_200k_item_snapshot_roundtrips_through_broker_and_damage_is_rejected(settings):
    """A 200k-item snapshot (> 50 MB) goes through policy.snapshots intact in 900 KiB chunks; a later
    truncated and a corrupted chunk set are rejected and the reader keeps the intact version."""
    n = 200_001
    ids = [f"item-{k}" for k in range(n)]
    tensors = _tensors(n, dim=64)
    import time

    pub = SnapshotPublisher(settings)
    t0 = time.monotonic()
    manifest = pub.publish(1, tensors, {"model_config": {"n_items": n}, "train_step": 7}, ids)
    t_pub = time.monotonic() - t0
    assert manifest["total_bytes"] >= 50 * 1024 * 1024 and manifest["n_chunks"] > 50
    # v2: truncated (last chunk never sent); v3: one chunk corrupted in flight
    for version, damage in ((2, "truncate"), (3, "corrupt")):
        weights = encode_weights(_tensors(300, dim=64, seed=version), ids[:300])
        man, chunks = build_manifest(version, weights, {"model_config": {"n_items": 300}},
                                     _tensors(300, dim=64, seed=version), 4096)
        sent = chunks[:-1] if damage == "truncate" else [c if i != 1 else c[::-1] for i, c in enumerate(chunks)]
        for i, c in enumerate(sent):
            pub.producer.send(pub.topic, key=b"v%d" % version, value=c, partition=0,
                              headers=chunk_headers(version, i, len(chunks), chunks[i]))
        pub.producer.send(pub.topic, key=b"v%d" % version, value=json.dumps(man).encode(), partition=0,
                          headers=manifest_headers(version)).get(timeout=30)
    pub.close()

    reader = SnapshotReader(settings)
    try:
        t0 = time.monotonic()
        snap = reader.latest(timeout_s=60)
        print(f"\nsnapshot: {manifest['total_bytes'] / 2**20:.1f} MiB in {manifest['n_chunks']} chunks, "
              f"published in {t_pub:.2f}s, read+verified in {time.monotonic() - t0:.2f}s; "
              f"rejected {[e.reason for e in reader.rejected]}")
        assert snap is not None and snap.version == 1
        assert snap.item_ids == ids and snap.metadata["train_step"] == 7
        assert len(snap.weights) == manifest["total_bytes"]
        assert all(torch.equal(snap.tensors[k], v) for k, v in tensors.items())
        assert [e.reason for e in reader.rejected] == ["missing_chunk", "chunk_checksum"]
    finally:
        reader.close()
    assert published_versions(settings) == [1, 2, 3]


def test_policy_from_snapshot_scores_like_the_learner():
    """Serving's path: learner tensors -> snapshot bytes -> verified snapshot -> Policy; same scores,
    and an item unknown to the snapshot is scored through its text vector."""
    import numpy as np

    from streamrl.learner.config import LearnerConfig
    from streamrl.learner.policy import load_policy
    from streamrl.learner.worker import Learner

    cfg = LearnerConfig(dim=8, hidden=8, history_len=4, batch_size=16, min_buffer=16, capacity=1000)
    lr = Learner(None, cfg)
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(30)]
    text = rng.standard_normal((31, 384)).astype(np.float32)
    lr.add_items(ids, text[:30])
    lr.ingest([{"id": f"t{k}", "state": ids[k % 5:k % 5 + 3], "action": ids[k % 30], "reward": float(k % 3 == 0),
                "next_state": ids[k % 5:k % 5 + 4], "propensity": 0.1} for k in range(200)], 0, 0)
    lr.train(5)
    tensors, item_ids = lr.snapshot_tensors()
    meta = {"model_config": {**lr.online.cfg.to_dict(), "n_items": len(item_ids)}}
    recs, man, _ = _records(4, tensors, item_ids, chunk_bytes=5000, meta=meta)
    snap = _feed(SnapshotAssembler(), recs, man)
    policy = load_policy(snap, {**{i: text[k] for k, i in enumerate(ids)}, "new": text[30]})
    hist, cands = ["i1", "i2", "i3"], ["i4", "i9", "i20"]
    with torch.no_grad():
        state = torch.tensor([[0] + lr.vocab.lookup(hist).tolist()])
        expected = lr.online.score(state, lr.vocab.lookup(cands))[0].numpy()
    assert np.allclose(policy.score(hist, cands), expected, atol=1e-5)
    with torch.no_grad():
        z = lr.online.encode(state)
        g = lr.online.text_proj(torch.from_numpy(text[30:31]))
        want = float((lr.online.sup_head(z) * g).sum() + cfg.q_weight * (lr.online.q_head(z) * g).sum())
    assert float(policy.score(hist, ["new"])[0]) == pytest.approx(want, abs=1e-5)
