"""Reporting API: spend, latency and budgets, all read from rollups (never raw events).

Every request is scoped to one tenant (an API key's tenant, or the session user's membership)
and to what the caller may see: finance and admin see every department; managers, employees
and department-bound keys see only their department.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chargeback.auth import ApiKeyUser
from chargeback.budgets import list_budget_statuses
from chargeback.models import Department, Membership, Role, Tenant
from telemetry import rollups


@dataclass(frozen=True)
class Viewer:
    tenant: Tenant
    department_ids: frozenset[int] | None  # None = every department
    user: Any  # the Django user, None for an API key
    role: str  # a Role value, or "key"


def viewer_of(request: Request) -> Viewer:
    if isinstance(request.user, ApiKeyUser):
        key = request.user.key
        depts = frozenset({key.department_id}) if key.department_id else None
        return Viewer(tenant=key.tenant, department_ids=depts, user=None, role="key")
    memberships = Membership.objects.filter(user=request.user).select_related("tenant")
    slug = request.query_params.get("tenant")
    if slug:
        memberships = memberships.filter(tenant__slug=slug)
    found = list(memberships[:2])
    if not found:
        raise PermissionDenied(
            "You are not a member of this tenant." if slug else "You are not a member of any tenant."
        )
    if len(found) > 1:
        raise ValidationError({"tenant": ["You belong to several tenants: name one with ?tenant=<slug>."]})
    m = found[0]
    if m.role in (Role.FINANCE, Role.ADMIN):
        return Viewer(tenant=m.tenant, department_ids=None, user=request.user, role=m.role)
    return Viewer(tenant=m.tenant, department_ids=frozenset({m.department_id}), user=request.user, role=m.role)


def _parse_bound(value: str, name: str, tenant: Tenant) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            day = parse_date(value)
        except ValueError:
            day = None
        if day is None:
            raise ValidationError({name: [f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime."]})
        return datetime(day.year, day.month, day.day, tzinfo=tenant.tz)
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=tenant.tz)


def parse_report_query(request: Request, viewer: Viewer) -> rollups.ReportQuery:
    """start/end (default: this month so far, whole days in the tenant's time zone) and filters."""
    params = request.query_params
    tz = viewer.tenant.tz
    today = timezone.now().astimezone(tz).date()
    first = today.replace(day=1)
    start = (
        _parse_bound(params["start"], "start", viewer.tenant)
        if params.get("start")
        else datetime(first.year, first.month, first.day, tzinfo=tz)
    )
    tomorrow = today + timedelta(days=1)
    end = (
        _parse_bound(params["end"], "end", viewer.tenant)
        if params.get("end")
        else datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz)
    )
    if end <= start:
        raise ValidationError({"end": ["must be after start."]})
    if end - start > timedelta(days=800):
        raise ValidationError({"end": ["the range may span at most 800 days."]})
    departments = viewer.department_ids
    code = params.get("department")
    if code:
        dept = Department.objects.filter(tenant=viewer.tenant, code=code).values_list("pk", flat=True).first()
        if dept is None:
            raise ValidationError({"department": [f"no department {code!r} in this tenant."]})
        if departments is not None and dept not in departments:
            raise PermissionDenied(f"department: you may only see your own department, not {code!r}.")
        departments = frozenset({dept})
    return rollups.ReportQuery(
        tenant=viewer.tenant, start=start, end=end, department_ids=departments,
        provider=params.get("provider", ""), model=params.get("model", ""), feature=params.get("feature", ""),
    )  # fmt: skip


def _report_error(exc: rollups.ReportError) -> ValidationError:
    return ValidationError({exc.field: [exc.message]})


def _paginate(
    view: APIView,
    request: Request,
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
    format_row: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Response:
    """One page of `rows`; `format_row` is applied to that page only (5,000 users, 100 shown)."""
    paginator = LimitOffsetPagination()
    page = paginator.paginate_queryset(rows, request, view=view)
    if format_row is not None:
        page = [format_row(row) for row in page]
    response = paginator.get_paginated_response(page)
    response.data.update(extra)
    return response


def _money(row: dict[str, Any]) -> dict[str, Any]:
    # DRF's encoder would turn Decimal into a float; money stays an exact string.
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}


COMMON_PARAMETERS = [
    OpenApiParameter(
        "start",
        OpenApiTypes.STR,
        description="Date (YYYY-MM-DD, local midnight in the tenant's time zone) or ISO datetime. Default: first day of this month.",
    ),
    OpenApiParameter("end", OpenApiTypes.STR, description="Exclusive; date or ISO datetime. Default: tomorrow."),
    OpenApiParameter("department", OpenApiTypes.STR, description="Department code."),
    OpenApiParameter("provider", OpenApiTypes.STR),
    OpenApiParameter("model", OpenApiTypes.STR, description="Served model."),
    OpenApiParameter("tenant", OpenApiTypes.STR, description="Tenant slug, for session users in several tenants."),
    OpenApiParameter("limit", OpenApiTypes.INT),
    OpenApiParameter("offset", OpenApiTypes.INT),
]

