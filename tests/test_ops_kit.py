"""The operations kit (ops/): Prometheus alert rules and the Grafana dashboard only name metrics
we export, every alert says how bad it is and where its runbook section is, and `/metrics`
serves the database-backed gauges the ingest-lag and unpriced alerts read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from django.utils import timezone
from prometheus_client.metrics import MetricWrapperBase

from telemetry import metrics
from telemetry.models import HourlyRollup, RollupWatermark

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "llmobs-dashboard.json"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"


def _runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's sections, read from the file itself."""
    return {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }


RUNBOOK_ANCHORS = _runbook_anchors()
METRIC_NAME = re.compile(r"\bllmobs_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}
# Families the DatabaseCollector yields at scrape time (asserted against /metrics below).
DATABASE_GAUGES = {"llmobs_metrics_database_up", "llmobs_rollup_lag_seconds", "llmobs_unpriced_events_24h"}


def exported_series_names() -> set[str]:
    names = set(DATABASE_GAUGES)
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_rule_has_expr_for_severity_and_a_runbook_anchor():
    rules = alert_rules()
    assert len(rules) >= 8
    covered = set()
    for rule in rules:
        assert rule["alert"].startswith("LLMObs"), rule
        assert rule["expr"].strip() and "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("docs/RUNBOOK.md") and anchor in RUNBOOK_ANCHORS, (rule["alert"], url)
        covered.add(anchor)
    assert covered == RUNBOOK_ANCHORS


def test_alert_expressions_only_use_exported_metrics():
    known = exported_series_names()
    for rule in alert_rules():
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)


def test_dashboard_is_valid_json_with_panels_on_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    known = exported_series_names()
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            names = set(METRIC_NAME.findall(target["expr"]))
            assert names and names <= known, (panel["title"], names - known)
            used |= names
    # Every exported family has a panel.
    families = {n.removesuffix(s) for n in used for s in ("_total", "_bucket", "_sum", "_count") if n.endswith(s)}
    families |= used
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            assert value.describe()[0].name in families, value.describe()[0].name
    assert used >= DATABASE_GAUGES


def test_metrics_endpoint_serves_the_database_gauges(client, acme):
    now = timezone.now()
    RollupWatermark.objects.create(name="hourly", position=now - timedelta(minutes=5))
    HourlyRollup.objects.create(
        tenant=acme,
        hour=now.replace(minute=0, second=0, microsecond=0).astimezone(UTC),
        provider="openai",
        model="gpt-x",
        currency="USD",
        requests=4,
        unpriced=3,
    )
    HourlyRollup.objects.create(
        tenant=acme, hour=datetime(2020, 1, 1, tzinfo=UTC), provider="openai", model="gpt-x", currency="USD", unpriced=9
    )
    text = client.get("/metrics").content.decode()
    assert "llmobs_metrics_database_up 1.0" in text
    assert 'llmobs_unpriced_events_24h{tenant="acme"} 3.0' in text
    lag = re.search(r'llmobs_rollup_lag_seconds\{stream="hourly"\} ([0-9.e+]+)', text)
    assert lag and 300 <= float(lag.group(1)) < 360
    served = set(re.findall(r"^(llmobs_[a-z0-9_]+)", text, flags=re.M))
    assert served <= exported_series_names()


def test_ingest_counter_counts_accepted_duplicate_and_rejected(acme, research_dept):
    from chargeback.keys import create_api_key
    from telemetry.ingest import record_batch

    key, _ = create_api_key(tenant=acme, name="ops-kit", department=research_dept)
    before = {o: metrics.INGEST_EVENTS.labels("ingest", o)._value.get() for o in ("accepted", "duplicate", "rejected")}
    event = {"event_id": "ops-1", "timestamp": "2026-01-05T10:00:00Z", "provider": "openai", "model": "m"}
    record_batch(key=key, items=[event, {"event_id": "bad"}])
    record_batch(key=key, items=[event])
    after = {o: metrics.INGEST_EVENTS.labels("ingest", o)._value.get() for o in before}
    assert {o: after[o] - before[o] for o in before} == {"accepted": 1, "duplicate": 1, "rejected": 1}


promtool = shutil.which("promtool")


@pytest.mark.skipif(promtool is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_kind_links_to_an_existing_runbook_section():
    from chargeback import alerting

    assert set(alerting.RUNBOOK.values()) <= RUNBOOK_ANCHORS
