"""Property-based fuzzing of the HTTP API from its own OpenAPI spec (schemathesis + hypothesis).

Every operation is called with generated valid and invalid inputs; the service must never answer
5xx, and its answers must conform to the spec (status codes, content types, response schemas).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from serving_snapshots import catalog_text, make_snapshot

from streamrl.config import Settings
from streamrl.serving.app import create_app
from streamrl.serving.ranker import Ranker


def _app():
    s = Settings.from_env(state_store="sqlite:///:memory:", serve_exploration="softmax", serve_max_candidates=50)
    from streamrl.consumers.store import open_store

    ranker = Ranker(s, catalog_text(), open_store(s.state_store, s.state_namespace), None, seed=0)
    ranker.offer(make_snapshot(1))
    return create_app(ranker, s)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx_and_conforms_to_its_spec(case):
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:300])
    case.validate_response(response, additional_checks=[not_a_server_error])
