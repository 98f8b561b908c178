"""Re-price events of a period with the current price book (audited; invoices are not edited)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargeback import repricing
from chargeback.models import Tenant


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a date; use YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Recompute event costs in [--start, --end) (dates, tenant time zone) with the current prices. "
        "Differences in already-issued months become adjustment lines on the next invoice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="First day, YYYY-MM-DD (inclusive).")
        parser.add_argument("--end", required=True, help="Last day, YYYY-MM-DD (exclusive).")
        parser.add_argument("--tenant", help="Tenant slug; default: every tenant.")

    def handle(self, *args: Any, **options: Any) -> None:
        start_day, end_day = _day(options["start"]), _day(options["end"])
        if end_day <= start_day:
            raise CommandError("--end must be after --start.")
        tenants = Tenant.objects.all()
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"Unknown tenant {options['tenant']!r}: no tenant has that slug.")
        for tenant in tenants:
            tz = tenant.tz
            start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=tz)
            end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=tz)
            result = repricing.reprice_events(tenant=tenant, start=start, end=end, actor="manage.py reprice")
            currencies = sorted(set(result.before) | set(result.after))
            totals = ", ".join(f"{c} {result.before.get(c, 0)} → {result.after.get(c, 0)}" for c in currencies)
            self.stdout.write(
                f"{tenant.slug}: {result.events} events, {result.changed} re-priced; {totals or 'no cost'}; "
                f"unpriced {result.unpriced_before} → {result.unpriced_after}"
            )
