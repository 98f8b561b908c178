"""The OpenAI-compatible gateway through the real `openai` SDK against a live server, for each
provider (plain and streamed), with usage and cost checked exactly."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from telemetry import recorder
from telemetry.models import UsageEvent
from tests.fakes.fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(live_server, acme, research_dept, routes):
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    return openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)


def only_event(**filters) -> UsageEvent:
    recorder.flush()
    return UsageEvent.objects.get(**filters)


def test_openai_plain_call_prices_cached_and_reasoning_tokens_exactly(client, fake):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.usage.prompt_tokens == 1200
    assert completion.usage.prompt_tokens_details.cached_tokens == 1024
    assert completion.usage.completion_tokens_details.reasoning_tokens == 100
    event_id = raw.headers["X-LLMObs-Event-Id"]
    # (1200-1024)*2.50 + 1024*1.25 + (300-100)*10 + 100*12, per million
    assert Decimal(raw.headers["X-LLMObs-Cost"]) == Decimal("0.00492")
    assert float(raw.headers["X-Gateway-Overhead-Ms"]) >= 0
    event = only_event(event_id=event_id)
    assert (event.status, event.provider, event.model, event.requested_model) == ("ok", "openai", "gpt-4o", "gpt-4o")
    assert (event.input_tokens, event.cache_read_input_tokens, event.output_tokens, event.reasoning_tokens) == (
        1200,
        1024,
        300,
        100,
    )
    assert event.cost == Decimal("0.00492")
    assert event.cost_provenance == "computed"
    assert event.department_code == "research"
    assert event.source == "gateway"
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == "gpt-4o" and sent["body"]["max_tokens"] == 500
    assert sent["headers"]["authorization"] == "Bearer not-set"


def test_openai_stream_asks_for_usage_and_records_it(client, fake, monkeypatch):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.prompt_tokens == 1200
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    event = only_event(event_id=usage_chunk.llmobs["event_id"])
    assert event.status == "ok" and event.cost == Decimal("0.00492") and event.ttft_ms is not None


def test_credential_comes_from_the_environment(client, fake, monkeypatch):
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-test-123")
    client.chat.completions.create(model="claude", messages=MESSAGES)
    headers = fake.requests[-1]["headers"]
    # This SDK version sends the key as a bearer token; older ones used x-api-key.
    sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert sent == "sk-ant-test-123"


def test_anthropic_plain_and_streamed_usage_include_cache_tokens(client, fake):
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=MESSAGES, max_tokens=300)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.choices[0].finish_reason == "stop"
    sent = fake.requests[-1]["body"]
    assert sent["system"] == "Be brief." and sent["messages"] == [{"role": "user", "content": "Say hello."}]
    # 20 uncached*3 + 1000 read*0.30 + 200 written*3.75 + 150 out*15, per million
    assert Decimal(raw.headers["X-LLMObs-Cost"]) == Decimal("0.00336")
    plain = only_event(event_id=raw.headers["X-LLMObs-Event-Id"])
    assert (plain.input_tokens, plain.cache_read_input_tokens, plain.cache_creation_input_tokens) == (1220, 1000, 200)

    chunks = list(
        client.chat.completions.create(
            model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    streamed = only_event(event_id=chunks[-1].llmobs["event_id"])
    # message_start's placeholder output (1) is replaced by message_delta's cumulative 150.
    assert (streamed.input_tokens, streamed.cache_read_input_tokens, streamed.output_tokens) == (1220, 1000, 150)
    assert streamed.cost == Decimal("0.00336") and streamed.cost_provenance == "computed"


def test_ollama_plain_and_streamed_usage_from_the_done_chunk(client, fake):
    raw = client.chat.completions.with_raw_response.create(model="llama", messages=MESSAGES)
    assert raw.parse().usage.prompt_tokens == 26
    plain = only_event(event_id=raw.headers["X-LLMObs-Event-Id"])
    # compute = prompt_eval 13,074,791 ns + eval 52,479,709 ns = 65 ms at 0.0005/GPU-second
    assert (plain.input_tokens, plain.output_tokens, plain.compute_ms) == (26, 42, 65)
    assert plain.cost == Decimal("0.0000325")

    chunks = list(
        client.chat.completions.create(
            model="llama", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    streamed = only_event(event_id=chunks[-1].llmobs["event_id"])
    assert (streamed.input_tokens, streamed.output_tokens, streamed.compute_ms, streamed.status) == (26, 42, 65, "ok")
    assert fake.requests[-1]["body"]["options"]["num_predict"] == 1024


def test_demo_provider_answers_without_network(client, fake):
    completion = client.chat.completions.create(model="demo", messages=MESSAGES)
    assert completion.choices[0].message.content.startswith("[demo provider")
    assert fake.requests == []


def test_attribution_from_headers_and_user_field(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        user="body-user",
        extra_headers={"X-LLMObs-Feature": "search", "X-LLMObs-Session": "s-1", "X-LLMObs-Tags": "project=apollo"},
    )
    event = only_event(event_id=raw.headers["X-LLMObs-Event-Id"])
    assert (event.user_ref, event.feature, event.session_id) == ("body-user", "search", "s-1")
    assert event.tags == {"project": "apollo", "feature": "search"}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, user="body-user", extra_headers={"X-LLMObs-User": "header-user"}
    )
    assert only_event(event_id=raw.headers["X-LLMObs-Event-Id"]).user_ref == "header-user"


def test_a_key_of_another_tenant_cannot_use_this_tenants_route(live_server, other_tenant, routes, fake):
    _key, raw = make_key(other_tenant)  # noqa: F405
    other = openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        other.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    assert fake.requests == []
    recorder.flush()
    assert not UsageEvent.objects.exists()


def test_unknown_or_revoked_key_is_401(live_server, routes):
    bad = openai.OpenAI(api_key="llmo_deadbeef_nope", base_url=live_server.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": -3}, "max_tokens"),
        ({"model": "gpt-4o", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "gpt-4o", "messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_invalid_requests_are_400_naming_the_field_and_record_nothing(live_server, acme, routes, body, param):
    import httpx

    _key, raw = make_key(acme)  # noqa: F405
    response = httpx.post(
        live_server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    recorder.flush()
    assert not UsageEvent.objects.exists()
