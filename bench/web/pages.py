"""Server-side time of each page on the demo tenant: the whole Django stack (middleware,
view, queries, template) through the test client, no network, as each demo user.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/web/pages.py --runs 30

Needs a seeded database (`manage.py seed_demo`, which builds the rollups) and, for the invoice
pages, last month's invoices (`manage.py issue_invoices --period YYYY-MM --force`). Prints
p50 / p95 / max in ms, the number of SQL queries per page and how many of them read the raw
usage table (only the paginated lists of recent calls should).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the web pages on seed_demo data.")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from chargeback.models import Budget, Invoice
    from telemetry.models import UsageEvent

    settings.ALLOWED_HOSTS = ["testserver"]
    research = Budget.objects.get(tenant__slug="acme", department__code="research")
    company = Budget.objects.get(tenant__slug="acme", scope=Budget.Scope.TENANT)
    tenant = research.tenant
    today = timezone.localdate(timezone.now(), timezone=tenant.tz)
    last_month_start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    invoice = Invoice.objects.filter(tenant=tenant, department__code="research").order_by("-period").first()
    pages = [
        ("employee", "/me/usage/"),
        ("employee", "/me/usage/?page=5"),
        ("finance", "/budgets/"),
        ("finance", f"/budgets/{company.pk}/"),
        ("manager", "/budgets/"),
        ("manager", f"/budgets/{research.pk}/"),
        ("finance", "/overview/"),
        ("finance", f"/overview/?start={last_month_start}&end={today}"),
        ("finance", "/overview/?department=research"),
        ("finance", "/departments/"),
        ("finance", "/departments/research/"),
        ("manager", "/my-department/"),
        ("manager", "/my-department/?page=20"),
        ("finance", "/anomalies/"),
        ("manager", "/anomalies/"),
        ("finance", "/invoices/"),
    ]
    if invoice is not None:
        pages.append(("finance", f"/invoices/{invoice.pk}/"))
    events = UsageEvent.objects.filter(tenant__slug="acme").count()
    print(f"{settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, {events:,} demo events, {args.runs} runs each")
    print(f"{'user':10} {'page':48} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'queries':>8} {'raw':>4}")
    for username, url in pages:
        client = Client()
        client.force_login(get_user_model().objects.get(username=username))
        client.get(url)  # warm: connection, templates, price book
        timings = []
        for _ in range(args.runs):
            start = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        timings.sort()
        p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
        raw = sum(1 for q in queries if UsageEvent._meta.db_table in q["sql"])
        print(
            f"{username:10} {url:48} {statistics.median(timings):8.1f} {p95:8.1f} {timings[-1]:8.1f} "
            f"{len(queries):8d} {raw:4d}"
        )


if __name__ == "__main__":
    main()
