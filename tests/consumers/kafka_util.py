"""Helpers for processor integration tests: produce a log, read topics back, read stored state."""

from __future__ import annotations

import os
import subprocess
import sys


from streamrl.consumers.state import UserView
from streamrl.consumers.store import open_store
from streamrl.kafka import make_producer, read_all
from streamrl.schema import decode_transitions


def produce(settings, events, raw=()):
    """Send events (to their type's topic, key = user_id) plus raw (topic, key, value) records."""
    p = make_producer(settings, linger_ms=20)
    for e in events:
        p.send(settings.event_topics[e.type], key=e.user_id.encode(), value=e.to_json())
    for topic, key, value in raw:
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()


def read_topic(settings, name):
    return read_all(settings, name, idle_polls=4)


def read_transitions(settings):
    return [t for r in read_topic(settings, "transitions") for t in decode_transitions(r.value)]


def stored_users(settings):
    with open_store(settings.state_store, settings.state_namespace) as st:
        return {u: UserView.from_record(u, b, settings.history_len) for u, b in st.scan_users()}


def by_id(transitions):
    """Drop duplicates by id, checking that duplicates are identical."""
    out = {}
    for t in transitions:
        prev = out.setdefault(t["id"], t)
        assert prev == t, f"two different transitions share id {t['id']}"
    return out


def assert_matches_reference(settings, users_ref, trans_ref, transitions, allow_duplicates=False):
    ids = by_id(transitions)
    if not allow_duplicates:
        assert len(ids) == len(transitions), "duplicate transitions"
    assert ids == {t["id"]: t for t in trans_ref}
    stored = stored_users(settings)
    assert set(stored) == set(users_ref)
    for u, ref in users_ref.items():
        got = stored[u]
        assert [tuple(x) for x in got.recent] == ref["recent"], u
        assert got.counts == ref["counts"], u
        if ref["interest"] is None:
            assert got.interest is None
        else:
            assert got.interest is not None and abs(got.interest - ref["interest"]).max() < 1e-6


def start_processor(settings, *args, **popen):
    env = {**os.environ, **settings.to_env(), "STREAMRL_METRICS_PORT": "-2"}
    return subprocess.Popen([sys.executable, "-m", "streamrl.cli", "process", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
