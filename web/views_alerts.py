"""Alerts page (finance/admin): every alert of the tenant — budget thresholds and forecasts,
anomalies, error-rate spikes, latency SLO breaches, quality drops, unpriced events — with its
severity, how long it has been firing, how it was resolved, and its runbook section. This is
where alerts routed to "dashboard only" are read (chargeback.alerting; docs/ALERTS.md)."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db.models import Case, Count, IntegerField, Value, When
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from chargeback import alerting
from chargeback.models import Alert, AlertKind, Severity
from web.access import FINANCE_ADMIN, require_roles

SEVERITY_ORDER = Case(
    When(severity=Severity.CRITICAL, then=Value(0)),
    When(severity=Severity.WARNING, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


@require_roles(*FINANCE_ADMIN)
def alert_list(request: HttpRequest) -> HttpResponse:
    tenant = request.membership.tenant
    errors: dict[str, str] = {}
    state = (request.GET.get("state") or Alert.State.FIRING).strip()
    if state not in (*Alert.State.values, "all"):
        errors["state"] = f"{state!r} is not a state; use one of firing, resolved, all."
    severity = (request.GET.get("severity") or "").strip()
    if severity and severity not in Severity.values:
        errors["severity"] = f"{severity!r} is not a severity; use one of {', '.join(Severity.values)}."
    kind = (request.GET.get("kind") or "").strip()
    if kind and kind not in AlertKind.values:
        errors["kind"] = f"{kind!r} is not an alert kind; use one of {', '.join(AlertKind.values)}."
    alerts = Alert.objects.filter(tenant=tenant)
    context: dict[str, Any] = {
        "states": [*Alert.State.choices, ("all", "All")],
        "severities": Severity.choices,
        "kinds": AlertKind.choices,
        "selected": {"state": state, "severity": severity, "kind": kind},
        "errors": errors,
        "firing_counts": _firing_counts(alerts),
        "page": None,
    }
    if errors:
        return render(request, "web/alerts.html", context, status=400)
    if state != "all":
        alerts = alerts.filter(state=state)
    if severity:
        alerts = alerts.filter(severity=severity)
    if kind:
        alerts = alerts.filter(kind=kind)
    alerts = alerts.annotate(severity_rank=SEVERITY_ORDER).order_by("state", "severity_rank", "-last_fired_at", "-pk")
    page = Paginator(alerts, 25).get_page(request.GET.get("page"))
    for alert in page:
        alert.runbook_url = alerting.runbook_url(alert.kind)
    context["page"] = page
    kept = {k: v for k, v in context["selected"].items() if v}
    context["extra_query"] = "&" + urlencode(kept) if kept else ""
    return render(request, "web/alerts.html", context)


def _firing_counts(alerts) -> dict[str, int]:
    rows = alerts.filter(state=Alert.State.FIRING).values("severity").annotate(n=Count("pk")).order_by()
    return {row["severity"]: row["n"] for row in rows}
