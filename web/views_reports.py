"""Overview (finance/admin) and Department pages (list for finance/admin; one department for
finance/admin and that department's manager). Numbers from web.dashboards (rollups); filters
from the URL (web.filters)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from chargeback.models import Budget, Department, Role
from telemetry import rollups
from telemetry.models import Anomaly
from web import dashboards, data
from web.access import FINANCE_ADMIN, can_see_department, require_roles
from web.filters import active_departments, invalid_filters, parse_filters, this_month


def _latency_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


@require_roles(*FINANCE_ADMIN)
def overview(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    tenant = membership.tenant
    now = timezone.now()
    filters = parse_filters(request.GET, membership=membership, today=timezone.localdate(now, timezone=tenant.tz))
    context: dict[str, Any] = {"departments": active_departments(tenant)}
    if not filters.valid:
        return invalid_filters(request, "web/overview.html", filters, context)
    department, rng = filters.department, filters.range
    context.update(
        filters=filters,
        month=dashboards.get_month_to_date(tenant=tenant, department=department, now=now),
        totals=dashboards.get_range_totals(tenant=tenant, span=rng, department=department),
        by_department=dashboards.spend_chart(tenant=tenant, span=rng, department=department, group_by="department"),
        by_model=dashboards.spend_chart(tenant=tenant, span=rng, department=department, group_by="model"),
        top_users=dashboards.top_spenders(tenant=tenant, span=rng, department=department, group_by="user"),
        top_features=dashboards.top_spenders(tenant=tenant, span=rng, department=department, group_by="feature"),
        latency=_latency_summary(dashboards.get_latency(tenant=tenant, span=rng, department=department)),
        latency_by_model=dashboards.get_latency(tenant=tenant, span=rng, department=department, group_by="model")[:8],
        anomalies=dashboards.get_open_anomalies(tenant=tenant, department=department),
        quality=dashboards.get_quality_summary(tenant=tenant, span=rng, department=department),
    )
    return render(request, "web/overview.html", context)


@require_roles(*FINANCE_ADMIN)
def departments(request: HttpRequest) -> HttpResponse:
    """Every active department: month-to-date spend, its monthly budget gauge, open anomalies."""
    tenant = request.membership.tenant
    now = timezone.now()
    today = timezone.localdate(now, timezone=tenant.tz)
    month = this_month(today=today, tz=tenant.tz)
    page = Paginator(Department.objects.filter(tenant=tenant, active=True).order_by("name"), 25).get_page(
        request.GET.get("page")
    )
    spend_rows = rollups.spend(
        query=rollups.ReportQuery(tenant=tenant, start=month.start_at, end=month.end_at), group_by="department"
    )
    spent: dict[str | None, Any] = {}
    requests: Counter = Counter()
    for row in spend_rows:
        if row["currency"] == tenant.currency:
            spent[row["group"]] = spent.get(row["group"], data.ZERO) + row["cost"]
        requests[row["group"]] += row["requests"]
    ids = [d.pk for d in page]
    budgets: dict[int, list] = {}
    for budget in Budget.objects.filter(
        tenant=tenant, active=True, scope=Budget.Scope.DEPARTMENT, department_id__in=ids
    ).select_related("tenant", "department").order_by("name", "pk"):
        budgets.setdefault(budget.department_id, []).append(data.get_budget_status(budget=budget, at=now))
    open_counts = Counter(
        Anomaly.objects.filter(tenant=tenant, status=Anomaly.Status.OPEN, department_id__in=ids).values_list(
            "department_id", flat=True
        )
    )
    rows = [
        {
            "department": d,
            "spent": spent.get(d.code, data.ZERO),
            "requests": requests.get(d.code, 0),
            "budgets": budgets.get(d.pk, []),
            "open_anomalies": open_counts.get(d.pk, 0),
        }
        for d in page
    ]
    return render(request, "web/departments.html", {"rows": rows, "page": page, "month": month})


@require_roles(Role.MANAGER)
def my_department(request: HttpRequest) -> HttpResponse:
    """The manager's own department page, at its own URL so the menu entry stays current."""
    department = request.membership.department
    if department is None:
        raise PermissionDenied("You are not attached to a department.")
    return _department_page(request, department)


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def department_detail(request: HttpRequest, code: str) -> HttpResponse:
    membership = request.membership
    # Another tenant's (or no) department with this code is a 404: a 403 would confirm it exists.
    department = Department.objects.filter(tenant=membership.tenant, code=code).select_related("manager").first()
    if department is None:
        raise Http404("No such department.")
    if not can_see_department(membership, department.pk):
        raise PermissionDenied("You can only see your own department.")
    return _department_page(request, department)


def _department_page(request: HttpRequest, department: Department) -> HttpResponse:
    membership = request.membership
    tenant = membership.tenant
    now = timezone.now()
    filters = parse_filters(
        request.GET, membership=membership, today=timezone.localdate(now, timezone=tenant.tz), allow_department=False
    )
    filters.department = department
    context: dict[str, Any] = {"department": department, "filters": filters}
    if not filters.valid:
        return invalid_filters(request, "web/department.html", filters, context)
    rng = filters.range
    budget_statuses = [
        data.get_budget_status(budget=b, at=now) for b in data.list_budgets(tenant=tenant, department=department)
    ]
    anomaly_ids = frozenset({department.pk})
    context.update(
        budgets=budget_statuses,
        month=dashboards.get_month_to_date(tenant=tenant, department=department, now=now),
        totals=dashboards.get_range_totals(tenant=tenant, span=rng, department=department),
        by_model_chart=dashboards.spend_chart(tenant=tenant, span=rng, department=department, group_by="model"),
        by_model=dashboards.top_spenders(tenant=tenant, span=rng, department=department, group_by="model"),
        top_users=dashboards.top_spenders(tenant=tenant, span=rng, department=department, group_by="user"),
        top_features=dashboards.top_spenders(tenant=tenant, span=rng, department=department, group_by="feature"),
        latency=_latency_summary(dashboards.get_latency(tenant=tenant, span=rng, department=department)),
        latency_by_model=dashboards.get_latency(tenant=tenant, span=rng, department=department, group_by="model"),
        anomalies=list(
            dashboards.visible_anomalies(tenant=tenant, department_ids=anomaly_ids)
            .exclude(status=Anomaly.Status.RESOLVED)
            .order_by("-hour", "-score", "-pk")[:5]
        ),
        events=dashboards.page_department_events(
            tenant=tenant, department=department, span=rng, page=request.GET.get("page")
        ),
        quality=dashboards.get_quality_summary(tenant=tenant, span=rng, department=department),
        can_act_on_anomalies=membership.role in (*FINANCE_ADMIN, Role.MANAGER),
    )
    return render(request, "web/department.html", context)
