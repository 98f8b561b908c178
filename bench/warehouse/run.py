"""Warehouse export and report benchmark: N events packed into one UTC day, exported to Parquet
+ CSV, with rows/s and the process's peak memory growth; then a weekly and a monthly report
built from the rollups.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_bench_warehouse python manage.py migrate
    DATABASE_URL=... python bench/invoicing/generate.py --events 1000000 --departments 100
    DATABASE_URL=... python bench/warehouse/run.py [--dest DIR]  (default var/bench-export)

The generator spreads events over March 2026; this script moves them all onto 15 March (one
partition, the worst case for memory), rebuilds that day's rollups and exports it twice (the
second run replaces the files).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django

django.setup()

import pyarrow.parquet as pq  # noqa: E402
from django.db import connection  # noqa: E402

from chargeback.models import Tenant  # noqa: E402
from telemetry import reports, rollups, warehouse  # noqa: E402

DAY = date(2026, 3, 15)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dest", default=str(Path(__file__).resolve().parents[2] / "var" / "bench-export"))
    parser.add_argument("--skip-move", action="store_true", help="Events are already on the bench day.")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Needs PostgreSQL (set DATABASE_URL).")
    tenant = Tenant.objects.get(slug="bench")
    if not args.skip_move:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE telemetry_usageevent SET occurred_at = %s::timestamptz + (occurred_at - date_trunc('day', occurred_at)) "
                "WHERE tenant_id = %s",
                [datetime(2026, 3, 15, tzinfo=UTC), tenant.pk],
            )
        rollups.rebuild(start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 4, 1, tzinfo=UTC), tenant_id=tenant.pk)
        print(f"moved events onto {DAY} and rebuilt March rollups in {time.perf_counter() - started:.1f} s")
    before = peak_rss_mb()
    for attempt in (1, 2):
        started = time.perf_counter()
        result = warehouse.export_warehouse(day=DAY, tenant_slug="bench", dest=args.dest)
        seconds = time.perf_counter() - started
        events = result.rows.get("usage_events", 0)
        print(
            f"export #{attempt}: {events:,} events + {result.rows.get('hourly_rollups', 0):,} hourly + "
            f"{result.rows.get('daily_rollups', 0):,} daily + {result.rows.get('dimension_rollups', 0):,} dimension rows "
            f"in {seconds:.1f} s ({events / seconds:,.0f} events/s); peak RSS {peak_rss_mb():.0f} MB "
            f"(+{peak_rss_mb() - before:.0f} MB over the {before:.0f} MB before the first export)"
        )
    path = Path(args.dest) / f"usage_events/tenant=bench/date={DAY}/part-0.parquet"
    meta = pq.ParquetFile(path).metadata
    csv_path = Path(args.dest) / f"csv/usage_events/tenant=bench/date={DAY}/part-0.csv"
    print(
        f"usage_events parquet: {meta.num_rows:,} rows, {meta.num_row_groups} row groups, "
        f"{path.stat().st_size / 1e6:.1f} MB; csv {csv_path.stat().st_size / 1e6:.1f} MB"
    )
    for kind, start in (("week", date(2026, 3, 9)), ("month", date(2026, 3, 1))):
        period = reports.Period.starting(kind=kind, start=start)
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            report = reports.build_report(tenant=tenant, department=None, period=period)
            timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        pdf = reports.render_pdf(report)
        pdf_s = time.perf_counter() - started
        print(
            f"{kind} report (tenant-wide, 100 departments): build median {sorted(timings)[2] * 1000:.0f} ms, "
            f"max {max(timings) * 1000:.0f} ms; PDF {pdf_s * 1000:.0f} ms, {len(pdf) / 1024:.0f} KiB; "
            f"spend {report.money_spend}"
        )


if __name__ == "__main__":
    main()
