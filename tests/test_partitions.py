"""Monthly partitioning of the usage table on PostgreSQL (telemetry/partitions.py): the
idempotency ledger keeps event ids unique per tenant across months, partitions are kept ahead
and split out of DEFAULT, retention drops whole months with their keys, range queries read only
their months, and the migration converts an existing table and back without losing a row."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DataError, connection, transaction
from django.db.models import Sum

from chargeback.keys import create_api_key
from telemetry import partitions, retention
from telemetry.ingest import record_batch
from telemetry.models import UsageEvent, UsageEventKey
from tests.factories import make_usage_event

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="partitioning is PostgreSQL only")
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


def partition_names() -> list[str]:
    with connection.cursor() as cursor:
        return [p.name for p in partitions.list_partitions(cursor)]


def rows_in(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{table}"')  # noqa: S608 - test-built name
        return cursor.fetchone()[0]


def test_month_arithmetic():
    assert partitions.add_months(date(2026, 11, 1), 3) == date(2027, 2, 1)
    assert partitions.add_months(date(2026, 1, 1), -13) == date(2024, 12, 1)
    assert partitions.month_bounds(date(2026, 12, 1)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    # A UTC month: 23:30 on Nov 30 in New York is already December in UTC.
    assert partitions.month_of(datetime(2026, 12, 1, 4, 30, tzinfo=UTC)) == date(2026, 12, 1)
    assert partitions.partition_name(date(2027, 2, 1)) == "telemetry_usageevent_p2027_02"


@postgresql_only
@pytest.mark.django_db
def test_the_usage_table_is_partitioned_by_month_with_a_default():
    with connection.cursor() as cursor:
        assert partitions.is_partitioned(cursor)
        cursor.execute("SELECT pg_get_partkeydef(to_regclass('telemetry_usageevent'))")
        assert cursor.fetchone()[0] == "RANGE (occurred_at)"
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'telemetry_usageevent'")
        indexes = {row[0] for row in cursor.fetchall()}
    # The model's index names survive the conversion (so later migrations can find them).
    assert {"usage_tenant_time", "usage_tenant_dept_time", "usage_received", "usage_tenant_user_time"} <= indexes
    names = partition_names()
    assert names[-1] == partitions.DEFAULT_PARTITION
    this_month = partitions.month_of(datetime.now(UTC))
    for ahead in range(partitions.MONTHS_AHEAD + 1):
        assert partitions.partition_name(partitions.add_months(this_month, ahead)) in names


@postgresql_only
@pytest.mark.django_db
def test_a_resent_event_is_a_duplicate_whatever_month_its_timestamp_names(acme, research_dept):
    """The unique key cannot include the month, so the ledger carries it: the same event_id
    with another timestamp, in another partition, is still a duplicate."""
    key, _ = create_api_key(tenant=acme, name="k", department=research_dept)
    now = datetime.now(UTC)
    first = {"event_id": "same", "timestamp": now.isoformat(), "provider": "openai", "model": "gpt-4o"}
    moved = {**first, "timestamp": (now - timedelta(days=62)).isoformat()}
    assert record_batch(key=key, items=[first]).accepted == 1
    result = record_batch(key=key, items=[moved])
    assert (result.accepted, result.duplicates) == (0, 1)
    # Large batches take the COPY path: one known id among new ones sends it through staging.
    items = [{**first, "event_id": f"bulk-{n}"} for n in range(40)] + [moved]
    result = record_batch(key=key, items=items)
    assert (result.accepted, result.duplicates) == (40, 1)
    assert UsageEvent.objects.filter(tenant=acme).count() == 41
    assert UsageEventKey.objects.filter(tenant_id=acme.pk).count() == 41


@postgresql_only
@pytest.mark.django_db
def test_the_ledger_is_per_tenant(acme, research_dept, other_tenant):
    make_usage_event(tenant=acme, department=research_dept, event_id="shared")
    make_usage_event(tenant=other_tenant, event_id="shared")
    assert UsageEventKey.objects.filter(event_id="shared").count() == 2


@postgresql_only
@pytest.mark.django_db
def test_orm_writers_go_through_the_ledger(acme, research_dept):
    """The recorder and the demo write model instances: repeats inside a batch and ids already
    stored are skipped, the rest written."""
    make_usage_event(tenant=acme, department=research_dept, event_id="known")

    def event(event_id: str) -> UsageEvent:
        return UsageEvent(
            tenant=acme,
            event_id=event_id,
            source=UsageEvent.Source.GATEWAY,
            provider="openai",
            model="gpt-4o",
            occurred_at=NOW,
            cost_provenance=UsageEvent.Provenance.UNPRICED,
        )

    with transaction.atomic():
        written = partitions.insert_new_events([event("a"), event("known"), event("a"), event("b")])
    assert written == 2
    assert sorted(UsageEvent.objects.filter(tenant=acme).values_list("event_id", flat=True)) == ["a", "b", "known"]


@postgresql_only
@pytest.mark.django_db
def test_a_failed_write_releases_its_keys(acme):
    """Keys are claimed in the event's transaction: if the write fails, the id is not burnt."""
    with pytest.raises(DataError), transaction.atomic():
        partitions.insert_new_events(
            [
                UsageEvent(
                    tenant=acme,
                    event_id="retry-me",
                    source=UsageEvent.Source.GATEWAY,
                    provider="openai",
                    model="x" * 300,  # longer than the column: the insert fails after the claim
                    occurred_at=NOW,
                    cost_provenance=UsageEvent.Provenance.UNPRICED,
                )
            ]
        )
    assert not UsageEventKey.objects.filter(event_id="retry-me").exists()


