"""Quality API: `POST /api/v1/feedback` and `GET /api/v1/evals/summary` (docs/EVALS.md).

Scoped like the reporting API: one tenant (the key's, or the session user's membership), and
managers, employees and department-bound keys only see their department; employees give
feedback only on their own calls. An event the caller may not see is a 404, exactly like an
unknown one, so ids of other tenants or departments do not leak.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chargeback.models import Role
from telemetry import evals
from telemetry.api.reporting import COMMON_PARAMETERS, parse_report_query, viewer_of
from telemetry.models import Feedback


def _text(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError({name: ["must be text."]})
    if len(value) > limit:
        raise ValidationError({name: [f"must be at most {limit} characters."]})
    return value


def parse_feedback(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError({"body": ["must be a JSON object."]})
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > 128:
        raise ValidationError({"event_id": ["is required: the event id of the call (at most 128 characters)."]})
    thumbs = data.get("thumbs")
    if thumbs is not None and thumbs not in Feedback.Thumbs.values:
        raise ValidationError({"thumbs": ["must be 'up' or 'down'."]})
    rating = data.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
        raise ValidationError({"rating": ["must be an integer from 1 to 5."]})
    signals = data.get("signals", [])
    if isinstance(signals, str):
        signals = [signals]
    if not isinstance(signals, list) or any(s not in evals.SIGNALS for s in signals):
        raise ValidationError({"signals": [f"must be a list of: {', '.join(evals.SIGNALS)}."]})
    reason, comment = _text(data, "reason", 200), _text(data, "comment", 4000)
    if thumbs is None and rating is None and not signals and reason is None and comment is None:
        raise ValidationError({"thumbs": ["give thumbs, rating, signals, reason or comment."]})
    return {
        "event_id": event_id,
        "thumbs": thumbs,
        "rating": rating,
        "signals": signals,
        "reason": reason,
        "comment": comment,
    }


def feedback_body(row: Feedback) -> dict[str, Any]:
    return {
        "id": row.pk,
        "event_id": row.event_id,
        "thumbs": row.thumbs or None,
        "rating": row.rating,
        "signals": [s for s in evals.SIGNALS if getattr(row, s)],
        "reason": row.reason,
        "comment": row.comment,
        "updated_at": row.updated_at.isoformat(),
    }


FEEDBACK_REQUEST = inline_serializer(
    "FeedbackRequest",
    {
        "event_id": serializers.CharField(),
        "thumbs": serializers.ChoiceField(choices=["up", "down"], required=False),
        "rating": serializers.IntegerField(min_value=1, max_value=5, required=False),
        "signals": serializers.ListField(child=serializers.ChoiceField(choices=list(evals.SIGNALS)), required=False),
        "reason": serializers.CharField(required=False, max_length=200),
        "comment": serializers.CharField(required=False),
    },
)


class FeedbackView(APIView):
    @extend_schema(
        request=FEEDBACK_REQUEST,
        responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT},
        description="Thumbs, a 1-5 rating and/or implicit signals on one call; one per user per event, updated on resend.",
    )
    def post(self, request: Request) -> Response:
        viewer = viewer_of(request)
        fields = parse_feedback(request.data)
        if viewer.user is not None:
            author, user = f"user:{viewer.user.pk}", viewer.user
        else:
            key = request.user.key
            author, user = (f"user:{key.user_id}", key.user) if key.user_id else (f"key:{key.prefix}", None)
        own = viewer.user.get_username() if viewer.user is not None and viewer.role == Role.EMPLOYEE else None
        try:
            row, created = evals.record_feedback(
                tenant=viewer.tenant,
                author=author,
                user=user,
                visible_department_ids=viewer.department_ids,
                own_user_ref=own,
                **fields,
            )
        except evals.FeedbackError as exc:
            raise NotFound(f"{exc.field}: {exc.message}") from exc
        return Response(feedback_body(row), status=201 if created else 200)


class EvalSummaryView(APIView):
    @extend_schema(
        parameters=[*COMMON_PARAMETERS, OpenApiParameter("department", OpenApiTypes.STR)],
        responses={200: OpenApiTypes.OBJECT},
        description="Pass rate, mean score (0-1), faithfulness and satisfaction, overall and by department, "
        "model, feature, config and day. `total` is null when there is no data.",
    )
    def get(self, request: Request) -> Response:
        viewer = viewer_of(request)
        query = parse_report_query(request, viewer)
        summary = evals.quality_summary(
            tenant=viewer.tenant, start=query.start, end=query.end, department_ids=query.department_ids
        )
        if summary is None:
            summary = {
                "start": query.start.isoformat(),
                "end": query.end.isoformat(),
                "total": None,
                **{f"by_{name}": [] for name in ("department", "model", "feature", "config", "day")},
            }
        return Response(summary)
