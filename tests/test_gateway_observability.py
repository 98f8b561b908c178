"""Rate limits per key, OpenTelemetry GenAI spans, Prometheus metrics, and prompt capture with
redaction and retention."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry import capture, recorder, tracing
from telemetry.models import CapturedContent, UsageEvent
from telemetry.tasks import purge_captures
from tests.fakes.fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hello."}]

_exporter = InMemorySpanExporter()


@pytest.fixture
def spans():
    if not getattr(_exporter, "_attached", False):
        tracing.add_span_processor(SimpleSpanProcessor(_exporter))
        _exporter._attached = True
    _exporter.clear()
    return _exporter


def sdk(live_server, raw: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)


def test_requests_per_minute_limit_gives_429_with_retry_after(live_server, acme, routes, fake):
    _key, raw = make_key(acme, rpm_limit=2)  # noqa: F405
    client = sdk(live_server, raw)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert caught.value.body["message"] == "Rate limit exceeded: this API key allows 2 requests per minute."
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    assert len(fake.requests) == 2


def test_tokens_per_minute_limit_counts_prompt_estimate_and_max_tokens(live_server, acme, routes):
    _key, raw = make_key(acme, tpm_limit=1000)  # noqa: F405
    client = sdk(live_server, raw)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=600)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=600)
    assert "1000 tokens per minute" in caught.value.body["message"]


def test_limits_are_per_key(live_server, acme, routes):
    _k1, raw1 = make_key(acme, rpm_limit=1)  # noqa: F405
    _k2, raw2 = make_key(acme, rpm_limit=1)  # noqa: F405
    sdk(live_server, raw1).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    sdk(live_server, raw2).chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_each_call_emits_a_genai_client_span(live_server, acme, research_dept, routes, spans):
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    raw_response = sdk(live_server, raw).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    (span,) = spans.get_finished_spans()
    attributes = dict(span.attributes)
    assert span.name == "chat gpt-4o"
    assert span.kind.name == "CLIENT"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai" and attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o" and attributes["gen_ai.response.model"] == "gpt-4o"
    assert attributes["gen_ai.usage.input_tokens"] == 1200
    assert attributes["gen_ai.usage.output_tokens"] == 300
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == 100
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert Decimal(attributes["llmobs.cost"]) == Decimal("0.00492")
    assert attributes["llmobs.department"] == "research"
    recorder.flush()
    event = UsageEvent.objects.get(event_id=raw_response.headers["X-LLMObs-Event-Id"])
    assert event.trace_id == format(span.context.trace_id, "032x")


def test_failed_attempt_spans_carry_the_error(live_server, acme, routes, fake, spans):
    _key, raw = make_key(acme)  # noqa: F405
    fake.fail_next(500)
    sdk(live_server, raw).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    failed, ok = spans.get_finished_spans()
    assert failed.status.status_code.name == "ERROR" and failed.attributes["error.type"] == "upstream_error:500"
    assert ok.status.status_code.name == "UNSET"


def test_langfuse_exporter_uses_its_otlp_endpoint_with_basic_auth(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    seen = {}

    class Recording(trace_exporter.OTLPSpanExporter):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", Recording)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")
    monkeypatch.setenv("LANGFUSE_HOST", "https://langfuse.example/")
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setattr(tracing, "_enabled", False)
    monkeypatch.setattr(tracing, "_provider", None)
    monkeypatch.setattr(tracing, "_tracer", None)
    assert tracing.tracer() is not None
    assert seen["endpoint"] == "https://langfuse.example/api/public/otel/v1/traces"
    assert seen["headers"] == {"Authorization": "Basic cGstbGYtMTpzay1sZi0y"}
    tracing.shutdown()


def test_metrics_endpoint_exposes_gateway_series_with_bounded_labels(live_server, acme, research_dept, routes):
    import httpx
    from prometheus_client import REGISTRY

    labels = {"department": "research", "model": "gpt-4o", "provider": "openai", "tenant": "acme"}

    def sample(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    before = (
        sample("llmobs_gateway_requests_total", status="ok"),
        sample("llmobs_gateway_tokens_total", type="cache_read"),
    )
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    sdk(live_server, raw).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert sample("llmobs_gateway_requests_total", status="ok") - before[0] == 1
    assert sample("llmobs_gateway_tokens_total", type="cache_read") - before[1] == 1024
    text = httpx.get(live_server.url + "/metrics").text
    # The exposition format sorts labels by name.
    where = 'department="research",model="gpt-4o",provider="openai"'
    assert f'llmobs_gateway_requests_total{{{where},status="ok",tenant="acme"}}' in text
    assert f'llmobs_gateway_cost_total{{currency="USD",{where},tenant="acme"}}' in text
    assert "llmobs_gateway_request_duration_seconds_bucket{" in text
    assert 'llmobs_gateway_in_flight{tenant="acme"} 0.0' in text


def test_models_without_a_route_are_labelled_other(acme, routes):
    from telemetry.gateway import metric_model

    assert metric_model(acme.pk, "gpt-4o") == "gpt-4o"
    assert metric_model(acme.pk, "some-random-model-name") == "other"


def test_capture_is_redacted_and_expires(live_server, acme, research_dept, routes):
    acme.capture_mode = "on"
    acme.capture_retention_days = 7
    acme.save()
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    secret_prompt = "My key is sk-proj-abcdefghijklmnopqrstuvwx and mail me at ana@acme.example, AKIAABCDEFGHIJKLMNOP"
    response = sdk(live_server, raw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": secret_prompt}]
    )
    recorder.flush()
    captured = CapturedContent.objects.get(event_id=response.headers["X-LLMObs-Event-Id"])
    assert captured.messages == [
        {"role": "user", "content": "My key is [REDACTED_API_KEY] and mail me at [REDACTED_EMAIL], [REDACTED_AWS_KEY]"}
    ]
    assert captured.completion == "Hello, world!" and captured.redactions == 3
    assert captured.expires_at - captured.created_at == timedelta(days=7)
    assert purge_captures() == 0
    CapturedContent.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert purge_captures() == 1 and not CapturedContent.objects.exists()


def test_capture_off_and_sampled(acme):
    import random

    acme.capture_mode = "off"
    assert not capture.should_capture(acme)
    acme.capture_mode = "sampled"
    acme.capture_sample_rate = Decimal("0.25")
    rng = random.Random(7)
    kept = sum(capture.should_capture(acme, rng=rng) for _ in range(4000))
    assert 900 <= kept <= 1100


def test_redaction_masks_bearer_tokens_and_private_keys():
    text, count = capture.redact(
        "Authorization: Bearer abcdefghijklmnop.qrstuv\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
    )
    assert text == "Authorization: Bearer [REDACTED_TOKEN]\n[REDACTED_PRIVATE_KEY]"
    assert count == 2
