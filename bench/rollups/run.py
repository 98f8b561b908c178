"""Rollup and reporting benchmark on 10M raw events in PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_bench_rollups \\
        /work/main/.venv/bin/python bench/rollups/run.py --generate --events 10000000

--generate (re)creates the database, migrates and writes one month of events with
generate_series (100 departments, 5,000 users each in one department, 4 models, 2 tags, spread
latencies), in time order as ingest appends them (≈ 14k events per hour).
Then: full rebuild time (`--jobs` database sessions, like `manage.py roll_up --jobs`),
incremental-minute p95 (≈ 240 new events per run, the target scenario's 14k events/hour), and
p95 of each reporting endpoint while another process keeps running the incremental rollup, as
the Celery worker does in production (`--churn-in-thread` puts it in the web process instead,
the harsher setup earlier sessions measured).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
# The benchmark month lies in the past: keep the raw-retention guard from skipping it.
os.environ.setdefault("LLMOBS_RAW_RETENTION_DAYS", "0")

MONTH_START = datetime(2025, 3, 1, tzinfo=UTC)
MONTH_END = datetime(2025, 4, 1, tzinfo=UTC)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def generate(events: int) -> None:
    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], check=True, env=os.environ)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from chargeback.models import Budget, Department, Membership, Role, Tenant

    tenant = Tenant.objects.create(name="Bench", slug="bench", timezone="Europe/Paris")
    depts = Department.objects.bulk_create(
        [Department(tenant=tenant, code=f"d{i:03d}", name=f"Dept {i}") for i in range(100)]
    )
    user = get_user_model().objects.create_user(username="bench-finance", password=None)
    Membership.objects.create(user=user, tenant=tenant, role=Role.FINANCE)
    for d in depts[:20]:
        Budget.objects.create(tenant=tenant, name=d.code, department=d, amount="1000", thresholds=[50, 80, 100])
    first = depts[0].pk
    seconds = int((MONTH_END - MONTH_START).total_seconds())
    started = time.perf_counter()
    from telemetry import partitions

    # The bench month's partition exists before the rows arrive (else they land in DEFAULT).
    partitions.ensure_months([partitions.month_of(MONTH_START)])
    month_table = partitions.partition_name(partitions.month_of(MONTH_START))
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {month_table} SET (autovacuum_enabled = false)")
        cursor.execute(
            f"""
INSERT INTO telemetry_usageevent (
  tenant_id, event_id, operation_id, source, department_id, department_code, user_ref, api_key_prefix, provider,
  requested_model, model, operation, occurred_at, received_at, latency_ms, ttft_ms, status, error_type, input_tokens,
  cache_read_input_tokens, cache_creation_input_tokens, cache_creation_1h_input_tokens, output_tokens,
  reasoning_tokens, cost, currency, cost_provenance, reported_currency, trace_id, span_id, parent_span_id,
  session_id, feature, tags, prompt_version)
