"""Hostile input: property-based fuzzing of the ingest API (Schemathesis, from our own OpenAPI
schema), the gateway (Hypothesis bodies; it is not in the schema), OTLP decoding, the usage
normalisers, the cost engine and the CSV exports.

Invariants: never a 5xx; every rejection is a 4xx in the endpoint's error shape; a rejected
request writes nothing. Example counts are moderate (CI budget); raise them locally with
HYPOTHESIS_PROFILE=deep.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chargeback import exports, pricing
from chargeback.keys import create_api_key
from chargeback.models import Department, Invoice, InvoiceLine, Route, Tenant
from chargeback.usage import Usage, UsageError, from_anthropic, from_canonical, from_openai_chat, from_otel
from telemetry.models import UsageEvent
from tests.factories import make_route

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
FEW = 200 if DEEP else 25
SOME = 500 if DEEP else 60
FUZZ = settings(
    max_examples=FEW,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
ingest_schema = schema.include(path_regex=r"^/(api/v1/usage-events|v1/traces)$")


@pytest.fixture
def keep_test_connection():
    """Schemathesis calls the WSGI application directly, so Django's request_finished signal
    runs close_old_connections, which closes the test transaction's connection on PostgreSQL
    (autocommit is off inside it). Django's test Client disconnects it the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def ingest_world(db, keep_test_connection):
    tenant = Tenant.objects.create(name="Fuzz", slug="fuzz")
    Department.objects.create(tenant=tenant, code="research", name="Research")
    _, token = create_api_key(tenant=tenant, name="fuzz")
    return tenant, token


def _assert_error_shape(body: dict) -> None:
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body


# --- Ingest: Schemathesis --------------------------------------------------------------------------


@pytest.mark.django_db
@ingest_schema.parametrize()
@FUZZ
def test_ingest_never_500s_and_rejections_write_nothing(case, ingest_world):
    tenant, token = ingest_world
    before = UsageEvent.objects.filter(tenant=tenant).count()
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    status = response.status_code
    assert status < 500, (case.path, case.body, response.text[:500])
    after = UsageEvent.objects.filter(tenant=tenant).count()
    if status >= 400:
        assert after == before, "a rejected request stored events"
        if case.path == "/api/v1/usage-events":
            _assert_error_shape(response.json())
    elif case.path == "/api/v1/usage-events" and case.method.upper() == "POST":
        body = response.json()
        assert after - before == body["accepted"], body


@pytest.mark.django_db
@given(events=st.lists(st.dictionaries(st.sampled_from(["event_id", "timestamp", "department", "provider", "model", "usage", "cost", "tags", "latency_ms"]), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3)), max_size=4), max_size=4))  # fmt: skip
@FUZZ
def test_ingest_half_valid_batches(events, ingest_world):
    """Field-shaped garbage mixed with one valid event: the valid one is stored, the others
    rejected with errors naming a field, and counts add up."""
    tenant, token = ingest_world
    valid = {
        "event_id": f"ok-{len(events)}-{abs(hash(json.dumps(events, default=str))) % 10**9}",
        "timestamp": "2025-03-01T12:00:00Z",
        "department": "research",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }
    body = [*events, valid]
    before = UsageEvent.objects.filter(tenant=tenant).count()
    response = Client().post(
        "/api/v1/usage-events",
        data=json.dumps(body, default=str),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code in (202, 207, 400), response.content[:300]
    payload = response.json()
    assert "accepted" in payload, (response.status_code, payload, body)
    stored = UsageEvent.objects.filter(tenant=tenant).count() - before
    assert stored == payload["accepted"]
    assert payload["accepted"] + payload["duplicates"] + len(payload["rejected"]) == len(body)
    for rejected in payload["rejected"]:
        assert rejected["errors"] and all(isinstance(k, str) and k for k in rejected["errors"])


# --- OTLP: random bytes -------------------------------------------------------------------------------


@pytest.mark.django_db
@given(
    raw=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode)),
    content_type=st.sampled_from(["application/x-protobuf", "application/json", "application/octet-stream"]),
    gzip_header=st.booleans(),
)
@FUZZ
def test_otlp_random_bytes_never_500(raw, content_type, gzip_header, ingest_world):
    tenant, token = ingest_world
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if gzip_header:
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    before = UsageEvent.objects.filter(tenant=tenant).count()
    response = Client().post("/v1/traces", data=raw, content_type=content_type, **headers)
    assert response.status_code < 500, (raw, response.content[:300])
    if response.status_code >= 400:
        assert UsageEvent.objects.filter(tenant=tenant).count() == before


