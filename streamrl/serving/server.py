"""Wiring of the ranking service: settings → store, catalog text, producer, ranker, watcher, app."""

from __future__ import annotations

import logging

from streamrl.catalog import ItemEmbeddings, TextEmbedder, load_catalog
from streamrl.config import Settings
from streamrl.serving.ranker import Ranker
from streamrl.serving.watcher import SnapshotWatcher

log = logging.getLogger(__name__)


def catalog_text(settings: Settings) -> ItemEmbeddings:
    """Text embeddings of the catalog items (empty without ``catalog_path``)."""
    if not settings.catalog_path:
        return ItemEmbeddings.empty()
    embedder = TextEmbedder(settings.cache_dir, settings.embedding_model)
    return ItemEmbeddings.from_catalog(load_catalog(settings.catalog_path), embedder)


def build_service(settings: Settings, seed: int | None = None, load_timeout_s: float = 10.0) -> tuple[Ranker, SnapshotWatcher]:
    """A ranker with its store, decisions producer and a started snapshot watcher."""
    from streamrl.consumers.store import open_store

    decisions = None
    if settings.bootstrap_servers:
        from streamrl.kafka import make_producer

        decisions = make_producer(settings, linger_ms=100)  # decisions are not latency-bound: batch them
    else:
        log.warning("no bootstrap servers: decisions are not logged and snapshots come from --snapshot-dir only")
    ranker = Ranker(settings, catalog_text(settings), open_store(settings.state_store, settings.state_namespace),
                    decisions, seed=seed)
    watcher = SnapshotWatcher(settings, ranker)
    watcher.load_initial(timeout_s=load_timeout_s)
    return ranker, watcher.start()


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles the signals and drains requests)."""
    import torch
    import uvicorn

    from streamrl.serving.app import create_app

    torch.set_num_threads(1)   # one request at a time per process: intra-op threads only add contention
    ranker, watcher = build_service(settings)
    app = create_app(ranker, settings)
    log.info("ranking service on http://%s:%d (policy v%d, exploration %s)", settings.serve_host,
             settings.serve_port, ranker.version, settings.serve_exploration)
    try:
        uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, log_level="warning",
                    access_log=False)
    finally:
        watcher.stop()
        ranker.close()
