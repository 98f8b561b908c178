"""One error shape for the whole API: a stable machine-readable `code` and a human `message`
naming the field and the problem, plus per-field `errors` where there are several."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if errors:
        body["error"]["errors"] = errors
    return body


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list) and detail and all(not isinstance(d, (dict, list)) for d in detail):
        return {prefix or "non_field_errors": [str(d) for d in detail]}
    if isinstance(detail, list):
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


CODES = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "malformed",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.Throttled: "rate_limited",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
}


# Seconds a client should wait before retrying when the database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 5


def database_gone_errors() -> tuple[type[Exception], ...]:
    # Django wraps driver errors raised through its cursors; COPY goes through psycopg directly.
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the embedded default may run without it
        return (OperationalError, InterfaceError)
    return (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, database_gone_errors()):
        # The database went away (restart, failover, a killed backend): nothing of the request
        # was committed (every write is one transaction), so the client may resend it as is;
        # event ids make a resend safe. Say so, instead of a generic 500.
        logger.warning(
            "Database unavailable during %s: %s", context.get("request").path if context.get("request") else "?", exc
        )
        return Response(
            error_body(
                "database_unavailable",
                "The database is unavailable right now; the request was not completed. Retry it shortly "
                "(a resent usage event is never counted twice).",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        field, messages = next(iter(errors.items()))
        message = f"{field}: {messages[0]}" if field != "non_field_errors" else messages[0]
        response.data = error_body(code, message, errors)
    else:
        detail = getattr(exc, "detail", str(exc))
        response.data = error_body(code, str(detail))
    return response


def json_error(code: str, message: str, status_code: int, **extra: Any) -> JsonResponse:
    body = error_body(code, message)
    body["error"].update(extra)
    return JsonResponse(body, status=status_code)


def handler404(request, exception=None):
    return json_error("not_found", "No such URL.", status.HTTP_404_NOT_FOUND)