@pytest.mark.django_db
@given(doc=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)), lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["resourceSpans", "scopeSpans", "spans", "attributes", "key", "value", "stringValue", "intValue", "traceId", "spanId", "startTimeUnixNano", "endTimeUnixNano", "resource", "name"]), inner, max_size=4)), max_leaves=25))  # fmt: skip
@FUZZ
def test_otlp_json_shaped_garbage_never_500(doc, ingest_world):
    _tenant, token = ingest_world
    response = Client().post(
        "/v1/traces", data=json.dumps(doc), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code < 500, (doc, response.content[:300])


# --- Gateway: Hypothesis bodies ------------------------------------------------------------------------

CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
               "stream_options", "user", "n", "tools", "response_format"]  # fmt: skip
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**40), max_value=2**40), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))  # fmt: skip
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=10)  # fmt: skip
message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "wizard"]), json_leaf), "content": st.one_of(st.text(max_size=30), json_value)})  # fmt: skip
chat_body = st.one_of(
    json_value,
    st.dictionaries(st.sampled_from(CHAT_FIELDS), json_value, max_size=6),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["fuzz-demo", "nope", ""]), "messages": st.lists(message, max_size=3)},
        optional=dict.fromkeys(["max_tokens", "temperature", "stop", "n", "user", "stream_options"], json_value),
    ),
)


@pytest.fixture
def gateway_world(ingest_world, settings):
    settings.LLMOBS_RECORDER_BACKGROUND = False
    tenant, token = ingest_world
    make_route(tenant=tenant, alias="fuzz-demo", provider=Route.Provider.DEMO, upstream_model="demo-1")
    return tenant, token


@pytest.mark.django_db
@given(body=chat_body)
@FUZZ
def test_gateway_bodies_never_500(body, gateway_world):
    tenant, token = gateway_world
    assume(not (isinstance(body, dict) and body.get("stream") is True))
    before = UsageEvent.objects.filter(tenant=tenant).count()
    response = Client().post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )  # fmt: skip
    status = response.status_code
    assert status < 500, (body, response.content[:300])
    if status >= 400:
        error = response.json()["error"]
        assert {"message", "type", "code", "param"} <= set(error), error
        if status == 400:
            assert UsageEvent.objects.filter(tenant=tenant).count() == before
            assert error["code"] == "invalid_request"


