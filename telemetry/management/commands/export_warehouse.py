"""Write days of usage events and rollups (and their months' invoices) as Parquet + CSV."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date

from telemetry import warehouse


class Command(BaseCommand):
    help = (
        "Export usage events, hourly/daily/dimension rollups and invoices, Hive-partitioned by tenant and date, "
        "as Parquet and CSV. Re-running replaces the same files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", required=True, help="Last day to export (YYYY-MM-DD; UTC for events and hours).")
        parser.add_argument("--days", type=int, default=1, help="Number of days ending with --date (default 1).")
        parser.add_argument("--tenant", help="Tenant slug (default: every tenant).")
        parser.add_argument("--dest", help="Directory or s3://bucket/prefix (default: LLMOBS_EXPORT_S3_URL or LLMOBS_EXPORT_DIR).")

    def handle(self, *args, **options) -> None:
        day = parse_date(options["date"]) if len(options["date"]) == 10 else None
        if day is None:
            raise CommandError(f"--date: {options['date']!r} is not a date (YYYY-MM-DD).")
        try:
            result = warehouse.export_warehouse(
                day=day, days=options["days"], tenant_slug=options["tenant"], dest=options["dest"]
            )
        except warehouse.ExportError as exc:
            raise CommandError(f"--{exc.field}: {exc.message}") from exc
        for f in result.files:
            if f.rows:
                self.stdout.write(f"{f.table}/{f.partition}: {f.rows} rows")
        totals = ", ".join(f"{table} {rows}" for table, rows in result.rows.items())
        self.stdout.write(f"Exported to {result.destination}: {totals}")
