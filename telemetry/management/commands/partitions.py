"""List the usage table's monthly partitions, or create the missing ones (PostgreSQL)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from telemetry import partitions


class Command(BaseCommand):
    help = (
        "PostgreSQL: list the usage table's monthly partitions with their row estimates, or with "
        "--ensure create this month's and the next ones and split rows out of DEFAULT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ensure", action="store_true", help="Create missing partitions first.")
        parser.add_argument(
            "--ahead", type=int, default=partitions.MONTHS_AHEAD, help="Months ahead to create (default 3)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not partitions.is_postgresql():
            raise CommandError("Partitioning is PostgreSQL only; this database keeps one plain table.")
        if options["ahead"] < 0:
            raise CommandError("--ahead must be 0 or more.")
        if options["ensure"]:
            result = partitions.ensure_partitions(ahead=options["ahead"], progress=self.stdout.write)
            self.stdout.write(f"{len(result.created)} partitions created, {result.moved:,} rows moved from DEFAULT.")
        with connection.cursor() as cursor:
            if not partitions.is_partitioned(cursor):
                raise CommandError("telemetry_usageevent is not partitioned: run `manage.py migrate`.")
            rows = partitions.list_partitions(cursor)
            cursor.execute(
                "SELECT relname, reltuples::bigint FROM pg_class WHERE relname = ANY(%s)", [[p.name for p in rows]]
            )
            estimates = dict(cursor.fetchall())
        for partition in rows:
            span = f"{partition.month:%Y-%m}" if partition.month else "DEFAULT"
            estimate = max(estimates.get(partition.name, 0), 0)
            self.stdout.write(f"{span:<8} {partition.name:<36} ~{estimate:,} rows")
