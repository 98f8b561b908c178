"""Warehouse export: files read back with pyarrow (Parquet) and csv give exactly the database's
rows and Decimal totals; layout is Hive-style; re-running replaces files without duplicates;
S3 goes through a real S3 HTTP endpoint (moto in server mode on loopback)."""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from chargeback import invoicing
from chargeback.models import Invoice, InvoiceLine
from telemetry import rollups, warehouse
from telemetry.models import HISTOGRAM_BUCKETS, DailyRollup, DimensionRollup, HourlyRollup, UsageEvent
from tests.factories import make_usage_event

DAY = date(2026, 11, 22)
S3_PORT = 8917  # this branch's port range is 8900-8949


@pytest.fixture
def events(acme, research_dept, sales_dept, other_tenant, other_dept):
    start = datetime(2026, 11, 22, tzinfo=UTC)
    ev = make_usage_event
    ev(tenant=acme, department=research_dept, occurred_at=start, cost=Decimal("1.1234567891"), user_ref="ann",
       tags={"env": "prod", "nested": {"a": [1, 2]}, "ünï": "çødé"}, latency_ms=120, ttft_ms=40, feature="chat")
    ev(tenant=acme, department=research_dept, occurred_at=start + timedelta(hours=5), cost=Decimal("0.0000000001"),
       user_ref="=HYPERLINK(\"http://x\")", latency_ms=3000, status="error", error_type="RateLimit")
    ev(tenant=acme, department=sales_dept, occurred_at=start + timedelta(hours=23, minutes=59, seconds=59, microseconds=999999),
       cost=None, cost_provenance="unpriced", model="mystery", tags={})
    ev(tenant=acme, department=None, occurred_at=start + timedelta(hours=12), cost=Decimal("12345.0000000009"),
       reported_cost=Decimal("2.5"), reported_currency="EUR", user_ref="bob, \"the builder\"\nline2")
    ev(tenant=acme, department=sales_dept, occurred_at=start + timedelta(hours=12, minutes=1), cost=Decimal("3"), latency_ms=None)
    # Neighbouring days and another tenant: not in acme's 22 Nov partition.
    ev(tenant=acme, department=sales_dept, occurred_at=start - timedelta(microseconds=1), cost=Decimal("7"))
    ev(tenant=acme, department=sales_dept, occurred_at=start + timedelta(days=1), cost=Decimal("7"))
    ev(tenant=other_tenant, department=other_dept, occurred_at=start + timedelta(hours=3), cost=Decimal("5"))
    rollups.roll_up_pending()
    rollups.roll_up_dimensions_pending()


def relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_usage_events_read_back_exactly(events, acme, tmp_path):
    result = warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path), chunk_rows=2)
    path = tmp_path / "usage_events/tenant=acme/date=2026-11-22/part-0.parquet"
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == math.ceil(5 / 2)  # streamed in chunks of 2 rows
    table = parquet.read()
    assert table.schema.field("cost").type == pa.decimal128(20, 10)
    assert table.schema.field("occurred_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("tags").type == pa.string()

    db = list(
        UsageEvent.objects.filter(
            tenant=acme, occurred_at__gte=datetime(2026, 11, 22, tzinfo=UTC), occurred_at__lt=datetime(2026, 11, 23, tzinfo=UTC)
        ).order_by("occurred_at", "id")
    )
    rows = table.to_pylist()
    assert len(rows) == len(db) == 5 == result.rows["usage_events"]
    for row, event in zip(rows, db, strict=True):
        assert row["event_id"] == event.event_id
        assert row["cost"] == event.cost  # Decimal or None, exactly
        assert row["reported_cost"] == event.reported_cost
        assert row["occurred_at"] == event.occurred_at
        assert row["user_ref"] == event.user_ref
        assert row["department_id"] == event.department_id
        assert json.loads(row["tags"]) == event.tags
    db_total = sum((e.cost for e in db if e.cost is not None), Decimal(0))
    assert sum((r["cost"] for r in rows if r["cost"] is not None), Decimal(0)) == db_total == Decimal("12349.1234567901")
    assert sum(1 for r in rows if r["cost"] is None) == 1

    with open(tmp_path / "csv/usage_events/tenant=acme/date=2026-11-22/part-0.csv", newline="", encoding="utf-8") as f:
        parsed = list(csv.DictReader(f))
    assert list(parsed[0]) == [c.name for c in warehouse.USAGE_EVENTS.columns]
    assert [r["event_id"] for r in parsed] == [e.event_id for e in db]
    assert sum((Decimal(r["cost"]) for r in parsed if r["cost"]), Decimal(0)) == db_total
    assert [r["user_ref"] for r in parsed] == [e.user_ref for e in db]  # quotes, commas, newlines, '=' kept
    assert [json.loads(r["tags"]) for r in parsed] == [e.tags for e in db]
    assert [datetime.fromisoformat(r["occurred_at"]) for r in parsed] == [e.occurred_at for e in db]
    assert parsed[0]["cost"] == "1.1234567891" and parsed[4]["cost"] == ""


def test_rollups_read_back_exactly(events, acme, tmp_path):
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    hourly = pq.read_table(tmp_path / "hourly_rollups/tenant=acme/date=2026-11-22/part-0.parquet").to_pylist()
    db_hours = HourlyRollup.objects.filter(
        tenant=acme, hour__gte=datetime(2026, 11, 22, tzinfo=UTC), hour__lt=datetime(2026, 11, 23, tzinfo=UTC)
    )
    assert len(hourly) == db_hours.count() == 5
    assert sum((r["cost"] for r in hourly), Decimal(0)) == sum((h.cost for h in db_hours), Decimal(0))
    assert sum(r["requests"] for r in hourly) == 5
    for row in hourly:
        assert len(row["latency_histogram"]) == len(row["ttft_histogram"]) == HISTOGRAM_BUCKETS
        assert sum(row["latency_histogram"]) == row["latency_count"]
    assert {r["department_code"] for r in hourly} == {"research", "sales", ""}

    # Daily rollups are partitioned by the tenant's local day (Europe/Paris): 22 Nov local holds
    # the UTC hours 21 Nov 23:00 → 22 Nov 22:00, so the 23:59 UTC event is on the 23rd.
    daily = pq.read_table(tmp_path / "daily_rollups/tenant=acme/date=2026-11-22/part-0.parquet")
    assert daily.schema.field("cost").type == pa.decimal128(28, 10)
    db_days = DailyRollup.objects.filter(tenant=acme, day=DAY)
    assert daily.num_rows == db_days.count()
    assert sum((r["cost"] for r in daily.to_pylist()), Decimal(0)) == sum((d.cost for d in db_days), Decimal(0))
    assert sum(r["requests"] for r in daily.to_pylist()) == sum(d.requests for d in db_days) == 5  # incl. 21 Nov 23:59:59 UTC
    dims = pq.read_table(tmp_path / "dimension_rollups/tenant=acme/date=2026-11-22/part-0.parquet")
    assert dims.num_rows == DimensionRollup.objects.filter(tenant=acme, day=DAY).count()

    with open(tmp_path / "csv/hourly_rollups/tenant=acme/date=2026-11-22/part-0.csv", newline="") as f:
        parsed = list(csv.DictReader(f))
    assert sum((Decimal(r["cost"]) for r in parsed), Decimal(0)) == sum((h.cost for h in db_hours), Decimal(0))
    assert all(len(json.loads(r["latency_histogram"])) == HISTOGRAM_BUCKETS for r in parsed)
    assert {r["is_eval"] for r in parsed} == {"false"}


def test_partition_layout_is_hive_style(events, tmp_path):
    warehouse.export_warehouse(day=DAY, dest=str(tmp_path))
    tables = ("usage_events", "hourly_rollups", "daily_rollups", "dimension_rollups")
    expected = set()
    for tenant in ("acme", "globex"):
        for t in tables:
            expected.add(f"{t}/tenant={tenant}/date=2026-11-22/part-0.parquet")
            expected.add(f"csv/{t}/tenant={tenant}/date=2026-11-22/part-0.csv")
    assert relative_files(tmp_path) == expected
    # A Hive-aware reader gets tenant and date from the path, as Spark, DuckDB or Snowflake would.
    dataset = ds.dataset(tmp_path / "usage_events", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 6
    assert sorted(set(table.column("tenant").to_pylist())) == ["acme", "globex"]
    assert set(map(str, table.column("date").to_pylist())) == {"2026-11-22"}


def test_reexport_replaces_files_without_duplicates(events, acme, research_dept, tmp_path):
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    first = relative_files(tmp_path)
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    assert relative_files(tmp_path) == first  # same files, no temp leftovers
    path = tmp_path / "usage_events/tenant=acme/date=2026-11-22/part-0.parquet"
    assert pq.read_table(path).num_rows == 5

    make_usage_event(tenant=acme, department=research_dept, occurred_at=datetime(2026, 11, 22, 8, tzinfo=UTC), cost=Decimal("2"))
    rollups.roll_up_pending()
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    table = pq.read_table(path).to_pylist()
    assert len(table) == 6 and len({r["event_id"] for r in table}) == 6
    assert sum((r["cost"] for r in table if r["cost"] is not None), Decimal(0)) == Decimal("12351.1234567901")
    assert relative_files(tmp_path) == first


def test_days_and_a_day_without_events(events, tmp_path):
    result = warehouse.export_warehouse(day=date(2026, 11, 23), days=3, tenant_slug="acme", dest=str(tmp_path))
    files = relative_files(tmp_path)
    for day in ("2026-11-21", "2026-11-22", "2026-11-23"):
        assert f"usage_events/tenant=acme/date={day}/part-0.parquet" in files
    assert result.rows["usage_events"] == 7
    # A day with nothing writes nothing (and removes what an earlier export left).
    stale = tmp_path / "usage_events/tenant=acme/date=2026-11-10/part-0.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    warehouse.export_warehouse(day=date(2026, 11, 10), tenant_slug="acme", dest=str(tmp_path))
    assert not stale.exists()


def test_a_failed_write_leaves_the_previous_file(events, acme, tmp_path):
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    path = tmp_path / "usage_events/tenant=acme/date=2026-11-22/part-0.parquet"
    before = path.read_bytes()

    def broken_rows(**kwargs):
        yield from warehouse.usage_event_rows(**kwargs)
        raise RuntimeError("database went away")

    dest = warehouse.destination(str(tmp_path))
    with pytest.raises(RuntimeError):
        warehouse.write_partition(
            dest=dest, table=warehouse.USAGE_EVENTS, tenant_slug="acme", partition="2026-11-22",
            rows=broken_rows(tenant=acme, day=DAY, chunk_rows=2), chunk_rows=2,
        )  # fmt: skip
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_invoices_of_the_month_are_exported(acme, research_dept, sales_dept, tmp_path):
    make_usage_event(tenant=acme, department=research_dept, occurred_at=datetime(2026, 10, 5, 9, tzinfo=UTC), cost=Decimal("10.0000000005"))
    make_usage_event(tenant=acme, department=sales_dept, occurred_at=datetime(2026, 10, 6, 9, tzinfo=UTC), cost=Decimal("3.333"))
    rollups.roll_up_pending()
    invoicing.draft_invoices(tenant=acme, period=date(2026, 10, 1), force=True)
    warehouse.export_warehouse(day=DAY, tenant_slug="acme", dest=str(tmp_path))
    invoices = pq.read_table(tmp_path / "invoices/tenant=acme/month=2026-10/part-0.parquet").to_pylist()
    db = list(Invoice.objects.filter(tenant=acme, period=date(2026, 10, 1)).order_by("department__code"))
    assert [(r["department_code"], r["total"], r["total_unrounded"]) for r in invoices] == [
        (i.department.code, i.total, i.total_unrounded) for i in db
    ]
    lines = pq.read_table(tmp_path / "invoice_lines/tenant=acme/month=2026-10/part-0.parquet").to_pylist()
    db_lines = InvoiceLine.objects.filter(invoice__in=db)
    assert len(lines) == db_lines.count()
    assert sum((r["amount"] for r in lines), Decimal(0)) == sum((ln.amount for ln in db_lines), Decimal(0))
    assert not (tmp_path / "invoices/tenant=acme/month=2026-11").exists()  # November has no invoices


def test_command_and_bad_input(events, tmp_path, capsys):
    call_command("export_warehouse", "--date", "2026-11-22", "--tenant", "acme", "--dest", str(tmp_path))
    assert "usage_events/tenant=acme/date=2026-11-22: 5 rows" in capsys.readouterr().out
    with pytest.raises(CommandError, match="--days"):
        call_command("export_warehouse", "--date", "2026-11-22", "--days", "0", "--dest", str(tmp_path))
    with pytest.raises(CommandError, match="--date"):
        call_command("export_warehouse", "--date", "22/11/2026")
    with pytest.raises(CommandError, match="--tenant"):
        call_command("export_warehouse", "--date", "2026-11-22", "--tenant", "nope", "--dest", str(tmp_path))
    with pytest.raises(CommandError, match="--dest"):
        call_command("export_warehouse", "--date", "2026-11-22", "--dest", "ftp://x/y")


def test_nightly_task_exports_the_configured_days(events, settings, tmp_path):
    from telemetry.tasks import export_warehouse

    settings.LLMOBS_EXPORT_DIR = str(tmp_path)
    assert export_warehouse.delay("2026-11-23").get() > 0
    assert (tmp_path / "usage_events/tenant=acme/date=2026-11-22/part-0.parquet").exists()  # LLMOBS_EXPORT_DAYS=2


def test_schema_doc_lists_every_column():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "WAREHOUSE.md").read_text()
    assert warehouse.schema_markdown() in doc


@pytest.fixture
def s3(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="llmobs-warehouse")
    yield endpoint
    server.stop()


def test_s3_export_reads_back_exactly(events, acme, settings, s3):
    import pyarrow.fs as pafs

    settings.LLMOBS_EXPORT_S3_ENDPOINT = s3
    settings.LLMOBS_EXPORT_S3_URL = "s3://llmobs-warehouse/exports"
    warehouse.export_warehouse(day=DAY, tenant_slug="acme")
    warehouse.export_warehouse(day=DAY, tenant_slug="acme")  # replaced, not duplicated
    fs = pafs.S3FileSystem(region="us-east-1", endpoint_override=f"127.0.0.1:{S3_PORT}", scheme="http")
    listing = fs.get_file_info(pafs.FileSelector("llmobs-warehouse/exports", recursive=True))
    keys = {i.path for i in listing if i.type == pafs.FileType.File}
    assert "llmobs-warehouse/exports/usage_events/tenant=acme/date=2026-11-22/part-0.parquet" in keys
    assert "llmobs-warehouse/exports/csv/usage_events/tenant=acme/date=2026-11-22/part-0.csv" in keys
    assert not [k for k in keys if k.endswith(".tmp")]
    table = pq.read_table("llmobs-warehouse/exports/usage_events/tenant=acme/date=2026-11-22/part-0.parquet", filesystem=fs)
    db = UsageEvent.objects.filter(
        tenant=acme, occurred_at__gte=datetime(2026, 11, 22, tzinfo=UTC), occurred_at__lt=datetime(2026, 11, 23, tzinfo=UTC)
    )
    assert table.num_rows == db.count() == 5
    assert sum((c for c in table.column("cost").to_pylist() if c is not None), Decimal(0)) == sum(
        (e.cost for e in db if e.cost is not None), Decimal(0)
    )
    assert os.environ["AWS_REGION"] == "us-east-1"
