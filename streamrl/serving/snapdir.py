"""A local snapshot directory: the newest verified snapshots, for start-up without the topic.

Layout: ``v<version>.safetensors`` (the weights, exactly as published) and ``v<version>.json``
(``{"format": 1, "version", "sha256", "metadata"}``). The JSON is written last, each file
atomically, so a half-written snapshot has no JSON and is ignored. Loading re-verifies
everything (sha256, shapes, finiteness) exactly as a snapshot read from the topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from streamrl.errors import SnapshotRejected
from streamrl.producers.snapshot import FORMAT, Snapshot, verify_weights

log = logging.getLogger(__name__)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_snapshot(directory: str | os.PathLike, snap: Snapshot, keep: int = 3) -> Path:
    """Write ``snap`` (weights, then its JSON) and delete all but the ``keep`` newest versions."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"v{snap.version:012d}"
    _write(d / f"{stem}.safetensors", snap.weights)
    doc = {"format": FORMAT, "version": snap.version, "sha256": hashlib.sha256(snap.weights).hexdigest(),
           "metadata": snap.metadata}
    _write(d / f"{stem}.json", json.dumps(doc, separators=(",", ":")).encode())
    for old in _versions(d)[keep:]:
        for suffix in (".json", ".safetensors"):
            (d / f"v{old:012d}{suffix}").unlink(missing_ok=True)
    return d / f"{stem}.json"


def _versions(d: Path) -> list[int]:
    """Versions with a JSON file, newest first."""
    out = []
    for p in d.glob("v*.json"):
        try:
            out.append(int(p.stem[1:]))
        except ValueError:
            continue
    return sorted(out, reverse=True)


def load_snapshot(directory: str | os.PathLike, version: int) -> Snapshot:
    """Read and verify one version; raises SnapshotRejected."""
    d = Path(directory)
    stem = f"v{version:012d}"
    try:
        doc = json.loads((d / f"{stem}.json").read_bytes())
        weights = (d / f"{stem}.safetensors").read_bytes()
        if doc.get("format") != FORMAT or int(doc["version"]) != version or not isinstance(doc["metadata"], dict):
            raise ValueError("unknown format or version mismatch")
    except FileNotFoundError as e:
        raise SnapshotRejected("missing_chunk", str(e), version) from None
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotRejected("bad_manifest", str(e)[:200], version) from None
    if hashlib.sha256(weights).hexdigest() != doc.get("sha256"):
        raise SnapshotRejected("checksum", "sha256 of the weights differs", version)
    return verify_weights(version, doc["metadata"], weights)


def iter_snapshots(directory: str | os.PathLike) -> Iterator[Snapshot]:
    """Verified snapshots of ``directory``, newest first; rejected ones are logged and skipped."""
    d = Path(directory)
    if not d.is_dir():
        return
    for v in _versions(d):
        try:
            yield load_snapshot(d, v)
        except SnapshotRejected as e:
            from streamrl.metrics import SNAPSHOT_REJECTED

            SNAPSHOT_REJECTED.labels(e.reason).inc()
            log.warning("local snapshot v%d in %s rejected: %s", v, d, e)
