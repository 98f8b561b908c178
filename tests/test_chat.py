"""`POST /api/chat`: session auth with CSRF or an API key, JSON or SSE, attribution from the
employee's Membership, validated input."""

from __future__ import annotations

import orjson
import pytest
from django.test import Client

from chargeback.models import Route
from telemetry import recorder
from telemetry.models import UsageEvent
from tests.fakes.fixtures import *  # noqa: F403

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def employee_client(employee_user, routes) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(employee_user)
    client.get("/admin/login/")  # sets the CSRF cookie
    return client


def post(client: Client, body: dict, **headers) -> object:
    token = client.cookies["csrftoken"].value if "csrftoken" in client.cookies else ""
    return client.post(
        "/api/chat", orjson.dumps(body), content_type="application/json", headers={"X-CSRFToken": token, **headers}
    )


@pytest.mark.django_db
def test_employee_chat_returns_message_usage_cost_and_event(employee_client, fake):
    response = post(
        employee_client, {"route": "gpt-4o", "messages": MESSAGES, "session_id": "conv-1", "max_tokens": 64}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": "Hello, world!"}
    assert body["usage"]["input_tokens"] == 1200 and body["usage"]["reasoning_tokens"] == 100
    assert body["cost"] == "0.0049200000" and body["currency"] == "USD"
    assert fake.requests[-1]["body"]["max_tokens"] == 64
    recorder.flush()
    event = UsageEvent.objects.get(event_id=body["event_id"])
    assert (event.source, event.department_code, event.user_ref, event.session_id, event.feature) == (
        "chat",
        "research",
        "emil",
        "conv-1",
        "chat",
    )


@pytest.mark.django_db
def test_session_requests_without_the_csrf_token_are_refused(employee_user, routes):
    client = Client(enforce_csrf_checks=True)
    client.force_login(employee_user)
    response = client.post(
        "/api/chat", orjson.dumps({"route": "gpt-4o", "messages": MESSAGES}), content_type="application/json"
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed"


@pytest.mark.django_db
def test_anonymous_requests_are_401(routes):
    response = Client().post(
        "/api/chat", orjson.dumps({"route": "gpt-4o", "messages": MESSAGES}), content_type="application/json"
    )
    assert response.status_code == 401


@pytest.mark.django_db
def test_api_keys_can_chat_without_csrf(acme, sales_dept, routes):
    _key, raw = make_key(acme, department=sales_dept)  # noqa: F405
    response = Client(enforce_csrf_checks=True).post(
        "/api/chat",
        orjson.dumps({"route": "demo", "messages": MESSAGES}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 200
    assert response.json()["message"]["content"].startswith("[demo provider")
    recorder.flush()
    assert UsageEvent.objects.get().department_code == "sales"


@pytest.mark.django_db
def test_streamed_chat_sends_deltas_then_done(employee_client):
    response = post(employee_client, {"route": "claude", "messages": MESSAGES, "stream": True})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    raw = b"".join(response.streaming_content).decode()
    frames = [f for f in raw.split("\n\n") if f]
    deltas = [orjson.loads(f.split("data: ", 1)[1])["content"] for f in frames if f.startswith("event: delta")]
    assert "".join(deltas) == "Hello, world!"
    assert frames[-1].startswith("event: done")
    done = orjson.loads(frames[-1].split("data: ", 1)[1])
    assert done["usage"]["cache_read_input_tokens"] == 1000 and done["cost"] == "0.0033600000"
    assert done["event_id"] == response["X-LLMObs-Event-Id"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "route"),
        ({"route": "gpt-4o"}, "messages"),
        ({"route": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"route": "gpt-4o", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"route": "gpt-4o", "messages": MESSAGES, "stream": "yes"}, "stream"),
    ],
)
def test_invalid_chat_bodies_are_400_naming_the_field(employee_client, body, param):
    response = post(employee_client, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    recorder.flush()
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_routes_not_enabled_for_chat_or_of_another_tenant_are_404(employee_client, routes, other_tenant, fake):
    Route.objects.filter(pk=routes["llama"].pk).update(chat_enabled=False)
    Route.objects.create(tenant=other_tenant, alias="globex-only", provider="demo", upstream_model="demo-echo")
    for alias in ("llama", "globex-only"):
        response = post(employee_client, {"route": alias, "messages": MESSAGES})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
