"""Raw-event retention (telemetry/retention.py): old raw events go, in batches, and nothing
else does; ingest and rollup rebuilds stop at the horizon so a purged day is never re-rolled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from chargeback.keys import create_api_key
from telemetry import partitions, retention, rollups
from telemetry.ingest import record_batch
from telemetry.models import DailyRollup, DimensionRollup, HourlyRollup, UsageEvent
from telemetry.tasks import purge_usage
from tests.factories import make_usage_event, roll_up_everything

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


@pytest.fixture
def keep_30_days(settings):
    settings.LLMOBS_RAW_RETENTION_DAYS = 30


def rollup_state():
    return (
        sorted(HourlyRollup.objects.values_list("hour", "requests", "cost")),
        sorted(DailyRollup.objects.values_list("day", "requests", "cost")),
        sorted(DimensionRollup.objects.values_list("day", "dimension", "value", "requests")),
    )


def test_the_horizon_is_utc_midnight_retention_days_ago_and_zero_keeps_everything(settings):
    settings.LLMOBS_RAW_RETENTION_DAYS = 30
    assert retention.purge_horizon(now=NOW) == datetime(2026, 10, 24, tzinfo=UTC)
    # Ingest and rebuilds stop a day plus the margin later, so a late event's local day is whole.
    assert retention.earliest_raw_write(now=NOW) == datetime(2026, 10, 27, tzinfo=UTC)
    settings.LLMOBS_RAW_RETENTION_DAYS = 0
    assert retention.purge_horizon(now=NOW) is None
    assert retention.earliest_raw_write(now=NOW) is None


def test_purge_deletes_only_old_raw_events_in_batches_and_keeps_rollups(acme, research_dept, other_tenant):
    horizon = datetime(2026, 10, 24, tzinfo=UTC)
    old = [
        make_usage_event(tenant=acme, department=research_dept, occurred_at=horizon - timedelta(hours=h, seconds=1))
        for h in range(5)
    ]
    old.append(make_usage_event(tenant=other_tenant, occurred_at=horizon - timedelta(days=100)))
    kept = [
        make_usage_event(tenant=acme, department=research_dept, occurred_at=horizon),
        make_usage_event(tenant=other_tenant, occurred_at=NOW - timedelta(hours=1)),
    ]
    roll_up_everything()
    before = rollup_state()
    partitions.ensure_partitions(now=NOW)  # whatever today's date made the test database hold
    result = retention.purge_usage_events(now=NOW, days=30, batch_size=2)
    if partitions.is_postgresql():
        # Whole months before the horizon go as partitions (other's July event with them); only
        # the month the horizon cuts through is deleted row by row: acme 2+2+1.
        assert "telemetry_usageevent_p2026_07" in result.partitions_dropped
        assert (result.horizon, result.deleted, result.batches) == (horizon, 6, 3)
    else:
        assert (result.horizon, result.deleted, result.batches) == (horizon, 6, 4)  # acme 2+2+1, other 1
    assert set(UsageEvent.objects.values_list("pk", flat=True)) == {e.pk for e in kept}
    assert rollup_state() == before
    assert sum(r for _, r, _ in before[0]) == 8
    assert retention.purge_usage_events(now=NOW, days=30).deleted == 0


def test_zero_retention_deletes_nothing(acme):
    make_usage_event(tenant=acme, occurred_at=datetime(2001, 1, 1, tzinfo=UTC))
    assert retention.purge_usage_events(now=NOW, days=0).deleted == 0
    assert UsageEvent.objects.count() == 1


def test_command_dry_run_counts_and_refuses_a_tiny_retention(acme, keep_30_days):
    make_usage_event(tenant=acme, occurred_at=datetime(2020, 1, 1, tzinfo=UTC))
    out = StringIO()
    call_command("purge_usage", "--dry-run", stdout=out)
    assert "1 raw events before" in out.getvalue() and "would be deleted" in out.getvalue()
    assert UsageEvent.objects.count() == 1
    with pytest.raises(CommandError, match="at least 7"):
        call_command("purge_usage", "--days", "3")
    call_command("purge_usage", stdout=out)
    assert UsageEvent.objects.count() == 0


def test_task_purges_with_the_setting(acme, keep_30_days):
    make_usage_event(tenant=acme, occurred_at=datetime(2020, 1, 1, tzinfo=UTC))
    make_usage_event(tenant=acme, occurred_at=datetime.now(UTC))
    assert purge_usage.delay().get() == 1
    assert UsageEvent.objects.count() == 1


def test_a_misconfigured_retention_stops_the_purge_but_not_ingest(acme, research_dept, settings):
    settings.LLMOBS_RAW_RETENTION_DAYS = 2
    with pytest.raises(retention.RetentionError):
        retention.purge_usage_events()
    key, _ = create_api_key(tenant=acme, name="k", department=research_dept)
    now = datetime.now(UTC)
    result = record_batch(
        key=key, items=[{"event_id": "e1", "timestamp": now.isoformat(), "provider": "p", "model": "m"}]
    )
    assert result.accepted == 1


def test_ingest_refuses_events_older_than_the_retention(acme, research_dept, keep_30_days):
    key, _ = create_api_key(tenant=acme, name="k", department=research_dept)
    now = datetime.now(UTC)
    earliest = retention.earliest_raw_write(now=now)
    items = [
        {
            "event_id": "too-old",
            "timestamp": (earliest - timedelta(seconds=1)).isoformat(),
            "provider": "p",
            "model": "m",
        },
        {
            "event_id": "in-time",
            "timestamp": (earliest + timedelta(minutes=1)).isoformat(),
            "provider": "p",
            "model": "m",
        },
    ]
    result = record_batch(key=key, items=items)
    assert result.accepted == 1
    assert [r.event_id for r in result.rejected] == ["too-old"]
    assert "raw events older than the retention are purged" in str(result.rejected[0].as_dict())
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["in-time"]


def test_a_rebuild_never_erases_rollups_of_purged_days(acme, research_dept, settings):
    now = datetime.now(UTC)
    old_at = now - timedelta(days=60)
    make_usage_event(tenant=acme, department=research_dept, occurred_at=old_at, cost=Decimal("2"))
    roll_up_everything()
    before = rollup_state()
    settings.LLMOBS_RAW_RETENTION_DAYS = 30
    assert retention.purge_usage_events().deleted == 1
    out = StringIO()
    call_command("roll_up", "--start", (old_at - timedelta(days=1)).date().isoformat(), stdout=out)
    assert "older raw events are past the retention" in out.getvalue()
    assert rollup_state() == before
    assert before[0][0][1:] == (1, Decimal("2"))
    # rebuild() itself clamps too (the roll_up_range task calls it directly).
    rollups.rebuild(start=old_at - timedelta(hours=1), end=old_at + timedelta(hours=1))
    assert rollup_state() == before
