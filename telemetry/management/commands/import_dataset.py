"""`manage.py import_dataset --name N --file F.jsonl [--tenant SLUG]`: a golden dataset from JSONL."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from telemetry.datasets import DatasetError, import_dataset

from ._quality import USAGE_ERROR, resolve_tenant


class Command(BaseCommand):
    help = 'Import a golden dataset: one JSON object per line, {"id"?, "input" | "messages", "expected"?, "criteria"?}.'

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--file", required=True, help="Path to the JSONL file.")
        parser.add_argument("--tenant", help="Tenant slug (optional when there is only one tenant).")
        parser.add_argument("--description", default="")

    def handle(self, *args, **options) -> None:
        tenant = resolve_tenant(options["tenant"])
        try:
            with open(options["file"], encoding="utf-8") as handle:
                dataset = import_dataset(
                    tenant=tenant, name=options["name"], lines=handle, description=options["description"]
                )
        except OSError as exc:
            raise CommandError(f"Cannot read {options['file']}: {exc.strerror}.", returncode=USAGE_ERROR) from exc
        except DatasetError as exc:
            raise CommandError(f"{exc.field}: {exc.message}", returncode=USAGE_ERROR) from exc
        self.stdout.write(f"Imported {dataset.items.count()} items into dataset {dataset.name!r} ({tenant.slug}).")
