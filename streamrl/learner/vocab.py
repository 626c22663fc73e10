"""Item ids -> dense indices, with each item's frozen text embedding.

Index 0 is padding (no item). Items are appended as they appear in transitions or in the
catalog, so the table grows while the learner runs; an item seen before its catalog entry gets
its text vector when the entry arrives. Checkpoints keep the id order only; text vectors come
back from the catalog after a restart.
"""

from __future__ import annotations

from typing import Sequence as Iterable

import numpy as np
import torch

PAD = 0


class ItemVocab:
    """Growable ``item_id -> index`` map plus a ``(capacity, text_dim)`` text-embedding table.

    >>> v = ItemVocab(text_dim=3)
    >>> v.add(["a", "b", "a"]).tolist()
    [1, 2, 1]
    >>> len(v), v.ids[1]
    (3, 'a')
    """

    def __init__(self, text_dim: int = 384, capacity: int = 1024) -> None:
        self.text_dim = text_dim
        self.ids: list[str] = ["<pad>"]
        self.index: dict[str, int] = {}
        self.text = torch.zeros(max(capacity, 2), text_dim)
        self.has_text = torch.zeros(max(capacity, 2), dtype=torch.bool)
        self.text_version = 0  # bumped whenever ``text`` is reallocated or written

    def __len__(self) -> int:
        return len(self.ids)

    def _reserve(self, n: int) -> None:
        cap = self.text.shape[0]
        if n <= cap:
            return
        new = max(n, 2 * cap)
        text = torch.zeros(new, self.text_dim)
        text[:cap] = self.text
        has = torch.zeros(new, dtype=torch.bool)
        has[:cap] = self.has_text
        self.text, self.has_text = text, has
        self.text_version += 1

    def add(self, item_ids: Iterable[str]) -> torch.Tensor:
        """Indices of ``item_ids``, appending unknown ones."""
        return torch.tensor(self.add_list(item_ids), dtype=torch.long)

    def add_list(self, item_ids: Iterable[str]) -> list[int]:
        """Like :meth:`add`, as a plain list (the ingestion path)."""
        index = self.index
        out = [index.get(i) for i in item_ids]
        if None in out:
            for k, n in enumerate(out):
                if n is None:
                    i = item_ids[k]
                    n = index.get(i)
                    if n is None:
                        n = index[i] = len(self.ids)
                        self.ids.append(i)
                    out[k] = n
            self._reserve(len(self.ids))
        return out

    def lookup(self, item_ids: Iterable[str]) -> torch.Tensor:
        """Indices of ``item_ids`` without adding; unknown items map to PAD."""
        return torch.tensor([self.index.get(i, PAD) for i in item_ids], dtype=torch.long)

    def set_text(self, item_ids: list[str], vectors: np.ndarray | torch.Tensor) -> None:
        """Store text embeddings (appending unknown items)."""
        idx = self.add(item_ids)
        vec = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        self.text[idx] = vec
        self.has_text[idx] = True
        self.text_version += 1

    def missing_text(self) -> list[str]:
        n = len(self.ids)
        return [self.ids[i] for i in torch.nonzero(~self.has_text[1:n]).flatten().add(1).tolist()]

    def text_matrix(self) -> torch.Tensor:
        """``(len(self), text_dim)`` view of the used rows."""
        return self.text[:len(self.ids)]

    # --- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The id list only: text vectors are rebuilt from the catalog (and its embedding cache)."""
        return {"ids": list(self.ids[1:])}

    @classmethod
    def from_state_dict(cls, d: dict, text_dim: int, capacity: int = 0) -> "ItemVocab":
        """The vocabulary of a checkpoint, with room for ``capacity`` rows (the checkpointed
        networks' item tables, so they load as saved)."""
        v = cls(text_dim=text_dim, capacity=max(capacity, len(d["ids"]) + 1))
        v.add_list(d["ids"])
        return v
