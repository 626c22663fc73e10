"""The processor's /metrics endpoint exports the documented series."""

import urllib.request

import pytest

from consumers.gen import synthetic_log
from consumers.kafka_util import produce
from streamrl.consumers.processor import EventProcessor
from streamrl.metrics import serve

pytestmark = pytest.mark.integration


def test_metrics_endpoint_exports_processor_series(settings):
    produce(settings, synthetic_log(2000, seed=9), raw=[(settings.event_topics["view"], b"k", b"not json")])
    port = serve(0, default=0)
    EventProcessor(settings).run(until_idle=True, max_seconds=60)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("streamrl_processor_events_total{type=\"view\"}",
                 "streamrl_processor_invalid_events_total{reason=\"not_json\"}",
                 "streamrl_processor_transitions_total", "streamrl_processor_pending_joins",
                 "streamrl_processor_closed_joins_total{outcome=\"rewarded\"}",
                 "streamrl_processor_batch_duration_seconds_bucket", "streamrl_processor_consumer_lag_records",
                 "streamrl_processor_commit_duration_seconds_count"):
        assert name in text, name
    invalid = [l for l in text.splitlines() if l.startswith('streamrl_processor_invalid_events_total{reason="not_json"}')]
    assert float(invalid[0].split()[-1]) >= 1.0
