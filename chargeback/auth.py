"""API-key authentication for integrations: `Authorization: Bearer llmo_<prefix>_<secret>`."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from chargeback.models import ApiKey

# last_used_at is written at most once a minute per key, so a hot key does not turn every
# request into an UPDATE.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyUser:
    """The request.user of a key-authenticated request: not a Django user, but authenticated."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.pk = None

    def __str__(self) -> str:
        return f"api-key:{self.key.prefix}"


def authenticate_token(raw: str) -> ApiKey | None:
    key = ApiKey.objects.for_token(raw)
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        token = bearer_token(header)
        if token is None:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <api key>'.")
        key = authenticate_token(token)
        if key is None:
            raise exceptions.AuthenticationFailed("The API key is unknown or has been revoked.")
        return ApiKeyUser(key), key

    def authenticate_header(self, request) -> str:
        return self.keyword


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the Bearer API key in the OpenAPI schema (drf-spectacular)."""

    target_class = ApiKeyAuthentication
    match_subclasses = True
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "llmo_<prefix>_<secret>",
            "description": "An llmobs API key: `Authorization: Bearer llmo_<prefix>_<secret>`.",
        }