@postgresql_only
@pytest.mark.django_db
def test_ensure_creates_months_ahead_and_splits_stranded_rows_out_of_default(acme, research_dept):
    stranded = [
        make_usage_event(tenant=acme, department=research_dept, occurred_at=datetime(2001, 1, d, tzinfo=UTC))
        for d in (1, 15, 31)
    ]
    assert rows_in(partitions.DEFAULT_PARTITION) == 3
    result = partitions.ensure_partitions(now=datetime(2031, 5, 10, tzinfo=UTC), ahead=1)
    assert result.created == [
        "telemetry_usageevent_p2001_01",
        "telemetry_usageevent_p2031_05",
        "telemetry_usageevent_p2031_06",
    ]
    assert result.moved == 3
    assert rows_in(partitions.DEFAULT_PARTITION) == 0
    assert rows_in("telemetry_usageevent_p2001_01") == 3
    # Same rows, same ids, still found through the parent.
    assert sorted(UsageEvent.objects.filter(tenant=acme).values_list("pk", flat=True)) == sorted(e.pk for e in stranded)
    # Running again changes nothing.
    assert partitions.ensure_partitions(now=datetime(2031, 5, 10, tzinfo=UTC), ahead=1).created == []


@postgresql_only
@pytest.mark.django_db
def test_retention_drops_whole_months_with_their_keys(acme, research_dept):
    partitions.ensure_partitions(now=NOW)  # the months this test writes, whatever today is
    for day in (datetime(2026, 7, 3, tzinfo=UTC), datetime(2026, 8, 30, tzinfo=UTC)):
        make_usage_event(tenant=acme, department=research_dept, occurred_at=day, event_id=f"old-{day:%m}")
    cut = make_usage_event(tenant=acme, department=research_dept, occurred_at=datetime(2026, 9, 20, tzinfo=UTC))
    kept = make_usage_event(tenant=acme, department=research_dept, occurred_at=datetime(2026, 9, 30, tzinfo=UTC))
    dry = retention.purge_usage_events(now=NOW, days=60, dry_run=True)  # horizon 2026-09-24
    assert dry.deleted == 3 and UsageEvent.objects.count() == 4
    result = retention.purge_usage_events(now=NOW, days=60)
    assert result.horizon == datetime(2026, 9, 24, tzinfo=UTC)
    assert {"telemetry_usageevent_p2026_07", "telemetry_usageevent_p2026_08"} <= set(result.partitions_dropped)
    assert "telemetry_usageevent_p2026_09" not in result.partitions_dropped
    assert result.deleted == 3
    assert list(UsageEvent.objects.values_list("pk", flat=True)) == [kept.pk]
    assert set(UsageEventKey.objects.values_list("event_id", flat=True)) == {kept.event_id}
    assert cut.event_id not in set(UsageEventKey.objects.values_list("event_id", flat=True))
    assert "telemetry_usageevent_p2026_07" not in partition_names()


