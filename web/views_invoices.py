"""Invoice pages: the list (finance/admin: every department; managers: their department's),
one invoice with its lines, budget vs actual and audit trail, the lifecycle buttons (POST, CSRF)
and the downloads. Every action calls chargeback.invoicing's domain function, which checks the
role again; its refusals come back as messages on the page."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from chargeback import exports, invoicing
from chargeback.models import AuditLog, Department, Invoice, InvoiceLine, Membership, Role
from web.access import FINANCE_ADMIN, require_roles

INVOICE_ROLES = (*FINANCE_ADMIN, Role.MANAGER)


def visible_invoices(membership: Membership) -> QuerySet[Invoice]:
    invoices = Invoice.objects.filter(tenant_id=membership.tenant_id).select_related("tenant", "department")
    if membership.sees_all_departments:
        return invoices
    return invoices.filter(department_id=membership.department_id)


def _get_invoice(membership: Membership, pk: int) -> Invoice:
    # Another tenant's invoice, or another department's for a manager: 404 (never confirm it exists).
    invoice = visible_invoices(membership).filter(pk=pk).first()
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


@require_roles(*INVOICE_ROLES)
def invoice_list(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    invoices = visible_invoices(membership)
    errors: dict[str, str] = {}
    period = None
    period_text = (request.GET.get("period") or "").strip()
    if period_text:
        try:
            period = invoicing.parse_period(period_text)
        except invoicing.InvoicingError as exc:
            errors["period"] = exc.message
    status = (request.GET.get("status") or "").strip()
    if status and status not in Invoice.Status.values:
        errors["status"] = f"{status!r} is not a status; use one of {', '.join(Invoice.Status.values)}."
    department = None
    code = (request.GET.get("department") or "").strip()
    if code and membership.sees_all_departments:
        department = Department.objects.filter(tenant_id=membership.tenant_id, code=code).first()
        if department is None:
            errors["department"] = f"There is no department with the code {code!r} in {membership.tenant.name}."
    periods = list(
        visible_invoices(membership).order_by("-period").values_list("period", flat=True).distinct()[:36]
    )
    context: dict[str, Any] = {
        "periods": periods,
        "statuses": Invoice.Status.choices,
        "departments": list(Department.objects.filter(tenant_id=membership.tenant_id).order_by("name"))
        if membership.sees_all_departments
        else [],
        "selected": {"period": period_text, "status": status, "department": code},
        "errors": errors,
        "can_export": membership.sees_all_departments,
    }
    if errors:
        return render(request, "web/invoices.html", {**context, "page": None}, status=400)
    if period is not None:
        invoices = invoices.filter(period=period)
    if status:
        invoices = invoices.filter(status=status)
    if department is not None:
        invoices = invoices.filter(department=department)
    page = Paginator(invoices.order_by("-period", "department__code", "pk"), 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context.update(page=page, extra_query=("&" + query.urlencode()) if query else "", export_period=period or (periods[0] if periods else None))
    return render(request, "web/invoices.html", context)


def _audit_trail(invoice: Invoice) -> QuerySet[AuditLog]:
    return AuditLog.objects.filter(
        tenant_id=invoice.tenant_id, object_type=Invoice._meta.label, object_id=str(invoice.pk)
    ).select_related("actor").order_by("created_at", "pk")


@require_roles(*INVOICE_ROLES)
def invoice_detail(request: HttpRequest, pk: int) -> HttpResponse:
    membership = request.membership
    invoice = _get_invoice(membership, pk)
    lines = list(invoice.lines.order_by("position", "pk"))
    groups = [
        (kind, label, [line for line in lines if line.kind == kind])
        for kind, label in InvoiceLine.Kind.choices
    ]
    finance = membership.sees_all_departments
    manager = membership.role == Role.MANAGER and membership.department_id == invoice.department_id
    budget_percent = None
    if invoice.budget_amount:
        budget_percent = (invoice.total * 100 / invoice.budget_amount).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    context = {
        "invoice": invoice,
        "groups": [(kind, label, rows) for kind, label, rows in groups if rows],
        "other_currency_lines": [line for line in lines if line.currency != invoice.currency],
        "audit": list(_audit_trail(invoice)),
        "budget_percent": budget_percent,
        "can_issue": finance and invoice.status == Invoice.Status.DRAFT,
        "can_approve": finance and invoice.status == Invoice.Status.ISSUED,
        "can_dispute": (finance or manager) and invoice.status == Invoice.Status.ISSUED,
        "can_resolve": finance and invoice.status == Invoice.Status.DISPUTED,
        "resolutions": Invoice.Resolution.choices,
        "period_last": invoice.period_end - timedelta(microseconds=1),  # the end is exclusive
    }
    return render(request, "web/invoice_detail.html", context)


def _run(request: HttpRequest, invoice: Invoice, action: str, call) -> HttpResponse:
    """Call one domain function; its outcome becomes a message on the invoice page."""
    try:
        changed = call()
    except PermissionDenied as exc:
        messages.error(request, str(exc) or "Your role cannot do this.")
    except invoicing.TransitionRefused as exc:
        messages.error(request, exc.message)
    except invoicing.InvoicingError as exc:
        messages.error(request, f"{exc.field.replace('_', ' ').capitalize()}: {exc.message}")
    else:
        invoice.refresh_from_db()
        if changed:
            messages.success(request, f"Invoice {invoice.number or f'draft #{invoice.pk}'} {action}.")
        else:
            messages.info(request, f"Invoice {invoice.number or f'draft #{invoice.pk}'} was already {invoice.status}.")
    return redirect("web:invoice-detail", pk=invoice.pk)


@require_POST
@require_roles(*INVOICE_ROLES)
def invoice_issue(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    return _run(request, invoice, "issued", lambda: invoicing.issue_invoice(invoice=invoice, by=request.user))


@require_POST
@require_roles(*INVOICE_ROLES)
def invoice_approve(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    return _run(request, invoice, "approved", lambda: invoicing.approve_invoice(invoice=invoice, by=request.user))


@require_POST
@require_roles(*INVOICE_ROLES)
def invoice_dispute(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    reason = request.POST.get("reason", "")
    return _run(
        request, invoice, "disputed", lambda: invoicing.dispute_invoice(invoice=invoice, by=request.user, reason=reason)
    )


@require_POST
@require_roles(*INVOICE_ROLES)
def invoice_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    outcome = request.POST.get("outcome", "")
    amount_text = (request.POST.get("credit_amount") or "").strip()
    credit_amount = None
    if amount_text:
        try:
            credit_amount = Decimal(amount_text)
        except InvalidOperation:
            messages.error(request, f"Credit amount: {amount_text!r} is not an amount; write it like 12.50.")
            return redirect("web:invoice-detail", pk=invoice.pk)
        if not credit_amount.is_finite():
            messages.error(request, f"Credit amount: {amount_text!r} is not an amount; write it like 12.50.")
            return redirect("web:invoice-detail", pk=invoice.pk)
    note = request.POST.get("note", "")
    return _run(
        request,
        invoice,
        "resolved",
        lambda: invoicing.resolve_dispute(
            invoice=invoice, by=request.user, outcome=outcome, credit_amount=credit_amount, note=note
        ),
    )


def _attachment(body: str | bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_roles(*INVOICE_ROLES)
def invoice_csv(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    name = invoice.number or f"draft-{invoice.pk}"
    return _attachment(exports.invoice_csv(invoice), "text/csv; charset=utf-8", f"{name}.csv")


@require_roles(*INVOICE_ROLES)
def invoice_pdf(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _get_invoice(request.membership, pk)
    name = invoice.number or f"draft-{invoice.pk}"
    return _attachment(exports.invoice_pdf(invoice), "application/pdf", f"{name}.pdf")


def _bad_period(request: HttpRequest, message: str) -> HttpResponse:
    return render(
        request,
        "web/bad_request.html",
        {"title": "That export needs a month", "message": f"Period: {message}", "back": reverse("web:invoices")},
        status=400,
    )


@require_roles(*FINANCE_ADMIN)
def export_focus(request: HttpRequest) -> HttpResponse:
    """FOCUS 1.2 CSV of a month for the tenant being viewed (the same function as the API's)."""
    try:
        period = invoicing.parse_period(request.GET.get("period", ""))
    except invoicing.InvoicingError as exc:
        return _bad_period(request, exc.message)
    tenant = request.membership.tenant
    return _attachment(
        exports.focus_csv(tenant=tenant, period=period), "text/csv; charset=utf-8", f"focus-{tenant.slug}-{period:%Y-%m}.csv"
    )


@require_roles(*FINANCE_ADMIN)
def export_gl(request: HttpRequest) -> HttpResponse:
    try:
        period = invoicing.parse_period(request.GET.get("period", ""))
    except invoicing.InvoicingError as exc:
        return _bad_period(request, exc.message)
    tenant = request.membership.tenant
    return _attachment(
        exports.gl_csv(tenant=tenant, period=period), "text/csv; charset=utf-8", f"gl-{tenant.slug}-{period:%Y-%m}.csv"
    )
