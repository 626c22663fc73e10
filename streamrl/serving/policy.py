"""A servable policy: a verified snapshot rebuilt into a QNetwork with the catalog's text tower.

Snapshots carry weights and item ids but no text embeddings (those are frozen and rebuilt from
the catalog). :func:`build_policy` rebuilds the network with the learner's ``load_policy``
(strict weights; every catalog item the snapshot does not know gets a zero id embedding and
bias: scored by the text tower alone) and raises :class:`~streamrl.errors.SnapshotRejected` when
the weights do not fit the model config, so a bad snapshot never replaces a good policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamrl.catalog import ItemEmbeddings
from streamrl.errors import SnapshotRejected
from streamrl.learner.model import QNetwork
from streamrl.learner.policy import load_policy
from streamrl.learner.vocab import PAD
from streamrl.producers.snapshot import Snapshot


@dataclass(frozen=True)
class Policy:
    """One immutable policy version; requests read ``service.policy`` once and use only this."""

    version: int
    metadata: dict[str, Any]
    model: QNetwork
    index: dict[str, int]            # item_id -> row of the model's item tables
    history_len: int
    vectors: torch.Tensor            # g(a) of every row, computed once at load
    bias: torch.Tensor               # b(a) of every row
    loaded_at: float = field(default_factory=time.time)

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Model rows of ``item_ids``; -1 for items the policy cannot score (no id, no text)."""
        get = self.index.get
        return np.array([get(i, -1) for i in item_ids], dtype=np.int64)

    def state(self, history: list[str]) -> torch.Tensor:
        """``(1, history_len)`` left-padded rows of the most recent items (unknown items: PAD)."""
        rows = [self.index.get(i, PAD) for i in history[-self.history_len:]]
        return torch.tensor([[PAD] * (self.history_len - len(rows)) + rows], dtype=torch.long)

    def score(self, state: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """:meth:`QNetwork.score` of candidate ``rows`` for one state: ``(len(rows),)``."""
        return self.score_many(state, [rows])[0]

    @torch.inference_mode()
    def score_many(self, states: torch.Tensor, rows: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`QNetwork.score` of ``rows[b]`` for state ``b`` of ``states`` ``(B, L)``, in one
        batched forward, from the item vectors precomputed at load (no text projection per request).
        When the candidates cover a good part of the item table, every item is scored in one matmul
        and the candidates' scores are picked out (cheaper than gathering their vectors)."""
        m = self.model
        h = m.encode(states)
        qw = m.cfg.q_weight
        u = m.q_head(h) * qw + m.sup_head(h)                       # (B, dim)
        if self.vectors.shape[0] <= 8 * sum(len(r) for r in rows):
            full = (u @ self.vectors.T + qw * self.bias).numpy()   # (B, items)
            return [full[b, r] for b, r in enumerate(rows)]
        out = []
        for b, r in enumerate(rows):
            c = torch.from_numpy(r)
            out.append((u[b] @ self.vectors[c].T + qw * self.bias[c]).numpy())
        return out

    def describe(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.metadata.items() if k not in ("tensors", "hyperparameters")}
        return {"version": self.version, "loaded_at": self.loaded_at, "items": len(self.index),
                "metadata": meta}


def build_policy(snap: Snapshot, text: ItemEmbeddings) -> Policy:
    """Rebuild ``snap`` into a servable :class:`Policy` (raises SnapshotRejected).

    The network is rebuilt by the learner's :func:`~streamrl.learner.policy.load_policy` (strict
    weights, catalog items appended with text only); this adds the rejection reasons and the
    precomputed item vectors, and keeps the network private to this immutable policy.
    """
    if not isinstance(snap.metadata.get("model_config"), dict):
        raise SnapshotRejected("bad_manifest", "metadata has no model_config", snap.version)
    try:
        rebuilt = load_policy(snap, text if len(text) else None)
    except (KeyError, TypeError) as e:
        raise SnapshotRejected("bad_manifest", f"model_config: {e}", snap.version) from None
    except (RuntimeError, ValueError) as e:  # torch reports missing keys and size mismatches this way
        raise SnapshotRejected("shape_mismatch", str(e).replace("\n", " ")[:300], snap.version) from None
    model = rebuilt.model.eval().requires_grad_(False)
    with torch.inference_mode():
        vectors, bias = model.item_vectors(), model.item_bias_of()
    return Policy(snap.version, snap.metadata, model, dict(rebuilt.index), model.cfg.history_len, vectors, bias)