@postgresql_only
@pytest.mark.django_db
def test_a_month_range_reads_only_that_months_partition(acme):
    start, end = partitions.month_bounds(partitions.month_of(datetime.now(UTC)))
    sql, params = UsageEvent.objects.filter(
        tenant=acme, occurred_at__gte=start, occurred_at__lt=end
    ).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    scanned = {name for name in partition_names() if name in plan}
    assert scanned == {partitions.partition_name(partitions.month_of(start))}


@postgresql_only
@pytest.mark.django_db
def test_conversion_round_trip_keeps_every_row_key_index_and_the_id_sequence(acme, research_dept):
    """The migration's two directions on a table with data (its transaction rolls back)."""
    events = [
        make_usage_event(tenant=acme, department=research_dept, occurred_at=NOW - timedelta(days=40 * n))
        for n in range(4)
    ]
    total = UsageEvent.objects.aggregate(s=Sum("cost"))["s"]
    with connection.cursor() as cursor:
        partitions.unconvert(cursor)
        assert not partitions.is_partitioned(cursor)
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass('telemetry_usageevent') AND contype = 'u'"
        )
        assert [row[0] for row in cursor.fetchall()] == [partitions.UNIQUE_CONSTRAINT]
        partitions.convert(cursor, now=NOW)
        assert partitions.is_partitioned(cursor)
        partitions.convert(cursor, now=NOW)  # idempotent
    assert sorted(UsageEvent.objects.values_list("pk", flat=True)) == sorted(e.pk for e in events)
    assert UsageEvent.objects.aggregate(s=Sum("cost"))["s"] == total
    assert UsageEventKey.objects.count() == 4
    later = make_usage_event(tenant=acme, department=research_dept)
    assert later.pk > max(e.pk for e in events)


@postgresql_only
@pytest.mark.django_db
def test_partitions_command_lists_and_ensures():
    out = StringIO()
    call_command("partitions", "--ensure", stdout=out)
    text = out.getvalue()
    assert "partitions created" in text
    assert partitions.DEFAULT_PARTITION in text and "DEFAULT" in text
    with pytest.raises(CommandError, match="--ahead"):
        call_command("partitions", "--ahead", "-1")


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the embedded default only")
@pytest.mark.django_db
def test_partitioning_is_a_clear_no_op_on_sqlite():
    assert partitions.ensure_partitions().created == []
    with pytest.raises(CommandError, match="PostgreSQL only"):
        call_command("partitions")


@postgresql_only
@pytest.mark.django_db
def test_a_value_too_long_is_refused_not_truncated_on_the_single_statement_path(acme):
    """The small-batch statement casts its VALUES; a cast to varchar(n) would truncate silently."""
    from telemetry.ingest import EventRow, write_events

    row = EventRow(event_id="long", source="gateway", occurred_at=NOW, provider="openai", model="m" * 300)
    with pytest.raises(DataError), transaction.atomic():
        write_events(tenant=acme.pk, rows=[row])
    assert not UsageEvent.objects.filter(event_id="long").exists()
    assert not UsageEventKey.objects.filter(event_id="long").exists()
