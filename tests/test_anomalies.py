"""Anomaly scoring against a seasonal robust baseline, its explanation, notifications without
storms, and the anomalies API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from chargeback.models import Delivery
from telemetry import anomalies
from telemetry.models import Anomaly, DimensionRollup, HourlyRollup
from tests.factories import make_channel
from tests.test_budget_alerts import eager_celery  # noqa: F401 - fixture

HOUR = datetime(2025, 3, 26, 14, 0, tzinfo=UTC)  # a Wednesday afternoon


def seasonal_cost(at: datetime) -> Decimal:
    # Busier on weekdays and in working hours; deterministic small wiggle instead of noise.
    base = Decimal(4) if at.weekday() < 5 else Decimal(1)
    if 8 <= at.hour < 18:
        base *= 3
    return base + Decimal((at.day * 7 + at.hour * 3) % 5) / 10


def build_history(tenant, department, *, weeks: int = 4, spike: Decimal | None = None, errors_at_hour: int = 0) -> None:
    rows = []
    at = HOUR - timedelta(weeks=weeks)
    while at <= HOUR:
        cost = seasonal_cost(at)
        requests = int(cost * 25)
        model_costs = {"gpt-4o": cost * Decimal("0.6"), "claude": cost * Decimal("0.4")}
        errors = 0
        if at == HOUR:
            if spike is not None:
                model_costs["gpt-4o"] += spike
            errors = errors_at_hour
        for model, c in model_costs.items():
            n = requests // 2
            rows.append(
                HourlyRollup(
                    tenant=tenant, hour=at, department_id=department.pk, provider="x", model=model, currency="USD",
                    requests=n, errors=errors // 2, cost=c, input_tokens=n * 1000, output_tokens=n * 200,
                    latency_count=n, lat_40=n,
                )
            )  # fmt: skip
        at += timedelta(hours=1)
    HourlyRollup.objects.bulk_create(rows)
    day = HOUR.astimezone(tenant.tz).date()
    for k in range(8):
        for user, share in (("ann", Decimal("0.5")), ("bob", Decimal("0.5"))):
            cost = Decimal(40) * share
            if k == 0 and user == "bob" and spike is not None:
                cost += spike
            DimensionRollup.objects.create(
                tenant=tenant, day=day - timedelta(days=k), department_id=department.pk, dimension="user", value=user,
                currency="USD", cost=cost, requests=100,
            )  # fmt: skip


def test_a_cost_spike_is_scored_high_and_explained_by_model_and_user(acme, research_dept):
    build_history(acme, research_dept, spike=Decimal(40))
    found = anomalies.score_tenant(tenant=acme, hour=HOUR)
    cost = next(a for a in found if a.metric == "cost")
    assert cost.severity == "high" and cost.score > 8
    assert cost.observed == pytest.approx(Decimal(str(float(seasonal_cost(HOUR) + 40))), rel=Decimal("1e-6"))
    assert "Cost for research at 2025-03-26 14:00 UTC" in cost.explanation
    assert "Model gpt-4o:" in cost.explanation
    assert "Top user today: bob" in cost.explanation
    assert cost.details["baseline"] == "same hour of week, last 4 weeks"
    assert cost.details["drivers"]["model"][0]["value"] == "gpt-4o"
    # Requests did not move: no request anomaly.
    assert "requests" not in {a.metric for a in found}


def test_a_normal_hour_raises_nothing_and_rescoring_is_idempotent(acme, research_dept):
    build_history(acme, research_dept)
    assert anomalies.score_tenant(tenant=acme, hour=HOUR) == []
    HourlyRollup.objects.filter(hour=HOUR, model="gpt-4o").update(cost=Decimal(60))
    first = anomalies.score_tenant(tenant=acme, hour=HOUR)
    second = anomalies.score_tenant(tenant=acme, hour=HOUR)
    assert [a.pk for a in first] == [a.pk for a in second]
    assert Anomaly.objects.count() == len(first)


def test_an_error_burst_is_an_error_rate_anomaly(acme, research_dept):
    build_history(acme, research_dept, errors_at_hour=200)
    metrics = {a.metric: a for a in anomalies.score_tenant(tenant=acme, hour=HOUR)}
    assert "error_rate" in metrics and metrics["error_rate"].expected == 0


def test_short_history_falls_back_to_the_same_hour_of_day(acme, research_dept):
    build_history(acme, research_dept, weeks=1, spike=Decimal(40))
    cost = next(a for a in anomalies.score_tenant(tenant=acme, hour=HOUR) if a.metric == "cost")
    assert cost.details["baseline"] == "same hour of day, last 7 days"


def test_the_scorer_has_nothing_to_say_without_history():
    score = anomalies.score_point(metric="cost", observed=10.0, history={}, hour=HOUR, first_seen=HOUR)
    assert score is None


def test_notifications_are_grouped_and_rate_limited(acme, research_dept, sales_dept, eager_celery):  # noqa: F811
    make_channel(tenant=acme, kind="webhook", name="hook", target="http://127.0.0.1:8549/none")
    build_history(acme, research_dept, spike=Decimal(40))
    build_history(acme, sales_dept, spike=Decimal(40))
    found = anomalies.score_tenant(tenant=acme, hour=HOUR)
    assert {a.department_id for a in found} == {research_dept.pk, sales_dept.pk}
    delivery = anomalies.notify_anomalies(tenant=acme, anomalies=found, now=HOUR + timedelta(hours=1, minutes=5))
    assert delivery.subject.startswith(f"{len(found)} anomalies in Acme")
    assert delivery.text.count("[high]") >= 2
    # Scored again within the hour: already notified, nothing new.
    again = anomalies.score_tenant(tenant=acme, hour=HOUR)
    assert anomalies.notify_anomalies(tenant=acme, anomalies=again, now=HOUR + timedelta(hours=1, minutes=6)) is None
    # A new anomaly inside the same hour waits: one notification per tenant per hour.
    Anomaly.objects.update(notified_at=None)
    assert anomalies.notify_anomalies(tenant=acme, anomalies=again, now=HOUR + timedelta(hours=1, minutes=7)) is None
    assert Delivery.objects.count() == 1


@pytest.fixture
def scored(acme, research_dept, sales_dept):
    build_history(acme, research_dept, spike=Decimal(40))
    build_history(acme, sales_dept, spike=Decimal(40))
    return anomalies.score_tenant(tenant=acme, hour=HOUR)


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_anomaly_list_is_role_scoped_and_filterable(scored, finance_user, manager_user, research_dept):
    everything = client_for(finance_user).get("/api/v1/anomalies").json()
    assert everything["count"] == len(scored)
    mine = client_for(manager_user).get("/api/v1/anomalies").json()["results"]
    assert mine and {a["department"] for a in mine} == {"research"}
    high = client_for(finance_user).get("/api/v1/anomalies", {"severity": "high", "department": "sales"}).json()
    assert high["count"] >= 1 and {a["department"] for a in high["results"]} == {"sales"}
    bad = client_for(finance_user).get("/api/v1/anomalies", {"status": "sleeping"})
    assert bad.status_code == 400 and "status" in bad.json()["error"]["errors"]


def test_acknowledging_an_anomaly(scored, manager_user, employee_user, finance_user, research_dept, other_tenant):
    from tests.factories import make_member

    research = next(a for a in scored if a.department_id == research_dept.pk)
    sales = next(a for a in scored if a.department_id != research_dept.pk)
    assert client_for(employee_user).post(f"/api/v1/anomalies/{research.pk}/ack").status_code == 403
    assert client_for(manager_user).post(f"/api/v1/anomalies/{sales.pk}/ack").status_code == 404
    outsider = make_member(tenant=other_tenant, username="gina")
    assert client_for(outsider).post(f"/api/v1/anomalies/{research.pk}/ack").status_code == 404
    response = client_for(manager_user).post(f"/api/v1/anomalies/{research.pk}/ack")
    assert response.status_code == 200
    assert response.json()["status"] == "acknowledged" and response.json()["acknowledged_by"] == "morgan"
    # A second ack keeps the first acknowledger.
    assert client_for(finance_user).post(f"/api/v1/anomalies/{research.pk}/ack").json()["acknowledged_by"] == "morgan"


def test_every_surface_formats_a_metric_value_the_same_way():
    """Pages (`anomaly_value`), e-mailed reports and explanations share `format_value`."""
    fmt = anomalies.format_value
    assert fmt("cost", Decimal("1234.5678"), "EUR") == "1,234.57 EUR"
    assert fmt("cost", 0.25, "USD") == "0.25 USD"
    assert fmt("cost", 0.00421, "USD") == "0.0042 USD"  # a model's share of an hour, not "0.00"
    assert fmt("cost", 0, "USD") == "0.00 USD"
    assert fmt("error_rate", 0.0234, "USD") == "2.3%"
    assert fmt("p95_latency", 840, "USD") == "840 ms"
    assert fmt("p95_latency", 12_400, "USD") == "12.4 s"
    assert fmt("requests", 12345.5, "USD") == "12,346"
    assert fmt("tokens", None, "USD") == "—"


@pytest.mark.django_db
def test_an_explanation_reads_in_units_and_caps_a_runaway_z(acme, research_dept):
    hour = datetime(2026, 3, 2, 14, tzinfo=UTC)
    score = anomalies.Score(observed=0.2, expected=0.001, spread=0.0001, z=1999.0, baseline="seasonal", severity="high")
    text, details = anomalies.explain(
        tenant=acme, department_id=research_dept.pk, metric="error_rate", hour=hour, score=score
    )
    assert text.startswith("Error rate for research at 2026-03-02 14:00 UTC was 20.0%, above the expected 0.1%")
    assert "robust z = >99 (seasonal)" in text
    assert details["z"] == 1999.0  # the stored detail keeps the exact value
