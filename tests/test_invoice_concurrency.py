"""Issuing under concurrency on PostgreSQL: row locks keep invoice numbers unique and gap-free,
and a doubly-issued invoice takes one number (SQLite serialises writers, so this is PG-only)."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from django.conf import settings
from django.db import connection

from chargeback import invoicing
from chargeback.models import AuditLog, Department, Invoice, Tenant

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not settings.IS_POSTGRES, reason="needs PostgreSQL row locks and concurrent connections"),
]


@pytest.mark.django_db(transaction=True)
def test_concurrent_issues_give_gap_free_unique_numbers():
    tenant = Tenant.objects.create(name="Race", slug="race")
    Department.objects.bulk_create([Department(tenant=tenant, code=f"d{i}", name=f"D{i}") for i in range(6)])
    invoicing.draft_invoices(tenant=tenant, period=date(2026, 3, 1), force=True)
    invoices = list(Invoice.objects.filter(tenant=tenant))
    # Each invoice is issued by two threads at once: 12 attempts, 6 issues.
    targets = [i for i in invoices for _ in range(2)]
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def issue(invoice: Invoice) -> None:
        try:
            barrier.wait()
            results.append(invoicing.issue_invoice(invoice=Invoice.objects.get(pk=invoice.pk), by="race-test"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(inv,)) for inv in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] * 6 + [True] * 6
    numbers = sorted(Invoice.objects.filter(tenant=tenant).values_list("number", flat=True))
    year = numbers[0].split("-")[1]  # the year of issue (today), not of the period
    assert numbers == [f"RACE-{year}-{n:04d}" for n in range(1, 7)]
    assert AuditLog.objects.filter(tenant=tenant, action="invoice.issue").count() == 6
