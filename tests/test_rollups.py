"""Rollups equal raw sums exactly, survive re-runs and late events, and give percentiles within
the stated histogram error."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from telemetry import rollups
from telemetry.models import (
    COUNT_FIELDS,
    DailyRollup,
    DimensionRollup,
    HourlyRollup,
    MonthlyDimensionRollup,
    UsageEvent,
)
from telemetry.partitions import add_months
from tests.factories import make_usage_event

T0 = datetime(2025, 3, 1, 20, 0, tzinfo=UTC)


def random_events(*, tenant, departments, n: int, seed: int = 7, start: datetime = T0, hours: int = 8) -> list:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        dept = rng.choice([*departments, None])
        priced = rng.random() > 0.1
        events.append(
            UsageEvent(
                tenant=tenant,
                event_id=f"r{seed}-{i}",
                source=rng.choice(["ingest", "gateway", "eval"]),
                department=dept,
                department_code=dept.code if dept else "",
                user_ref=rng.choice(["ann", "bob", "cy"]),
                provider=rng.choice(["openai", "anthropic"]),
                model=rng.choice(["m1", "m2"]),
                feature=rng.choice(["chat", "search", "eval", ""]),
                tags=rng.choice([{}, {"env": "prod"}, {"env": "dev", "region": "eu"}, {"project": 7}, {"env": None}]),
                occurred_at=start + timedelta(seconds=rng.randrange(hours * 3600)),
                latency_ms=rng.choice([None, rng.randrange(0, 5000), int(rng.lognormvariate(7, 1))]),
                ttft_ms=rng.choice([None, rng.randrange(0, 900)]),
                status=rng.choice(["ok", "ok", "ok", "error", "timeout"]),
                input_tokens=rng.randrange(0, 5000),
                cache_read_input_tokens=rng.randrange(0, 100),
                cache_creation_input_tokens=rng.randrange(0, 50),
                output_tokens=rng.randrange(0, 2000),
                reasoning_tokens=rng.randrange(0, 10),
                cost=Decimal(rng.randrange(1, 10**12)) / Decimal(10**10) if priced else None,
                currency=rng.choice(["USD", "USD", "EUR"]),
                cost_provenance="computed" if priced else "unpriced",
            )
        )
    UsageEvent.objects.bulk_create(events)
    return events


def raw_sums(events, key) -> dict:
    sums: dict = defaultdict(lambda: defaultdict(int))
    for e in events:
        s = sums[key(e)]
        s["requests"] += 1
        s["errors"] += e.status != "ok"
        s["unpriced"] += e.cost is None
        s["cost"] += e.cost or Decimal(0)
        for f in COUNT_FIELDS[3:]:
            s[f] += getattr(e, f)
    return {k: dict(v) for k, v in sums.items()}


def rollup_sums(qs, key) -> dict:
    sums: dict = defaultdict(lambda: defaultdict(int))
    for r in qs:
        s = sums[key(r)]
        for f in (*COUNT_FIELDS, "cost"):
            s[f] += getattr(r, f)
    return {k: dict(s) for k, s in sums.items()}


def hourly_key(e) -> tuple:
    return (
        e.occurred_at.replace(minute=0, second=0, microsecond=0),
        e.department_id or 0,
        e.provider,
        e.model,
        e.currency,
        e.feature == "eval" or e.source == "eval",
    )


def rollup_hourly_key(r) -> tuple:
    return (r.hour, r.department_id, r.provider, r.model, r.currency, r.is_eval)


def test_hourly_and_daily_rollups_equal_raw_sums_exactly(acme, research_dept, sales_dept):
    events = random_events(tenant=acme, departments=[research_dept, sales_dept], n=600)
    rollups.roll_up_pending()
    assert rollup_sums(HourlyRollup.objects.all(), rollup_hourly_key) == raw_sums(events, hourly_key)
    paris = acme.tz

    def daily_key(e):
        return (e.occurred_at.astimezone(paris).date(), e.department_id or 0, e.provider, e.model, e.currency)

    daily = rollup_sums(DailyRollup.objects.all(), lambda r: (r.day, r.department_id, r.provider, r.model, r.currency))
    assert daily == raw_sums(events, daily_key)
    # Europe/Paris: 23:30 UTC on 1 March is already 2 March locally.
    assert {r.day for r in DailyRollup.objects.all()} == {date(2025, 3, 1), date(2025, 3, 2)}


def test_latency_histograms_count_every_timed_event(acme, research_dept):
    events = random_events(tenant=acme, departments=[research_dept], n=300, seed=3)
    rollups.roll_up_pending()
    for row in HourlyRollup.objects.all():
        assert sum(getattr(row, f) for f in rollups.LATENCY_FIELDS) == row.latency_count
        assert sum(getattr(row, f) for f in rollups.TTFT_FIELDS) == row.ttft_count
    assert sum(r.latency_sum_ms for r in HourlyRollup.objects.all()) == sum(e.latency_ms or 0 for e in events)


def test_every_histogram_bucket_and_measure_equals_a_python_reference(acme, research_dept, sales_dept):
    """Each hourly row, bucket by bucket, against an independent count of the raw events (the
    PostgreSQL path pivots its histograms in SQL; this pins every column of it)."""
    events = random_events(tenant=acme, departments=[research_dept, sales_dept], n=600, seed=5)
    rollups.roll_up_pending()
    expected: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for e in events:
        key = (
            e.occurred_at.replace(minute=0, second=0, microsecond=0), e.department_id or 0, e.provider, e.model,
            e.currency, e.feature == "eval" or e.source == "eval",
        )  # fmt: skip
        row = expected[key]
        row["requests"] += 1
        row["errors"] += e.status != "ok"
        row["unpriced"] += e.cost is None
        row["cost"] += e.cost or 0
        for f in COUNT_FIELDS[3:]:
            row[f] += getattr(e, f)
        if e.latency_ms is not None:
            row["latency_count"] += 1
            row["latency_sum_ms"] += e.latency_ms
            row[rollups.LATENCY_FIELDS[rollups.histogram_bucket(e.latency_ms)]] += 1
        if e.ttft_ms is not None:
            row["ttft_count"] += 1
            row["ttft_sum_ms"] += e.ttft_ms
            row[rollups.TTFT_FIELDS[rollups.histogram_bucket(e.ttft_ms)]] += 1
    rows = list(HourlyRollup.objects.all())
    assert len(rows) == len(expected)
    for r in rows:
        want = expected[(r.hour, r.department_id, r.provider, r.model, r.currency, r.is_eval)]
        got = {m: getattr(r, m) for m in rollups.HOURLY_MEASURES}
        assert got == {m: want.get(m, 0) for m in rollups.HOURLY_MEASURES}, (r.hour, r.department_id, r.model)


def test_dimension_rollup_sums_users_features_and_configured_tags(acme, research_dept):
    events = random_events(tenant=acme, departments=[research_dept], n=400, seed=11)
    rollups.roll_up_dimensions_pending()
    paris = acme.tz
    for dimension, value_of in (
        ("user", lambda e: e.user_ref),
        ("feature", lambda e: e.feature),
        ("tag:env", lambda e: (e.tags["env"] or "") if "env" in e.tags else None),
        ("tag:project", lambda e: str(e.tags["project"]) if "project" in e.tags else None),
    ):
        qs = DimensionRollup.objects.filter(dimension=dimension)
        got = rollup_sums(qs, lambda r: (r.day, r.department_id, r.value, r.currency))
        relevant = [e for e in events if value_of(e) is not None]
        want = raw_sums(
            relevant,
            lambda e, v=value_of: (e.occurred_at.astimezone(paris).date(), e.department_id or 0, v(e), e.currency),
        )
        assert got == want, dimension
    assert not DimensionRollup.objects.filter(dimension="tag:region").exists()  # not a configured key


@pytest.mark.parametrize("keys", [(), ("env",)])
def test_dimension_rollup_with_no_or_one_configured_tag_key(acme, research_dept, settings, keys):
    # The statement is assembled per configured key: with none, only users and features.
    settings.LLMOBS_ROLLUP_TAG_KEYS = keys
    events = random_events(tenant=acme, departments=[research_dept], n=100, seed=3)
    rollups.roll_up_dimensions_pending()
    assert set(DimensionRollup.objects.values_list("dimension", flat=True)) == {
        "user",
        "feature",
        *(f"tag:{k}" for k in keys),
    }
    for dimension in ("user", "feature"):
        rows = DimensionRollup.objects.filter(dimension=dimension)
        assert sum(rows.values_list("requests", flat=True)) == len(events)
        assert sum(rows.values_list("cost", flat=True)) == sum(e.cost or 0 for e in events)


def test_rerunning_the_rollup_changes_nothing(acme, research_dept):
    random_events(tenant=acme, departments=[research_dept], n=200)
    rollups.roll_up_pending()
    before = sorted(HourlyRollup.objects.values_list("hour", "department_id", "model", "currency", "requests", "cost"))
    rollups.rebuild(start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))
    rollups.roll_up_pending()
    after = sorted(HourlyRollup.objects.values_list("hour", "department_id", "model", "currency", "requests", "cost"))
    assert after == before


def test_a_late_event_re_rolls_its_old_bucket(acme, research_dept):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, cost=Decimal("1.0000000001"))
    first = rollups.roll_up_pending(now=timezone.now() + timedelta(minutes=5))
    assert first.hours == 1
    # Nothing new: the next run (past the safety lag) touches no bucket.
    assert rollups.roll_up_pending(now=timezone.now() + timedelta(minutes=10)).hours == 0
    # An event for the same old hour arrives much later.
    late = make_usage_event(tenant=acme, department=research_dept, occurred_at=T0 + timedelta(minutes=59))
    UsageEvent.objects.filter(pk=late.pk).update(received_at=timezone.now() + timedelta(minutes=11))
    result = rollups.roll_up_pending(now=timezone.now() + timedelta(minutes=12))
    assert result.hours == 1 and result.tenants == {acme.pk}
    row = HourlyRollup.objects.get()
    assert row.requests == 2
    assert row.cost == Decimal("1.0000000001") + Decimal("0.000360")
    assert DailyRollup.objects.get().requests == 2


def test_an_event_committed_inside_the_safety_lag_is_not_missed(acme, research_dept):
    now = timezone.now()
    rollups.roll_up_pending(now=now)
    # Stamped before the watermark (its transaction was still open when the run looked).
    event = make_usage_event(tenant=acme, department=research_dept)
    UsageEvent.objects.filter(pk=event.pk).update(received_at=now - timedelta(seconds=30))
    assert rollups.roll_up_pending(now=now + timedelta(minutes=1)).hours == 1
    assert HourlyRollup.objects.get().requests == 1


def test_rollups_are_per_tenant(acme, research_dept, other_tenant, other_dept):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, cost=Decimal("2"))
    make_usage_event(tenant=other_tenant, department=other_dept, occurred_at=T0, cost=Decimal("5"))
    rollups.roll_up_pending()
    assert HourlyRollup.objects.get(tenant=acme).cost == Decimal("2")
    assert HourlyRollup.objects.get(tenant=other_tenant).cost == Decimal("5")
    HourlyRollup.objects.all().delete()
    rollups.rebuild(start=T0, end=T0 + timedelta(hours=1), tenant_id=acme.pk)
    assert list(HourlyRollup.objects.values_list("tenant_id", flat=True)) == [acme.pk]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_from_rollups_are_within_the_stated_error(acme, research_dept, seed):
    rng = random.Random(seed)
    latencies = [max(1, int(rng.lognormvariate(6.5, 1.2))) for _ in range(500)] + [
        rng.randrange(1, 50) for _ in range(50)
    ]
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                tenant=acme, event_id=f"l{i}", source="ingest", provider="openai", model="m", cost_provenance="computed",
                occurred_at=T0 + timedelta(minutes=i % 600), latency_ms=v, ttft_ms=v // 3, department=research_dept,
            )
            for i, v in enumerate(latencies)
        ]
    )  # fmt: skip
    rollups.roll_up_pending()
    query = rollups.ReportQuery(tenant=acme, start=T0, end=T0 + timedelta(hours=10))
    (row,) = rollups.latency_percentiles(query=query)
    ordered = sorted(latencies)
    for name, q in rollups.QUANTILES:
        exact = ordered[max(1, math.ceil(q * len(ordered))) - 1]
        assert abs(row[f"latency_{name}_ms"] - exact) <= exact * rollups.MAX_RELATIVE_ERROR + 0.05, name
        exact_ttft = sorted(v // 3 for v in latencies)[max(1, math.ceil(q * len(ordered))) - 1]
        assert abs(row[f"ttft_{name}_ms"] - exact_ttft) <= exact_ttft * rollups.MAX_RELATIVE_ERROR + 0.05, name


def test_the_histogram_error_bound_is_under_ten_percent_for_every_whole_millisecond():
    assert rollups.MAX_RELATIVE_ERROR < 0.10
    for value in range(0, 700_000, 7):
        estimate = rollups.bucket_value_ms(rollups.histogram_bucket(value))
        if value < rollups.HISTOGRAM_EDGES_MS[-1]:
            assert abs(estimate - value) <= value * rollups.MAX_RELATIVE_ERROR + 1e-9


def test_invoice_lines_are_exact_and_keep_eval_traffic_apart(acme, research_dept):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, cost=Decimal("0.1234567891"))
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, cost=Decimal("0.0000000009"))
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, feature="eval", cost=Decimal("3"))
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, cost=None, cost_provenance="unpriced")
    rollups.roll_up_pending()
    lines = rollups.invoice_lines(tenant=acme, month_start=date(2025, 3, 1), month_end=date(2025, 4, 1))
    assert [(x.department_code, x.is_eval, x.requests, x.unpriced, x.cost, x.input_tokens) for x in lines] == [
        ("research", False, 3, 1, Decimal("0.1234567900"), 3600),
        ("research", True, 1, 0, Decimal("3"), 1200),
    ]


def test_roll_up_command_rebuilds_a_range_with_progress(acme, research_dept):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0)
    out = StringIO()
    call_command(
        "roll_up", "--start", "2025-03-01", "--end", "2025-03-03", "--tenant", "acme", "--jobs", "1", stdout=out
    )
    assert "2025-03-01 00:00 → 2025-03-02 00:00 UTC" in out.getvalue()
    assert "Rolled up 48 hours" in out.getvalue()
    assert HourlyRollup.objects.get().requests == 1


def test_rebuild_rolls_each_local_day_once_and_exactly(acme, research_dept):
    """Europe/Paris days straddle the UTC chunks: each is rolled once, after all its hours."""
    acme.timezone = "Europe/Paris"
    acme.save()
    events = random_events(tenant=acme, departments=[research_dept], n=300, seed=9, start=T0, hours=60)
    result = rollups.rebuild(start=T0 - timedelta(hours=20), end=T0 + timedelta(hours=64), tenant_id=acme.pk)
    local_days = {(T0 - timedelta(hours=20) + timedelta(hours=h)).astimezone(acme.tz).date() for h in range(84)}
    assert result.days == len(local_days)
    want = raw_sums(events, key=lambda e: e.occurred_at.astimezone(acme.tz).date())
    got = {r.day: r for r in DailyRollup.objects.all()}
    for day, sums in want.items():
        rows = list(DailyRollup.objects.filter(day=day))
        assert sum(r.requests for r in rows) == sums["requests"]
        assert sum(r.cost for r in rows) == sums["cost"]
    assert set(got) <= local_days
    dims = DimensionRollup.objects.filter(dimension="user")
    assert sum(r.requests for r in dims) == len(events)


def test_roll_up_command_rejects_a_bad_range(acme):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--end"):
        call_command("roll_up", "--start", "2025-03-02", "--end", "2025-03-01")
    with pytest.raises(CommandError, match="--tenant"):
        call_command("roll_up", "--tenant", "nope")
    with pytest.raises(CommandError, match="--jobs"):
        call_command("roll_up", "--jobs", "0")


def _all_rollups() -> dict:
    snapshot = {}
    for model in (HourlyRollup, DailyRollup, DimensionRollup, MonthlyDimensionRollup):
        rows = model.objects.values()
        snapshot[model.__name__] = sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k != "id")) for r in rows)
    return snapshot


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_parallel_rebuild_writes_exactly_what_a_sequential_one_does(acme, research_dept, sales_dept):
    if connection.vendor != "postgresql":
        pytest.skip("parallel rebuilds are PostgreSQL-only (SQLite runs one chunk after another)")
    acme.timezone = "Europe/Paris"
    acme.save()
    start = datetime(2025, 2, 26, 7, tzinfo=UTC)
    random_events(tenant=acme, departments=[research_dept, sales_dept], n=900, seed=17, start=start, hours=24 * 6)
    rollups.rebuild(start=datetime(2025, 2, 25, tzinfo=UTC), end=datetime(2025, 3, 5, tzinfo=UTC), jobs=1)
    sequential = _all_rollups()
    assert (
        all(sequential.values())
        and len({r for r in sequential["MonthlyDimensionRollup"] if ("month", "2025-02-01") in r}) > 0
    )
    for model in (HourlyRollup, DailyRollup, DimensionRollup, MonthlyDimensionRollup):
        model.objects.all().delete()
    out = StringIO()
    call_command(
        "roll_up", "--start", "2025-02-25", "--end", "2025-03-05", "--jobs", "2", "--chunk-hours", "12", stdout=out
    )
    assert _all_rollups() == sequential
    text = out.getvalue()
    assert "hourly 2025-03-04 12:00 → 2025-03-05 00:00 UTC" in text
    assert "per-dimension 2025-03-01" in text and "monthly per-dimension: 2 tenant-months" in text
    assert "Rolled up 192 hours" in text


def test_a_failing_parallel_chunk_stops_the_rest_and_is_raised():
    import time

    ran = []

    def ok() -> str:
        time.sleep(0.01)
        ran.append(1)
        return "ok"

    def boom() -> str:
        raise RuntimeError("chunk failed")

    with pytest.raises(RuntimeError, match="chunk failed"):
        rollups._run_parallel(2, [ok, boom, *([ok] * 50)], None)
    assert len(ran) < 10


@pytest.mark.postgres
def test_postgres_rollup_sums_equal_a_raw_sql_sum(acme, research_dept, sales_dept):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("NUMERIC exactness is checked against SQL sums on PostgreSQL")
    random_events(tenant=acme, departments=[research_dept, sales_dept], n=800, seed=21)
    rollups.roll_up_pending()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT currency, sum(cost), count(*), sum(input_tokens) FROM telemetry_usageevent WHERE tenant_id = %s GROUP BY 1 ORDER BY 1",
            [acme.pk],
        )
        raw = cursor.fetchall()
        cursor.execute(
            "SELECT currency, sum(cost), sum(requests), sum(input_tokens) FROM telemetry_dailyrollup WHERE tenant_id = %s GROUP BY 1 ORDER BY 1",
            [acme.pk],
        )
        rolled = cursor.fetchall()
    assert [(c, Decimal(s), int(n), int(t)) for c, s, n, t in rolled] == [(c, s, n, t) for c, s, n, t in raw]


def _spend_by_user_reference(events, tz, first: date, last: date) -> dict:
    kept = [e for e in events if first <= e.occurred_at.astimezone(tz).date() < last and e.user_ref]
    return {
        (u, c): (s["requests"], s["cost"]) for (u, c), s in raw_sums(kept, lambda e: (e.user_ref, e.currency)).items()
    }


def test_monthly_dimension_rows_are_the_month_of_daily_rows(acme, research_dept, sales_dept):
    """Rebuilt across two month boundaries in a non-UTC zone: each local month's per-dimension
    row equals the raw sums of that local month exactly."""
    acme.timezone = "America/New_York"
    acme.save()
    start = datetime(2025, 2, 27, tzinfo=UTC)
    events = random_events(
        tenant=acme, departments=[research_dept, sales_dept], n=700, seed=21, start=start, hours=24 * 34
    )
    rollups.rebuild(start=start - timedelta(days=1), end=start + timedelta(days=36), tenant_id=acme.pk)
    tz = acme.tz
    got = rollup_sums(
        MonthlyDimensionRollup.objects.filter(dimension="user"),
        lambda r: (r.month, r.department_id, r.value, r.currency),
    )
    want = raw_sums(
        events,
        lambda e: (e.occurred_at.astimezone(tz).date().replace(day=1), e.department_id or 0, e.user_ref, e.currency),
    )
    assert got == want
    assert {m for m, *_ in got} == {date(2025, 2, 1), date(2025, 3, 1), date(2025, 4, 1)}


def test_a_late_event_re_rolls_its_month_too(acme, research_dept):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=T0, user_ref="ann", cost=Decimal("1"))
    rollups.roll_up_dimensions_pending(now=timezone.now() + timedelta(minutes=5))
    late = make_usage_event(tenant=acme, department=research_dept, occurred_at=T0 + timedelta(days=9), user_ref="ann")
    UsageEvent.objects.filter(pk=late.pk).update(received_at=timezone.now() + timedelta(minutes=11))
    rollups.roll_up_dimensions_pending(now=timezone.now() + timedelta(minutes=12))
    row = MonthlyDimensionRollup.objects.get(dimension="user", value="ann")
    assert (row.month, row.requests, row.cost) == (date(2025, 3, 1), 2, Decimal("1") + Decimal("0.000360"))


@pytest.mark.parametrize(
    ("first", "last", "reads"),  # reads: (monthly rows, daily rows)
    [
        (date(2025, 3, 1), date(2025, 4, 1), (True, False)),  # exactly one month
        (date(2025, 2, 27), date(2025, 4, 3), (True, True)),  # days + a month + days
        (date(2025, 3, 4), date(2025, 3, 20), (False, True)),  # inside one month
        (date(2025, 2, 1), date(2025, 4, 1), (True, False)),  # two whole months
    ],
)
def test_spend_by_user_over_months_and_edge_days_equals_raw(acme, research_dept, sales_dept, first, last, reads):
    acme.timezone = "Europe/Paris"
    acme.save()
    start = datetime(2025, 2, 25, tzinfo=UTC)
    events = random_events(
        tenant=acme, departments=[research_dept, sales_dept], n=800, seed=5, start=start, hours=24 * 40
    )
    rollups.rebuild(start=start - timedelta(days=1), end=start + timedelta(days=42), tenant_id=acme.pk)
    tz = acme.tz
    query = rollups.ReportQuery(
        tenant=acme,
        start=datetime(first.year, first.month, first.day, tzinfo=tz),
        end=datetime(last.year, last.month, last.day, tzinfo=tz),
    )
    with CaptureQueriesContext(connection) as queries:
        rows = rollups.spend(query=query, group_by="user")
    tables = " ".join(q["sql"] for q in queries.captured_queries)
    assert ("telemetry_monthlydimensionrollup" in tables, "telemetry_dimensionrollup" in tables) == reads
    assert {(r["group"], r["currency"]): (r["requests"], r["cost"]) for r in rows} == _spend_by_user_reference(
        events, tz, first, last
    )
    by_month = rollups.spend(query=query, group_by="user", interval="month")
    assert sum(r["cost"] for r in by_month) == sum(r["cost"] for r in rows)
    for r in by_month:
        month = date.fromisoformat(r["period"] + "-01")
        month_end = add_months(month, 1)
        ref = _spend_by_user_reference(events, tz, max(first, month), min(last, month_end))
        assert ref[(r["group"], r["currency"])] == (r["requests"], r["cost"])


def test_the_migration_backfills_monthly_rows_from_daily_ones(acme, research_dept):
    import importlib
    from types import SimpleNamespace

    from django.apps import apps

    random_events(
        tenant=acme, departments=[research_dept], n=300, seed=3, start=datetime(2025, 3, 28, tzinfo=UTC), hours=24 * 6
    )
    rollups.roll_up_dimensions_pending()
    want = sorted(
        MonthlyDimensionRollup.objects.values_list(
            "month", "department_id", "dimension", "value", "currency", "requests", "cost"
        )
    )
    assert len({m for m, *_ in want}) == 2
    MonthlyDimensionRollup.objects.all().delete()
    migration = importlib.import_module("telemetry.migrations.0011_monthly_dimension_rollup")
    # The migration's function with the current models (SQLite refuses a schema editor inside
    # the test's transaction; the function only reads `.connection` and calls `.execute`).
    editor = SimpleNamespace(connection=connection, execute=lambda sql: connection.cursor().execute(sql))
    migration.backfill(apps, editor)
    got = sorted(
        MonthlyDimensionRollup.objects.values_list(
            "month", "department_id", "dimension", "value", "currency", "requests", "cost"
        )
    )
    assert got == want


def test_a_parallel_rebuild_asked_inside_a_transaction_stays_on_its_session(acme, research_dept):
    """Other sessions could not see these uncommitted events (nor take the lock this transaction
    holds after the minute pass): the rebuild runs on the caller's session instead."""
    events = random_events(tenant=acme, departments=[research_dept], n=120, seed=4)
    rollups.roll_up_pending()
    result = rollups.rebuild(start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=9), jobs=2)
    assert result.hours == 10
    assert sum(r.requests for r in HourlyRollup.objects.all()) == len(events)
