"""Anomaly API: list scored anomalies (role-scoped) and acknowledge one."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chargeback.models import Department, Role
from telemetry import anomalies
from telemetry.api.reporting import viewer_of
from telemetry.models import Anomaly

ANOMALY = inline_serializer(
    "Anomaly",
    {
        "id": serializers.IntegerField(),
        "department": serializers.CharField(allow_null=True),
        "metric": serializers.ChoiceField(choices=Anomaly.Metric.choices),
        "hour": serializers.DateTimeField(),
        "observed": serializers.CharField(),
        "expected": serializers.CharField(),
        "score": serializers.FloatField(),
        "severity": serializers.ChoiceField(choices=Anomaly.Severity.choices),
        "status": serializers.ChoiceField(choices=Anomaly.Status.choices),
        "explanation": serializers.CharField(),
        "details": serializers.JSONField(),
        "acknowledged_by": serializers.CharField(allow_null=True),
        "acknowledged_at": serializers.DateTimeField(allow_null=True),
    },
)


def _row(a: Anomaly) -> dict[str, Any]:
    return {
        "id": a.pk, "department": a.department.code if a.department_id else None, "metric": a.metric,
        "hour": a.hour.isoformat(), "observed": str(a.observed), "expected": str(a.expected), "score": a.score,
        "severity": a.severity, "status": a.status, "explanation": a.explanation, "details": a.details,
        "acknowledged_by": a.acknowledged_by.get_username() if a.acknowledged_by_id else None,
        "acknowledged_at": a.acknowledged_at.isoformat() if a.acknowledged_at else None,
    }  # fmt: skip


def _choice(request: Request, name: str, choices) -> str | None:
    value = request.query_params.get(name)
    if value and value not in choices.values:
        raise ValidationError({name: [f"must be one of {', '.join(choices.values)}."]})
    return value or None


class AnomalyListView(APIView):
    @extend_schema(
        operation_id="anomalies_list",
        summary="Scored anomalies with their explanation",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Anomaly.Status.values),
            OpenApiParameter("severity", OpenApiTypes.STR, enum=Anomaly.Severity.values),
            OpenApiParameter("department", OpenApiTypes.STR, description="Department code."),
            OpenApiParameter("tenant", OpenApiTypes.STR),
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("offset", OpenApiTypes.INT),
        ],
        responses={
            200: inline_serializer(
                "AnomalyPage",
                {"count": serializers.IntegerField(), "next": serializers.URLField(allow_null=True),
                 "previous": serializers.URLField(allow_null=True), "results": ANOMALY.__class__(many=True)},
            )
        },
    )
    def get(self, request: Request) -> Response:
        viewer = viewer_of(request)
        qs = Anomaly.objects.filter(tenant=viewer.tenant).select_related("department", "acknowledged_by")
        if viewer.department_ids is not None:
            qs = qs.filter(department_id__in=viewer.department_ids)
        if status := _choice(request, "status", Anomaly.Status):
            qs = qs.filter(status=status)
        if severity := _choice(request, "severity", Anomaly.Severity):
            qs = qs.filter(severity=severity)
        if code := request.query_params.get("department"):
            dept = Department.objects.filter(tenant=viewer.tenant, code=code).first()
            if dept is None:
                raise ValidationError({"department": [f"no department {code!r} in this tenant."]})
            if viewer.department_ids is not None and dept.pk not in viewer.department_ids:
                raise PermissionDenied(f"department: you may only see your own department, not {code!r}.")
            qs = qs.filter(department=dept)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(qs.order_by("-hour", "-score", "-pk"), request, view=self)
        return paginator.get_paginated_response([_row(a) for a in page])


class AnomalyAckView(APIView):
    @extend_schema(
        operation_id="anomalies_ack",
        summary="Acknowledge an anomaly (managers, finance, admin, or an API key)",
        request=None,
        responses={200: ANOMALY},
    )
    def post(self, request: Request, anomaly_id: int) -> Response:
        viewer = viewer_of(request)
        if viewer.role == Role.EMPLOYEE:
            raise PermissionDenied("Employees cannot acknowledge anomalies.")
        qs = Anomaly.objects.filter(tenant=viewer.tenant)
        if viewer.department_ids is not None:
            qs = qs.filter(department_id__in=viewer.department_ids)
        anomaly = qs.filter(pk=anomaly_id).first()
        if anomaly is None:
            raise NotFound("No such anomaly in your scope.")
        anomaly = anomalies.acknowledge(anomaly=anomaly, user=viewer.user)
        return Response(_row(anomaly))


class AnomalyResolveView(APIView):
    @extend_schema(
        operation_id="anomalies_resolve",
        summary="Resolve an anomaly by hand (managers, finance, admin; a signed-in person)",
        request=None,
        responses={200: ANOMALY},
    )
    def post(self, request: Request, anomaly_id: int) -> Response:
        viewer = viewer_of(request)
        if viewer.role == Role.EMPLOYEE:
            raise PermissionDenied("Employees cannot resolve anomalies.")
        if viewer.user is None:
            raise PermissionDenied("Resolving an anomaly needs a signed-in person, not an API key.")
        qs = Anomaly.objects.filter(tenant=viewer.tenant)
        if viewer.department_ids is not None:
            qs = qs.filter(department_id__in=viewer.department_ids)
        anomaly = qs.filter(pk=anomaly_id).first()
        if anomaly is None:
            raise NotFound("No such anomaly in your scope.")
        anomaly = anomalies.resolve(anomaly=anomaly, user=viewer.user)
        return Response(_row(anomaly))
