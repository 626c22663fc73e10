"""Fixtures of the learner tests: one text embedder per session, few threads (CI has 2 cores)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # 2 threads on a busy 2-core machine: every op waits for a preempted worker


@pytest.fixture(scope="session")
def embedder(tmp_path_factory):
    from streamrl.catalog import TextEmbedder

    return TextEmbedder(tmp_path_factory.mktemp("learner-emb"))


@pytest.fixture(scope="session")
def catalog_vectors(embedder):
    """Item ids and MiniLM text embeddings of ``learner_synth.make_world(400, 300, seed=1)``."""
    from learner_synth import make_world

    from streamrl.catalog import item_text

    world = make_world(400, 300, seed=1)
    return [i["item_id"] for i in world.items], embedder.embed([item_text(i) for i in world.items])
