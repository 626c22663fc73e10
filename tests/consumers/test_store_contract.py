"""One contract, every state store: a real SQLite file and a real Redis."""

import uuid

import pytest

from streamrl.consumers.store import open_store
from streamrl.errors import StaleEpochError


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/contract.db"
    return request.getfixturevalue("redis_url")


@pytest.fixture()
def store(store_url):
    ns = f"contract-{uuid.uuid4().hex[:8]}"
    s = open_store(store_url, ns)
    yield s
    s.drop()
    s.close()


def test_claim_increments_epoch_per_partition(store):
    assert store.claim([0, 1]) == {0: 1, 1: 1}
    assert store.claim([1]) == {1: 2}


def test_commit_then_load_round_trips(store):
    ep = store.claim([0])
    store.commit(ep, {0: b'{"offsets":{}}'}, {"alice": b"A", "bob": b"B"}, {0: {"alice": 10, "bob": 20}})
    assert store.load_partition(0) == b'{"offsets":{}}'
    assert store.get_users(["alice", "bob", "carol"]) == {"alice": b"A", "bob": b"B"}
    assert store.load_timers(0) == {"alice": 10, "bob": 20}
    store.commit(ep, {0: b"m2"}, {"alice": b"A2"}, {0: {"alice": None, "bob": 25}})
    assert store.load_timers(0) == {"bob": 25}
    assert store.get_user("alice") == b"A2"
    assert dict(store.scan_users()) == {"alice": b"A2", "bob": b"B"}


def test_commit_with_stale_epoch_writes_nothing(store):
    old = store.claim([0])
    store.commit(old, {0: b"m1"}, {"u": b"1"}, {0: {"u": 5}})
    store.claim([0])  # another processor takes the partition
    with pytest.raises(StaleEpochError):
        store.commit(old, {0: b"zombie"}, {"u": b"zombie"}, {0: {"u": 99}})
    assert store.load_partition(0) == b"m1"
    assert store.get_user("u") == b"1"
    assert store.load_timers(0) == {"u": 5}


def test_unknown_partition_loads_empty(store):
    assert store.load_partition(5) is None
    assert store.load_timers(5) == {}


def test_namespaces_are_isolated(store_url):
    a, b = (open_store(store_url, f"iso-{uuid.uuid4().hex[:6]}") for _ in range(2))
    try:
        a.commit(a.claim([0]), {0: b"a"}, {"u": b"a"}, {})
        assert b.get_user("u") is None and b.load_partition(0) is None
    finally:
        for s in (a, b):
            s.drop()
            s.close()


def test_large_commit_is_atomic_and_complete(store):
    ep = store.claim([0, 1])
    users = {f"user-{i}": bytes([i % 256]) * 2000 for i in range(3000)}
    store.commit(ep, {0: b"x", 1: b"y"}, users, {0: {u: i for i, u in enumerate(users)}})
    assert store.get_users(list(users)) == users
    assert len(store.load_timers(0)) == 3000
