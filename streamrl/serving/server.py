"""Wiring of the ranking service: settings → store, catalog text, producer, ranker, watcher,
feedback layer, app."""

from __future__ import annotations

import gc
import logging
import os
import sys

from streamrl.catalog import ItemEmbeddings, TextEmbedder, load_catalog
from streamrl.config import Settings
from streamrl.serving.feedback import FeedbackLayer
from streamrl.serving.ranker import Ranker
from streamrl.serving.watcher import SnapshotWatcher

log = logging.getLogger(__name__)


def catalog_text(settings: Settings) -> ItemEmbeddings:
    """Text embeddings of the catalog items (empty without ``catalog_path``)."""
    if not settings.catalog_path:
        return ItemEmbeddings.empty()
    embedder = TextEmbedder(settings.cache_dir, settings.embedding_model)
    return ItemEmbeddings.from_catalog(load_catalog(settings.catalog_path), embedder)


def build_service(settings: Settings, seed: int | None = None,
                  load_timeout_s: float = 10.0) -> tuple[Ranker, SnapshotWatcher]:
    """A ranker with its store, decisions producer, a started snapshot watcher and, when
    ``serve_feedback_weight`` > 0 and there are a broker and a catalog, the fast feedback layer."""
    from streamrl.consumers.store import open_store

    decisions = None
    if settings.bootstrap_servers:
        from streamrl.serving.decisions import DecisionLog

        decisions = DecisionLog(settings)
    else:
        log.warning("no bootstrap servers: decisions are not logged and snapshots come from --snapshot-dir only")
    text = catalog_text(settings)
    feedback = None
    if settings.serve_feedback_weight > 0:
        session = settings.serve_feedback_source == "session"
        if (session or settings.bootstrap_servers) and len(text) >= 2:
            feedback = FeedbackLayer(settings, text)
            if session and settings.serve_workers > 1:
                log.warning("fast feedback layer learns from session joins in each of %d workers: a user's next "
                            "request reaches the worker that served the last slate ~1/%d of the time (the port is "
                            "shared, not user-sticky); serve_feedback_source=transitions sees every view",
                            settings.serve_workers, settings.serve_workers)
        else:
            log.warning("fast feedback layer off: it needs a catalog (item text) and, learning from transitions, "
                        "a broker")
    ranker = Ranker(settings, text, open_store(settings.state_store, settings.state_namespace),
                    decisions, seed=seed, feedback=feedback)
    watcher = SnapshotWatcher(settings, ranker)
    watcher.load_initial(timeout_s=load_timeout_s)
    return ranker, watcher.start()


def app_from_settings(settings: Settings):
    """The service's ASGI app; its lifespan stops the watcher and flushes decisions at shutdown."""
    import torch

    from streamrl.serving.app import create_app

    torch.set_num_threads(1)   # one batch at a time per process: intra-op threads only add contention
    _one_blas_thread()
    ranker, watcher = build_service(settings)

    def close() -> None:
        watcher.stop()
        ranker.close()

    # tail latency: the event loop waits at most 1 ms (not 5) for the GIL held by the producer or
    # watcher threads, and the long-lived start-up objects are kept out of full GC passes
    sys.setswitchinterval(0.001)
    gc.freeze()
    log.info("ranking service on http://%s:%d (pid %d, policy v%d, exploration %s)", settings.serve_host,
             settings.serve_port, os.getpid(), ranker.version, settings.serve_exploration)
    return create_app(ranker, settings, on_close=close)


def _one_blas_thread() -> None:
    """numpy's BLAS (requests are scored in numpy) to one thread, like torch: on small matmuls
    its thread hand-offs cost more than they save, and several times more on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency (scikit-learn); without it BLAS keeps its default
        log.warning("threadpoolctl not installed: numpy BLAS keeps its default thread count")
        return
    threadpool_limits(1, user_api="blas")


def app_from_env():
    """Factory of each uvicorn worker process (``serve_workers`` > 1): settings from STREAMRL_*."""
    return app_from_settings(Settings.from_env())


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles the signals and drains requests).

    With ``serve_workers`` > 1, uvicorn forks that many processes sharing the port; each loads
    the policy and follows the snapshot topic itself (and serves its own /metrics).
    """
    import uvicorn

    # no access log, no proxy-header rewriting (client addresses are not used), no server header
    common = dict(host=settings.serve_host, port=settings.serve_port, log_level="warning", access_log=False,
                  proxy_headers=False, server_header=False)
    if settings.serve_workers > 1:
        os.environ.update(settings.to_env())
        uvicorn.run("streamrl.serving.server:app_from_env", factory=True, workers=settings.serve_workers, **common)
    else:
        uvicorn.run(app_from_settings(settings), **common)
