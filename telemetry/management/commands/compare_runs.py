"""`manage.py compare_runs RUN_A RUN_B`: per-item differences between two dataset runs."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from telemetry.datasets import compare_runs
from telemetry.models import DatasetRun

from ._quality import USAGE_ERROR


def _fmt(score, passed) -> str:
    if passed is None:
        return "-"
    return f"{'' if score is None else score.normalize()} {'pass' if passed else 'fail'}".strip()


class Command(BaseCommand):
    help = "Compare two dataset runs item by item."

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_a", type=int)
        parser.add_argument("run_b", type=int)

    def handle(self, *args, **options) -> None:
        runs = {
            r.pk: r
            for r in DatasetRun.objects.filter(pk__in=[options["run_a"], options["run_b"]]).select_related("dataset")
        }
        missing = [pk for pk in (options["run_a"], options["run_b"]) if pk not in runs]
        if missing:
            raise CommandError(f"No dataset run {missing[0]}.", returncode=USAGE_ERROR)
        a, b = runs[options["run_a"]], runs[options["run_b"]]
        if a.tenant_id != b.tenant_id:
            raise CommandError("The two runs belong to different tenants.", returncode=USAGE_ERROR)
        self.stdout.write(
            f"A = run {a.pk} ({a.dataset.name}, {a.route_alias}); B = run {b.pk} ({b.dataset.name}, {b.route_alias})"
        )
        self.stdout.write(f"{'item':<16} {'A':<12} {'B':<12} change")
        for diff in compare_runs(a=a, b=b):
            self.stdout.write(
                f"{diff.item[:16]:<16} {_fmt(diff.a_score, diff.a_passed):<12} {_fmt(diff.b_score, diff.b_passed):<12} {diff.change}"
            )

        def rate(run):
            return "-" if run.pass_rate is None else f"{run.pass_rate:.1%}"

        self.stdout.write(f"Pass rate A {rate(a)} → B {rate(b)}")
