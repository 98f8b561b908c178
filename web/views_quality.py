"""Quality page (finance/admin): how good the answers are, next to what they cost.

Everything comes from telemetry.evals (the same numbers as `GET /api/v1/evals/summary`): the
judged pass rate, mean score, faithfulness and user satisfaction for a date range and optional
department, broken down by evaluation config, department, model and feature; each config's
rolling pass rate against its SLO; the latest failed verdicts with the judge's reasoning; the
SLO alerts; and the golden-dataset runs. Nothing is estimated: a cell without data says so.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from telemetry import evals
from telemetry.models import DatasetRun, EvalAlert, EvalConfig, EvalScore
from web.access import FINANCE_ADMIN, require_roles
from web.filters import active_departments, invalid_filters, parse_filters

FAILURES_SHOWN = 20
ALERTS_SHOWN = 10
RUNS_SHOWN = 10


def _config_rows(tenant, now) -> list[dict[str, Any]]:
    rows = []
    for config in EvalConfig.objects.filter(tenant=tenant).select_related("judge_route", "filter_department"):
        rolling = evals.rolling_pass_rate(config=config, now=now)
        if rolling.pass_rate is None:
            state = "no-data"
        elif evals.below_slo(config, rolling):
            state = "below"
        else:
            state = "ok"
        rows.append(
            {
                "config": config,
                "rolling": rolling.pass_rate,
                "samples": rolling.samples,
                "state": state,
            }
        )
    return rows


@require_roles(*FINANCE_ADMIN)
def quality(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    tenant = membership.tenant
    now = timezone.now()
    filters = parse_filters(request.GET, membership=membership, today=timezone.localdate(now, timezone=tenant.tz))
    context: dict[str, Any] = {"departments": active_departments(tenant), "filters": filters}
    if not filters.valid:
        return invalid_filters(request, "web/quality.html", filters, context)
    rng, department = filters.range, filters.department
    department_ids = [department.pk] if department is not None else None
    summary = evals.quality_summary(tenant=tenant, start=rng.start_at, end=rng.end_at, department_ids=department_ids)
    failures = EvalScore.objects.filter(
        tenant=tenant,
        event_at__gte=rng.start_at,
        event_at__lt=rng.end_at,
        status=EvalScore.Status.OK,
        passed=False,
    )
    if department is not None:
        failures = failures.filter(department_id=department.pk)
    context.update(
        summary=summary,
        configs=_config_rows(tenant, now),
        failures=list(failures.select_related("config").order_by("-event_at", "-pk")[:FAILURES_SHOWN]),
        alerts=list(EvalAlert.objects.filter(tenant=tenant).select_related("config")[:ALERTS_SHOWN]),
        runs=list(
            DatasetRun.objects.filter(tenant=tenant).select_related("dataset").order_by("-started_at")[:RUNS_SHOWN]
        ),
    )
    return render(request, "web/quality.html", context)
