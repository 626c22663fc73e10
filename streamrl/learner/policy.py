"""A read-only ranking policy rebuilt from a verified snapshot (what a ranker serves).

>>> policy = load_policy(snapshot, catalog_embeddings)            # doctest: +SKIP
>>> policy.score(["i3", "i9"], ["i1", "i2", "brand-new-item"])    # doctest: +SKIP
array([ 1.3, -0.2,  0.7], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamrl.learner.model import ModelConfig, QNetwork
from streamrl.learner.vocab import PAD


class Policy:
    """Scores candidates for a history with the snapshot's network: supervised logit + q_weight * Q.

    Items the snapshot never saw are appended with a zero id embedding, so they are scored
    through their text vector alone.
    """

    def __init__(self, version: int, model: QNetwork, item_ids: list[str], metadata: dict[str, Any]) -> None:
        self.version, self.model, self.metadata = version, model.eval(), metadata
        self.index = {i: n for n, i in enumerate(item_ids) if n != PAD}
        self.ids = list(item_ids)

    def add_items(self, item_ids: list[str], vectors: np.ndarray | None) -> None:
        """Set text vectors (catalog embeddings); unknown items get new rows."""
        new = [i for i in item_ids if i not in self.index]
        if new:
            n = len(self.ids)
            self.model.grow(n + len(new))
            for k, i in enumerate(new):
                self.index[i] = n + k
            self.ids.extend(new)
        if vectors is not None:
            rows = torch.tensor([self.index[i] for i in item_ids])
            self.model.text[rows] = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).to(self.model.text.device)

    def _indices(self, ids: list[str]) -> torch.Tensor:
        missing = [i for i in ids if i not in self.index]
        if missing:
            self.add_items(missing, None)
        return torch.tensor([self.index[i] for i in ids], dtype=torch.long)

    @torch.no_grad()
    def score_batch(self, histories: list[list[str]], candidates: list[str]) -> np.ndarray:
        """``(len(histories), len(candidates))`` ranking scores (higher first)."""
        L = self.model.cfg.history_len
        rows = [[PAD] * (L - len(h[-L:])) + self._indices(h[-L:]).tolist() for h in histories]
        cands = self._indices(candidates)
        return self.model.score(torch.tensor(rows, dtype=torch.long), cands).cpu().numpy()

    def score(self, history: list[str], candidates: list[str]) -> np.ndarray:
        return self.score_batch([history], candidates)[0]


def load_policy(snapshot, text: Any = None, device: str = "cpu") -> Policy:
    """Rebuild the network of a verified :class:`~streamrl.producers.snapshot.Snapshot`.

    ``text`` gives item text vectors: a :class:`~streamrl.catalog.ItemEmbeddings` or a mapping
    ``item_id -> vector``; items without one keep a zero text vector.
    """
    mc = snapshot.metadata["model_config"]
    cfg = ModelConfig(**{k: mc[k] for k in ModelConfig.__dataclass_fields__ if k in mc})
    model = QNetwork(cfg)
    model.load_state_dict(snapshot.tensors, strict=True)
    policy = Policy(snapshot.version, model.to(device), snapshot.item_ids, snapshot.metadata)
    if text is not None:
        if hasattr(text, "item_ids") and hasattr(text, "matrix"):
            policy.add_items(list(text.item_ids), text.matrix)
        elif len(text):
            ids = list(text)
            policy.add_items(ids, np.stack([np.asarray(text[i], dtype=np.float32) for i in ids]))
    return policy
