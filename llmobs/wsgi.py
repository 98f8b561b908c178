"""WSGI entry point (`llmobs.wsgi:application`, for granian or gunicorn).

Two Django handlers share one process. The machine-to-machine ingest endpoints (`POST
/api/v1/usage-events`, `POST /v1/traces`) are answered by a handler whose middleware is only
what a Bearer-token JSON API uses: security headers. Everything else about them is unchanged:
Django's URL resolver routes them, DRF authenticates, throttles and dispatches, and the
request/response signals (connection management) fire as for any request. The other nine
middleware (static files, sessions, CSRF, the session user, messages, frames, NUL query
parameters, the tenant time zone) serve pages and have nothing to do for these two paths: no
query string, no cookies, no HTML, CSRF-exempt views. Skipping them is ~0.15 ms of the ~1 ms of
Python a single event costs (docs/PERFORMANCE.md "Ingest"). Every other path gets the full
stack (`settings.MIDDLEWARE`). tests/test_wsgi_lanes.py sends the same requests through both.
"""

from __future__ import annotations

import os

import django
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.utils.module_loading import import_string

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

API_PATHS = frozenset({"/api/v1/usage-events", "/v1/traces"})
API_MIDDLEWARE = ("django.middleware.security.SecurityMiddleware",)


class ApiHandler(WSGIHandler):
    """Django's WSGI handler with `API_MIDDLEWARE` instead of `settings.MIDDLEWARE` (synchronous
    middleware only, as all of ours are)."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response)
        for path in reversed(API_MIDDLEWARE):
            instance = import_string(path)(handler)
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler


django.setup(set_prefix=False)
site_handler = WSGIHandler()
api_handler = ApiHandler()


def application(environ, start_response):
    handler = api_handler if environ.get("PATH_INFO") in API_PATHS else site_handler
    return handler(environ, start_response)


def _freeze_startup_objects() -> None:
    """Move what the process built to start (modules, settings, models, the URL tree: ~120k
    objects) out of the cyclic collector's reach. A full collection walks every tracked object
    with the GIL held, ~55 ms here, and stalls every request of the process meanwhile; frozen,
    it walks only what was made since. `LLMOBS_GC_FREEZE=false` turns it off."""
    if os.environ.get("LLMOBS_GC_FREEZE", "true").lower() in ("0", "false", "no", "off"):
        return
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - built now, so frozen with the rest
    gc.collect()  # what is garbage already is freed, not kept forever
    gc.freeze()


_freeze_startup_objects()