SPEND_ROW = inline_serializer(
    "SpendRow",
    {
        "period": serializers.CharField(allow_null=True, help_text="Local hour, day (YYYY-MM-DD) or month (YYYY-MM)."),
        "group": serializers.CharField(allow_null=True),
        "currency": serializers.CharField(),
        "requests": serializers.IntegerField(),
        "errors": serializers.IntegerField(),
        "unpriced": serializers.IntegerField(),
        "input_tokens": serializers.IntegerField(),
        "cache_read_input_tokens": serializers.IntegerField(),
        "cache_creation_input_tokens": serializers.IntegerField(),
        "output_tokens": serializers.IntegerField(),
        "reasoning_tokens": serializers.IntegerField(),
        "cost": serializers.DecimalField(max_digits=28, decimal_places=10, coerce_to_string=True),
    },
)


def _page_of(name: str, row, **extra) -> serializers.Serializer:
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": row.__class__(many=True) if not isinstance(row, type) else row(many=True),
            **extra,
        },
    )


class SpendView(APIView):
    @extend_schema(
        operation_id="spend",
        summary="Spend from rollups",
        parameters=[
            *COMMON_PARAMETERS,
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description="department, user, provider, model, feature or tag:NAME (NAME one of the rolled-up tag keys).",
            ),
            OpenApiParameter("interval", OpenApiTypes.STR, enum=list(rollups.INTERVALS)),
            OpenApiParameter("feature", OpenApiTypes.STR),
        ],
        responses={
            200: _page_of("SpendPage", SPEND_ROW, start=serializers.DateTimeField(), end=serializers.DateTimeField())
        },
    )
    def get(self, request: Request) -> Response:
        viewer = viewer_of(request)
        query = parse_report_query(request, viewer)
        try:
            rows = rollups.spend(
                query=query,
                group_by=request.query_params.get("group_by") or None,
                interval=request.query_params.get("interval") or None,
            )
        except rollups.ReportError as exc:
            raise _report_error(exc) from exc
        return _paginate(self, request, rows, {"start": query.start.isoformat(), "end": query.end.isoformat()}, _money)


LATENCY_ROW = inline_serializer(
    "LatencyRow",
    {
        "group": serializers.CharField(allow_null=True),
        "requests": serializers.IntegerField(),
        "errors": serializers.IntegerField(),
        "error_rate": serializers.FloatField(allow_null=True),
        "latency_mean_ms": serializers.FloatField(allow_null=True),
        **{f"latency_{n}_ms": serializers.FloatField(allow_null=True) for n, _ in rollups.QUANTILES},
        **{f"ttft_{n}_ms": serializers.FloatField(allow_null=True) for n, _ in rollups.QUANTILES},
    },
)


class LatencyView(APIView):
    @extend_schema(
        operation_id="latency",
        summary="Latency and TTFT percentiles and error rate from rollups",
        description=f"Percentiles come from a log-spaced histogram: within ±{rollups.MAX_RELATIVE_ERROR:.1%} of the exact value below 10 minutes.",
        parameters=[
            *COMMON_PARAMETERS,
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(rollups.LATENCY_GROUPS)),
        ],
        responses={200: _page_of("LatencyPage", LATENCY_ROW)},
    )
    def get(self, request: Request) -> Response:
        viewer = viewer_of(request)
        query = parse_report_query(request, viewer)
        try:
            rows = rollups.latency_percentiles(query=query, group_by=request.query_params.get("group_by") or None)
        except rollups.ReportError as exc:
            raise _report_error(exc) from exc
        return _paginate(self, request, rows, {"start": query.start.isoformat(), "end": query.end.isoformat()})


BUDGET_ROW = inline_serializer(
    "BudgetStatus",
    {
        "id": serializers.IntegerField(),
        "name": serializers.CharField(),
        "scope": serializers.CharField(),
        "department": serializers.CharField(allow_null=True),
        "mode": serializers.CharField(),
        "period": serializers.CharField(),
        "period_start": serializers.DateTimeField(),
        "period_end": serializers.DateTimeField(),
        "currency": serializers.CharField(),
        "spent": serializers.DecimalField(max_digits=28, decimal_places=10, coerce_to_string=True),
        "limit": serializers.DecimalField(max_digits=28, decimal_places=10, coerce_to_string=True),
        "percent": serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True),
        "forecast": serializers.DecimalField(max_digits=28, decimal_places=10, coerce_to_string=True, allow_null=True),
        "run_out_at": serializers.DateTimeField(allow_null=True),
        "state": serializers.ChoiceField(choices=["ok", "warning", "exceeded"]),
    },
)


class BudgetsView(APIView):
    @extend_schema(
        operation_id="budgets",
        summary="Every active budget's current period, spend, forecast and state",
        parameters=[
            OpenApiParameter("tenant", OpenApiTypes.STR),
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("offset", OpenApiTypes.INT),
        ],
        responses={200: _page_of("BudgetPage", BUDGET_ROW)},
    )
    def get(self, request: Request) -> Response:
        viewer = viewer_of(request)
        statuses = list_budget_statuses(tenant=viewer.tenant, department_ids=viewer.department_ids)
        rows = []
        for s in statuses:
            b = s.budget
            rows.append(
                {
                    "id": b.pk, "name": b.name, "scope": b.scope, "department": b.department.code if b.department_id else None,
                    "mode": b.mode, "period": b.period, "period_start": s.bounds.start.isoformat(),
                    "period_end": s.bounds.end.isoformat(), "currency": b.currency, "spent": str(s.spent),
                    "limit": str(b.amount), "percent": str(s.percent),
                    "forecast": str(s.forecast.quantize(Decimal("0.0000000001"))) if s.forecast is not None else None,
                    "run_out_at": s.run_out_at.isoformat() if s.run_out_at else None, "state": s.state,
                }
            )  # fmt: skip
        return _paginate(self, request, rows, {})