@pytest.mark.django_db
@given(raw=st.binary(max_size=200))
@FUZZ
def test_gateway_non_json_never_500(raw, gateway_world):
    _, token = gateway_world
    response = Client().post(
        "/v1/chat/completions", data=raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code < 500


# --- Usage normalisation ---------------------------------------------------------------------------------

token_count = st.one_of(st.integers(min_value=-5, max_value=10**7), st.none(), st.text(max_size=4), st.floats(allow_nan=True))  # fmt: skip


def _check_usage(result: Usage) -> None:
    fields = result.to_fields()
    for name, value in fields.items():
        if isinstance(value, int):
            assert value >= 0, (name, fields)
    assert result.input_tokens >= result.cache_read_input_tokens + result.cache_creation_input_tokens
    assert result.output_tokens >= result.reasoning_tokens


@settings(max_examples=SOME, deadline=None)
@given(payload=st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"]), st.one_of(token_count, st.dictionaries(st.sampled_from(["cached_tokens", "reasoning_tokens", "audio_tokens"]), token_count, max_size=3)), max_size=5))  # fmt: skip
def test_openai_usage_never_negative_uncached(payload):
    try:
        result = from_openai_chat(payload)
    except UsageError as exc:
        assert exc.field and isinstance(exc.field, str)
        assert exc.field in str(exc) or exc.message
        return
    _check_usage(result)


@settings(max_examples=SOME, deadline=None)
@given(payload=st.dictionaries(st.sampled_from(["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation"]), st.one_of(token_count, st.dictionaries(st.sampled_from(["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]), token_count, max_size=2)), max_size=5))  # fmt: skip
def test_anthropic_usage_never_negative(payload):
    try:
        result = from_anthropic(payload)
    except UsageError as exc:
        assert exc.field
        return
    _check_usage(result)


@settings(max_examples=SOME, deadline=None)
@given(payload=st.dictionaries(st.sampled_from(["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation_1h_input_tokens", "reasoning_tokens", "compute_ms", "bogus"]), token_count, max_size=7))  # fmt: skip
def test_canonical_usage_errors_name_a_field(payload):
    try:
        result = from_canonical(payload)
    except UsageError as exc:
        assert exc.field, exc
        return
    _check_usage(result)


@pytest.mark.parametrize("text", ["²", "٣", "１２"])
def test_non_ascii_digit_strings_are_a_field_error_not_a_crash(text):
    # str.isdigit() accepts superscripts and other scripts' digits; int() refuses some of them.
    with pytest.raises(UsageError) as caught:
        from_canonical({"input_tokens": text})
    assert caught.value.field == "input_tokens"


@settings(max_examples=SOME, deadline=None)
@given(attrs=st.dictionaries(st.sampled_from(["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.cache_creation_input_tokens", "gen_ai.usage.reasoning_tokens", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"]), token_count, max_size=6))  # fmt: skip
def test_otel_usage_never_negative(attrs):
    try:
        result = from_otel(attrs)
    except UsageError as exc:
        assert exc.field
        return
    _check_usage(result)


# --- Cost engine ----------------------------------------------------------------------------------------

rate = st.decimals(min_value=Decimal("0"), max_value=Decimal("100"), places=4)


@st.composite
def usages(draw) -> Usage:
    cache_read = draw(st.integers(0, 10**6))
    cache_write = draw(st.integers(0, 10**6))
    write_1h = draw(st.integers(0, cache_write))
    uncached = draw(st.integers(0, 10**7))
    reasoning = draw(st.integers(0, 10**6))
    output = reasoning + draw(st.integers(0, 10**6))
    return from_canonical(
        {
            "input_tokens": uncached + cache_read + cache_write,
            "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": cache_write,
            "cache_creation_1h_input_tokens": write_1h,
            "output_tokens": output,
            "reasoning_tokens": reasoning,
        }
    )


def _price(draw_rates: tuple) -> pricing.Price:
    inp, cache_read, cache_write, output = draw_rates
    # No per-request fee or long-context tier: both are per call, so a split call is not additive.
    return pricing.Price(
        id=1, tenant_id=None, provider="openai", model_pattern="m", match_type="exact",
        effective_from=datetime(2024, 1, 1, tzinfo=UTC), effective_to=None, currency="USD",
        input_per_mtok=inp, cache_read_per_mtok=cache_read, cache_write_per_mtok=cache_write,
        output_per_mtok=output,
    )  # fmt: skip


def _bump(u: Usage, field: str, by: int) -> Usage:
    fields = {k: getattr(u, k) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation_1h_input_tokens", "output_tokens", "reasoning_tokens")}  # fmt: skip
    fields[field] += by
    if field in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        fields["input_tokens"] += by
    return from_canonical(fields)


@settings(max_examples=SOME, deadline=None)
@given(u=usages(), rates=st.tuples(rate, rate, rate, rate), more=st.integers(1, 10**6), bucket=st.sampled_from(["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"]))  # fmt: skip
def test_cost_is_non_negative_monotone_and_additive(u, rates, more, bucket):
    price = _price(rates)
    cost = pricing.cost_of(u, price)
    assert isinstance(cost, Decimal) and cost >= 0
    assert pricing.cost_of(_bump(u, bucket, more), price) >= cost
    # Sum of per-bucket parts: the usage split into one usage per bucket prices to the same total.
    zero = {"input_tokens": 0, "output_tokens": 0}
    parts = [
        from_canonical({**zero, "input_tokens": u.input_tokens - u.cache_read_input_tokens - u.cache_creation_input_tokens}),
        from_canonical({**zero, "input_tokens": u.cache_read_input_tokens, "cache_read_input_tokens": u.cache_read_input_tokens}),
        from_canonical({**zero, "input_tokens": u.cache_creation_input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens, "cache_creation_1h_input_tokens": u.cache_creation_1h_input_tokens}),
        from_canonical({**zero, "output_tokens": u.output_tokens, "reasoning_tokens": u.reasoning_tokens}),
    ]  # fmt: skip
    assert sum((pricing.cost_of(p, price) for p in parts), Decimal(0)) == cost


# --- CSV exports: formula injection ---------------------------------------------------------------------

hostile_text = st.tuples(st.sampled_from(["=", "+", "-", "@", "\t", "\r", " =", ""]), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20)).map("".join)  # fmt: skip


_tenants = itertools.count(1)


def _formula_cells(text: str) -> list[str]:
    bad = []
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            if cell.startswith(exports.FORMULA_PREFIXES) and not exports._NUMBER.fullmatch(cell):
                bad.append(cell)
    return bad


@pytest.mark.django_db
@settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dept_name=hostile_text, cost_centre=hostile_text, description=hostile_text, model=hostile_text, note=hostile_text
)
def test_exports_neutralise_formulas(dept_name, cost_centre, description, model, note):
    tenant = Tenant.objects.create(slug=f"csv-{next(_tenants)}", name="CSV")
    dept = Department.objects.create(tenant=tenant, code="d1", name=dept_name[:200], gl_cost_centre=cost_centre[:64])
    invoice = Invoice.objects.create(
        tenant=tenant, department=dept, period=date(2026, 10, 1), period_start=datetime(2026, 10, 1, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, tzinfo=UTC), currency="USD", status=Invoice.Status.DRAFT,
        number="CSV-2026-0001", total=Decimal("1.00"), total_unrounded=Decimal("1.00"), usage_total=Decimal("1.00"),
    )  # fmt: skip
    InvoiceLine.objects.create(
        invoice=invoice, position=1, kind=InvoiceLine.Kind.values[0], description=description[:500], currency="USD",
        provider="openai", model=model[:255], amount=Decimal("1.00"), amount_unrounded=Decimal("1.00"),
        price_note=note,
    )  # fmt: skip
    # Issued after the lines exist (lines of an issued invoice are immutable); the GL posts issued only.
    Invoice.objects.filter(pk=invoice.pk).update(status=Invoice.Status.ISSUED)
    invoice = Invoice.objects.select_related("tenant", "department").get(pk=invoice.pk)
    for text in (
        exports.invoice_csv(invoice),
        exports.focus_csv(tenant=tenant, period=date(2026, 10, 1)),
        exports.gl_csv(tenant=tenant, period=date(2026, 10, 1)),
    ):
        assert not _formula_cells(text), _formula_cells(text)
