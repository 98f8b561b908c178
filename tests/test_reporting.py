"""GET /api/v1/spend, /latency, /budgets: answers from rollups, scoped by tenant and role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from chargeback.models import ApiKey
from telemetry import rollups
from tests.factories import make_budget, make_usage_event

T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
RANGE = {"start": "2025-03-01", "end": "2025-04-01"}


def key_for(tenant, department=None) -> str:
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(
        tenant=tenant, name="k", prefix=prefix, key_hash=ApiKey.hash_token(raw), department=department
    )
    return raw


def client_with_key(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def usage(acme, research_dept, sales_dept, other_tenant, other_dept):
    make_usage_event(
        tenant=acme,
        department=research_dept,
        occurred_at=T0,
        model="gpt-4o",
        cost=Decimal("1.1000000001"),
        user_ref="ann",
        feature="chat",
        tags={"env": "prod"},
        latency_ms=100,
        ttft_ms=40,
    )
    make_usage_event(
        tenant=acme,
        department=research_dept,
        occurred_at=T0 + timedelta(days=1),
        model="gpt-4o",
        cost=Decimal("2"),
        user_ref="bob",
        feature="search",
        tags={"env": "dev"},
        latency_ms=1000,
        status="error",
    )
    make_usage_event(
        tenant=acme,
        department=sales_dept,
        occurred_at=T0,
        model="claude",
        provider="anthropic",
        cost=Decimal("5"),
        user_ref="cy",
        feature="chat",
        latency_ms=400,
    )
    make_usage_event(tenant=other_tenant, department=other_dept, occurred_at=T0, cost=Decimal("100"))  # fmt: skip
    rollups.roll_up_pending()
    rollups.roll_up_dimensions_pending()


def test_spend_by_department_per_day_from_rollups(usage, finance_user):
    response = client_for(finance_user).get("/api/v1/spend", {**RANGE, "group_by": "department", "interval": "day"})
    assert response.status_code == 200, response.content
    rows = [(r["period"], r["group"], r["requests"], r["cost"]) for r in response.json()["results"]]
    assert rows == [
        ("2025-03-10", "sales", 1, "5.0000000000"),
        ("2025-03-10", "research", 1, "1.1000000001"),
        ("2025-03-11", "research", 1, "2.0000000000"),
    ]


def test_spend_by_month_model_and_filters(usage, finance_user):
    client = client_for(finance_user)
    rows = client.get("/api/v1/spend", {**RANGE, "group_by": "model", "interval": "month"}).json()["results"]
    assert [(r["period"], r["group"], r["cost"]) for r in rows] == [
        ("2025-03", "claude", "5.0000000000"),
        ("2025-03", "gpt-4o", "3.1000000001"),
    ]
    rows = client.get("/api/v1/spend", {**RANGE, "provider": "anthropic"}).json()["results"]
    assert [(r["group"], r["cost"]) for r in rows] == [(None, "5.0000000000")]


def test_spend_by_user_feature_and_tag_comes_from_the_dimension_rollup(usage, finance_user):
    client = client_for(finance_user)
    users = client.get("/api/v1/spend", {**RANGE, "group_by": "user"}).json()["results"]
    assert [(r["group"], r["cost"]) for r in users] == [
        ("cy", "5.0000000000"),
        ("bob", "2.0000000000"),
        ("ann", "1.1000000001"),
    ]
    tags = client.get("/api/v1/spend", {**RANGE, "group_by": "tag:env"}).json()["results"]
    assert [(r["group"], r["cost"]) for r in tags] == [("dev", "2.0000000000"), ("prod", "1.1000000001")]
    chat = client.get("/api/v1/spend", {**RANGE, "feature": "chat"}).json()["results"]
    assert [(r["group"], r["cost"]) for r in chat] == [(None, "6.1000000001")]


def test_hourly_spend_is_in_local_time(usage, finance_user):
    response = client_for(finance_user).get(
        "/api/v1/spend", {"start": "2025-03-10T00:00:00Z", "end": "2025-03-10T12:00:00Z", "interval": "hour"}
    )
    assert [(r["period"], r["cost"]) for r in response.json()["results"]] == [
        ("2025-03-10T10:00:00+01:00", "6.1000000001")
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2025-13-45"}, "end"),
        ({"start": "2025-03-02", "end": "2025-03-01"}, "end"),
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "tag:secret"}, "group_by"),
        ({"interval": "week"}, "interval"),
        ({"group_by": "user", "interval": "hour"}, "interval"),
        ({"department": "nope"}, "department"),
        ({"start": "2025-03-01T10:30:00Z", "end": "2025-03-02T00:00:00Z"}, "start"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_parameter(usage, finance_user, params, field):
    response = client_for(finance_user).get("/api/v1/spend", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["errors"], error


def test_reports_never_read_the_raw_table(usage, finance_user):
    client = client_for(finance_user)
    with CaptureQueriesContext(connection) as queries:
        for path, params in (
            ("/api/v1/spend", {**RANGE, "group_by": "department", "interval": "day"}),
            ("/api/v1/spend", {**RANGE, "group_by": "user"}),
            ("/api/v1/latency", {**RANGE, "group_by": "model"}),
            ("/api/v1/budgets", {}),
        ):
            assert client.get(path, params).status_code == 200
    assert not [q for q in queries.captured_queries if "telemetry_usageevent" in q["sql"]]


def test_latency_percentiles_and_error_rate_by_model(usage, finance_user):
    rows = client_for(finance_user).get("/api/v1/latency", {**RANGE, "group_by": "model"}).json()["results"]
    gpt = next(r for r in rows if r["group"] == "gpt-4o")
    assert gpt["requests"] == 2 and gpt["errors"] == 1 and gpt["error_rate"] == 0.5
    assert abs(gpt["latency_p50_ms"] - 100) <= 100 * rollups.MAX_RELATIVE_ERROR
    assert abs(gpt["latency_p99_ms"] - 1000) <= 1000 * rollups.MAX_RELATIVE_ERROR
    assert abs(gpt["ttft_p50_ms"] - 40) <= 40 * rollups.MAX_RELATIVE_ERROR


def test_latency_by_department_names_departments_and_keeps_tenants_apart(usage, finance_user):
    rows = client_for(finance_user).get("/api/v1/latency", {**RANGE, "group_by": "department"}).json()["results"]
    by_code = {r["group"]: r for r in rows}
    assert set(by_code) == {"research", "sales"}  # the other tenant's department never appears
    assert (by_code["research"]["requests"], by_code["research"]["errors"]) == (2, 1)
    assert by_code["sales"]["requests"] == 1 and by_code["sales"]["ttft_p50_ms"] is None
    assert abs(by_code["sales"]["latency_p50_ms"] - 400) <= 400 * rollups.MAX_RELATIVE_ERROR
    assert by_code["research"]["latency_mean_ms"] == 550.0


def test_a_manager_sees_only_their_department(usage, manager_user):
    client = client_for(manager_user)
    rows = client.get("/api/v1/spend", {**RANGE, "group_by": "department"}).json()["results"]
    assert [(r["group"], r["cost"]) for r in rows] == [("research", "3.1000000001")]
    assert client.get("/api/v1/spend", {**RANGE, "department": "sales"}).status_code == 403
    users = client.get("/api/v1/spend", {**RANGE, "group_by": "user"}).json()["results"]
    assert {r["group"] for r in users} == {"ann", "bob"}


def test_an_employee_sees_only_their_department(usage, employee_user):
    rows = client_for(employee_user).get("/api/v1/latency", RANGE).json()["results"]
    assert [r["requests"] for r in rows] == [2]


def test_a_key_sees_its_tenant_and_a_bound_key_only_its_department(usage, acme, sales_dept, other_tenant):
    rows = client_with_key(key_for(other_tenant)).get("/api/v1/spend", RANGE).json()["results"]
    assert [(r["cost"]) for r in rows] == ["100.0000000000"]
    rows = client_with_key(key_for(acme, sales_dept)).get("/api/v1/spend", RANGE).json()["results"]
    assert [(r["cost"]) for r in rows] == ["5.0000000000"]


def test_anonymous_and_memberless_users_are_refused(usage, django_user_model):
    assert APIClient().get("/api/v1/spend").status_code in (401, 403)
    stranger = django_user_model.objects.create_user(username="stranger", password="x")
    assert client_for(stranger).get("/api/v1/spend").status_code == 403


def test_pagination_with_limit_and_offset(usage, finance_user):
    body = client_for(finance_user).get("/api/v1/spend", {**RANGE, "group_by": "user", "limit": 1, "offset": 1}).json()
    assert body["count"] == 3 and [r["group"] for r in body["results"]] == ["bob"]


def test_budgets_report_spend_forecast_and_state(usage, acme, research_dept, finance_user, manager_user, sales_dept):
    from unittest import mock

    make_budget(tenant=acme, department=research_dept, amount=Decimal("4.00"), name="research")
    make_budget(tenant=acme, department=sales_dept, amount=Decimal("4.00"), name="sales")
    at = datetime(2025, 3, 16, 23, 0, tzinfo=UTC)  # half of March (Paris) has passed
    with mock.patch("django.utils.timezone.now", return_value=at):
        rows = client_for(finance_user).get("/api/v1/budgets").json()["results"]
        mine = client_for(manager_user).get("/api/v1/budgets").json()["results"]
    research = next(r for r in rows if r["name"] == "research")
    assert research["spent"] == "3.1000000001" and research["limit"] == "4.0000000000"
    assert research["percent"] == "77.50" and research["state"] == "warning"
    assert research["period_start"] == "2025-03-01T00:00:00+01:00"
    assert Decimal(research["forecast"]) > Decimal("4") and research["run_out_at"].startswith("2025-03-2")
    assert next(r for r in rows if r["name"] == "sales")["state"] == "exceeded"
    assert [r["name"] for r in mine] == ["research"]


def test_the_openapi_schema_documents_the_reporting_endpoints(db):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    spend = schema["paths"]["/api/v1/spend"]["get"]
    assert {p["name"] for p in spend["parameters"]} >= {"start", "end", "group_by", "interval", "department", "limit"}
    assert "/api/v1/anomalies/{anomaly_id}/ack" in schema["paths"]
