"""Policy snapshots on topic ``policy.snapshots``: publisher, reassembler, verifier, reader.

Wire format (one partition, so a snapshot's records stay in order):

1. chunk records, one per ``chunk_bytes`` slice of the safetensors weights; key ``v<version>``;
   headers ``streamrl.snapshot.kind=chunk``, ``.version``, ``.index``, ``.count``, ``.sha256``;
2. then one manifest record (kind ``manifest``), a JSON value::

       {"format": 1, "version": 7, "n_chunks": 58, "total_bytes": 52_000_123,
        "sha256": "<of the weights>", "chunk_sha256": [...], "metadata": {...}}

The manifest comes last, so a publisher that dies mid-way leaves chunks without a manifest, which
readers ignore. ``metadata`` carries version, parent_version, created_at, train_step, evaluation
figures, model config, hyperparameters and the tensor shapes. The item id list lives in the
safetensors header (``__metadata__["item_ids"]``), covered by the sha256. Nothing is unpickled.

A reader verifies, in order: every chunk present with its checksum, total length, sha256 of the
whole, safetensors parse, shapes against the metadata, finiteness of every float tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamrl.config import Settings
from streamrl.errors import SnapshotRejected

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_BYTES = 900 * 1024
TOPIC = "policy.snapshots"
#: Why a snapshot is rejected (bounded: a metric label).
REJECT_REASONS = ("bad_manifest", "missing_chunk", "chunk_checksum", "truncated", "checksum",
                  "bad_weights", "shape_mismatch", "non_finite", "stale_version")


@dataclass
class Snapshot:
    """A verified snapshot: metadata plus safetensors weights (bytes and parsed tensors)."""

    version: int
    metadata: dict[str, Any]
    weights: bytes
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    item_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def parent_version(self) -> int | None:
        return self.metadata.get("parent_version")


# --- building ------------------------------------------------------------------------------------

def encode_weights(tensors: dict[str, torch.Tensor], item_ids: list[str]) -> bytes:
    """Safetensors bytes of ``tensors`` with the item id list in the header."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(cpu, metadata={"item_ids": json.dumps(item_ids, separators=(",", ":"))})


def build_manifest(version: int, weights: bytes, metadata: dict[str, Any], tensors: dict[str, torch.Tensor],
                   chunk_bytes: int = CHUNK_BYTES) -> tuple[dict[str, Any], list[bytes]]:
    """The manifest and chunk list of a snapshot (pure; no broker)."""
    chunks = [weights[i:i + chunk_bytes] for i in range(0, len(weights), chunk_bytes)] or [b""]
    meta = dict(metadata)
    meta.update(version=version, weights_sha256=hashlib.sha256(weights).hexdigest(),
                weights_bytes=len(weights),
                tensors={k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                         for k, v in tensors.items()})
    meta.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    manifest = {"format": FORMAT, "version": version, "n_chunks": len(chunks), "total_bytes": len(weights),
                "sha256": meta["weights_sha256"],
                "chunk_sha256": [hashlib.sha256(c).hexdigest() for c in chunks], "metadata": meta}
    return manifest, chunks


def chunk_headers(version: int, index: int, count: int, chunk: bytes) -> list[tuple[str, bytes]]:
    return [("streamrl.snapshot.kind", b"chunk"), ("streamrl.snapshot.version", str(version).encode()),
            ("streamrl.snapshot.index", str(index).encode()), ("streamrl.snapshot.count", str(count).encode()),
            ("streamrl.snapshot.sha256", hashlib.sha256(chunk).hexdigest().encode())]


def manifest_headers(version: int) -> list[tuple[str, bytes]]:
    return [("streamrl.snapshot.kind", b"manifest"), ("streamrl.snapshot.version", str(version).encode())]


