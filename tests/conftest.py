"""Shared fixtures: a real embedded broker per test session, isolated topics and stores per test."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REDIS_URL = os.environ.get("STREAMRL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def broker():
    from streamrl.kafka import EmbeddedBroker

    b = EmbeddedBroker().start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory):
    """One embedding cache per test session: each text is embedded once."""
    return str(tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture()
def settings(broker, tmp_path, embedding_cache):
    """Settings on the session broker with a random topic prefix, group and SQLite store."""
    from streamrl.config import Settings
    from streamrl.kafka import ensure_topics

    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{tag}.",
                          group_id=f"g{tag}", state_store=f"sqlite:///{tmp_path}/state.db",
                          state_namespace=f"ns{tag}", session_timeout_ms=2000, heartbeat_interval_ms=500,
                          idle_timeout_ms=1500, commit_interval_ms=300, cache_dir=embedding_cache)
    ensure_topics(s)
    return s


@pytest.fixture()
def redis_url():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as e:  # pragma: no cover - CI machines run Redis
        pytest.fail(f"Redis required at {REDIS_URL}: {e}")
    return REDIS_URL
