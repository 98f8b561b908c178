"""Draft (and with --issue, issue) a month's chargeback invoices, printing progress."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargeback import invoicing, money
from chargeback.models import Invoice, Tenant


class Command(BaseCommand):
    help = "Draft one invoice per department for --period YYYY-MM (and issue them with --issue)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="Month to invoice, YYYY-MM (tenant time zone).")
        parser.add_argument("--tenant", help="Tenant slug; default: every tenant.")
        parser.add_argument("--issue", action="store_true", help="Issue the drafts (assigns invoice numbers).")
        parser.add_argument(
            "--force", action="store_true", help="Draft even though the grace window for late events is still open."
        )

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
        actor = "manage.py issue_invoices"
        for tenant in tenants:
            try:
                summary = invoicing.draft_invoices(
                    tenant=tenant, period=period, force=options["force"], actor=actor, progress=self.stdout.write
                )
            except invoicing.InvoicingError as exc:
                raise CommandError(f"{tenant.slug}: {exc.message}") from None
            self.stdout.write(
                f"{tenant.slug} {period:%Y-%m}: {len(summary.drafted)} drafted, "
                f"{len(summary.skipped_closed)} already issued (left unchanged)"
            )
            for invoice in summary.invoices:
                if options["issue"] and invoice.status == Invoice.Status.DRAFT:
                    invoicing.issue_invoice(invoice=invoice, by=actor)
                self.stdout.write(
                    f"  {invoice.number or '(draft)':<18} {invoice.department.code:<20} "
                    f"{money.format_money(invoice.total, invoice.currency):>18}  {invoice.status}"
                )