class SnapshotPublisher:
    """Publishes snapshots: all chunks, flush, then the manifest, flush."""

    def __init__(self, settings: Settings, chunk_bytes: int = CHUNK_BYTES, producer=None) -> None:
        from streamrl.kafka import make_producer

        self.settings = settings
        self.topic = settings.topic(TOPIC)
        self.chunk_bytes = min(chunk_bytes, settings.max_request_bytes - 64 * 1024)
        self.producer = producer or make_producer(settings, linger_ms=0)

    def publish(self, version: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any],
                item_ids: list[str]) -> dict[str, Any]:
        """Send one snapshot; returns its manifest. Raises KafkaError when the broker refuses it."""
        weights = encode_weights(tensors, item_ids)
        manifest, chunks = build_manifest(version, weights, metadata, tensors, self.chunk_bytes)
        key = f"v{version}".encode()
        futures = [self.producer.send(self.topic, key=key, value=c, partition=0,
                                      headers=chunk_headers(version, i, len(chunks), c))
                   for i, c in enumerate(chunks)]
        self.producer.flush()
        for f in futures:
            f.get(timeout=60)
        self.producer.send(self.topic, key=key, value=json.dumps(manifest, separators=(",", ":")).encode(),
                           partition=0, headers=manifest_headers(version)).get(timeout=60)
        log.info("published snapshot v%d (%d bytes in %d chunks)", version, len(weights), len(chunks))
        return manifest

    def close(self) -> None:
        self.producer.close(timeout=5)


# --- reassembly and verification -------------------------------------------------------------

def _headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (headers or []) if k.startswith("streamrl.snapshot.")}


def parse_manifest(value: bytes) -> dict[str, Any]:
    try:
        m = json.loads(value)
        if m.get("format") != FORMAT or not isinstance(m.get("metadata"), dict):
            raise ValueError("unknown format")
        int(m["version"]), int(m["n_chunks"]), int(m["total_bytes"]), str(m["sha256"])
        if len(m["chunk_sha256"]) != m["n_chunks"]:
            raise ValueError("chunk list length")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SnapshotRejected("bad_manifest", str(e)[:200]) from None
    return m


def assemble(manifest: dict[str, Any], chunks: dict[int, bytes]) -> Snapshot:
    """Verify a complete chunk set against its manifest and parse it; raises SnapshotRejected."""
    v = int(manifest["version"])
    n = int(manifest["n_chunks"])
    missing = [i for i in range(n) if i not in chunks]
    if missing:
        raise SnapshotRejected("missing_chunk", f"{len(missing)} of {n} missing (first {missing[0]})", v)
    for i in range(n):
        if hashlib.sha256(chunks[i]).hexdigest() != manifest["chunk_sha256"][i]:
            raise SnapshotRejected("chunk_checksum", f"chunk {i}", v)
    weights = b"".join(chunks[i] for i in range(n))
    if len(weights) != int(manifest["total_bytes"]):
        raise SnapshotRejected("truncated", f"{len(weights)} bytes, manifest says {manifest['total_bytes']}", v)
    if hashlib.sha256(weights).hexdigest() != manifest["sha256"]:
        raise SnapshotRejected("checksum", "sha256 of the weights differs", v)
    return verify_weights(v, manifest["metadata"], weights)


def verify_weights(version: int, metadata: dict[str, Any], weights: bytes) -> Snapshot:
    """Parse safetensors bytes and check shapes and finiteness against ``metadata``."""
    try:
        tensors = st_load(weights)
        header_len = struct.unpack("<Q", weights[:8])[0]
        header = json.loads(weights[8:8 + header_len])
        item_ids = json.loads(header.get("__metadata__", {}).get("item_ids", "[]"))
    except Exception as e:  # safetensors raises its own SafetensorError; any failure is a rejection
        raise SnapshotRejected("bad_weights", str(e)[:200], version) from None
    expected = metadata.get("tensors", {})
    if set(expected) != set(tensors):
        raise SnapshotRejected("shape_mismatch", f"tensor names {sorted(set(expected) ^ set(tensors))}", version)
    for name, t in tensors.items():
        if list(t.shape) != list(expected[name]["shape"]):
            raise SnapshotRejected("shape_mismatch", f"{name}: {list(t.shape)} != {expected[name]['shape']}", version)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SnapshotRejected("non_finite", name, version)
    n_items = metadata.get("model_config", {}).get("n_items")
    if n_items is not None and len(item_ids) != n_items:
        raise SnapshotRejected("shape_mismatch", f"{len(item_ids)} item ids != n_items {n_items}", version)
    return Snapshot(version, metadata, weights, tensors, item_ids)


