"""The HTTP API: routes, cold start, text-tower and unscored candidates, limits, auth, decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serving_snapshots import catalog_text, make_snapshot

from streamrl.config import Secret, Settings
from streamrl.consumers.state import UserState
from streamrl.consumers.store import open_store
from streamrl.serving.app import create_app
from streamrl.serving.ranker import Ranker


def _client(tmp_path, policy: bool = True, **overrides) -> tuple[TestClient, Ranker]:
    s = Settings.from_env(state_store=f"sqlite:///{tmp_path}/state.db", **overrides)
    store = open_store(s.state_store, s.state_namespace)
    store.commit({}, {}, {"u1": UserState("u1", history=[(1000, "e1", "i3", "click"), (2000, "e2", "c4", "purchase")]).encode(None)}, {})
    ranker = Ranker(s, catalog_text(), store, None, seed=0)
    if policy:
        assert ranker.offer(make_snapshot(1))
    return TestClient(create_app(ranker, s)), ranker


def test_readyz_is_503_until_a_policy_is_loaded(tmp_path):
    client, ranker = _client(tmp_path, policy=False)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503
    assert client.post("/rank", json={"user_id": "u1", "candidates": ["i1"]}).status_code == 503
    ranker.offer(make_snapshot(4))
    assert client.get("/readyz").json() == {"status": "ready", "policy_version": 4}
    assert client.get("/policy").json()["version"] == 4


def test_rank_orders_known_then_text_only_then_flags_unscored_last(tmp_path):
    client, _ = _client(tmp_path, serve_exploration="greedy")
    cands = ["i1", "nope-1", "i2", "c1", "i7", "nope-2"]
    out = client.post("/rank", json={"user_id": "u1", "candidates": cands, "k": 6}).json()
    items = out["items"]
    assert out["policy_version"] == 1 and not out["cold_start"] and len(out["request_id"]) == 32
    assert [it["position"] for it in items] == list(range(6))
    scored = [it for it in items if not it["unscored"]]
    assert {it["item_id"] for it in scored} == {"i1", "i2", "c1", "i7"}   # c1: catalog text only
    assert [it["score"] for it in scored] == sorted((it["score"] for it in scored), reverse=True)
    assert [it["item_id"] for it in items[4:]] == ["nope-1", "nope-2"]
    assert all(it["unscored"] and it["score"] is None and it["propensity"] == 1.0 for it in items[4:])


def test_unknown_user_gets_a_history_free_cold_start(tmp_path):
    client, ranker = _client(tmp_path, serve_exploration="greedy")
    cold = client.post("/rank", json={"user_id": "stranger", "candidates": ["i1", "i2", "i3"], "k": 3}).json()
    warm = client.post("/rank", json={"user_id": "u1", "candidates": ["i1", "i2", "i3"], "k": 3}).json()
    assert cold["cold_start"] and not warm["cold_start"]
    p = ranker.policy
    expect = p.model.score(torch.from_numpy(p.state([])), torch.tensor([p.index["i1"]]))[0, 0].item()
    assert [it for it in cold["items"] if it["item_id"] == "i1"][0]["score"] == pytest.approx(expect, rel=1e-5)


def test_policy_scores_equal_the_model_score(tmp_path):
    """The served scores (numpy, from tables computed at load) are QNetwork.score's, for known and
    catalog-only items, with and without history, one by one and batched."""
    _, ranker = _client(tmp_path)
    p = ranker.policy
    rows = p.rows([f"i{k}" for k in range(40)] + [f"c{k}" for k in range(10)])
    hists = ([], ["i3"], ["c4", "i5", "i6", "unknown"], ["unknown", "i1"], [f"i{k}" for k in range(12)])
    for hist in hists:
        st = p.state(hist)
        with torch.no_grad():
            ref = p.model.score(torch.from_numpy(st), torch.from_numpy(rows))[0].numpy()
        np.testing.assert_allclose(p.score(st, rows), ref, rtol=1e-5, atol=1e-5)
    states = np.concatenate([p.state(h) for h in hists])
    with torch.no_grad():
        ref = p.model.score(torch.from_numpy(states), torch.from_numpy(rows)).numpy()
    for got, want in zip(p.score_many(states, [rows] * len(hists)), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body,status,fragment", [
    ({"user_id": "u1", "candidates": []}, 422, "at least 1"),
    ({"user_id": "u1", "candidates": ["i1"] * 1001}, 422, "at most 1000"),
    ({"user_id": "u1", "candidates": ["i1", "i1"]}, 400, "duplicate"),
    ({"user_id": "u1", "candidates": ["i1"], "k": 0}, 422, "greater than or equal to 1"),
    ({"user_id": "u1", "candidates": ["i1"], "k": 101}, 422, "less than or equal to 100"),
    ({"user_id": "u1", "candidates": ["i1"], "k": True}, 422, "valid integer"),  # JSON true is not 1
    ({"user_id": "u1", "candidates": ["i1"], "k": 2.5}, 422, "valid integer"),
    ({"user_id": "", "candidates": ["i1"]}, 422, "at least 1 character"),
    ({"user_id": "u" * 257, "candidates": ["i1"]}, 422, "at most 256"),
    ({"user_id": "u1", "candidates": ["x" * 257]}, 422, "at most 256"),
    ({"user_id": "u1", "candidates": [3]}, 422, "valid string"),
    ({"user_id": "u1", "candidates": ["i1", ["i2"]]}, 422, "valid string"),
    ({"user_id": "u1", "candidates": ["i1", "", "i2"]}, 422, "at least 1 character"),
    ({"user_id": "u1", "candidates": ["i1", "nope", "i2", "nope"]}, 400, "duplicate"),
    ({"user_id": "u1", "candidates": "i1"}, 422, "valid array"),
    ({"user_id": 7, "candidates": ["i1"]}, 422, "valid string"),
    ({"user_id": "u1", "candidates": ["i1"], "extra": 1}, 422, "Extra inputs"),
    ({"candidates": ["i1"]}, 422, "Field required"),
    ({"user_id": "u1", "candidates": ["i1"], "recent": "i2"}, 422, "valid array"),
    ({"user_id": "u1", "candidates": ["i1"], "recent": ["i2", 5]}, 422, "valid string"),
    ({"user_id": "u1", "candidates": ["i1"], "recent": ["i2"] * 21}, 422, "at most 20"),
])
def test_bad_requests_get_4xx_with_a_clear_message(tmp_path, body, status, fragment):
    client, _ = _client(tmp_path)
    r = client.post("/rank", json=body)
    assert r.status_code == status
    assert fragment in json.dumps(r.json())


def test_a_bad_body_is_told_so_before_the_service_is_ready(tmp_path):
    client, _ = _client(tmp_path, policy=False)
    assert client.post("/rank", json={"user_id": "u1", "candidates": ["i1", 3]}).status_code == 422
    assert client.post("/rank", json={"user_id": "u1", "candidates": ["i1"]}).status_code == 503


def test_recent_session_context_extends_the_stored_history(tmp_path):
    """``recent``: items the client saw the user engage with, not yet applied by the processor."""
    from streamrl.serving.ranker import merge_recent

    client, ranker = _client(tmp_path, serve_exploration="greedy")
    body = {"user_id": "u1", "candidates": ["i1", "i2", "i5"], "k": 3}
    plain = client.post("/rank", json=body).json()
    ctx = client.post("/rank", json={**body, "recent": ["c4", "i6", "i7"]}).json()   # c4: already stored
    p = ranker.policy
    want = p.score(p.state(["i3", "c4", "i6", "i7"]), p.rows(["i1"]))[0]
    assert [it["score"] for it in ctx["items"] if it["item_id"] == "i1"][0] == pytest.approx(float(want), rel=1e-5)
    assert plain["items"] != ctx["items"]
    stranger = client.post("/rank", json={"user_id": "new", "candidates": ["i1"], "recent": ["i6"]}).json()
    assert not stranger["cold_start"]
    assert merge_recent(["i3", "c4"], ["c4", "i6"]) == ["i3", "c4", "i6"] and merge_recent(None, None) is None


def test_lax_bodies_the_schema_accepts_are_ranked(tmp_path):
    """Bodies outside the fast path (a float k) are validated and coerced by the schema."""
    client, _ = _client(tmp_path)
    r = client.post("/rank", content=b'{"user_id": "u1", "candidates": ["i1", "i2", "i3"], "k": 2.0}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["items"]) == 2


def test_oversize_and_malformed_bodies_are_refused(tmp_path):
    client, _ = _client(tmp_path, serve_max_body_bytes=4096)
    r = client.post("/rank", content=b'{"user_id": "u1", "candidates": [' + b'"a",' * 2000 + b'"b"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 4096" in r.json()["detail"]
    assert client.post("/rank", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_bearer_token_protects_rank_policy_and_metrics(tmp_path):
    client, _ = _client(tmp_path, serve_token=Secret("s3cret"))
    body = {"user_id": "u1", "candidates": ["i1"]}
    for path in ("/rank", "/policy", "/metrics"):
        call = (lambda h: client.post(path, json=body, headers=h)) if path == "/rank" else (lambda h: client.get(path, headers=h))
        assert call({}).status_code == 401
        assert call({"Authorization": "Bearer wrong"}).status_code == 401
        assert call({"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert "s3cret" not in repr(Settings.from_env(serve_token="s3cret"))


def test_metrics_expose_the_serving_series(tmp_path):
    client, _ = _client(tmp_path)
    client.post("/rank", json={"user_id": "stranger", "candidates": ["i1", "zz"]})
    text = client.get("/metrics").text
    for name in ("streamrl_serving_request_duration_seconds_bucket", 'streamrl_serving_requests_total{route="/rank",status="200"}',
                 "streamrl_serving_candidates_per_request_bucket", "streamrl_serving_policy_version",
                 "streamrl_serving_swaps_total", "streamrl_serving_swap_duration_seconds_bucket",
                 'streamrl_snapshot_rejected_total{reason="non_finite"}', "streamrl_serving_cold_starts_total",
                 "streamrl_serving_unscored_candidates_total"):
        assert name in text, name


def test_openapi_spec_documents_every_route(tmp_path):
    client, _ = _client(tmp_path)
    spec = client.get("/openapi.json").json()
    assert {"/rank", "/healthz", "/readyz", "/policy", "/metrics"} <= set(spec["paths"])
    req = spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert req["properties"]["candidates"]["maxItems"] == 1000


@pytest.mark.integration
def test_served_slates_are_logged_to_ranking_decisions(settings):
    from streamrl.kafka import make_consumer
    from streamrl.serving.decisions import DecisionLog

    ranker = Ranker(settings, catalog_text(), None, DecisionLog(settings), seed=0)
    ranker.offer(make_snapshot(3))
    client = TestClient(create_app(ranker, settings))
    sent = [client.post("/rank", json={"user_id": f"u{n}", "candidates": ["i1", "i2", "i3"], "k": 2}).json()
            for n in range(5)]
    ranker.close()   # drains the queue; the child flushes its producer
    consumer = make_consumer(settings, settings.topic("ranking.decisions"), group_id=None, consumer_timeout_ms=5000)
    got = {}
    for rec in consumer:
        d = json.loads(rec.value)
        got[d["request_id"]] = (rec.key.decode(), d)
        if len(got) == len(sent):
            break
    consumer.close()
    for out in sent:
        key, d = got[out["request_id"]]
        assert key == out["user_id"] == d["user_id"] and d["policy_version"] == 3 and d["ts"] > 0
        assert d["items"] == [it["item_id"] for it in out["items"]]
        assert d["propensities"] == [it["propensity"] for it in out["items"]]


def test_batched_ranking_equals_one_by_one_and_isolates_bad_requests(tmp_path):
    _, ranker = _client(tmp_path, serve_exploration="greedy")
    reqs = [("u1", ["i1", "i2", "c3", "zz"], 4), ("stranger", ["i5", "i5"], 2), ("u1", [f"i{k}" for k in range(40)], 10),
            ("stranger", ["c1", "i9"], 1)]
    batched = ranker.rank_many(reqs)
    assert type(batched[1]).__name__ == "BadRankRequest"
    for (user, cands, k), got in zip(reqs, batched):
        if isinstance(got, Exception):
            continue
        one = ranker.rank(user, cands, k)
        assert [it["item_id"] for it in got["items"]] == [it["item_id"] for it in one["items"]]
        for a, b in zip(got["items"], one["items"]):
            assert (a["score"] is None and b["score"] is None) or a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)


def test_concurrent_http_requests_share_batches_and_all_answer(tmp_path):
    import asyncio

    import httpx

    client, ranker = _client(tmp_path)
    app = client.app

    async def burst():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/rank", json={"user_id": f"u{n % 3}", "candidates": ["i1", "i2", "i3"]})
                                          for n in range(40)))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 40
    assert len({r.json()["request_id"] for r in answers}) == 40


@pytest.mark.integration
def test_decision_log_drops_and_counts_when_its_queue_is_full(settings):
    from prometheus_client import REGISTRY

    from streamrl.serving.decisions import DecisionLog

    before = REGISTRY.get_sample_value("streamrl_serving_decisions_total", {"outcome": "failed"}) or 0.0
    dlog = DecisionLog(settings, max_pending=0)
    dlog.log(b"u", b"{}")
    dlog.close()
    assert REGISTRY.get_sample_value("streamrl_serving_decisions_total", {"outcome": "failed"}) == before + 1
