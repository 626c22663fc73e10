"""Small real policies for the serving tests: a QNetwork's weights as a publishable snapshot."""

from __future__ import annotations

import numpy as np
import torch

from streamrl.catalog import ItemEmbeddings
from streamrl.learner.model import ModelConfig, QNetwork
from streamrl.producers.snapshot import Snapshot, assemble, build_manifest, encode_weights

N_ITEMS = 40          # items known to the policy: i0 .. i39
CATALOG_EXTRA = 10    # catalog-only items (text, no id embedding): c0 .. c9


def policy_parts(version: int, n_items: int = N_ITEMS, seed: int = 0, history_len: int = 5):
    """``(tensors, metadata, item_ids)`` of a random QNetwork, shaped as the learner publishes it."""
    torch.manual_seed(seed)
    ids = ["<pad>"] + [f"i{k}" for k in range(n_items)]
    cfg = ModelConfig(n_items=len(ids), dim=8, hidden=8, text_dim=384, history_len=history_len)
    model = QNetwork(cfg)
    with torch.no_grad():
        model.item_id.weight.normal_(0, 1.0)
        model.item_bias.weight.normal_(0, 0.5)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"parent_version": version - 1 or None, "train_step": 10 * version, "model_config": cfg.to_dict()}
    return tensors, meta, ids


def make_snapshot(version: int, **kw) -> Snapshot:
    """A verified in-memory Snapshot (as the reader would hand it out)."""
    tensors, meta, ids = policy_parts(version, **kw)
    weights = encode_weights(tensors, ids)
    manifest, chunks = build_manifest(version, weights, meta, tensors)
    return assemble(manifest, dict(enumerate(chunks)))


def catalog_text(n_items: int = N_ITEMS, extra: int = CATALOG_EXTRA, seed: int = 1) -> ItemEmbeddings:
    """Text vectors for every policy item and ``extra`` catalog-only items (no MiniLM needed)."""
    ids = [f"i{k}" for k in range(n_items)] + [f"c{k}" for k in range(extra)]
    m = np.random.default_rng(seed).standard_normal((len(ids), 384)).astype(np.float32)
    return ItemEmbeddings(ids, m / np.linalg.norm(m, axis=1, keepdims=True))
