"""Prove a month's invoices equal its raw events' cost; exit non-zero on any difference."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargeback import invoicing
from chargeback.models import Tenant


def _f(value: Decimal) -> str:
    return format(value, "f")  # fixed-point: "0.0000001234", never "1.234E-7"


class Command(BaseCommand):
    help = "Reconcile --period YYYY-MM: invoice lines + later adjustments vs raw event cost, exactly."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="Month, YYYY-MM (tenant time zone).")
        parser.add_argument("--tenant", help="Tenant slug; default: every tenant.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            period = invoicing.parse_period(options["period"])
        except invoicing.InvoicingError as exc:
            raise CommandError(f"--period: {exc.message}") from None
        tenants = Tenant.objects.all()
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"Unknown tenant {options['tenant']!r}: no tenant has that slug.")
        failed = []
        for tenant in tenants:
            result = invoicing.reconcile_period(tenant=tenant, period=period)
            for currency, t in sorted(result.totals().items()):
                self.stdout.write(
                    f"{tenant.slug} {period:%Y-%m} {currency}: raw {_f(t.raw)} = invoiced {_f(t.invoiced)} "
                    f"+ adjusted later {_f(t.adjusted_later)}; difference {_f(t.difference)}"
                )
            self.stdout.write(f"{tenant.slug} {period:%Y-%m}: rounding on invoices {_f(result.rounding_difference)}")
            for row in result.mismatches:
                self.stdout.write(
                    f"  MISMATCH {row.department} {row.currency}: raw {_f(row.raw)}, invoiced {_f(row.invoiced)}, "
                    f"adjusted later {_f(row.adjusted_later)}, difference {_f(row.difference)}"
                )
            if not result.ok:
                failed.append(tenant.slug)
        if failed:
            raise CommandError(f"Reconciliation failed for {', '.join(failed)}.")
        self.stdout.write("Reconciled: invoices equal raw event cost exactly.")
