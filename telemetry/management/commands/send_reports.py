"""E-mail the weekly or monthly stakeholder reports (or preview them without sending)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date

from telemetry import reports


class Command(BaseCommand):
    help = (
        "Send each tenant's (and each active department's) report for the last complete week or month. "
        "Idempotent: a report already sent for that period is not sent again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, choices=reports.KINDS, help="week or month.")
        parser.add_argument(
            "--date", help="Run as of this local date (YYYY-MM-DD): the last period complete by its midnight. Default: today."
        )
        parser.add_argument("--tenant", help="Tenant slug (default: every tenant).")
        parser.add_argument("--preview", action="store_true", help="Print the text and write the PDFs; send nothing.")
        parser.add_argument("--out", default=str(settings.BASE_DIR / "var" / "reports"), help="PDF folder for --preview.")

    def handle(self, *args, **options) -> None:
        as_of = None
        if options["date"]:
            as_of = parse_date(options["date"]) if len(options["date"]) == 10 else None
            if as_of is None:
                raise CommandError(f"--date: {options['date']!r} is not a date (YYYY-MM-DD).")
        try:
            if options["preview"]:
                for preview in reports.preview_reports(
                    kind=options["period"], as_of=as_of, tenant_slug=options["tenant"], out_dir=options["out"]
                ):
                    self.stdout.write(preview.text)
                    self.stdout.write(f"PDF: {preview.pdf_path}\n")
                return
            results = reports.send_reports(kind=options["period"], as_of=as_of, tenant_slug=options["tenant"])
        except reports.ReportError as exc:
            raise CommandError(f"--{exc.field}: {exc.message}") from exc
        for r in results:
            line = f"{r.tenant} {r.scope} {r.period.kind} {r.period.start}: {r.outcome}"
            if r.recipients and r.outcome == "sent":
                line += f" → {', '.join(r.recipients)}"
            if r.error:
                line += f" ({r.error})"
            self.stdout.write(line)
        if any(r.outcome == "failed" for r in results):
            raise CommandError("Some reports failed to send; run the command again to retry them.")
