"""The reports page: the weekly and monthly stakeholder reports (telemetry.reports) to read in
the browser or download as PDF. Finance and admin see the tenant-wide report and every
department's; a manager sees their own department's only (enforced here, not by hiding links)."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from chargeback.models import Department, Membership, Role
from telemetry import reports
from web.access import FINANCE_ADMIN, require_roles

PERIODS_LISTED = {"week": 12, "month": 12}


def _scope(membership: Membership, code: str | None) -> Department | None:
    """The department a report is about (None = whole tenant), within the membership's reach."""
    if membership.sees_all_departments:
        if not code:
            return None
        department = Department.objects.filter(tenant_id=membership.tenant_id, code=code).first()
        if department is None:
            raise Http404("No such department.")
        return department
    if membership.department is None:
        raise PermissionDenied("You are not attached to a department.")
    if not code:
        # A manager asking for the tenant-wide report (no department) is refused, not redirected.
        raise PermissionDenied("The tenant-wide report is for finance and admin.")
    if code != membership.department.code:
        raise PermissionDenied("You can only see your own department's reports.")
    return membership.department


def _period(membership: Membership, kind: str, start: str) -> reports.Period:
    try:
        period = reports.Period.starting(kind=kind, start=date.fromisoformat(start))
    except (ValueError, reports.ReportError) as exc:
        raise Http404("No such report period.") from exc
    if period.end > reports.local_today(membership.tenant):
        raise Http404("This period is not over yet.")
    return period


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def report_list(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    kind = request.GET.get("kind", "week")
    if kind not in reports.KINDS:
        kind = "week"
    tenant = membership.tenant
    if membership.sees_all_departments:
        scopes = [(None, f"{tenant.name} (all departments)")]
        scopes += [(d, d.name) for d in Department.objects.filter(tenant=tenant, active=True).order_by("name")]
    elif membership.department is not None:
        scopes = [(membership.department, membership.department.name)]
    else:
        scopes = []
    sent = reports.sent_reports(tenant=tenant, kind=kind)
    periods = reports.list_periods(tenant=tenant, kind=kind, count=PERIODS_LISTED[kind])
    rows = [
        {
            "period": p,
            "scopes": [
                {
                    "label": label,
                    "code": d.code if d else "",
                    "delivery": sent.get((reports.scope_key(d), p.start)),
                }
                for d, label in scopes
            ],
        }
        for p in periods
    ]
    return render(request, "web/reports/list.html", {"kind": kind, "rows": rows, "kinds": reports.KINDS})


def _build(request: HttpRequest, kind: str, start: str) -> reports.Report:
    membership = request.membership
    department = _scope(membership, request.GET.get("department"))
    period = _period(membership, kind, start)
    return reports.build_report(tenant=membership.tenant, department=department, period=period)


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def report_detail(request: HttpRequest, kind: str, start: str) -> HttpResponse:
    report = _build(request, kind, start)
    return render(
        request,
        "web/reports/detail.html",
        {"r": report, "department_code": report.department.code if report.department else ""},
    )


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def report_pdf(request: HttpRequest, kind: str, start: str) -> HttpResponse:
    report = _build(request, kind, start)
    response = HttpResponse(reports.render_pdf(report), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{reports.pdf_filename(report)}"'
    return response


# Included into web/urls.py (namespace `web`) with one line: *views_stakeholder.urlpatterns.
urlpatterns = [
    path("reports/", report_list, name="reports"),
    path("reports/<str:kind>/<str:start>/", report_detail, name="report-detail"),
    path("reports/<str:kind>/<str:start>/pdf/", report_pdf, name="report-pdf"),
]
