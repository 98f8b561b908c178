"""Time a month's invoicing for the `bench` tenant (see generate.py): draft 100 departments'
invoices (usage read, shared-cost allocation, closed-month adjustments, writes) plus exact
reconciliation against the raw events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_bench_invoicing \
        python bench/invoicing/run.py [--repeat 3] [--preaggregate]

--preaggregate also measures the same run with `monthly_usage` served from a daily
pre-aggregate table built in SQL (a stand-in for telemetry's rollups); reconciliation still
reads the raw events, as it must.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
# The benchmark month lies in the past: keep the raw-retention guard from skipping it.
os.environ.setdefault("LLMOBS_RAW_RETENTION_DAYS", "0")

import django

django.setup()

from django.db import connection  # noqa: E402

from chargeback import invoicing, usage_source  # noqa: E402
from chargeback.models import Invoice, Tenant  # noqa: E402

PERIOD = date(2026, 3, 1)

DAILY = """
CREATE UNLOGGED TABLE bench_daily_usage AS
SELECT tenant_id, department_id, provider, model, currency, (feature = 'eval') AS is_eval,
       date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day,
       count(*) AS requests, count(*) FILTER (WHERE cost IS NULL) AS unpriced, sum(cost) AS cost,
       sum(input_tokens) AS input_tokens, sum(cache_read_input_tokens) AS cache_read_tokens,
       sum(cache_creation_input_tokens) AS cache_write_tokens, sum(output_tokens) AS output_tokens,
       sum(reasoning_tokens) AS reasoning_tokens
FROM telemetry_usageevent GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


def from_daily(*, tenant, start, end) -> list[usage_source.UsageLine]:
    tenant_id = tenant.pk if isinstance(tenant, Tenant) else tenant
    with connection.cursor() as cur:
        cur.execute(
            "SELECT department_id, provider, model, currency, is_eval, sum(requests), sum(unpriced), sum(cost), "
            "sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens), "
            "sum(reasoning_tokens) FROM bench_daily_usage WHERE tenant_id = %s AND day >= %s AND day < %s "
            "GROUP BY 1, 2, 3, 4, 5",
            [tenant_id, start.replace(tzinfo=None), end.replace(tzinfo=None)],
        )
        return [
            usage_source.UsageLine(
                department_id=r[0],
                provider=r[1],
                model=r[2],
                currency=r[3],
                is_eval=r[4],
                requests=int(r[5]),
                unpriced=int(r[6]),
                cost=r[7] or Decimal(0),
                input_tokens=int(r[8]),
                cache_read_tokens=int(r[9]),
                cache_write_tokens=int(r[10]),
                output_tokens=int(r[11]),
                reasoning_tokens=int(r[12]),
            )
            for r in cur.fetchall()
        ]


def build_rollups(tenant: Tenant) -> None:
    from datetime import UTC, datetime, timedelta

    from django.utils import timezone

    from telemetry import rollups
    from telemetry.models import RollupWatermark

    start = datetime(PERIOD.year, PERIOD.month, 1, tzinfo=UTC) - timedelta(days=1)
    end = datetime(PERIOD.year, PERIOD.month + 1, 1, tzinfo=UTC) + timedelta(days=1)
    started = time.perf_counter()
    result = rollups.rebuild(start=start, end=end, tenant_id=tenant.pk)
    print(
        f"rollups rebuilt for {start:%Y-%m-%d}..{end:%Y-%m-%d} ({result.hours} hours, {result.days} days): {time.perf_counter() - started:.1f} s"
    )
    for name in (rollups.HOURLY_STREAM, rollups.DIMENSION_STREAM):
        RollupWatermark.objects.update_or_create(name=name, defaults={"position": timezone.now()})


def timed(label: str, fn):
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    return result, elapsed


def one_run(tenant: Tenant) -> dict[str, float]:
    _, draft_s = timed("draft", lambda: invoicing.draft_invoices(tenant=tenant, period=PERIOD, force=True))
    result, reconcile_s = timed("reconcile", lambda: invoicing.reconcile_period(tenant=tenant, period=PERIOD))
    assert result.ok, result.mismatches[:3]
    return {"draft": draft_s, "reconcile": reconcile_s, "total": draft_s + reconcile_s}


def report(label: str, runs: list[dict[str, float]]) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    each = ", ".join(f"{r['total']:.2f}" for r in runs)
    print(
        f"{label}: median of {len(runs)} — draft {med['draft']:.2f} s + reconcile {med['reconcile']:.2f} s "
        f"= {med['total']:.2f} s   (runs: {each})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--preaggregate", action="store_true")
    parser.add_argument(
        "--build-rollups",
        action="store_true",
        help="First rebuild the month's rollups (timed) and move the watermarks to now, as the "
        "minute task would have kept them; invoicing then reads rollups and only reconciliation scans raw.",
    )
    args = parser.parse_args()
    tenant = Tenant.objects.get(slug="bench")
    if args.build_rollups:
        build_rollups(tenant)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry_usageevent WHERE tenant_id = %s", [tenant.pk])
        events = cur.fetchone()[0]
    departments = tenant.departments.count()
    print(f"{events:,} events, {departments} departments, period {PERIOD:%Y-%m}")

    _, usage_s = timed("usage", lambda: usage_source.monthly_usage(tenant=tenant, **_bounds(tenant)))
    _, raw_s = timed("raw", lambda: usage_source.raw_cost_total(tenant=tenant, **_bounds(tenant)))
    print(
        f"components: monthly_usage (rollups, incremental pass included) {usage_s:.2f} s, raw_cost_total {raw_s:.2f} s"
    )
    report("draft from rollups + raw reconciliation", [one_run(tenant) for _ in range(args.repeat)])
    total = sum(Invoice.objects.filter(tenant=tenant, period=PERIOD).values_list("total", flat=True))
    print(f"invoices: {Invoice.objects.filter(tenant=tenant, period=PERIOD).count()}, total {total} USD")

    if args.preaggregate:
        with connection.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_daily_usage")
            started = time.perf_counter()
            cur.execute(DAILY)
            print(
                f"daily pre-aggregate built in {time.perf_counter() - started:.2f} s (one-off, like a rollup rebuild)"
            )
        original = usage_source.monthly_usage
        usage_source.monthly_usage = from_daily
        try:
            _, usage_s = timed("usage", lambda: usage_source.monthly_usage(tenant=tenant, **_bounds(tenant)))
            print(f"components: monthly_usage from daily table {usage_s:.3f} s")
            report("daily pre-aggregate + raw reconciliation", [one_run(tenant) for _ in range(args.repeat)])
        finally:
            usage_source.monthly_usage = original
            with connection.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS bench_daily_usage")


def _bounds(tenant: Tenant) -> dict:
    start, end = invoicing.month_bounds(tenant=tenant, period=PERIOD)
    return {"start": start, "end": end}


if __name__ == "__main__":
    main()
