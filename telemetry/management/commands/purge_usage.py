"""Delete raw usage events older than LLMOBS_RAW_RETENTION_DAYS (rollups and invoices stay)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from telemetry import retention


class Command(BaseCommand):
    help = (
        "Delete raw usage events that occurred before UTC midnight N days ago (default: "
        "LLMOBS_RAW_RETENTION_DAYS), in batches. Rollups and invoices are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="Retention in days (default: the setting; 0 = keep all).")
        parser.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH)
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is not None and 0 < days < retention.MIN_RETENTION_DAYS:
            raise CommandError(f"--days must be 0 or at least {retention.MIN_RETENTION_DAYS}.")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            result = retention.purge_usage_events(
                days=days, batch_size=options["batch_size"], dry_run=options["dry_run"], progress=self.stdout.write
            )
        except retention.RetentionError as exc:
            raise CommandError(str(exc)) from None
        if result.horizon is None:
            self.stdout.write("Retention is 0 (keep forever): nothing deleted.")
            return
        verb = "would be deleted" if options["dry_run"] else "deleted"
        months = f" ({len(result.partitions_dropped)} monthly partitions)" if result.partitions_dropped else ""
        self.stdout.write(f"{result.deleted} raw events before {result.horizon:%Y-%m-%d %H:%M} UTC {verb}{months}.")
