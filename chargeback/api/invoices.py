"""Chargeback invoice API: list and read invoices, download CSV/PDF, run lifecycle transitions,
and export a month as FOCUS 1.2 or a GL journal.

Scoping: a session user sees the invoices of the tenants they are a member of — finance and
admin every department's, a manager only their own department's, an employee none. An API key
sees its tenant's invoices (only its department's when the key is bound to one) and may read
and export but not change status: transitions need an accountable person. An invoice outside
the caller's scope is a 404, never a 403, so ids of other tenants leak nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chargeback import exports, invoicing
from chargeback.auth import ApiKeyUser
from chargeback.models import Invoice, InvoiceLine, Membership, Role, Tenant
from llmobs.errors import error_body


class InvoiceLineSerializer(serializers.ModelSerializer):
    rounding = serializers.DecimalField(max_digits=21, decimal_places=10, read_only=True)

    class Meta:
        model = InvoiceLine
        fields = [
            "position",
            "kind",
            "description",
            "currency",
            "provider",
            "model",
            "requests",
            "unpriced_requests",
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "input_per_mtok",
            "cache_read_per_mtok",
            "cache_write_per_mtok",
            "output_per_mtok",
            "average_per_mtok",
            "price_note",
            "list_cost_unrounded",
            "list_cost",
            "amount_unrounded",
            "amount",
            "rounding",
            "basis",
            "adjusts_period",
        ]


class InvoiceSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    department = serializers.SlugRelatedField(slug_field="code", read_only=True)
    period = serializers.DateField(format="%Y-%m")

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "tenant",
            "department",
            "period",
            "period_start",
            "period_end",
            "status",
            "currency",
            "usage_total",
            "eval_total",
            "allocations_total",
            "adjustments_total",
            "total",
            "total_unrounded",
            "rounding_difference",
            "unpriced_requests",
            "budget_amount",
            "notes",
            "generated_at",
            "issued_at",
            "approved_at",
            "disputed_at",
            "dispute_reason",
            "resolved_at",
            "resolution",
            "resolution_note",
        ]


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]


# --- Scoping ----------------------------------------------------------------------------------------


def visible_invoices(request: Request) -> QuerySet[Invoice]:
    user = request.user
    invoices = Invoice.objects.select_related("tenant", "department")
    if isinstance(user, ApiKeyUser):
        key = user.key
        scoped = invoices.filter(tenant_id=key.tenant_id)
        return scoped.filter(department_id=key.department_id) if key.department_id else scoped
    scope = Q(pk__in=[])
    for member in Membership.objects.filter(user=user):
        if member.role in (Role.FINANCE, Role.ADMIN):
            scope |= Q(tenant_id=member.tenant_id)
        elif member.role == Role.MANAGER and member.department_id:
            scope |= Q(tenant_id=member.tenant_id, department_id=member.department_id)
    return invoices.filter(scope)


def _invoice(request: Request, pk: int) -> Invoice:
    try:
        return visible_invoices(request).get(pk=pk)
    except Invoice.DoesNotExist:
        raise exceptions.NotFound("No invoice with that id.") from None


def _export_tenant(request: Request) -> Tenant:
    """The tenant a tenant-wide export is for: the key's, or the session user's finance/admin
    membership (named with ?tenant=<slug> when the user has several)."""
    user = request.user
    if isinstance(user, ApiKeyUser):
        if user.key.department_id:
            raise exceptions.PermissionDenied("A key bound to one department cannot export the whole tenant.")
        return user.key.tenant
    members = Membership.objects.filter(user=user, role__in=(Role.FINANCE, Role.ADMIN)).select_related("tenant")
    slug = request.query_params.get("tenant")
    if slug:
        members = members.filter(tenant__slug=slug)
    tenants = [m.tenant for m in members]
    if not tenants:
        raise exceptions.PermissionDenied("Exports need a finance or admin membership of the tenant.")
    if len(tenants) > 1:
        raise exceptions.ValidationError({"tenant": ["You belong to several tenants; name one with ?tenant=<slug>."]})
    return tenants[0]


def _period(request: Request, *, required: bool) -> Any:
    text = request.query_params.get("period")
    if text is None:
        if required:
            raise exceptions.ValidationError({"period": ["This parameter is required (YYYY-MM)."]})
        return None
    try:
        return invoicing.parse_period(text)
    except invoicing.InvoicingError as exc:
        raise exceptions.ValidationError({"period": [exc.message]}) from None


def _csv(body: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- Views -----------------------------------------------------------------------------------------------


class InvoiceListView(ListAPIView):
    serializer_class = InvoiceSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("period", str, description="YYYY-MM"),
            OpenApiParameter("department", str, description="Department code"),
            OpenApiParameter("status", str, enum=Invoice.Status.values),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Invoice]:
        invoices = visible_invoices(self.request).order_by("-period", "department__code", "id")
        period = _period(self.request, required=False)
        if period is not None:
            invoices = invoices.filter(period=period)
        department = self.request.query_params.get("department")
        if department:
            invoices = invoices.filter(department__code=department)
        status = self.request.query_params.get("status")
        if status:
            if status not in Invoice.Status.values:
                raise exceptions.ValidationError(
                    {"status": [f"{status!r} is not a status; use one of {', '.join(Invoice.Status.values)}."]}
                )
            invoices = invoices.filter(status=status)
        return invoices


class InvoiceDetailView(APIView):
    @extend_schema(responses=InvoiceDetailSerializer)
    def get(self, request: Request, pk: int) -> Response:
        invoice = _invoice(request, pk)
        return Response(InvoiceDetailSerializer(invoice).data)


class InvoiceCsvView(APIView):
    @extend_schema(responses={(200, "text/csv"): str})
    def get(self, request: Request, pk: int) -> HttpResponse:
        invoice = _invoice(request, pk)
        return _csv(exports.invoice_csv(invoice), f"{invoice.number or f'draft-{invoice.pk}'}.csv")


class InvoicePdfView(APIView):
    @extend_schema(responses={(200, "application/pdf"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        invoice = _invoice(request, pk)
        response = HttpResponse(exports.invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number or f"draft-{invoice.pk}"}.pdf"'
        return response


class TransitionSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    outcome = serializers.ChoiceField(choices=Invoice.Resolution.values, required=False)
    credit_amount = serializers.DecimalField(max_digits=20, decimal_places=10, required=False, min_value=0)
    note = serializers.CharField(required=False, allow_blank=True, max_length=5000)


class _TransitionView(APIView):
    """POST: parse, call one domain function, answer with the invoice and whether it changed."""

    def run(self, invoice: Invoice, user: Any, data: dict) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @extend_schema(request=TransitionSerializer, responses=InvoiceDetailSerializer)
    def post(self, request: Request, pk: int) -> Response:
        invoice = _invoice(request, pk)
        if isinstance(request.user, ApiKeyUser):
            raise exceptions.PermissionDenied("Invoice status changes need a signed-in person, not an API key.")
        body = TransitionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            changed = self.run(invoice, request.user, body.validated_data)
        except DjangoPermissionDenied as exc:
            raise exceptions.PermissionDenied(str(exc)) from None
        except invoicing.TransitionRefused as exc:
            return Response(error_body("conflict", exc.message), status=409)
        except invoicing.InvoicingError as exc:
            return Response(error_body(exc.code, f"{exc.field}: {exc.message}", {exc.field: [exc.message]}), status=400)
        data = InvoiceDetailSerializer(invoice).data
        data["changed"] = changed
        return Response(data)


class IssueView(_TransitionView):
    def run(self, invoice: Invoice, user: Any, data: dict) -> bool:
        return invoicing.issue_invoice(invoice=invoice, by=user)


class ApproveView(_TransitionView):
    def run(self, invoice: Invoice, user: Any, data: dict) -> bool:
        return invoicing.approve_invoice(invoice=invoice, by=user)


class DisputeView(_TransitionView):
    def run(self, invoice: Invoice, user: Any, data: dict) -> bool:
        return invoicing.dispute_invoice(invoice=invoice, by=user, reason=data.get("reason", ""))


class ResolveView(_TransitionView):
    def run(self, invoice: Invoice, user: Any, data: dict) -> bool:
        if "outcome" not in data:
            raise invoicing.InvoicingError("Say how the dispute ends: credit or no_change.", field="outcome")
        return invoicing.resolve_dispute(
            invoice=invoice,
            by=user,
            outcome=data["outcome"],
            credit_amount=data.get("credit_amount"),
            note=data.get("note", ""),
        )


class FocusExportView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("period", str, required=True), OpenApiParameter("tenant", str)],
        responses={(200, "text/csv"): str},
    )
    def get(self, request: Request) -> HttpResponse:
        period = _period(request, required=True)
        tenant = _export_tenant(request)
        return _csv(exports.focus_csv(tenant=tenant, period=period), f"focus-{tenant.slug}-{period:%Y-%m}.csv")


class GlExportView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("period", str, required=True), OpenApiParameter("tenant", str)],
        responses={(200, "text/csv"): str},
    )
    def get(self, request: Request) -> HttpResponse:
        period = _period(request, required=True)
        tenant = _export_tenant(request)
        return _csv(exports.gl_csv(tenant=tenant, period=period), f"gl-{tenant.slug}-{period:%Y-%m}.csv")
