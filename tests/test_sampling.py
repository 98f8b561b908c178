"""Adaptive trace sampling: every error, slow call and costly call keeps its span and captured
text, a hashed share of the rest does too, and every usage event is recorded regardless."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from django.core.exceptions import ValidationError
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from chargeback.models import Tenant
from telemetry import gateway, recorder, sampling, tracing
from telemetry.gateway import CallContext, GatewayError
from telemetry.models import CapturedContent, SamplingPolicy, UsageEvent
from telemetry.providers import ChatRequest
from telemetry.sampling import Decision, Policy
from tests.fakes.fixtures import *  # noqa: F403

MESSAGES = [{"role": "user", "content": "Say hello."}]
# What the fake upstream's gpt-4o answer costs at the test prices (tests/fakes/fixtures.py).
CALL_COST = Decimal("0.00492")

_kept = InMemorySpanExporter()  # behind the sampling processor, like OTLP and Langfuse
_all = InMemorySpanExporter()  # sees every span, to prove dropped spans were made and marked


@pytest.fixture
def spans():
    if not getattr(_kept, "_attached", False):
        tracing.add_span_processor(SimpleSpanProcessor(_kept))
        tracing.add_span_processor(SimpleSpanProcessor(_all), sampled=False)
        _kept._attached = True
    _kept.clear()
    _all.clear()
    return _kept


def set_policy(tenant: Tenant, **fields) -> SamplingPolicy:
    defaults = {"slow_ms": None, "costly_amount": None, "base_rate": Decimal(0), **fields}
    policy, _ = SamplingPolicy.objects.update_or_create(tenant=tenant, defaults=defaults)
    sampling.forget_policies()
    return policy


def call(tenant: Tenant, alias: str = "gpt-4o") -> str:
    outcome = gateway.complete(
        ctx=CallContext(tenant=tenant), alias=alias, request=ChatRequest(messages=MESSAGES, max_tokens=100)
    )
    return outcome.event_id


def stream(tenant: Tenant, alias: str = "gpt-4o") -> gateway.StreamedCall:
    streamed = gateway.stream(
        ctx=CallContext(tenant=tenant), alias=alias, request=ChatRequest(messages=MESSAGES, max_tokens=100)
    )
    list(streamed)
    return streamed


def events(tenant: Tenant) -> list[UsageEvent]:
    recorder.flush()
    return list(UsageEvent.objects.filter(tenant=tenant).order_by("id"))


def counter(tenant: str, decision: str, reason: str) -> float:
    labels = {"tenant": tenant, "decision": decision, "reason": reason}
    return REGISTRY.get_sample_value("llmobs_trace_sampling_total", labels) or 0.0


# --- the decision, as a pure function ------------------------------------------------------------

POLICY = Policy(enabled=True, slow_ms=10_000, costly_amount=Decimal("0.50"), base_rate=Decimal("0.1"))


def decide(policy: Policy = POLICY, *, status="ok", latency_ms=100, cost=Decimal("0.01"), event_id="e1") -> Decision:
    return sampling.decide(policy, status=status, latency_ms=latency_ms, cost=cost, event_id=event_id)


@pytest.mark.parametrize("status", ["error", "timeout", "rate_limited", "blocked"])
def test_every_failed_call_is_kept_as_an_error(status):
    assert decide(POLICY, status=status, event_id="never-sampled") == Decision(True, "error")


def test_errors_follow_the_other_rules_when_keep_errors_is_off():
    policy = Policy(enabled=True, keep_errors=False, slow_ms=None, costly_amount=None, base_rate=Decimal(0))
    assert decide(policy, status="error") == Decision(False, "dropped")


def test_a_call_at_or_above_the_slow_threshold_is_kept_as_slow():
    assert decide(latency_ms=10_000) == Decision(True, "slow")
    assert decide(latency_ms=60_000, cost=Decimal("9")) == Decision(True, "slow")  # first rule wins
    assert decide(Policy(enabled=True, base_rate=Decimal(0)), latency_ms=9_999).reason == "dropped"


def test_a_call_at_or_above_the_cost_threshold_is_kept_as_costly():
    assert decide(cost=Decimal("0.50")) == Decision(True, "costly")
    assert decide(Policy(enabled=True, base_rate=Decimal(0)), cost=Decimal("0.4999999999")).reason == "dropped"


def test_unpriced_or_unmeasured_calls_fall_through_to_the_base_rate():
    policy = Policy(enabled=True, base_rate=Decimal(0))
    assert decide(policy, latency_ms=None, cost=None) == Decision(False, "dropped")


def test_a_cancelled_stream_is_not_an_error():
    assert decide(Policy(enabled=True, base_rate=Decimal(0)), status="cancelled") == Decision(False, "dropped")


def test_base_rate_keeps_about_that_share_of_the_rest_and_the_same_ids_every_time():
    policy = Policy(enabled=True, slow_ms=None, costly_amount=None, base_rate=Decimal("0.25"))
    ids = [f"event-{i}" for i in range(20_000)]
    first = [decide(policy, event_id=i) for i in ids]
    kept = sum(d.keep for d in first)
    assert 4_700 <= kept <= 5_300  # 25 % of 20,000 ± 6 standard deviations
    assert {d.reason for d in first} == {"sampled", "dropped"}
    assert [decide(policy, event_id=i) for i in ids] == first


def test_base_rate_zero_keeps_none_and_one_keeps_all():
    ids = [f"event-{i}" for i in range(1_000)]
    assert not any(decide(Policy(enabled=True, base_rate=Decimal(0)), event_id=i).keep for i in ids)
    assert all(decide(Policy(enabled=True, base_rate=Decimal(1)), event_id=i).keep for i in ids)


def test_a_disabled_policy_keeps_everything():
    assert decide(Policy(enabled=False, base_rate=Decimal(0))) == Decision(True, "off")


# --- the policy ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_policy_validation_names_each_field_and_nothing_is_written(acme):
    policy = SamplingPolicy(tenant=acme, base_rate=Decimal("1.5"), slow_ms=0, costly_amount=Decimal("-1"))
    with pytest.raises(ValidationError) as caught:
        policy.full_clean()
    assert caught.value.message_dict == {
        "base_rate": ["The base rate is a share between 0 and 1."],
        "slow_ms": ["The slow threshold must be a positive number of milliseconds (empty = no rule)."],
        "costly_amount": ["The cost threshold must be above zero (empty = no rule)."],
    }
    assert not SamplingPolicy.objects.exists()


@pytest.mark.django_db
def test_policy_defaults_and_tenants_without_a_row(acme, settings):
    row = SamplingPolicy(tenant=acme)
    row.full_clean()
    assert (row.enabled, row.keep_errors, row.slow_ms, row.costly_amount, row.base_rate) == (
        True,
        True,
        10_000,
        Decimal("0.50"),
        Decimal("0.1"),
    )
    # decide() takes the model row as well as the cached snapshot, with the same answer.
    for event_id in ("a", "b", "c", "d"):
        assert decide(row, event_id=event_id) == decide(Policy.of(row), event_id=event_id)
    assert sampling.policy_for(acme.pk) == Policy(enabled=False)
    settings.LLMOBS_SAMPLING_DEFAULT_ENABLED = True
    sampling.forget_policies()
    assert sampling.policy_for(acme.pk) == Policy(enabled=True)


@pytest.mark.django_db
def test_admin_rejects_a_bad_policy_naming_the_field(admin_client, acme):
    response = admin_client.post(
        "/admin/telemetry/samplingpolicy/add/",
        {"tenant": acme.pk, "enabled": "on", "keep_errors": "on", "slow_ms": "10000", "base_rate": "2"},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"base_rate": ["The base rate is a share between 0 and 1."]}
    assert not SamplingPolicy.objects.exists()


# --- gateway calls ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_error_attempt_is_kept_and_the_successful_retry_dropped(acme, routes, fake, spans):
    set_policy(acme)
    fake.fail_next(500)
    call(acme)
    failed, ok = events(acme)
    assert (failed.status, failed.sampling) == ("error", "error")
    assert (ok.status, ok.sampling) == ("ok", "dropped")
    (span,) = spans.get_finished_spans()
    assert span.attributes["llmobs.sampling.keep"] is True
    assert span.attributes["llmobs.sampling.reason"] == "error"
    assert span.attributes["llmobs.event_id"] == failed.event_id
    assert [s.attributes["llmobs.sampling.reason"] for s in _all.get_finished_spans()] == ["error", "dropped"]


@pytest.mark.django_db
def test_slow_call_is_kept(acme, routes, fake, spans):
    set_policy(acme, slow_ms=40)
    fake.script.latency = 0.06
    event_id = call(acme)
    (event,) = events(acme)
    assert event.event_id == event_id and event.latency_ms >= 40 and event.sampling == "slow"
    assert [s.attributes["llmobs.sampling.reason"] for s in spans.get_finished_spans()] == ["slow"]


@pytest.mark.django_db
def test_costly_call_is_kept_and_only_in_the_tenant_currency(acme, routes, spans):
    set_policy(acme, costly_amount=Decimal("0.004"))
    call(acme)
    acme.currency = "EUR"  # the USD price no longer compares with a EUR threshold
    acme.save()
    call(acme)
    first, second = events(acme)
    assert (first.cost, first.sampling) == (CALL_COST, "costly")
    assert (second.cost, second.currency, second.sampling) == (CALL_COST, "USD", "dropped")
    assert [s.attributes["llmobs.sampling.reason"] for s in spans.get_finished_spans()] == ["costly"]


@pytest.mark.django_db
def test_base_rate_one_keeps_the_rest_as_sampled(acme, routes, spans):
    set_policy(acme, base_rate=Decimal(1))
    call(acme)
    (event,) = events(acme)
    assert event.sampling == "sampled"
    assert [s.attributes["llmobs.sampling.keep"] for s in spans.get_finished_spans()] == [True]


@pytest.mark.django_db
def test_dropped_calls_reach_no_exporter_but_every_usage_event_is_recorded(acme, routes, spans):
    set_policy(acme)
    before = counter("acme", "drop", "dropped")
    ids = [call(acme) for _ in range(3)]
    recorded = events(acme)
    assert [e.event_id for e in recorded] == ids
    assert {e.sampling for e in recorded} == {"dropped"}
    assert all(e.cost == CALL_COST for e in recorded)
    assert spans.get_finished_spans() == ()
    assert [s.attributes["llmobs.sampling.keep"] for s in _all.get_finished_spans()] == [False] * 3
    assert counter("acme", "drop", "dropped") - before == 3


@pytest.mark.django_db
def test_the_decision_agrees_with_decide_for_the_same_event_id(acme, routes, spans):
    set_policy(acme, base_rate=Decimal("0.5"))
    for _ in range(12):
        call(acme)
    policy = sampling.policy_for(acme.pk)
    recorded = events(acme)
    assert {e.sampling for e in recorded} == {"sampled", "dropped"}  # 12 calls at 1/2: both happen
    for event in recorded:
        expected = sampling.decide(policy, status="ok", latency_ms=0, cost=None, event_id=event.event_id)
        assert event.sampling == expected.reason
    exported = {s.attributes["llmobs.event_id"] for s in spans.get_finished_spans()}
    assert exported == {e.event_id for e in recorded if e.sampling == "sampled"}


@pytest.mark.django_db
def test_capture_follows_the_decision(acme, routes, fake):
    acme.capture_mode = "on"
    acme.save()
    set_policy(acme, costly_amount=Decimal("0.004"))
    kept = call(acme)
    set_policy(acme)  # nothing qualifies now
    dropped = call(acme)
    recorder.flush()
    assert list(CapturedContent.objects.values_list("event_id", flat=True)) == [kept]
    assert UsageEvent.objects.get(event_id=dropped).sampling == "dropped"


@pytest.mark.django_db
def test_sampling_never_widens_capture(acme, routes):
    acme.capture_mode = "off"
    acme.save()
    set_policy(acme, base_rate=Decimal(1))
    call(acme)
    recorder.flush()
    assert UsageEvent.objects.get().sampling == "sampled"
    assert not CapturedContent.objects.exists()


@pytest.mark.django_db
def test_without_a_policy_everything_is_kept_as_before(acme, routes, spans):
    acme.capture_mode = "on"
    acme.save()
    event_id = call(acme)
    (event,) = events(acme)
    assert event.sampling == "off"
    assert CapturedContent.objects.filter(event_id=event_id).exists()
    assert [s.attributes["llmobs.sampling.reason"] for s in spans.get_finished_spans()] == ["off"]


@pytest.mark.django_db
def test_budget_blocked_calls_are_recorded_and_kept_as_errors(acme, routes):
    from chargeback.models import Budget

    set_policy(acme)
    Budget.objects.create(
        tenant=acme, name="cap", scope="tenant", period="month", amount=Decimal("0.000001"), mode="hard"
    )
    with pytest.raises(GatewayError):
        call(acme)
    (event,) = events(acme)
    assert (event.status, event.sampling) == ("blocked", "error")


@pytest.mark.django_db
def test_policies_are_per_tenant(acme, other_tenant, routes, fake, spans):
    make_routes(other_tenant, fake)  # noqa: F405
    set_policy(acme)  # drops every fast cheap success
    set_policy(other_tenant, base_rate=Decimal(1))
    call(acme)
    call(other_tenant)
    assert [e.sampling for e in events(acme)] == ["dropped"]
    assert [e.sampling for e in events(other_tenant)] == ["sampled"]
    assert [s.attributes["llmobs.department"] for s in spans.get_finished_spans()] == [""]
    assert sampling.get_kept_fraction(tenant=acme).fraction == 0.0
    assert sampling.get_kept_fraction(tenant=other_tenant).fraction == 1.0


# --- streamed calls -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_streamed_success_is_decided_at_the_end_and_dropped(acme, routes, spans):
    acme.capture_mode = "on"
    acme.save()
    set_policy(acme)
    streamed = stream(acme)
    (event,) = events(acme)
    assert event.event_id == streamed.event_id and event.sampling == "dropped"
    assert spans.get_finished_spans() == ()
    assert not CapturedContent.objects.exists()


@pytest.mark.django_db
def test_streamed_slow_call_is_kept_with_its_capture(acme, routes, fake, spans):
    acme.capture_mode = "on"
    acme.save()
    set_policy(acme, slow_ms=150)
    fake.script.chunks = ["word "] * 10
    fake.script.chunk_delay = 0.02  # slow as a whole, decided when the stream ends
    streamed = stream(acme)
    (event,) = events(acme)
    assert event.sampling == "slow" and event.ttft_ms < event.latency_ms and event.latency_ms >= 150
    assert CapturedContent.objects.get().event_id == streamed.event_id
    assert [s.attributes["llmobs.sampling.reason"] for s in spans.get_finished_spans()] == ["slow"]


@pytest.mark.django_db
def test_stream_failing_midway_is_kept_as_an_error(acme, routes, fake, spans):
    set_policy(acme)
    fake.script.disconnect_after = 2
    streamed = stream(acme)
    (event,) = events(acme)
    assert streamed.error is not None
    assert (event.status, event.sampling) == ("error", "error")
    assert [s.attributes["llmobs.sampling.reason"] for s in spans.get_finished_spans()] == ["error"]


@pytest.mark.django_db(transaction=True)
def test_streamed_call_through_the_openai_sdk_follows_the_policy(live_server, acme, routes, spans):
    set_policy(acme, base_rate=Decimal(1))
    _key, raw = make_key(acme)  # noqa: F405
    client = openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    (event,) = events(acme)
    assert event.sampling == "sampled"
    (span,) = spans.get_finished_spans()
    assert span.attributes["llmobs.event_id"] == event.event_id


# --- exporters and visibility --------------------------------------------------------------------


@pytest.mark.django_db
def test_otlp_and_langfuse_exporters_get_only_kept_spans(acme, routes, fake, monkeypatch):
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    exporters: list[InMemorySpanExporter] = []

    class Recording(InMemorySpanExporter):  # stands in for the network exporter
        def __init__(self, *args, **kwargs):
            super().__init__()
            exporters.append(self)

    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", Recording)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")
    monkeypatch.setenv("LANGFUSE_HOST", "https://langfuse.invalid/")
    for name, value in (("_configured", False), ("_enabled", False), ("_provider", None), ("_tracer", None)):
        monkeypatch.setattr(tracing, name, value)
    set_policy(acme)
    try:
        fake.fail_next(500)
        call(acme)  # an error attempt (kept) then a success (dropped)
        tracing._provider.force_flush()
        assert len(exporters) == 2
        for exporter in exporters:
            (span,) = exporter.get_finished_spans()
            assert span.attributes["llmobs.sampling.reason"] == "error"
    finally:
        tracing.shutdown()


@pytest.mark.django_db
def test_kept_fraction_and_admin_show_why_calls_were_kept(admin_client, acme, routes, fake):
    policy = set_policy(acme)
    fake.fail_next(500)
    call(acme)  # error kept, retry dropped
    call(acme)  # dropped
    recorder.flush()
    kept = sampling.get_kept_fraction(tenant=acme)
    assert (kept.total, kept.kept, kept.by_reason) == (3, 1, {"error": 1, "dropped": 2})
    assert kept.fraction == pytest.approx(1 / 3)
    page = admin_client.get(f"/admin/telemetry/samplingpolicy/{policy.pk}/change/").content.decode()
    assert "33.3% of 3 (error 1, dropped 2)" in page
    listing = admin_client.get("/admin/telemetry/usageevent/?sampling=error").content.decode()
    assert "Kept: error" in listing
