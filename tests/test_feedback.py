"""`POST /api/v1/feedback` (validation, upsert, tenant/department/user isolation), the
satisfaction score and `GET /api/v1/evals/summary` + `quality_summary`."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chargeback.models import ApiKey
from telemetry import evals
from telemetry.models import EvalConfig, EvalScore, Feedback, UsageEvent
from tests.factories import make_route

_ids = itertools.count(1)


def event(tenant, dept, *, user_ref="", model="gpt-4o", feature="chat", at=None) -> UsageEvent:
    return UsageEvent.objects.create(
        tenant=tenant, event_id=f"fb-{next(_ids)}", source="chat", department=dept,
        department_code=dept.code if dept else "", user_ref=user_ref, provider="openai", model=model,
        occurred_at=at or timezone.now() - timedelta(hours=1), cost_provenance="computed", feature=feature,
    )  # fmt: skip


def key_client(tenant, department=None) -> APIClient:
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(
        tenant=tenant, name="k", prefix=prefix, key_hash=ApiKey.hash_token(raw), department=department
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


URL = "/api/v1/feedback"


def test_thumbs_creates_then_updates_one_row(acme, research_dept, employee_user):
    e = event(acme, research_dept, user_ref="emil")
    client = session_client(employee_user)
    first = client.post(URL, {"event_id": e.event_id, "thumbs": "up"}, format="json")
    assert first.status_code == 201 and first.json()["thumbs"] == "up"
    second = client.post(
        URL, {"event_id": e.event_id, "thumbs": "down", "reason": "wrong", "signals": ["regenerated"]}, format="json"
    )
    assert second.status_code == 200
    body = second.json()
    assert body["id"] == first.json()["id"] and body["thumbs"] == "down" and body["signals"] == ["regenerated"]
    row = Feedback.objects.get()
    assert (row.thumbs, row.reason, row.regenerated, row.department_id, row.model) == (
        "down", "wrong", True, research_dept.pk, "gpt-4o"
    )  # fmt: skip


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "event_id"),
        ({"event_id": 5, "thumbs": "up"}, "event_id"),
        ({"event_id": "x"}, "thumbs"),
        ({"event_id": "x", "thumbs": "sideways"}, "thumbs"),
        ({"event_id": "x", "rating": 6}, "rating"),
        ({"event_id": "x", "rating": 0}, "rating"),
        ({"event_id": "x", "rating": True}, "rating"),
        ({"event_id": "x", "rating": "5"}, "rating"),
        ({"event_id": "x", "signals": ["shared"]}, "signals"),
        ({"event_id": "x", "thumbs": "up", "reason": "r" * 201}, "reason"),
        ({"event_id": "x", "thumbs": "up", "comment": 3}, "comment"),
    ],
)
def test_validation_names_the_field(acme, finance_user, body, field):
    response = session_client(finance_user).post(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["errors"]


def test_other_tenants_events_are_not_found(acme, other_tenant, other_dept, finance_user):
    foreign = event(other_tenant, other_dept)
    response = session_client(finance_user).post(URL, {"event_id": foreign.event_id, "thumbs": "up"}, format="json")
    missing = session_client(finance_user).post(URL, {"event_id": "no-such-event", "thumbs": "up"}, format="json")
    assert response.status_code == missing.status_code == 404
    assert response.json()["error"]["message"] == missing.json()["error"]["message"]  # nothing leaks
    assert not Feedback.objects.exists()


def test_keys_and_session_users_only_reach_what_they_can_see(
    acme, research_dept, sales_dept, manager_user, employee_user
):
    sales_event = event(acme, sales_dept)
    research_event = event(acme, research_dept, user_ref="someone-else")
    own_event = event(acme, research_dept, user_ref="emil")
    # A department-bound key: its own department only.
    assert (
        key_client(acme, research_dept)
        .post(URL, {"event_id": sales_event.event_id, "rating": 5}, format="json")
        .status_code
        == 404
    )
    assert (
        key_client(acme, research_dept)
        .post(URL, {"event_id": research_event.event_id, "rating": 5}, format="json")
        .status_code
        == 201
    )
    # A manager: the department; an employee: their own calls.
    manager = session_client(manager_user)
    assert manager.post(URL, {"event_id": sales_event.event_id, "thumbs": "up"}, format="json").status_code == 404
    assert manager.post(URL, {"event_id": research_event.event_id, "thumbs": "up"}, format="json").status_code == 201
    employee = session_client(employee_user)
    assert employee.post(URL, {"event_id": research_event.event_id, "thumbs": "up"}, format="json").status_code == 404
    assert employee.post(URL, {"event_id": own_event.event_id, "thumbs": "up"}, format="json").status_code == 201
    # A key of another tenant cannot reach acme's events.
    from chargeback.models import Tenant

    globex = Tenant.objects.create(name="G2", slug="g2")
    assert (
        key_client(globex).post(URL, {"event_id": own_event.event_id, "thumbs": "up"}, format="json").status_code == 404
    )


def test_unauthenticated_is_refused(acme, research_dept):
    e = event(acme, research_dept)
    assert APIClient().post(URL, {"event_id": e.event_id, "thumbs": "up"}, format="json").status_code in (401, 403)


def test_one_feedback_per_user_per_event_but_many_users(acme, research_dept, manager_user, finance_user):
    e = event(acme, research_dept)
    session_client(manager_user).post(URL, {"event_id": e.event_id, "thumbs": "up"}, format="json")
    session_client(finance_user).post(URL, {"event_id": e.event_id, "thumbs": "down"}, format="json")
    session_client(finance_user).post(URL, {"event_id": e.event_id, "rating": 2}, format="json")
    assert Feedback.objects.filter(event_id=e.event_id).count() == 2


# --- satisfaction -------------------------------------------------------------------------------------


def test_satisfaction_definition():
    up, down = {"thumbs": "up"}, {"thumbs": "down"}
    base = {"thumbs": "", "rating": None, "regenerated": False, "copied": False, "abandoned": False}
    assert evals.satisfaction([{**base, **up}, {**base, **down}]) == 0.5
    assert evals.satisfaction([{**base, "rating": 5}, {**base, "rating": 1}, {**base, "rating": 3}]) == 0.5
    # Implicit signals weigh less than explicit ones: 1 explicit up (w 1) + 1 regenerate (w 0.5).
    assert evals.satisfaction([{**base, **up}, {**base, "regenerated": True}]) == pytest.approx(1 / 1.5)
    # An explicit signal overrides implicit ones on the same feedback.
    assert evals.feedback_value({**base, **down, "copied": True}) == (0.0, 1.0)
    assert evals.satisfaction([{**base, "copied": True}]) == 1.0
    assert evals.satisfaction([base]) is None


# --- summary ------------------------------------------------------------------------------------------


@pytest.fixture
def quality_data(acme, research_dept, sales_dept):
    route = make_route(tenant=acme, alias="judge")
    config = EvalConfig.objects.create(tenant=acme, name="helpful", judge_route=route, criteria="c")
    at = datetime(2026, 3, 10, 12, tzinfo=UTC)
    rows = [
        (research_dept, "gpt-4o", True, 1.0, "ok"),
        (research_dept, "gpt-4o", False, 0.25, "ok"),
        (sales_dept, "claude", True, 0.75, "ok"),
        (sales_dept, "claude", None, None, "parse_error"),
    ]
    for i, (dept, model, passed, norm, status) in enumerate(rows):
        EvalScore.objects.create(
            tenant=acme, config=config, event_id=f"s{i}", event_at=at, department=dept, department_code=dept.code,
            model=model, feature="chat", kind="rubric", status=status, passed=passed, normalized=norm,
        )  # fmt: skip
    for i, thumbs in enumerate(["up", "up", "down"]):
        Feedback.objects.create(
            tenant=acme, event_id=f"f{i}", author=f"user:{i}", event_at=at, department=research_dept,
            department_code="research", model="gpt-4o", feature="chat", thumbs=thumbs,
        )  # fmt: skip
    return config


def test_quality_summary(acme, research_dept, quality_data):
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    summary = evals.quality_summary(tenant=acme, start=start, end=end)
    total = summary["total"]
    assert (total["judged"], total["pass_rate"], total["parse_errors"]) == (3, 0.6667, 1)
    assert total["mean_score"] == pytest.approx(2 / 3, abs=1e-4)
    assert total["satisfaction"] == 0.6667 and total["feedback"] == 3
    by_dept = {row["department"]: row for row in summary["by_department"]}
    assert by_dept["research"]["pass_rate"] == 0.5 and by_dept["sales"]["pass_rate"] == 1.0
    assert by_dept["sales"]["satisfaction"] is None
    assert summary["by_day"][0]["day"] == "2026-03-10" and summary["by_config"][0]["config"] == "helpful"
    scoped = evals.quality_summary(tenant=acme, start=start, end=end, department_ids=[research_dept.pk])
    assert [r["department"] for r in scoped["by_department"]] == ["research"]
    assert evals.quality_summary(tenant=acme, start=end, end=end + timedelta(days=1)) is None


def test_summary_api_is_role_scoped(acme, research_dept, quality_data, finance_user, manager_user, other_tenant):
    params = {"start": "2026-03-01", "end": "2026-04-01"}
    finance = session_client(finance_user).get("/api/v1/evals/summary", params).json()
    assert {r["department"] for r in finance["by_department"]} == {"research", "sales"}
    manager = session_client(manager_user).get("/api/v1/evals/summary", params).json()
    assert {r["department"] for r in manager["by_department"]} == {"research"}
    denied = session_client(manager_user).get("/api/v1/evals/summary", {**params, "department": "sales"})
    assert denied.status_code == 403
    empty = key_client(other_tenant).get("/api/v1/evals/summary", params).json()
    assert empty["total"] is None and empty["by_department"] == []
    bad = session_client(finance_user).get("/api/v1/evals/summary", {"start": "yesterday"})
    assert bad.status_code == 400 and "start" in bad.json()["error"]["errors"]


def test_satisfaction_gauge(acme, research_dept, quality_data):
    from prometheus_client import REGISTRY

    evals.update_satisfaction_gauges(now=datetime(2026, 3, 11, tzinfo=UTC))
    value = REGISTRY.get_sample_value("llmobs_feedback_satisfaction", {"tenant": "acme", "department": "research"})
    assert value == pytest.approx(2 / 3)
