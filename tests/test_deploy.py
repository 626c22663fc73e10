"""deploy/ stays in step with the code: every metric a dashboard or alert uses exists."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import streamrl.metrics  # noqa: F401  (registers every metric)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def exported_names():
    names = set()
    for metric in REGISTRY.collect():  # families: counters drop _total, histograms add suffixes
        names.update(metric.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum"))
    return names


def test_alerts_and_dashboards_use_defined_metrics():
    exprs = [r["expr"] for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    for dash in (DEPLOY / "grafana/dashboards").glob("*.json"):
        exprs += [t["expr"] for p in json.loads(dash.read_text())["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"streamrl_[a-z_]+", e)}
    assert used, "no streamrl metrics referenced"
    missing = used - exported_names()
    assert not missing, f"deploy/ references undefined metrics: {sorted(missing)}"
