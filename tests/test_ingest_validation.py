"""Pure tests of ingest parsing, validation and OTLP span mapping (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargeback.pricing import Price, PriceBook
from chargeback.usage import Usage
from telemetry import ingest, otlp

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
BOOK = PriceBook(
    [
        Price(
            id=7,
            tenant_id=None,
            provider="openai",
            model_pattern="gpt-4o",
            match_type="exact",
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            effective_to=None,
            input_per_mtok=Decimal("2.50"),
            cache_read_per_mtok=Decimal("1.25"),
            output_per_mtok=Decimal("10"),
        )
    ]
)
CONTEXT = ingest.EventContext(
    tenant_id=1,
    source="ingest",
    book=BOOK,
    departments={"research": 11, "sales": 12},
    now=NOW,
    api_key_id=5,
    api_key_prefix="abcd1234",
    default_user="key-owner",
)


def good(**overrides):
    data = {
        "event_id": "e-1",
        "timestamp": "2025-06-01T11:00:00+02:00",
        "department": "research",
        "provider": "OpenAI",
        "model": "gpt-4o",
        "usage": {"input_tokens": 1000, "cache_read_input_tokens": 400, "output_tokens": 200},
    }
    data.update(overrides)
    return data


def test_a_well_formed_event_becomes_a_priced_row():
    row, errors = ingest.validate_event(good(tags={"a": "b"}, cost="0.5", currency="EUR"), context=CONTEXT)
    assert errors == {}
    assert row.event_id == "e-1"
    assert row.occurred_at == datetime(2025, 6, 1, 9, tzinfo=UTC)
    assert (row.provider, row.model, row.operation, row.status) == ("openai", "gpt-4o", "chat", "ok")
    assert (row.department_id, row.department_code, row.user_ref) == (11, "research", "key-owner")
    assert (row.api_key_id, row.api_key_prefix, row.source) == (5, "abcd1234", "ingest")
    assert (row.cost, row.currency, row.cost_provenance, row.price_id) == (Decimal("0.004"), "USD", "computed", 7)
    assert (row.reported_cost, row.reported_currency) == (Decimal("0.5"), "EUR")
    assert row.tags == {"a": "b"}


def test_whole_float_token_counts_are_accepted_by_the_checked_path():
    row, errors = ingest.validate_event(good(usage={"input_tokens": 5.0}), context=CONTEXT)
    assert errors == {} and row.input_tokens == 5


def test_every_problem_of_an_event_is_reported_at_once():
    _, errors = ingest.validate_event(
        {"event_id": "", "timestamp": "nope", "provider": 1, "usage": {"input_tokens": -1}, "x": 1}, context=CONTEXT
    )
    assert set(errors) == {"event_id", "timestamp", "provider", "model", "department", "usage.input_tokens", "x"}


def test_bound_department_is_used_and_enforced():
    context = ingest.EventContext(
        tenant_id=1, source="ingest", book=BOOK, departments={}, now=NOW, bound_department=(12, "sales")
    )
    row, _ = ingest.validate_event(good(department=None), context=context)
    assert (row.department_id, row.department_code) == (12, "sales")
    _, errors = ingest.validate_event(good(department="research"), context=context)
    assert errors == {"department": ["This API key is bound to department 'sales'; got 'research'."]}


def test_unknown_model_is_unpriced_never_zero():
    row, _ = ingest.validate_event(good(model="mystery"), context=CONTEXT)
    assert (row.cost, row.cost_provenance) == (None, "unpriced")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'[{"a": 1}, {"b": 2}]', [{"a": 1}, {"b": 2}]),
        (b'{"events": [{"a": 1}]}', [{"a": 1}]),
        (b'{"event_id": "x"}', [{"event_id": "x"}]),
    ],
)
def test_parse_batch_shapes(body, expected):
    assert ingest.parse_batch(body) == expected


def test_parse_batch_refuses_more_than_5000_events():
    with pytest.raises(ingest.BatchError) as error:
        ingest.parse_batch(orjson.dumps([{}] * 5001))
    assert (error.value.status, error.value.code) == (413, "too_many_events")


def test_dedupe_keeps_the_first_occurrence():
    rows = [ingest.EventRow(i, "ingest", NOW, "p", m) for i, m in [("a", "1"), ("b", "2"), ("a", "3")]]
    assert [r.model for r in ingest._dedupe(rows)] == ["1", "2"]


# The fast path must never accept what the checked path rejects, and must build the same row.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "research", "sales", "ok", "error", "USD", "usd", "0.1", "1e3", "a" * 300]),
)
usage_values = st.dictionaries(
    st.sampled_from([*ingest.USAGE_FIELDS, "prompt_tokens"]),
    st.one_of(
        st.integers(min_value=-5, max_value=5000), st.none(), st.booleans(), st.floats(0, 10), st.text(max_size=3)
    ),
    max_size=5,
)
field_values = {
    "event_id": st.one_of(st.text(min_size=0, max_size=130), scalars),
    "timestamp": st.one_of(
        st.sampled_from(
            [
                "2025-06-01T11:00:00Z",
                "2025-06-01T11:00:00",
                "2025-06-01",
                "1999-01-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
            ]
        ),
        scalars,
    ),
    "department": scalars,
    "provider": st.one_of(st.sampled_from(["openai", " ", "OpenAI"]), scalars),
    "model": st.one_of(st.sampled_from(["gpt-4o", "x"]), scalars),
    "usage": st.one_of(usage_values, scalars),
    "latency_ms": scalars,
    "status": scalars,
    "cost": scalars,
    "currency": scalars,
    "trace_id": st.one_of(st.sampled_from(["a" * 32, "A" * 32, "g" * 32]), scalars),
    "span_id": st.one_of(st.sampled_from(["b" * 16, "0" * 15]), scalars),
    "tags": st.one_of(
        st.dictionaries(st.text(max_size=70), st.one_of(st.text(max_size=5), st.integers()), max_size=3), scalars
    ),
    "user": scalars,
    "feature": scalars,
}
events = st.fixed_dictionaries({}, optional={**field_values, "unknown": scalars})


@settings(max_examples=400, deadline=None)
@given(events)
def test_fast_path_agrees_with_the_checked_path(data):
    fast = ingest._fast_row(data, CONTEXT)
    checked, errors = ingest._checked_event(data, context=CONTEXT)
    if fast is not None:
        assert errors == {}
        assert fast == checked


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: v for k, v in field_values.items() if k in ("latency_ms", "cost", "usage")}))
def test_fast_path_agrees_on_mostly_valid_events(changes):
    data = {**good(), **changes}
    fast = ingest._fast_row(data, CONTEXT)
    checked, errors = ingest._checked_event(data, context=CONTEXT)
    if fast is not None:
        assert errors == {} and fast == checked
    elif not errors:
        assert checked is not None


def body_row(data):
    """The whole-body (msgspec) fast path's row for one event: None when it leaves the event
    to the checked path."""
    try:
        body = orjson.dumps([data])
    except TypeError:
        return None
    events = ingest.decode_events(body)
    return None if events is None else ingest._struct_row(events[0], CONTEXT)


@settings(max_examples=400, deadline=None)
@given(events)
def test_body_fast_path_agrees_with_the_checked_path(data):
    row = body_row(data)
    checked, errors = ingest._checked_event(data, context=CONTEXT)
    if row is not None:
        assert errors == {}
        assert row == checked


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: v for k, v in field_values.items() if k in ("latency_ms", "cost", "usage", "tags")}))
def test_body_fast_path_agrees_on_mostly_valid_events(changes):
    data = {**good(), **changes}
    row = body_row(data)
    checked, errors = ingest._checked_event(data, context=CONTEXT)
    if row is not None:
        assert errors == {} and row == checked


def test_body_fast_path_takes_well_formed_events_in_every_body_shape():
    events = [good(event_id="a"), good(event_id="b", user="ana", tags={"team": "x"}, cost="0.25")]
    expected = [ingest._checked_event(e, context=CONTEXT)[0] for e in events]
    for body in (
        orjson.dumps(events),
        orjson.dumps({"events": events}),
        b"  \n" + orjson.dumps(events),
    ):
        decoded = ingest.decode_events(body)
        assert [ingest._struct_row(e, CONTEXT) for e in decoded] == expected
    single = ingest.decode_events(orjson.dumps(events[0]))
    assert [ingest._struct_row(e, CONTEXT) for e in single] == expected[:1]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"a string"',
        orjson.dumps({"events": [good()], "extra": 1}),
        orjson.dumps([good(), good(unknown="x")]),
        orjson.dumps([good(usage={"input_tokens": 5.0})]),  # the checked path accepts 5.0
        orjson.dumps([good(user="a\x00b")]),  # NUL: the checked path names the field
        orjson.dumps([good()] * (ingest.MAX_EVENTS_PER_BATCH + 1)),
    ],
    ids=[
        "empty",
        "not-json",
        "no-events",
        "scalar",
        "extra-top-level",
        "unknown-field",
        "float-count",
        "nul",
        "too-many",
    ],
)
def test_body_fast_path_leaves_everything_else_to_the_checked_path(body):
    assert ingest.decode_events(body) is None


def test_body_fast_path_declares_every_event_field():
    decoded = ingest._EventFields.__struct_fields__
    assert set(decoded) == ingest.EVENT_FIELDS
    assert set(ingest._UsageFields.__struct_fields__) == ingest.USAGE_FIELD_SET


# --- OTLP span mapping ---------------------------------------------------------------------------------


def span(attributes, resource=None, **extra):
    fields = {
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
        "parent_span_id": "",
        "start_ns": 1_740_830_400_123_456_789,
        "end_ns": 1_740_830_401_000_000_000,
        "status_code": 0,
        "status_message": "",
        "attributes": attributes,
        "resource": resource or {},
    }
    fields.update(extra)
    return otlp.Span(**fields)


@pytest.mark.parametrize(
    ("attributes", "model_call"),
    [
        ({"http.method": "GET"}, False),
        ({"gen_ai.operation.name": "chat"}, True),
        ({"gen_ai.system": "openai"}, True),
        ({"gen_ai.provider.name": "openai", "gen_ai.operation.name": "embeddings"}, True),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 9}, False),
        ({"gen_ai.operation.name": "execute_tool"}, False),
        ({"gen_ai.operation.name": "create_agent"}, False),
    ],
)
def test_which_spans_are_model_calls(attributes, model_call):
    assert otlp.is_model_call(span(attributes)) is model_call


def test_span_maps_to_an_event():
    event, errors = otlp.span_to_event(
        span(
            {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-x",
                "gen_ai.response.model": "claude-x-2025",
                "gen_ai.usage.input_tokens": 10,
                "session.id": "s1",
                "user.id": 42,
                "llmobs.tag.team": "a",
            },
            resource={"llmobs.department": "research", "llmobs.tag.env": "prod"},
            status_code=2,
            status_message="boom",
        )
    )
    assert errors == {}
    assert event["event_id"] == "a" * 32 + "b" * 16
    assert event["timestamp"] == datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert event["latency_ms"] == 876
    assert (event["model"], event["requested_model"]) == ("claude-x-2025", "claude-x")
    assert (event["status"], event["error_type"]) == ("error", "boom")
    assert (event["department"], event["user"], event["session_id"]) == ("research", "42", "s1")
    assert event["tags"] == {"env": "prod", "team": "a"}
    assert event["usage"] == Usage(input_tokens=10)
    row, errors = ingest.validate_event(event, context=CONTEXT)
    assert errors == {} and row.source == "ingest" and row.status == "error"


def test_span_with_inconsistent_usage_is_rejected():
    _, errors = otlp.span_to_event(span({"gen_ai.system": "openai", "gen_ai.usage.output_tokens": -1}))
    assert errors == {"attributes.gen_ai.usage.output_tokens": ["must not be negative."]}
