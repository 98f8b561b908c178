"""`manage.py run_eval_dataset --dataset D --route R [--judge-route J] [--threshold 0.8] [--tenant SLUG]`.

Runs every item through the route, judges it, prints a table and the pass rate, stores the run.
Exit status: 0 at or above the threshold, 1 below it (for CI), 2 on bad arguments.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from chargeback.models import Department
from telemetry.datasets import DatasetError, run_dataset
from telemetry.models import Dataset

from ._quality import USAGE_ERROR, resolve_tenant


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Command(BaseCommand):
    help = "Run a golden dataset through a route, judge the answers and fail below a pass-rate threshold."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dataset", required=True, help="Dataset name.")
        parser.add_argument("--route", required=True, help="Route alias under test.")
        parser.add_argument("--judge-route", default="", help="Judge route alias; default: match the expected answer.")
        parser.add_argument("--threshold", default="0.8", help="Minimum pass rate, 0-1 (default 0.8).")
        parser.add_argument("--tenant", help="Tenant slug (optional when there is only one tenant).")
        parser.add_argument("--department", help="Department code the calls are charged to.")

    def handle(self, *args, **options) -> None:
        tenant = resolve_tenant(options["tenant"])
        try:
            threshold = Decimal(options["threshold"])
        except InvalidOperation:
            threshold = Decimal("NaN")
        if not threshold.is_finite() or not (0 <= threshold <= 1):
            raise CommandError("--threshold must be a pass rate between 0 and 1.", returncode=USAGE_ERROR)
        dataset = Dataset.objects.filter(tenant=tenant, name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"No dataset {options['dataset']!r} in {tenant.slug}.", returncode=USAGE_ERROR)
        department = None
        if options["department"]:
            department = Department.objects.filter(tenant=tenant, code=options["department"]).first()
            if department is None:
                raise CommandError(f"No department {options['department']!r} in {tenant.slug}.", returncode=USAGE_ERROR)
        try:
            run = run_dataset(
                dataset=dataset, route_alias=options["route"], judge_alias=options["judge_route"],
                threshold=threshold, department=department,
            )  # fmt: skip
        except DatasetError as exc:
            raise CommandError(f"{exc.field}: {exc.message}", returncode=USAGE_ERROR) from exc
        self.stdout.write(
            f"Run {run.pk}: dataset {dataset.name!r}, route {run.route_alias}, judge {run.judge_alias or '(expected answer)'}"
        )
        self.stdout.write(f"{'item':<16} {'status':<12} {'score':>6} {'pass':<5} {'answer':<40} reasoning")
        for result in run.results.select_related("item").order_by("item__position"):
            self.stdout.write(
                f"{_cell(str(result.item), 16):<16} {result.status:<12} "
                f"{'' if result.score is None else str(result.score.normalize()):>6} {'yes' if result.passed else 'no':<5} "
                f"{_cell(result.output, 40):<40} {_cell(result.reasoning, 60)}"
            )
        rate = run.pass_rate or Decimal(0)
        verdict = "PASS" if rate >= threshold else "FAIL"
        self.stdout.write(
            f"Pass rate {run.items_passed}/{run.items_total} = {rate:.1%} (threshold {threshold:.1%}): {verdict}; cost {run.cost.normalize()} {tenant.currency}"
        )
        if verdict == "FAIL":
            raise CommandError(f"Pass rate {rate:.1%} is below the threshold {threshold:.1%}.", returncode=1)
