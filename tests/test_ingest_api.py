"""POST /api/v1/usage-events through the HTTP layer: every status code, idempotency, pricing at
ingest, tenant isolation, and bad input of every field with nothing written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from django.db import connection
from django.db.models import Sum
from django.test import override_settings
from django.utils import timezone

from chargeback.keys import create_api_key, revoke_api_key
from telemetry import ingest
from telemetry.models import UsageEvent

URL = "/api/v1/usage-events"


@pytest.fixture(autouse=True)
def fresh_department_cache():
    # Department ids are cached per process; tests roll back (and SQLite reuses ids).
    ingest.clear_department_cache()
    yield
    ingest.clear_department_cache()


@pytest.fixture
def key(acme, research_dept, sales_dept):
    return create_api_key(tenant=acme, name="integration")


@pytest.fixture
def token(key):
    return key[1]


def post(client, token, body, **extra):
    # json, not orjson: the tests send integers beyond 64 bits too.
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(URL, data=data, content_type="application/json", **headers, **extra)


def event(n: int = 1, **overrides):
    data = {
        "event_id": f"evt-{n}",
        "timestamp": "2025-03-01T12:00:00Z",
        "department": "research",
        "user": "alice",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": 1000, "cache_read_input_tokens": 400, "output_tokens": 200},
        "latency_ms": 800,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_single_event_is_accepted_priced_and_attributed(client, token, key, research_dept, gpt4o_price):
    response = post(
        client,
        token,
        event(1, cost="0.01", currency="EUR", tags={"env": "prod"}, trace_id="4BF92F3577B34DA6A3CE929D0E0E4736"),
    )
    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    row = UsageEvent.objects.get()
    assert row.tenant_id == research_dept.tenant_id
    assert row.event_id == "evt-1"
    assert row.source == UsageEvent.Source.INGEST
    assert row.department_id == research_dept.pk and row.department_code == "research"
    assert row.user_ref == "alice"
    assert row.api_key_id == key[0].pk and row.api_key_prefix == key[0].prefix
    assert row.occurred_at == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert (row.input_tokens, row.cache_read_input_tokens, row.output_tokens) == (1000, 400, 200)
    # 600 uncached × 2.50 + 400 cached × 1.25 + 200 output × 10.00, per million.
    assert row.cost == Decimal("0.004")
    assert row.cost_provenance == "computed" and row.price_id == gpt4o_price.pk
    assert (row.reported_cost, row.reported_currency) == (Decimal("0.01"), "EUR")
    assert row.tags == {"env": "prod"}
    assert row.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert row.received_at is not None


def test_unknown_model_is_stored_unpriced_or_with_the_reported_cost(client, token):
    response = post(client, token, [event(1, model="mystery-1"), event(2, model="mystery-1", cost="0.5")])
    assert response.status_code == 202
    rows = {r.event_id: r for r in UsageEvent.objects.all()}
    assert rows["evt-1"].cost is None and rows["evt-1"].cost_provenance == "unpriced"
    assert rows["evt-2"].cost == Decimal("0.5") and rows["evt-2"].cost_provenance == "reported"
    assert rows["evt-2"].currency == "USD"


@pytest.mark.parametrize("wrap", [lambda events: events, lambda events: {"events": events}])
def test_batches_as_array_or_events_object(client, token, wrap):
    response = post(client, token, wrap([event(i) for i in range(5)]))
    assert response.status_code == 202
    assert response.json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    assert UsageEvent.objects.count() == 5


def test_large_batch_uses_the_bulk_path_and_stores_every_event(client, token, gpt4o_price):
    events = [event(i, usage={"input_tokens": i, "output_tokens": 1}) for i in range(1200)]
    response = post(client, token, events)
    assert response.status_code == 202
    assert response.json()["accepted"] == 1200
    assert UsageEvent.objects.count() == 1200
    assert UsageEvent.objects.aggregate(total=Sum("input_tokens"))["total"] == sum(range(1200))
    again = post(client, token, events)
    assert again.json() == {"accepted": 0, "duplicates": 1200, "rejected": []}
    assert UsageEvent.objects.count() == 1200


def test_resent_events_are_duplicates_and_never_change_totals(client, token, gpt4o_price):
    assert post(client, token, [event(1), event(2)]).json()["accepted"] == 2
    before = UsageEvent.objects.aggregate(cost=Sum("cost"), tokens=Sum("input_tokens"))
    # The same ids with other numbers are still duplicates: the first write stands.
    resent = [event(1, usage={"input_tokens": 999999}), event(2), event(3)]
    response = post(client, token, resent)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 2, "rejected": []}
    after = UsageEvent.objects.filter(event_id__in=["evt-1", "evt-2"]).aggregate(
        cost=Sum("cost"), tokens=Sum("input_tokens")
    )
    assert after == before


def test_duplicates_inside_one_batch_count_once_and_the_first_wins(client, token):
    batch = [event(1, user="first"), event(1, user="second"), event(2), event(1, user="third")]
    response = post(client, token, batch)
    assert response.json() == {"accepted": 2, "duplicates": 2, "rejected": []}
    assert UsageEvent.objects.get(event_id="evt-1").user_ref == "first"


def test_some_rejected_gives_207_and_stores_the_valid_ones(client, token):
    batch = [event(1), event(2, usage={"input_tokens": -5}), event(3), "not an object"]
    response = post(client, token, batch)
    assert response.status_code == 207
    assert response.json() == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [
            {"index": 1, "event_id": "evt-2", "errors": {"usage.input_tokens": ["must not be negative."]}},
            {"index": 3, "event_id": None, "errors": {"event": ["must be an object, not a string."]}},
        ],
    }
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["evt-1", "evt-3"]


def test_nothing_valid_gives_400_and_writes_nothing(client, token):
    response = post(client, token, [event(1, timestamp="yesterday"), event(2, provider=7)])
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "invalid"
    assert body["error"]["message"].startswith("No event was valid (2 rejected); first: events[0].timestamp:")
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert body["rejected"][1]["errors"] == {"provider": ["must be a string, not a number."]}
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"{not json", "malformed", "not valid JSON"),
        (b"", "malformed", "not valid JSON"),
        (b"[]", "invalid", "no events"),
        (b"42", "invalid", "must be an event object"),
        (b'{"events": {"a": 1}}', "invalid", "events: must be an array"),
        (b'{"events": [], "extra": 1}', "invalid", "Unknown top-level field(s) beside events: extra"),
    ],
)
def test_malformed_bodies_give_400(client, token, body, code, fragment):
    response = post(client, token, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert fragment in response.json()["error"]["message"]
    assert UsageEvent.objects.count() == 0


# Every field, wrongly: (overrides, field, message fragment).
BAD_FIELDS = [
    ({"event_id": None}, "event_id", "is required."),
    ({"event_id": ""}, "event_id", "must not be empty."),
    ({"event_id": 12}, "event_id", "must be a string, not a number."),
    ({"event_id": "x" * 129}, "event_id", "at most 128 characters"),
    ({"event_id": "a\x00b"}, "event_id", "NUL"),
    ({"timestamp": None}, "timestamp", "is required"),
    ({"timestamp": "2025-03-01T12:00:00"}, "timestamp", "must include a UTC offset"),
    ({"timestamp": "2025-03-01"}, "timestamp", "not an RFC 3339 date-time"),
    ({"timestamp": "2025-13-01T12:00:00Z"}, "timestamp", "not an RFC 3339 date-time"),
    ({"timestamp": 1740830400}, "timestamp", "is required, as an RFC 3339"),
    ({"timestamp": "1999-12-31T23:59:59Z"}, "timestamp", "before 2000"),
    ({"timestamp": "2999-01-01T00:00:00Z"}, "timestamp", "more than a day in the future"),
    ({"department": None}, "department", "is required."),
    ({"department": "nope"}, "department", "Unknown department 'nope'."),
    ({"department": ["research"]}, "department", "must be a string, not an array."),
    ({"user": 5}, "user", "must be a string"),
    ({"user": "u" * 256}, "user", "at most 255 characters"),
    ({"provider": None}, "provider", "is required."),
    ({"provider": "p" * 65}, "provider", "at most 64"),
    ({"model": ""}, "model", "must not be empty."),
    ({"model": "m" * 256}, "model", "at most 255"),
    ({"operation": {"x": 1}}, "operation", "must be a string"),
    ({"usage": [1, 2]}, "usage", "must be an object, not an array."),
    ({"usage": {"input_tokens": -1}}, "usage.input_tokens", "must not be negative."),
    ({"usage": {"input_tokens": "100"}}, "usage.input_tokens", "non-negative integer, not a string"),
    ({"usage": {"input_tokens": True}}, "usage.input_tokens", "non-negative integer, not a boolean"),
    ({"usage": {"input_tokens": 1.5}}, "usage.input_tokens", "non-negative integer"),
    ({"usage": {"input_tokens": 10**13}}, "usage.input_tokens", "at most"),
    ({"usage": {"output_tokens": 2**70}}, "usage.output_tokens", "non-negative integer"),
    ({"usage": {"prompt_tokens": 5}}, "usage.prompt_tokens", "not a known usage field"),
    ({"usage": {"input_tokens": 10, "cache_read_input_tokens": 20}}, "usage.input_tokens", "must include cache"),
    ({"usage": {"output_tokens": 1, "reasoning_tokens": 5}}, "usage.reasoning_tokens", "must not exceed"),
    ({"latency_ms": -1}, "latency_ms", "must not be negative."),
    ({"latency_ms": "fast"}, "latency_ms", "non-negative integer"),
    ({"latency_ms": 2**31}, "latency_ms", "at most"),
    ({"ttft_ms": -3}, "ttft_ms", "must not be negative."),
    ({"status": "weird"}, "status", "must be one of"),
    ({"status": ["ok"]}, "status", "must be one of"),
    ({"error_type": "e" * 129}, "error_type", "at most 128"),
    ({"cost": 0.25}, "cost", "decimal string"),
    ({"cost": "-1"}, "cost", "non-negative decimal string"),
    ({"cost": "1e5"}, "cost", "non-negative decimal string"),
    ({"cost": "NaN"}, "cost", "non-negative decimal string"),
    ({"cost": "0.00000000001"}, "cost", "at most 10 digits"),
    ({"cost": "1", "currency": "usd"}, "currency", "ISO 4217"),
    ({"currency": "USD"}, "currency", "only meaningful together with cost"),
    ({"trace_id": "xyz"}, "trace_id", "32 hexadecimal"),
    ({"span_id": "0" * 15}, "span_id", "16 hexadecimal"),
    ({"parent_span_id": 12}, "parent_span_id", "16 hexadecimal"),
    ({"session_id": "s" * 129}, "session_id", "at most 128"),
    ({"feature": 3}, "feature", "must be a string"),
    ({"tags": "env=prod"}, "tags", "must be an object"),
    ({"tags": {"env": 1}}, "tags", "'env' must be a string, not a number."),
    ({"tags": {f"k{i}": "v" for i in range(33)}}, "tags", "at most 32 entries"),
    ({"tags": {"k" * 65: "v"}}, "tags", "keys must be 1-64"),
    ({"tags": {"env": "v" * 257}}, "tags", "at most 256 characters"),
    ({"tags": {"env": "a\x00"}}, "tags", "without NUL"),
    ({"colour": "blue"}, "colour", "is not a known event field."),
]


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"), BAD_FIELDS, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_FIELDS)]
)
def test_each_bad_field_is_named_and_nothing_is_written(client, token, overrides, field, fragment):
    data = event(1)
    for name, value in overrides.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    response = post(client, token, data)
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["error"]["errors"], body
    assert fragment in body["error"]["errors"][field][0]
    assert body["error"]["message"].startswith(f"{field}: ")
    assert UsageEvent.objects.count() == 0


def test_a_price_beyond_the_money_columns_is_rejected_not_a_500(client, token, acme):
    from tests.factories import make_price

    make_price(tenant=acme, model_pattern="gold", input_per_mtok=Decimal("100000000"))
    response = post(client, token, event(1, model="gold", usage={"input_tokens": 10**12}))
    assert response.status_code == 400
    assert "beyond what a single call can cost" in response.json()["error"]["errors"]["usage"][0]


def test_more_than_5000_events_is_413_and_nothing_is_written(client, token):
    response = post(client, token, [event(i) for i in range(5001)])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_events"
    assert UsageEvent.objects.count() == 0


@override_settings(LLMOBS_INGEST_MAX_BODY_BYTES=2000)
def test_body_over_the_size_limit_is_413(client, token):
    response = post(client, token, [event(i) for i in range(20)])
    assert response.status_code == 413
    assert response.json()["error"] == {"code": "too_large", "message": "The body exceeds 2000 bytes."}
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authentication credentials were not provided."),
        ("Basic abc", "The Authorization header must be 'Bearer <api key>'."),
        ("Bearer llmo_deadbeef_nope", "The API key is unknown or has been revoked."),
    ],
)
def test_missing_or_unknown_key_is_401(client, db, header, message):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(URL, data=orjson.dumps(event(1)), content_type="application/json", **extra)
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "unauthenticated", "message": message}
    assert response["WWW-Authenticate"] == "Bearer"
    assert UsageEvent.objects.count() == 0


def test_revoked_key_is_401(client, key):
    api_key, token = key
    assert post(client, token, event(1)).status_code == 202
    revoke_api_key(key=api_key)
    response = post(client, token, event(2))
    assert response.status_code == 401
    assert UsageEvent.objects.count() == 1


def test_a_known_key_is_remembered_for_a_second_and_a_change_elsewhere_applies_after_it(
    client, key, monkeypatch, django_assert_num_queries
):
    from chargeback.models import ApiKey

    api_key, token = key
    clock = [1000.0]
    monkeypatch.setattr(ingest.time, "monotonic", lambda: clock[0])
    assert post(client, token, event(1)).status_code == 202
    # Remembered: the second request costs no authentication query (only the write).
    sender = ingest.find_sender(token)
    with django_assert_num_queries(0):
        assert ingest.find_sender(token) is sender
    # Another process revokes the key (no signal reaches this one): refused once the second is up.
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    clock[0] += ingest.SENDER_MAX_AGE_S * 0.9
    assert post(client, token, event(2)).status_code == 202
    clock[0] += ingest.SENDER_MAX_AGE_S * 0.2
    assert post(client, token, event(3)).status_code == 401
    assert UsageEvent.objects.count() == 2


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "*/*"])
def test_answers_are_json_whatever_the_accept_header(client, token, accept):
    ok = post(client, token, event(1), HTTP_ACCEPT=accept)
    refused = post(client, "llmo_deadbeef_nope", event(2), HTTP_ACCEPT=accept)
    assert (ok.status_code, ok["Content-Type"], ok.json()["accepted"]) == (202, "application/json", 1)
    assert (refused.status_code, refused["Content-Type"]) == (401, "application/json")
    assert refused.json()["error"]["code"] == "unauthenticated"


def test_unknown_tokens_are_looked_up_every_time(client, key, django_assert_num_queries):

    _, token = key
    wrong = token[:-4] + "0000"
    for _ in range(2):
        with django_assert_num_queries(1):
            assert ingest.find_sender(wrong) is None


def test_session_login_is_not_enough(client, admin_user_acme):
    client.force_login(admin_user_acme)
    assert client.post(URL, data=orjson.dumps(event(1)), content_type="application/json").status_code == 401


def test_over_the_keys_rate_limit_is_429_with_retry_after(client, acme, research_dept):
    from django.core.cache import cache

    cache.clear()
    _, token = create_api_key(tenant=acme, name="limited", rpm_limit=2)
    assert post(client, token, event(1)).status_code == 202
    assert post(client, token, event(2)).status_code == 202
    response = post(client, token, event(3))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert "limited to 2 requests per minute" in response.json()["error"]["message"]
    assert 1 <= int(response["Retry-After"]) <= 60
    assert UsageEvent.objects.count() == 2


def test_key_bound_to_a_department_fills_it_in_and_refuses_another(client, acme, research_dept, sales_dept):
    _, token = create_api_key(tenant=acme, name="bound", department=sales_dept)
    batch = [event(1, department=None), event(2, department="sales"), event(3, department="research")]
    response = post(client, token, batch)
    assert response.status_code == 207
    assert response.json()["rejected"] == [
        {
            "index": 2,
            "event_id": "evt-3",
            "errors": {"department": ["This API key is bound to department 'sales'; got 'research'."]},
        }
    ]
    assert set(UsageEvent.objects.values_list("department_id", flat=True)) == {sales_dept.pk}


def test_key_default_user_is_used_when_the_event_names_none(client, acme, research_dept, employee_user):
    _, token = create_api_key(tenant=acme, name="personal", user=employee_user)
    post(client, token, [event(1, user=None), event(2, user="bob")])
    assert dict(UsageEvent.objects.values_list("event_id", "user_ref")) == {"evt-1": "emil", "evt-2": "bob"}


def test_tenants_are_isolated(client, token, acme, other_tenant, other_dept):
    _, other_token = create_api_key(tenant=other_tenant, name="globex")
    assert post(client, other_token, event(1)).json()["accepted"] == 1
    # The same event_id in acme is a different event: accepted, not a duplicate, so acme's key
    # cannot probe which ids globex has.
    assert post(client, token, event(1)).json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert UsageEvent.objects.filter(event_id="evt-1").count() == 2
    assert UsageEvent.objects.get(tenant=acme).department.tenant_id == acme.pk
    # Globex's department code resolves only inside globex: acme has no "support".
    other_dept.code = "support"
    other_dept.save()
    response = post(client, token, event(2, department="support"))
    assert response.status_code == 400
    assert response.json()["error"]["errors"] == {"department": ["Unknown department 'support'."]}
    assert UsageEvent.objects.filter(tenant=other_tenant).count() == 1


def test_a_key_bound_elsewhere_cannot_use_another_tenants_department_id(client, acme, research_dept, other_dept):
    # Even when both tenants have a "research" department, acme's events get acme's.
    _, token = create_api_key(tenant=acme, name="integration")
    post(client, token, event(1))
    assert UsageEvent.objects.get().department_id == research_dept.pk != other_dept.pk


def test_future_timestamps_within_a_day_are_accepted(client, token):
    soon = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    assert post(client, token, event(1, timestamp=soon)).status_code == 202


def test_write_events_is_idempotent_inside_a_callers_transaction(acme, research_dept):
    from django.db import transaction

    rows = [
        ingest.EventRow(f"gw-{i}", "gateway", datetime(2025, 1, 1, tzinfo=UTC), "openai", "gpt-4o") for i in range(40)
    ]
    with transaction.atomic():
        first = ingest.write_events(tenant=acme, rows=rows)
        second = ingest.write_events(tenant=acme, rows=rows[:30] + rows[:5])
    assert first == ingest.WriteResult(accepted=40, duplicates=0)
    assert second == ingest.WriteResult(accepted=0, duplicates=35)
    assert UsageEvent.objects.filter(tenant=acme).count() == 40


def test_write_events_stage_does_not_leak_between_tenants(acme, other_tenant):
    from django.db import transaction

    when = datetime(2025, 1, 1, tzinfo=UTC)
    with transaction.atomic():
        ingest.write_events(
            tenant=acme, rows=[ingest.EventRow(f"a-{i}", "gateway", when, "openai", "x") for i in range(20)]
        )
        ingest.write_events(
            tenant=other_tenant, rows=[ingest.EventRow(f"b-{i}", "gateway", when, "openai", "x") for i in range(20)]
        )
    assert set(UsageEvent.objects.filter(tenant=other_tenant).values_list("event_id", flat=True)) == {
        f"b-{i}" for i in range(20)
    }


def test_database_vendor_path_is_exercised():
    # Documents which writer these tests ran against (both are run in CI).
    assert connection.vendor in ("postgresql", "sqlite")


def test_rate_window_counts_requests_and_says_when_it_resets(db):
    from types import SimpleNamespace

    from telemetry import ratelimit

    ratelimit.reset_limits()
    key = SimpleNamespace(pk=999_001, rpm_limit=2)
    window_start = 1_700_000_040.0  # a multiple of 60
    at = window_start + 15.5
    ratelimit.check_rate(key=key, now=at)
    ratelimit.check_rate(key=key, now=at + 1)
    with pytest.raises(ratelimit.RateLimited) as refused:
        ratelimit.check_rate(key=key, now=at + 2)
    assert refused.value.retry_after == 43  # ceil(60 - 17.5)
    # The next window starts from zero.
    ratelimit.check_rate(key=key, now=window_start + 60)


@pytest.mark.parametrize(
    "error", ["django.db.OperationalError", "django.db.InterfaceError", "psycopg.OperationalError"]
)
def test_a_database_outage_is_a_503_with_retry_after(client, token, monkeypatch, error):
    """A killed backend or a failover mid-request (bench/drills/pg_kill_mid_batch.py) tells the
    sender to resend, which idempotency makes safe, instead of a generic 500. COPY goes through
    psycopg directly, so its errors arrive unwrapped."""
    import importlib

    module, name = error.rsplit(".", 1)
    exc_class = getattr(importlib.import_module(module), name)

    def down(**kwargs):
        raise exc_class("server closed the connection unexpectedly")

    monkeypatch.setattr(ingest, "write_events", down)  # both the whole-body and the per-event path write here
    response = post(client, token, [event(1)])
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "database_unavailable"
    assert not UsageEvent.objects.exists()
