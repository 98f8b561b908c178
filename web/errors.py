"""Error pages: JSON for the API and the gateway (`/api/`, `/v1/`, as clients there parse
JSON), HTML in the layout for people."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader

from llmobs import errors as api_errors
from llmobs.errors import json_error

API_PREFIXES = ("/api/", "/v1/")


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else "You do not have access to this page."
    if _is_api(request):
        return json_error("forbidden", message, 403)
    return render(request, "403.html", {"message": message}, status=403)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return api_errors.handler404(request, exception)
    return render(request, "404.html", status=404)


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return json_error("server_error", "Something went wrong on our side; it has been logged.", 500)
    # No request context: the failure may be in the database or a context processor.
    return HttpResponse(loader.get_template("500.html").render(), status=500)


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    """A 400 outside any view: JSON for API clients, the layout's error page for people."""
    if _is_api(request):
        return json_error("invalid_request", message, 400)
    return render(request, "web/bad_request.html", {"title": "Bad request", "message": message}, status=400)
