"""Anomalies page: finance/admin see the tenant's, managers their department's; acknowledge and
resolve (POST) call telemetry.anomalies' functions, the same ones the API calls."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from chargeback.models import Department, Membership, Role
from telemetry import anomalies as anomaly_rules
from telemetry.models import Anomaly
from web.access import FINANCE_ADMIN, require_roles
from web.dashboards import visible_anomalies

ANOMALY_ROLES = (*FINANCE_ADMIN, Role.MANAGER)


def _scope(membership: Membership) -> frozenset[int] | None:
    return None if membership.sees_all_departments else frozenset({membership.department_id})


@require_roles(*ANOMALY_ROLES)
def anomaly_list(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    anomalies = visible_anomalies(tenant=membership.tenant, department_ids=_scope(membership))
    errors: dict[str, str] = {}
    # Default: what needs attention (open and acknowledged); "all" shows resolved ones too.
    status = (request.GET.get("status") or "active").strip()
    if status not in ("active", "all", *Anomaly.Status.values):
        errors["status"] = f"{status!r} is not a status; use one of active, all, {', '.join(Anomaly.Status.values)}."
    severity = (request.GET.get("severity") or "").strip()
    if severity and severity not in Anomaly.Severity.values:
        errors["severity"] = f"{severity!r} is not a severity; use one of {', '.join(Anomaly.Severity.values)}."
    code = (request.GET.get("department") or "").strip()
    department = None
    if code and membership.sees_all_departments:
        department = Department.objects.filter(tenant=membership.tenant, code=code).first()
        if department is None:
            errors["department"] = f"There is no department with the code {code!r} in {membership.tenant.name}."
    context: dict[str, Any] = {
        "statuses": [("active", "Open and acknowledged"), *Anomaly.Status.choices, ("all", "All")],
        "severities": Anomaly.Severity.choices,
        "departments": list(Department.objects.filter(tenant=membership.tenant).order_by("name"))
        if membership.sees_all_departments
        else [],
        "selected": {"status": status, "severity": severity, "department": code},
        "errors": errors,
    }
    if errors:
        return render(request, "web/anomalies.html", {**context, "page": None}, status=400)
    if status == "active":
        anomalies = anomalies.exclude(status=Anomaly.Status.RESOLVED)
    elif status != "all":
        anomalies = anomalies.filter(status=status)
    if severity:
        anomalies = anomalies.filter(severity=severity)
    if department is not None:
        anomalies = anomalies.filter(department=department)
    page = Paginator(anomalies.order_by("-hour", "-score", "-pk"), 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context.update(page=page, extra_query=("&" + query.urlencode()) if query else "")
    return render(request, "web/anomalies.html", context)


def _get_anomaly(membership: Membership, pk: int) -> Anomaly:
    anomaly = visible_anomalies(tenant=membership.tenant, department_ids=_scope(membership)).filter(pk=pk).first()
    if anomaly is None:
        raise Http404("No such anomaly.")
    return anomaly


def _back(request: HttpRequest) -> HttpResponse:
    # Back to the page the button was on (list with its filters, or a department page).
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect("web:anomalies")


def _label(anomaly: Anomaly) -> str:
    where = anomaly.department.name if anomaly.department_id else "Unattributed usage"
    return f"{anomaly.get_metric_display()} anomaly in {where}"


@require_POST
@require_roles(*ANOMALY_ROLES)
def anomaly_ack(request: HttpRequest, pk: int) -> HttpResponse:
    anomaly = _get_anomaly(request.membership, pk)
    before = anomaly.status
    anomaly = anomaly_rules.acknowledge(anomaly=anomaly, user=request.user)
    if before == Anomaly.Status.OPEN:
        messages.success(request, f"{_label(anomaly)} acknowledged.")
    else:
        messages.info(request, f"{_label(anomaly)} was already {anomaly.get_status_display().lower()}.")
    return _back(request)


@require_POST
@require_roles(*ANOMALY_ROLES)
def anomaly_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    anomaly = _get_anomaly(request.membership, pk)
    before = anomaly.status
    anomaly = anomaly_rules.resolve(anomaly=anomaly, user=request.user)
    if before != Anomaly.Status.RESOLVED:
        messages.success(request, f"{_label(anomaly)} resolved.")
    else:
        messages.info(request, f"{_label(anomaly)} was already resolved.")
    return _back(request)
