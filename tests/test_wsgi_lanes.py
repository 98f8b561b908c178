"""llmobs/wsgi.py: the ingest paths are answered by a Django handler with only the security
middleware, every other path by the full stack. The same requests through both handlers must
get the same statuses and bodies; the lean one must still send the security headers, and must
never be chosen for any other path."""

from __future__ import annotations

import io
import json
import sys

import pytest
from django.test import override_settings

from chargeback.keys import create_api_key
from llmobs import wsgi
from telemetry import ingest
from telemetry.models import UsageEvent
from tests.factories import ingest_event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_department_cache():
    ingest.clear_department_cache()
    yield
    ingest.clear_department_cache()


def call(handler, path: str, body: bytes = b"", *, token: str | None = None, method: str = "POST", **headers):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        **({"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}),
        **headers,
    }
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"] = int(status.split()[0])
        answer["headers"] = {k.lower(): v for k, v in response_headers}

    chunks = handler(environ, start_response)
    try:
        answer["body"] = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return answer


def event(event_id: str, tokens: int = 10, **extra) -> dict:
    return ingest_event(event_id, tokens=tokens, **extra)


@pytest.fixture
def token(acme, research_dept):
    return create_api_key(tenant=acme, name="lanes")[1]


def both(path: str, make_body, **kwargs) -> tuple[dict, dict]:
    """The lean handler's answer and the full stack's, each for its own copy of the request
    (`make_body(prefix)`: distinct event ids, so neither is the other's duplicate)."""
    return (
        call(wsgi.api_handler, path, make_body("lane"), **kwargs),
        call(wsgi.site_handler, path, make_body("site"), **kwargs),
    )


def test_the_ingest_paths_take_the_lean_handler_and_nothing_else_does():
    assert {"/api/v1/usage-events", "/v1/traces"} == wsgi.API_PATHS
    routed = []
    for path in ["/api/v1/usage-events", "/v1/traces", "/api/v1/usage-events/", "/api/v1/spend", "/healthz", "/"]:
        answer = call(wsgi.application, path, method="GET")
        routed.append((path, "x-frame-options" in answer["headers"]))
    # X-Frame-Options comes from the clickjacking middleware, which only the full stack has.
    assert routed == [
        ("/api/v1/usage-events", False),
        ("/v1/traces", False),
        ("/api/v1/usage-events/", True),
        ("/api/v1/spend", True),
        ("/healthz", True),
        ("/", True),
    ]


def test_accepted_partial_and_refused_answers_match_the_full_stack(token, acme):
    def one(prefix):
        return json.dumps(event(f"{prefix}-1")).encode()

    def mixed(prefix):
        return json.dumps([event(f"{prefix}-2"), event(f"{prefix}-3", timestamp="yesterday")]).encode()

    def resent(prefix):
        return one(prefix)

    cases = {
        "accepted": (one, {}),
        "duplicate": (resent, {}),
        "partial": (mixed, {}),
        "not json": (lambda prefix: b"{nope", {}),
        "bad key": (one, {"token": "llm_nope"}),
        "no key": (one, {"token": None}),
    }
    seen = {}
    for name, (make_body, extra) in cases.items():
        lane, site = both("/api/v1/usage-events", make_body, **{"token": token, **extra})
        assert (lane["status"], json.loads(lane["body"])) == (site["status"], json.loads(site["body"])) or (
            name == "partial"  # the rejected event's id differs by prefix; compare the rest
            and lane["status"] == site["status"] == 207
            and json.loads(lane["body"])["accepted"] == json.loads(site["body"])["accepted"] == 1
        ), name
        for header in ("x-content-type-options", "referrer-policy", "cross-origin-opener-policy"):
            assert lane["headers"].get(header) == site["headers"].get(header), (name, header)
        assert "set-cookie" not in lane["headers"]
        seen[name] = lane["status"]
    assert seen == {
        "accepted": 202,
        "duplicate": 202,
        "partial": 207,
        "not json": 400,
        "bad key": 401,
        "no key": 401,
    }
    assert json.loads(call(wsgi.api_handler, "/api/v1/usage-events", one("lane"), token=token)["body"]) == {
        "accepted": 0,
        "duplicates": 1,
        "rejected": [],
    }
    assert set(UsageEvent.objects.filter(tenant=acme).values_list("event_id", flat=True)) == {
        "lane-1",
        "lane-2",
        "site-1",
        "site-2",
    }


def test_size_and_rate_limits_hold_in_the_lean_handler(acme, research_dept, token):
    limited = create_api_key(tenant=acme, name="one a minute", rpm_limit=1)[1]
    body = json.dumps(event("rl-1")).encode()
    assert call(wsgi.api_handler, "/api/v1/usage-events", body, token=limited)["status"] == 202
    refused = call(wsgi.api_handler, "/api/v1/usage-events", body, token=limited)
    assert refused["status"] == 429 and int(refused["headers"]["retry-after"]) >= 1

    with override_settings(LLMOBS_INGEST_MAX_BODY_BYTES=64):
        big = json.dumps(event("big-1", user="x" * 200)).encode()
        lane, site = (call(h, "/api/v1/usage-events", big, token=token) for h in (wsgi.api_handler, wsgi.site_handler))
    assert lane["status"] == site["status"] == 413
    assert json.loads(lane["body"]) == json.loads(site["body"])


def test_otlp_through_the_lean_handler(token):
    lane, site = both("/v1/traces", lambda prefix: b'{"resourceSpans": []}', token=token)
    assert lane["status"] == site["status"] == 200
    assert json.loads(lane["body"]) == json.loads(site["body"])
    assert lane["headers"]["content-type"] == site["headers"]["content-type"]


@pytest.mark.parametrize(("setting", "frozen"), [(None, True), ("false", False)])
def test_a_server_process_freezes_its_startup_objects(setting, frozen):
    """A full collection of a started process walks ~120k objects with the GIL held (~55 ms, a
    stall of every request in flight); frozen, they are skipped."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LLMOBS_GC_FREEZE"}
    if setting is not None:
        env["LLMOBS_GC_FREEZE"] = setting
    code = "import gc, llmobs.wsgi; print(gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    count = int(out.stdout.split()[-1])
    assert (count > 50_000) if frozen else (count == 0)