SELECT {tenant.pk}, 'e' || g, '', 'ingest', {first} + (g * 104729) %% 5000 %% 100,
  'd' || lpad(((g * 104729) %% 5000 %% 100)::text, 3, '0'),
  'u' || (g * 104729) %% 5000, '', CASE WHEN g %% 4 < 2 THEN 'openai' ELSE 'anthropic' END,
  '', (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-sonnet', 'claude-haiku'])[1 + (g %% 4)::int], 'chat',
  timestamptz '{MONTH_START.isoformat()}' + make_interval(secs => (g - 1) * {seconds}::float8 / %s),
  timestamptz '{MONTH_START.isoformat()}' + make_interval(secs => (g - 1) * {seconds}::float8 / %s + 2),
  (exp(6.5 + 0.8 * sin(g))::int), (exp(5 + 0.7 * cos(g))::int),
  CASE WHEN g %% 50 = 0 THEN 'error' ELSE 'ok' END, '', 500 + g %% 3000, g %% 700, g %% 90, 0, 100 + g %% 800, g %% 13,
  CASE WHEN g %% 997 = 0 THEN NULL ELSE ((500 + g %% 3000) * 0.0000025 + (100 + g %% 800) * 0.00001)::numeric(20, 10) END,
  'USD', CASE WHEN g %% 997 = 0 THEN 'unpriced' ELSE 'computed' END, '', '', '', '', '',
  (ARRAY['chat', 'search', 'summarise', 'eval'])[1 + ((g / 7) %% 4)::int],
  jsonb_build_object('env', CASE WHEN g %% 3 = 0 THEN 'dev' ELSE 'prod' END, 'team', 't' || g %% 12), ''
FROM generate_series(1::bigint, %s) AS g""",
            [events, events, events],
        )
        cursor.execute(f"ALTER TABLE {month_table} SET (autovacuum_enabled = true)")
        cursor.execute("VACUUM ANALYZE telemetry_usageevent")
    print(f"generated {events:,} events in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--chunk-days", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="Database sessions for the rebuild (default 2).")
    parser.add_argument("--skip-rebuild", action="store_true", help="Keep the existing rollups (already built).")
    parser.add_argument("--churn-in-thread", action="store_true", help="Run the incremental rollup in this process.")
    parser.add_argument("--churn", action="store_true", help=argparse.SUPPRESS)  # the worker-process mode
    args = parser.parse_args()
    if args.churn:
        churn_forever()
        return
    if args.generate:
        generate(args.events)
    import django

    django.setup()
    from django.db import connection

    from chargeback.models import Tenant

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_usageevent")
        print(f"raw events: {cursor.fetchone()[0]:,}")
    tenant = Tenant.objects.get(slug="bench")

    # Full rebuild: hourly, daily and per-dimension rollups, one transaction per day chunk
    # (what `manage.py roll_up --start 2025-03-01 --end 2025-04-01` runs).
    if not args.skip_rebuild:
        full_rebuild(args, tenant)
    incremental_and_reports(args, tenant)


def full_rebuild(args, tenant) -> None:
    from django.db import connection

    from telemetry import rollups
    from telemetry.models import DailyRollup, DimensionRollup, HourlyRollup, MonthlyDimensionRollup

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE telemetry_hourlyrollup, telemetry_dailyrollup, telemetry_dimensionrollup")
    marks: dict[str, float] = {}

    def progress(message: str) -> None:
        for phase in ("hourly:", "daily", "monthly"):
            if message.startswith(phase):
                marks[phase] = time.perf_counter()

    started = time.perf_counter()
    rollups.rebuild(
        start=MONTH_START, end=MONTH_END, chunk=timedelta(days=args.chunk_days), jobs=args.jobs, progress=progress
    )
    total = time.perf_counter() - started
    phases = ""
    if {"hourly:", "daily", "monthly"} <= marks.keys():
        phases = (
            f" (hourly {marks['hourly:'] - started:.1f} s, daily {marks['daily'] - marks['hourly:']:.1f} s, "
            f"per-dimension + monthly {marks['monthly'] - marks['daily']:.1f} s)"
        )
    print(
        f"full rebuild of {MONTH_START:%Y-%m}: {total:.1f} s in {args.chunk_days}-day chunks on {args.jobs} "
        f"session(s){phases}; rows: hourly {HourlyRollup.objects.count():,}, daily {DailyRollup.objects.count():,}, "
        f"dimension {DimensionRollup.objects.count():,}, monthly dimension {MonthlyDimensionRollup.objects.count():,}"
    )


def incremental_and_reports(args, tenant) -> None:
    from django.utils import timezone
    from rest_framework.test import APIClient

    from telemetry import rollups
    from telemetry.models import RollupWatermark, UsageEvent

    # Incremental minute: ~240 new events (14k/hour) in the current hour, then one pass. The
    # watermark starts at "now": the month is already rolled up. Earlier runs' incremental events
    # go first, or a few runs within one hour would pile 50k events into the hour each pass
    # re-rolls (3-4× the scenario's 14k/hour).
    UsageEvent.objects.filter(tenant=tenant, event_id__startswith="inc-").delete()
    RollupWatermark.objects.update_or_create(name=rollups.HOURLY_STREAM, defaults={"position": timezone.now()})
    samples = []
    now = timezone.now()
    dept_ids = list(tenant.departments.values_list("pk", flat=True))
    for i in range(args.samples):
        UsageEvent.objects.bulk_create(
            [
                UsageEvent(tenant=tenant, event_id=f"inc-{now:%s}-{i}-{j}", source="ingest", department_id=dept_ids[j % len(dept_ids)],
                           provider="openai", model="gpt-4o", occurred_at=timezone.now(), latency_ms=300 + j,
                           cost="0.0012", cost_provenance="computed", user_ref=f"u{j}")
                for j in range(240)
            ]
        )  # fmt: skip
        t = time.perf_counter()
        rollups.roll_up_pending()
        samples.append((time.perf_counter() - t) * 1000)
    print(f"incremental minute (240 new events): p50 {statistics.median(samples):.1f} ms, p95 {p95(samples):.1f} ms")

    # Reporting endpoints, while the incremental rollup keeps running: in another process (the
    # Celery worker's place) or, with --churn-in-thread, in a thread of this one (GIL shared).
    stop = threading.Event()

    def churn() -> None:
        from django.db import connection as conn

        while not stop.is_set():
            rollups.roll_up_pending()
            time.sleep(0.2)
        conn.close()

    worker = None
    thread = threading.Thread(target=churn, daemon=True)
    if args.churn_in_thread:
        thread.start()
    else:
        worker = subprocess.Popen([sys.executable, __file__, "--churn"], env=os.environ)
    client = APIClient()
    from django.contrib.auth import get_user_model

    client.force_authenticate(get_user_model().objects.get(username="bench-finance"))
    month = {"start": "2025-03-01", "end": "2025-04-01"}
    calls = [
        (
            "spend by department per day (month)",
            "/api/v1/spend",
            {**month, "group_by": "department", "interval": "day"},
        ),
        ("spend by model per month", "/api/v1/spend", {**month, "group_by": "model", "interval": "month"}),
        ("spend, one department, by day", "/api/v1/spend", {**month, "department": "d007", "interval": "day"}),
        ("spend by user (top 100)", "/api/v1/spend", {**month, "group_by": "user"}),
        ("spend by tag:env per day", "/api/v1/spend", {**month, "group_by": "tag:env", "interval": "day"}),
        (
            "spend per hour, 7 days",
            "/api/v1/spend",
            {"start": "2025-03-20", "end": "2025-03-27", "interval": "hour", "limit": 500},
        ),
        ("latency by model (month)", "/api/v1/latency", {**month, "group_by": "model"}),
        ("latency by department (month)", "/api/v1/latency", {**month, "group_by": "department"}),
        ("budgets (20)", "/api/v1/budgets", {}),
        ("anomalies", "/api/v1/anomalies", {}),
    ]
    for label, path, params in calls:
        client.get(path, params)  # warm-up, not counted: the process's first call of an endpoint
        timings = []
        for _ in range(args.samples):
            t = time.perf_counter()
            response = client.get(path, params)
            timings.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200, response.content[:300]
        print(f"{label:40s} p50 {statistics.median(timings):6.1f} ms  p95 {p95(timings):6.1f} ms")
    stop.set()
    if worker is not None:
        worker.terminate()
        worker.wait(timeout=30)
    else:
        thread.join()


def churn_forever() -> None:
    import django

    django.setup()
    from telemetry import rollups

    while True:
        rollups.roll_up_pending()
        time.sleep(0.2)


if __name__ == "__main__":
    main()
