"""Clock edges the budget periods and rollup local days must agree on: DST spring-forward and
fall-back days (23 and 25 hours) in Europe/Paris and America/New_York, and month boundaries
seen from the tenant's time zone. (Daily budget alerts across a DST change:
tests/test_budget_alerts.py.)"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db.models import Sum

from chargeback.models import Budget, Tenant
from telemetry import rollups
from telemetry.models import DailyRollup, UsageEvent
from tests.factories import make_usage_event, roll_up_everything

DST_DAYS = [
    ("Europe/Paris", date(2026, 3, 29), 23),
    ("Europe/Paris", date(2026, 10, 25), 25),
    ("America/New_York", date(2026, 3, 8), 23),
    ("America/New_York", date(2026, 11, 1), 25),
    ("Europe/Paris", date(2026, 6, 1), 24),
]


@pytest.mark.parametrize(("zone", "day", "hours"), DST_DAYS)
def test_local_days_and_daily_budget_periods_are_23_or_25_hours_on_dst_days(db, zone, day, hours):
    tz = ZoneInfo(zone)
    start, end = rollups.local_day_bounds(day, tz)
    assert (end - start) == timedelta(hours=hours)
    tenant = Tenant.objects.create(name=zone, slug=zone.lower().replace("/", "-"), timezone=zone)
    budget = Budget.objects.create(
        tenant=tenant, name="d", scope=Budget.Scope.TENANT, amount=1, period=Budget.Period.DAY
    )
    bounds = budget.period_bounds(start + timedelta(hours=hours - 1, minutes=59))
    assert (bounds.start, bounds.end) == (start, end)
    assert bounds.length == timedelta(hours=hours)


@pytest.mark.parametrize(("zone", "day", "hours"), DST_DAYS)
def test_daily_rollups_and_budget_spend_equal_raw_sums_on_dst_days(db, zone, day, hours):
    tenant = Tenant.objects.create(name=zone, slug="t-" + zone.lower().replace("/", "-"), timezone=zone)
    start, end = rollups.local_day_bounds(day, ZoneInfo(zone))
    # One event per UTC hour from two hours before the local day to two hours after it,
    # each costing its hour index so a misplaced hour changes the sums.
    at = start - timedelta(hours=2)
    i = 0
    while at < end + timedelta(hours=2):
        make_usage_event(tenant=tenant, occurred_at=at + timedelta(minutes=30), cost=Decimal(i + 1))
        at += timedelta(hours=1)
        i += 1
    roll_up_everything()
    raw = UsageEvent.objects.filter(tenant=tenant, occurred_at__gte=start, occurred_at__lt=end)
    daily = DailyRollup.objects.filter(tenant=tenant, day=day).aggregate(n=Sum("requests"), cost=Sum("cost"))
    assert raw.count() == hours == daily["n"]
    assert raw.aggregate(c=Sum("cost"))["c"] == daily["cost"]
    budget = Budget.objects.create(
        tenant=tenant, name="d", scope=Budget.Scope.TENANT, amount=1, period=Budget.Period.DAY
    )
    bounds = budget.period_bounds(start + timedelta(hours=1))
    assert rollups.period_spend(budget=budget, bounds=bounds) == daily["cost"]


@pytest.mark.parametrize(
    ("zone", "at", "month_start", "month_end"),
    [
        # 23:30 UTC on 31 March is already 1 April in Paris (UTC+2 after spring-forward).
        ("Europe/Paris", datetime(2026, 3, 31, 22, 30, tzinfo=UTC), date(2026, 4, 1), date(2026, 5, 1)),
        # 02:00 UTC on 1 November is still 31 October in New York (UTC-4 until 1 Nov 06:00 UTC).
        ("America/New_York", datetime(2026, 11, 1, 2, 0, tzinfo=UTC), date(2026, 10, 1), date(2026, 11, 1)),
        ("America/New_York", datetime(2026, 12, 31, 23, 0, tzinfo=UTC), date(2026, 12, 1), date(2027, 1, 1)),
    ],
)
def test_monthly_budget_periods_follow_the_tenant_month(db, zone, at, month_start, month_end):
    tz = ZoneInfo(zone)
    tenant = Tenant.objects.create(name=zone, slug="m-" + zone.lower().replace("/", "-"), timezone=zone)
    budget = Budget.objects.create(tenant=tenant, name="m", scope=Budget.Scope.TENANT, amount=1)
    bounds = budget.period_bounds(at)
    assert bounds.start == rollups.local_day_bounds(month_start, tz)[0]
    assert bounds.end == rollups.local_day_bounds(month_end, tz)[0]
