"""Retries, fallbacks, circuit breaking, upstream errors and cancelled streams: every attempt is
its own event linked by operation id, and the caller always gets an OpenAI-style error."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest

from chargeback.models import Route
from telemetry import gateway, recorder
from telemetry.gateway import CallContext
from telemetry.models import UsageEvent
from telemetry.providers import ChatRequest
from tests.fakes.fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def raw_key(acme, research_dept, routes):
    return make_key(acme, department=research_dept)[1]  # noqa: F405


@pytest.fixture
def client(live_server, raw_key):
    return openai.OpenAI(api_key=raw_key, base_url=live_server.url + "/v1", max_retries=0)


def events_of(operation_id: str) -> list[UsageEvent]:
    recorder.flush()
    return list(UsageEvent.objects.filter(operation_id=operation_id).order_by("received_at", "id"))


def test_transient_errors_are_retried_and_each_attempt_is_an_event(client, fake):
    fake.fail_next(500)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello, world!"
    events = events_of(raw.headers["X-LLMObs-Operation-Id"])
    assert [(e.status, e.error_type) for e in events] == [("error", "upstream_error:500"), ("ok", "")]
    assert events[0].cost == Decimal(0) and events[1].cost == Decimal("0.00492")
    assert len(fake.requests) == 2


def test_429_is_retried_then_reported_as_rate_limited(client, fake):
    fake.fail_next(429, 429)  # max_retries=1: two attempts, both limited
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "upstream_rate_limited"
    recorder.flush()
    assert list(UsageEvent.objects.values_list("status", flat=True)) == ["rate_limited", "rate_limited"]


def test_fallback_route_serves_when_the_primary_keeps_failing_and_is_priced_at_its_model(client, fake, routes):
    Route.objects.filter(pk=routes["gpt-4o"].pk).update(fallbacks=["claude"])
    fake.fail_next(503, 503)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    events = events_of(raw.headers["X-LLMObs-Operation-Id"])
    assert [(e.provider, e.model, e.status) for e in events] == [
        ("openai", "gpt-4o", "error"),
        ("openai", "gpt-4o", "error"),
        ("anthropic", "claude-sonnet-4", "ok"),
    ]
    assert all(e.requested_model == "gpt-4o" for e in events)
    assert events[2].cost == Decimal("0.00336")  # the Claude price, not GPT-4o's
    assert raw.headers["X-LLMObs-Event-Id"] == events[2].event_id


def test_upstream_client_errors_are_passed_on_without_retry(client, fake):
    fake.fail_next(400)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "upstream_rejected"
    assert len(fake.requests) == 1


def test_exhausted_retries_give_a_502_in_openai_shape(client, fake):
    fake.fail_next(500, 500)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "api_error" and caught.value.body["code"] == "upstream_error"


def test_malformed_upstream_body_is_a_502_not_a_crash(client, fake):
    fake.script.malformed = 2
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 502


def test_timeout_is_a_504_and_recorded_as_timeout(client, fake, routes):
    Route.objects.filter(pk=routes["gpt-4o-mini"].pk).update(timeout_seconds=Decimal("0.2"), max_retries=0)
    fake.script.latency = 0.6
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 504
    recorder.flush()
    assert UsageEvent.objects.get().status == "timeout"


def test_circuit_opens_after_consecutive_failures_and_recovers_after_cool_down(client, fake, routes, settings):
    settings.LLMOBS_BREAKER_FAILURES = 2
    settings.LLMOBS_BREAKER_COOLDOWN_SECONDS = 0.3
    gateway.reset_breakers()
    fake.fail_next(500, 500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert gateway.breaker_for(f"openai|{fake.url}/v1").state == "open"
    # Open: refused without calling the upstream.
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 503 and caught.value.body["code"] == "upstream_unavailable"
    assert len(fake.requests) == 2
    time.sleep(0.35)
    # Half-open: one trial goes through; its success closes the circuit.
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content
    assert gateway.breaker_for(f"openai|{fake.url}/v1").state == "closed"
    recorder.flush()
    assert UsageEvent.objects.filter(error_type="circuit_open").count() == 1


def test_stream_abandoned_by_the_consumer_is_recorded_as_cancelled_and_estimated(acme, research_dept, routes, fake):
    fake.script.chunks = ["word "] * 40
    key, _raw = make_key(acme, department=research_dept)  # noqa: F405
    call = gateway.stream(
        ctx=CallContext.for_key(key), alias="gpt-4o", request=ChatRequest(messages=MESSAGES, max_tokens=200)
    )
    deltas = iter(call)
    received = [next(deltas) for _ in range(3)]
    deltas.close()  # what Django does when the client goes away
    assert received == ["word "] * 3
    recorder.flush()
    event = UsageEvent.objects.get(event_id=call.event_id)
    assert event.status == "cancelled" and event.cost_provenance == "estimated"
    assert event.output_tokens == 4  # "word word word " ≈ 15 chars / 4
    assert event.input_tokens == gateway.estimate_prompt_tokens(MESSAGES)
    assert event.cost > 0


def test_client_disconnecting_mid_stream_over_http_still_produces_an_event(live_server, raw_key, fake):
    fake.script.chunks = ["word "] * 200
    fake.script.chunk_delay = 0.01
    with httpx.stream(
        "POST",
        live_server.url + "/v1/chat/completions",
        json={"model": "claude", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {raw_key}"},
    ) as response:
        event_id = response.headers["X-LLMObs-Event-Id"]
        lines = response.iter_lines()
        next(lines)
        next(lines)
    deadline = time.monotonic() + 10
    event = None
    while time.monotonic() < deadline and event is None:
        recorder.flush()
        event = UsageEvent.objects.filter(event_id=event_id).first()
        time.sleep(0.1)
    assert event is not None
    assert event.status == "cancelled" and event.cost_provenance == "estimated"
    # Anthropic's message_start had arrived: real input counts, estimated output.
    assert event.input_tokens == 1220 and event.cache_read_input_tokens == 1000


def test_upstream_dropping_the_stream_ends_it_with_an_error_event(client, fake):
    fake.script.disconnect_after = 3
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    recorder.flush()
    event = UsageEvent.objects.get(status="error")
    assert event.cost_provenance == "estimated" and event.output_tokens >= 1


def test_stream_without_final_usage_is_estimated(client, fake):
    fake.script.omit_stream_usage = True
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    recorder.flush()
    event = UsageEvent.objects.get(event_id=chunks[-1].llmobs["event_id"])
    assert event.status == "ok" and event.cost_provenance == "estimated"


def test_stream_whose_body_is_never_read_is_still_recorded_and_releases_its_hold(acme, research_dept, routes):
    from chargeback import enforcement
    from chargeback.models import Budget

    Budget.objects.create(
        tenant=acme, name="cap", scope="department", department=research_dept, amount=Decimal("1"), mode="hard"
    )
    key, _raw = make_key(acme, department=research_dept)  # noqa: F405
    call = gateway.stream(
        ctx=CallContext.for_key(key), alias="gpt-4o", request=ChatRequest(messages=MESSAGES, max_tokens=50)
    )
    assert enforcement.remaining(call._reservation) < Decimal("1")  # held while the stream is open
    call.abandon()  # what closing the response does when the client left before the first byte
    call.abandon()
    recorder.flush()
    event = UsageEvent.objects.get(event_id=call.event_id)
    assert event.status == "cancelled" and event.cost_provenance == "estimated"
    assert call._reservation.settled
