"""Rebuild rollups for a range (default: the last 2 days), or run one incremental pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from chargeback.models import Tenant
from telemetry import rollups


def _parse(value: str, option: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"{option}: {value!r} is not a date (YYYY-MM-DD) or an ISO datetime.")
        parsed = datetime(day.year, day.month, day.day)
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


class Command(BaseCommand):
    help = "Recompute hourly, daily and per-dimension rollups for [--start, --end) from raw events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", help="UTC date or ISO datetime (default: 2 days ago).")
        parser.add_argument("--end", help="UTC date or ISO datetime, exclusive (default: now).")
        parser.add_argument("--tenant", help="Tenant slug (default: every tenant).")
        parser.add_argument("--chunk-hours", type=int, default=24, help="Hours per transaction (default 24).")
        parser.add_argument(
            "--jobs",
            type=int,
            default=2,
            help="Database sessions working at once on PostgreSQL (default 2; 1 = one chunk after another).",
        )
        parser.add_argument(
            "--pending", action="store_true", help="Run one incremental pass from the watermark instead."
        )

    def handle(self, *args, **options) -> None:
        tenant_id = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"--tenant: no tenant with slug {options['tenant']!r}.")
            tenant_id = tenant.pk
        if options["pending"]:
            result = rollups.roll_up_pending()
            rollups.roll_up_dimensions_pending()
            self.stdout.write(f"Incremental pass: {result.hours} hours re-rolled for {len(result.tenants)} tenants.")
            return
        end = _parse(options["end"], "--end") if options["end"] else timezone.now()
        start = _parse(options["start"], "--start") if options["start"] else end - timedelta(days=2)
        if start >= end:
            raise CommandError("--end must be after --start.")
        if options["chunk_hours"] < 1:
            raise CommandError("--chunk-hours must be at least 1.")
        if options["jobs"] < 1:
            raise CommandError("--jobs must be at least 1.")
        started = timezone.now()
        result = rollups.rebuild(
            start=start,
            end=end,
            tenant_id=tenant_id,
            chunk=timedelta(hours=options["chunk_hours"]),
            progress=self.stdout.write,
            jobs=options["jobs"],
        )
        seconds = (timezone.now() - started).total_seconds()
        self.stdout.write(
            self.style.SUCCESS(f"Rolled up {result.hours} hours ({result.days} tenant-days) in {seconds:.1f} s.")
        )