class SnapshotAssembler:
    """Feed records in topic order; :meth:`add` returns a verified Snapshot when a manifest
    completes a chunk set. Chunks of older, unfinished versions are dropped."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[int, bytes]] = {}

    def add(self, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> Snapshot | None:
        h = _headers(headers)
        kind = h.get("streamrl.snapshot.kind")
        if kind == "chunk":
            try:
                v, i = int(h["streamrl.snapshot.version"]), int(h["streamrl.snapshot.index"])
            except (KeyError, ValueError):
                log.warning("snapshot chunk without version/index headers ignored")
                return None
            self.pending.setdefault(v, {})[i] = value or b""
            return None
        if kind != "manifest":
            return None
        manifest = parse_manifest(value or b"")
        v = int(manifest["version"])
        chunks = self.pending.pop(v, {})
        for old in [k for k in self.pending if k < v]:
            del self.pending[old]
        return assemble(manifest, chunks)


class SnapshotReader:
    """Reads ``policy.snapshots`` from the beginning (no consumer group) and hands out the newest
    verified snapshot; rejected ones are logged, counted and skipped, so the caller keeps its
    current version.

    >>> reader = SnapshotReader(settings)                 # doctest: +SKIP
    >>> snap = reader.latest(timeout_s=10)                 # doctest: +SKIP
    >>> snap = reader.poll(timeout_ms=1000)                # doctest: +SKIP
    """

    def __init__(self, settings: Settings, consumer=None) -> None:
        from kafka import TopicPartition

        from streamrl.kafka import make_consumer

        self.tp = TopicPartition(settings.topic(TOPIC), 0)
        self.consumer = consumer or make_consumer(settings, group_id=None)
        self.consumer.assign([self.tp])
        self.consumer.seek_to_beginning(self.tp)
        self.assembler = SnapshotAssembler()
        self.version = -1          # newest version handed out
        self.rejected: list[SnapshotRejected] = []

    def poll(self, timeout_ms: int = 1000) -> Snapshot | None:
        """Consume what has arrived; return the newest verified snapshot newer than the last one."""
        newest = None
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=500).values():
            for rec in records:
                snap = self._feed(rec)
                if snap is not None:
                    newest = snap
        return newest

    def latest(self, timeout_s: float = 10.0) -> Snapshot | None:
        """Read up to the partition's high watermark; the newest verified snapshot, or None."""
        deadline = time.monotonic() + timeout_s
        newest = None
        if _empty(self.consumer, self.tp):
            return None
        while time.monotonic() < deadline:
            snap = self.poll(timeout_ms=200)
            if snap is not None:
                newest = snap
            hw = self.consumer.highwater(self.tp)
            if hw is not None and self.consumer.position(self.tp) >= hw:
                break
        return newest

    def _feed(self, rec) -> Snapshot | None:
        from streamrl.metrics import SNAPSHOT_REJECTED

        try:
            snap = self.assembler.add(rec.value, rec.headers)
        except SnapshotRejected as e:
            SNAPSHOT_REJECTED.labels(e.reason).inc()
            self.rejected.append(e)
            log.warning("snapshot v%s rejected at offset %d: %s", e.version, rec.offset, e)
            return None
        if snap is None:
            return None
        if snap.version <= self.version:
            SNAPSHOT_REJECTED.labels("stale_version").inc()
            log.warning("snapshot v%d at offset %d is not newer than v%d: ignored", snap.version, rec.offset, self.version)
            return None
        self.version = snap.version
        return snap

    def close(self) -> None:
        self.consumer.close()


def _empty(consumer, tp) -> bool:
    """True when the partition has never held a record (its end offset is 0).

    Only this case is trusted: Tansu can report an end offset below the true one for a
    non-empty partition, so readers otherwise read until the fetched high watermark.
    """
    try:
        return consumer.end_offsets([tp]).get(tp) == 0
    except Exception:  # noqa: BLE001 - any doubt: read the partition the slow way
        return False


def published_versions(settings: Settings, timeout_s: float = 10.0) -> list[int]:
    """Versions of every manifest on the topic (verified or not): a restarted publisher must
    go above all of them."""
    from kafka import TopicPartition

    from streamrl.kafka import make_consumer

    tp = TopicPartition(settings.topic(TOPIC), 0)
    consumer = make_consumer(settings, group_id=None)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        versions: list[int] = []
        if _empty(consumer, tp):
            return versions
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200, max_records=500).values():
                for rec in records:
                    h = _headers(rec.headers)
                    if h.get("streamrl.snapshot.kind") in ("manifest", "chunk"):
                        try:
                            versions.append(int(h["streamrl.snapshot.version"]))
                        except (KeyError, ValueError):
                            pass
            hw = consumer.highwater(tp)
            if hw is not None and consumer.position(tp) >= hw:
                break
        return sorted(set(versions))
    finally:
        consumer.close()
