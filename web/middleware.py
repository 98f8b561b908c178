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
