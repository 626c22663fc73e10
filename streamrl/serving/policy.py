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
from itertools import repeat
from typing import Any

import numpy as np

from streamrl.catalog import ItemEmbeddings
from streamrl.errors import SnapshotRejected
from streamrl.learner.model import QNetwork
from streamrl.learner.policy import FrozenScorer, load_policy
from streamrl.learner.vocab import PAD
from streamrl.producers.snapshot import Snapshot


@dataclass(frozen=True)
class Policy:
    """One immutable policy version; requests read ``service.policy`` once and use only this.

    Requests are scored in numpy by ``scorer`` (tables computed once at load; equal to
    :meth:`QNetwork.score`); ``model`` is kept as the reference network.
    """

    version: int
    metadata: dict[str, Any]
    model: QNetwork
    index: dict[str, int]            # item_id -> row of the model's item tables
    history_len: int
    scorer: FrozenScorer
    longest_id: int                  # characters of the longest item id in ``index``
    loaded_at: float = field(default_factory=time.time)

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Model rows of ``item_ids``; -1 for items the policy cannot score (no id, no text)."""
        return np.fromiter(map(self.index.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))

    def state(self, history: list[str]) -> np.ndarray:
        """``(1, history_len)`` left-padded rows of the most recent items (unknown items: PAD)."""
        get = self.index.get
        rows = [get(i, PAD) for i in history[-self.history_len:]]
        return np.array([[PAD] * (self.history_len - len(rows)) + rows], dtype=np.int64)

    def score(self, state: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """:meth:`QNetwork.score` of candidate ``rows`` for one state: ``(len(rows),)``."""
        return self.score_many(state, [rows])[0]

    def score_many(self, states: np.ndarray, rows: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`QNetwork.score` of ``rows[b]`` for state ``b`` of ``states`` ``(B, L)``, in one
        batched pass over the precomputed item vectors. When the candidates cover a good part of
        the item table, every item is scored in one matmul and the candidates' scores are picked
        out (cheaper than gathering their vectors)."""
        sc = self.scorer
        u = sc.user_vectors(states)                                 # (B, dim)
        if sc.vectors.shape[0] <= 8 * sum(len(r) for r in rows):
            full = u @ sc.vectors.T
            full += sc.bias                                         # (B, items)
            return [full[b, r] for b, r in enumerate(rows)]
        return [sc.vectors[r] @ u[b] + sc.bias[r] for b, r in enumerate(rows)]

    def describe(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.metadata.items() if k not in ("tensors", "hyperparameters")}
        return {"version": self.version, "loaded_at": self.loaded_at, "items": len(self.index),
                "metadata": meta}


def build_policy(snap: Snapshot, text: ItemEmbeddings) -> Policy:
    """Rebuild ``snap`` into a servable :class:`Policy` (raises SnapshotRejected).

    The network is rebuilt by the learner's :func:`~streamrl.learner.policy.load_policy` (strict
    weights, catalog items appended with text only); this adds the rejection reasons and the
    numpy scoring tables, and keeps the network private to this immutable policy.
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
    scorer = FrozenScorer.from_model(model)
    if not all(np.isfinite(t).all() for t in scorer.tables()):
        raise SnapshotRejected("non_finite", "item or state tables overflow to non-finite values", snap.version)
    return Policy(snap.version, snap.metadata, model, dict(rebuilt.index), model.cfg.history_len, scorer,
                  max(map(len, rebuilt.index), default=0))
