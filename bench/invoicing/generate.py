"""Generate N usage events (default 10M) for one tenant with 100 departments, in SQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_bench_invoicing \
        python manage.py migrate
    DATABASE_URL=... python bench/invoicing/generate.py [--events 10000000] [--departments 100]

Rows are built by `INSERT … SELECT generate_series` in 1M-row chunks with the secondary
indexes dropped and rebuilt afterwards (what a bulk load does). Token counts and costs are
deterministic functions of the row number; costs carry 10 decimal places, ~1% are unpriced
(NULL) and ~5% are `eval` feature. Reusable by the rollups benchmark: it only needs the tenant
slug `bench` and the month 2026-03 (UTC).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402

from chargeback.models import (  # noqa: E402
    Budget,
    Department,
    Invoice,
    InvoiceCounter,
    PendingCredit,
    SharedCostPool,
    Tenant,
)
from telemetry import partitions  # noqa: E402

TABLE = "telemetry_usageevent"
CHUNK = 1_000_000

INSERT = f"""
INSERT INTO {TABLE} (
    tenant_id, event_id, operation_id, source, department_id, department_code, user_ref, api_key_prefix,
    provider, requested_model, model, operation, occurred_at, received_at, status, error_type,
    input_tokens, cache_read_input_tokens, cache_creation_input_tokens, cache_creation_1h_input_tokens,
    output_tokens, reasoning_tokens, cost, currency, cost_provenance, reported_currency,
    trace_id, span_id, parent_span_id, session_id, feature, tags, prompt_version
)
SELECT
    %(tenant)s, 'b' || i, '', 'ingest', d.id, d.code, 'user' || (i %% 500), '',
    m.provider, m.model, m.model, 'chat',
    %(start)s::timestamptz + ((i * 2654435761) %% %(seconds)s) * interval '1 second',
    %(start)s::timestamptz, 'ok', '',
    t.input, t.cache_read, 0, 0, t.output, t.output / 5,
    CASE WHEN i %% 100 = 0 THEN NULL
         ELSE ((t.input - t.cache_read) * m.input_price + t.cache_read * m.input_price / 2
               + t.output * m.output_price) / 1000000.0 END,
    'USD', CASE WHEN i %% 100 = 0 THEN 'unpriced' ELSE 'computed' END, '',
    '', '', '', '', CASE WHEN i %% 20 = 0 THEN 'eval' ELSE 'chat' END, '{{}}'::jsonb, ''
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
JOIN LATERAL (SELECT (i %% %(departments)s) AS dept_index, (i %% 6) AS model_index) k ON true
JOIN bench_departments d ON d.idx = k.dept_index
JOIN bench_models m ON m.idx = k.model_index
CROSS JOIN LATERAL (
    SELECT 50 + (i * 7919) %% 4000 AS input,
           CASE WHEN i %% 3 = 0 THEN ((50 + (i * 7919) %% 4000) / 4) ELSE 0 END AS cache_read,
           1 + (i * 104729) %% 800 AS output
) t
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--departments", type=int, default=100)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("The invoicing benchmark needs PostgreSQL (set DATABASE_URL).")

    started = time.perf_counter()
    with transaction.atomic():
        Tenant.objects.filter(slug="bench").first() and _drop_tenant()
        tenant = Tenant.objects.create(name="Bench Corp", slug="bench", timezone="UTC")
        departments = [
            Department(tenant=tenant, code=f"d{n:03d}", name=f"Department {n}", gl_cost_centre=f"CC-{n:03d}")
            for n in range(args.departments)
        ]
        Department.objects.bulk_create(departments)
        SharedCostPool.objects.create(tenant=tenant, name="Platform team", amount=Decimal("25000.00"))
        SharedCostPool.objects.create(
            tenant=tenant, name="GPU lease", kind="gpu", amount=Decimal("12345.67"), allocation_key="headcount"
        )
        for dept in departments[:10]:
            Budget.objects.create(tenant=tenant, name=f"{dept.code} monthly", department=dept, amount=Decimal("5000"))
    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_departments, bench_models")
        cur.execute("CREATE UNLOGGED TABLE bench_departments (idx int PRIMARY KEY, id bigint, code text)")
        cur.executemany(
            "INSERT INTO bench_departments VALUES (%s, %s, %s)",
            [(n, d.pk, d.code) for n, d in enumerate(Department.objects.filter(tenant=tenant).order_by("code"))],
        )
        cur.execute(
            "CREATE UNLOGGED TABLE bench_models (idx int PRIMARY KEY, provider text, model text, "
            "input_price numeric, output_price numeric)"
        )
        cur.execute(
            "INSERT INTO bench_models VALUES "
            "(0, 'openai', 'gpt-4o', 2.5, 10), (1, 'openai', 'gpt-4o-mini', 0.15, 0.6), "
            "(2, 'anthropic', 'claude-sonnet-4', 3, 15), (3, 'anthropic', 'claude-haiku-3.5', 0.8, 4), "
            "(4, 'google', 'gemini-2.0-flash', 0.1, 0.4), (5, 'ollama', 'llama3.1:8b', 0.013, 0.013)"
        )
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname <> %s",
            [TABLE, f"{TABLE}_pkey"],
        )
        indexes = cur.fetchall()
        cur.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'u'",
            [TABLE],
        )
        uniques = cur.fetchall()
        for name, _ in uniques:
            cur.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            if name not in {u[0] for u in uniques}:
                cur.execute(f'DROP INDEX IF EXISTS "{name}"')
        partitions.ensure_months([date(2026, 3, 1)])  # the bench month has its partition
        for first in range(1, args.events + 1, CHUNK):
            last = min(first + CHUNK - 1, args.events)
            cur.execute(
                INSERT,
                {
                    "tenant": tenant.pk,
                    "start": "2026-03-01T00:00:00Z",
                    "seconds": 31 * 86400,
                    "first": first,
                    "last": last,
                    "departments": args.departments,
                },
            )
            print(f"  {last:,} events ({time.perf_counter() - started:.0f} s)", flush=True)
        for name, definition in uniques:
            cur.execute(f'ALTER TABLE {TABLE} ADD CONSTRAINT "{name}" {definition}')
        for name, definition in indexes:
            if name not in {u[0] for u in uniques}:
                # A partitioned table's index reads "ON ONLY parent": build it on every month.
                cur.execute(definition.replace(" ON ONLY ", " ON "))
        cur.execute(f"VACUUM ANALYZE {TABLE}")
        cur.execute("DROP TABLE bench_departments, bench_models")
    print(
        f"Generated {args.events:,} events for {args.departments} departments in {time.perf_counter() - started:.0f} s"
    )


def _drop_tenant() -> None:
    tenant = Tenant.objects.get(slug="bench")
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} WHERE tenant_id = %s", [tenant.pk])
    PendingCredit.objects.filter(tenant=tenant).delete()
    # Issued invoices are immutable through the ORM; a benchmark reset removes them in SQL.
    with connection.cursor() as cur:
        cur.execute(
            "DELETE FROM chargeback_invoiceline WHERE invoice_id IN (SELECT id FROM chargeback_invoice WHERE tenant_id = %s)",
            [tenant.pk],
        )
    Invoice.objects.filter(tenant=tenant).delete()
    InvoiceCounter.objects.filter(tenant=tenant).delete()
    tenant.delete()


if __name__ == "__main__":
    main()
