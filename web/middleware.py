"""Show times in the tenant's time zone: for a signed-in user with a membership, activate the
current tenant's zone for the request (templates and forms convert aware datetimes to it)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from web.access import current_membership


class TenantTimezoneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # API-key requests are not authenticated yet at this point (DRF does it in the view),
        # and a request without a session cookie costs no query here.
        user = getattr(request, "user", None)
        membership = current_membership(request) if user is not None and user.is_authenticated else None
        if membership is None:
            return self.get_response(request)
        timezone.activate(membership.tenant.tz)
        try:
            return self.get_response(request)
        finally:
            # The active zone is thread-local: never let it leak into the next request.
            timezone.deactivate()


class RejectNulMiddleware:
    """PostgreSQL text cannot hold a NUL character, so a query parameter carrying one would fail
    deep in a query as a 500. Refuse it up front with a 400 naming the parameter (JSON under
    /api/ and /v1/, a page elsewhere). JSON bodies are validated field by field by their views."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        bad = next(
            (key for key, values in request.GET.lists() if "\x00" in key or any("\x00" in v for v in values)),
            None,
        )
        if bad is None and "\x00" not in request.path:
            return self.get_response(request)
        from web.errors import bad_request

        where = "the URL" if bad is None else f"the query parameter {bad.replace(chr(0), '')!r}"
        return bad_request(request, f"{where[0].upper()}{where[1:]} contains a NUL character.")
