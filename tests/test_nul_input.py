"""NUL characters: PostgreSQL stores none in text or jsonb. Found by the ingest fuzzer as a 500
(a department code with "\\u0000" reached the department lookup). Every door now refuses them
with a 400 naming where they were, and the recorder never lets one bad row hold a batch."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from django.test import Client

from chargeback.keys import create_api_key
from telemetry import recorder
from telemetry.capture import redact
from telemetry.models import CapturedContent, UsageEvent
from tests.fakes.fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db


def test_ingest_department_with_nul_is_a_field_error_not_a_500(acme, research_dept):
    _, token = create_api_key(tenant=acme, name="k")
    event = {
        "event_id": "nul-1",
        "timestamp": "2026-03-01T10:00:00Z",
        "department": "research\u0000",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    good = {**event, "event_id": "ok-1", "department": "research"}
    response = Client().post(
        "/api/v1/usage-events",
        orjson.dumps([event, good]),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 207, response.content
    rejected = response.json()["rejected"]
    assert [r["event_id"] for r in rejected] == ["nul-1"] and "department" in rejected[0]["errors"]
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["ok-1"]


@pytest.mark.parametrize(
    "path", ["/api/v1/spend?department=re%00search", "/api/v1/anomalies?department=%00", "/api/v1/spend?x%00=1"]
)
def test_api_query_parameter_with_nul_is_a_json_400(client, finance_user, path):
    client.force_login(finance_user)
    response = client.get(path)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "NUL" in error["message"]


def test_page_query_parameter_with_nul_is_a_400_page(client, finance_user):
    client.force_login(finance_user)
    response = client.get("/overview/?department=%00")
    assert response.status_code == 400
    assert "The query parameter &#x27;department&#x27; contains a NUL character." in response.content.decode()


def test_drf_json_body_with_nul_names_the_field(client, finance_user):
    client.force_login(finance_user)
    response = client.post(
        "/api/v1/feedback", orjson.dumps({"event_id": "e\u00001", "thumbs": "up"}), content_type="application/json"
    )
    assert response.status_code == 400
    assert "event_id: text must not contain NUL" in response.json()["error"]["message"]


def test_gateway_body_with_nul_names_the_field(acme, sales_dept, routes):
    _, raw = make_key(acme, department=sales_dept)  # noqa: F405
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\u0000there"}]}
    response = Client().post(
        "/v1/chat/completions", orjson.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].content" and "NUL" in error["message"]
    assert not UsageEvent.objects.exists()


def test_captured_text_drops_nul():
    assert redact("a\u0000b")[0] == "ab"


@pytest.mark.parametrize("size", [3, 40])  # one INSERT statement / the COPY path
def test_one_unstorable_event_does_not_hold_the_batch(acme, research_dept, settings, size):
    """On PostgreSQL the NUL row is refused and dropped (logged and counted); the others are
    written. On SQLite (which stores NUL) all are written: the batch is never stuck."""
    at = datetime(2026, 3, 1, 10, tzinfo=UTC)
    events = [
        UsageEvent(tenant=acme, department=research_dept, department_code="research", event_id=f"b-{i}",
                   provider="openai", model="gpt-4o", occurred_at=at, user_ref="emil")
        for i in range(size)
    ]  # fmt: skip
    events[1].user_ref = "bad\u0000user"
    capture = CapturedContent(
        tenant_id=acme.pk, event_id="b-2", operation_id="op", department_code="research", model="gpt-4o",
        messages=[], completion="fine", created_at=at, expires_at=at,
    )  # fmt: skip
    recorder.recorder._write([(e, capture if e.event_id == "b-2" else None) for e in events])
    stored = set(UsageEvent.objects.values_list("event_id", flat=True))
    from django.db import connection

    every = {f"b-{i}" for i in range(size)}
    assert stored == (every - {"b-1"} if connection.vendor == "postgresql" else every)
    assert CapturedContent.objects.filter(event_id="b-2").exists()
