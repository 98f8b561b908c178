"""Tenant isolation matrix: every URL of the project × every kind of caller of tenant A, aimed at
the objects of tenant B.

The URL configuration is enumerated (recursively, with namespaces). Every named URL must have a
case in CASES or be on the ALLOWLIST (admin, schema/docs, health, login/logout); a new endpoint
added without a case fails `test_every_url_has_an_isolation_case`, naming it. Each case builds
one or more requests from B's objects (its invoice, anomaly, budget, event ids, department
code, route alias, tenant slug/id) and says what a refusal looks like:

- `REFUSE`: the answer must be 401/403/404 (or 302 to the login page for anonymous page views);
- `SCOPED`: a list/report/ingest whose answer may be 2xx/4xx but is about A only.

For every answer: no 5xx, none of B's identifying strings in the body (department name and
code, event ids, invoice number, budget name, anomaly explanation, route alias, tenant name and
slug) unless the caller itself sent that string, no B numeric id in an error message, and B's
rows unchanged afterwards (invoice status, anomaly status, budget amount, B's event count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver

from chargeback.keys import create_api_key
from chargeback.models import Alert, AlertKind, Budget, Department, Invoice, Role, Route, Severity, Tenant
from telemetry.models import Anomaly, EvalConfig, EvalScore, Feedback, UsageEvent
from tests.factories import make_budget, make_member, make_route, make_usage_event

REFUSE = "refuse"
SCOPED = "scoped"

# URL names that are not tenant data: the Django admin is superuser-only (its own tests), the
# schema/docs describe the API without data, health probes and login/logout carry no tenant data.
ALLOWLIST_NAMESPACES = {"admin"}
ALLOWLIST = {
    "healthz",
    "readyz",
    "schema",
    "api-docs",
    "api-redoc",
    "web:login",
    "admin-login",
    "web:logout",
}


# --- URL enumeration --------------------------------------------------------------------------------


def iter_url_names(
    resolver: URLResolver | None = None, namespace: str = "", prefix: str = ""
) -> Iterator[tuple[str, str]]:
    """(qualified name or '<unnamed …>', route) for every pattern, recursively."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            ns = entry.namespace
            child_ns = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
            yield from iter_url_names(entry, child_ns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            route = prefix + str(entry.pattern)
            if entry.name:
                yield (f"{namespace}:{entry.name}" if namespace else entry.name), route
            else:
                yield f"<unnamed {route}>", route


def _allowlisted(name: str, route: str = "") -> bool:
    # The admin registers unnamed catch-all/object routes: allowlisted by its prefix.
    return name in ALLOWLIST or name.split(":", 1)[0] in ALLOWLIST_NAMESPACES or route.startswith("admin/")


# --- Tenant B's world --------------------------------------------------------------------------------


@dataclass
class World:
    a: Tenant
    a_dept: Department
    b: Tenant
    b_dept: Department
    b_invoice: Invoice
    b_anomaly: Anomaly
    b_budget: Budget
    b_route: Route
    b_event_ids: list[str]
    a_key_token: str
    a_users: dict[str, Any]
    secrets: list[str] = field(default_factory=list)
    b_numeric_ids: list[int] = field(default_factory=list)


def build_world() -> World:
    a = Tenant.objects.create(name="Alpha Holdings", slug="alpha")
    a_dept = Department.objects.create(tenant=a, code="ops", name="Operations")
    make_route(tenant=a, alias="alpha-chat", provider=Route.Provider.DEMO, upstream_model="demo-1")
    users = {
        Role.EMPLOYEE: make_member(tenant=a, username="a-employee", role=Role.EMPLOYEE, department=a_dept),
        Role.MANAGER: make_member(tenant=a, username="a-manager", role=Role.MANAGER, department=a_dept),
        Role.FINANCE: make_member(tenant=a, username="a-finance", role=Role.FINANCE),
        Role.ADMIN: make_member(tenant=a, username="a-admin", role=Role.ADMIN),
    }
    _, a_token = create_api_key(tenant=a, name="alpha integration")

    b = Tenant.objects.create(name="Zebulon Secretco", slug="zebulon-secretco", timezone="America/New_York")
    b_dept = Department.objects.create(tenant=b, code="zq-skunkworks", name="Zebulon Skunkworks Division")
    make_member(tenant=b, username="b-finance", role=Role.FINANCE)
    event_ids = [f"zebulon-evt-{n:04d}-confidential" for n in range(3)]
    for event_id in event_ids:
        make_usage_event(
            tenant=b,
            department=b_dept,
            event_id=event_id,
            user_ref="zebulon-ceo@secretco",
            occurred_at=datetime(2026, 10, 5, 12, tzinfo=UTC),
            cost=Decimal("12.345678"),
        )
    budget = make_budget(tenant=b, department=b_dept, name="Zebulon Moonshot Budget", amount=Decimal("777777.00"))
    route = make_route(tenant=b, alias="zebulon-private-model", provider=Route.Provider.DEMO, upstream_model="demo-1")
    invoice = Invoice.objects.create(
        tenant=b,
        department=b_dept,
        period=date(2026, 10, 1),
        period_start=datetime(2026, 10, 1, 4, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, 4, tzinfo=UTC),
        currency="USD",
        status=Invoice.Status.ISSUED,
        number="ZEBULON-2026-0042",
        total=Decimal("37.04"),
        notes="zebulon invoice note",
    )
    anomaly = Anomaly.objects.create(
        tenant=b,
        department=b_dept,
        metric=Anomaly.Metric.values[0],
        hour=datetime(2026, 10, 5, 12, tzinfo=UTC),
        observed=Decimal("99"),
        expected=Decimal("1"),
        score=12.5,
        severity=Anomaly.Severity.values[-1],
        explanation="zebulon spend spike explanation",
    )
    config = EvalConfig.objects.create(tenant=b, name="zebulon-secret-rubric", judge_route=route, criteria="c")
    EvalScore.objects.create(
        tenant=b, config=config, event_id=event_ids[0], event_at=datetime(2026, 10, 5, 12, tzinfo=UTC),
        department=b_dept, department_code=b_dept.code, model="zebulon-model-x", feature="zebulon-feature",
        kind="rubric", status="ok", passed=True, normalized=1.0,
    )  # fmt: skip
    Feedback.objects.create(
        tenant=b, event_id=event_ids[0], author="user:999999", event_at=datetime(2026, 10, 5, 12, tzinfo=UTC),
        department=b_dept, department_code=b_dept.code, model="zebulon-model-x", feature="zebulon-feature", thumbs="up",
    )  # fmt: skip
    Alert.objects.create(
        tenant=b, kind=AlertKind.BUDGET_THRESHOLD, severity=Severity.CRITICAL, key=f"budget:{budget.pk}:x:100",
        title="Zebulon alert headline", text="zebulon alert body", runbook="budget-threshold",
        first_fired_at=datetime(2026, 10, 5, 12, tzinfo=UTC), last_fired_at=datetime(2026, 10, 5, 12, tzinfo=UTC),
    )  # fmt: skip
    secrets = [
        b.name, b.slug, b_dept.code, b_dept.name, *event_ids, "zebulon-ceo@secretco", budget.name,
        route.alias, invoice.number, invoice.notes, anomaly.explanation, "777777", config.name,
        "Zebulon alert headline", "zebulon alert body",
        "zebulon-model-x", "zebulon-feature",
    ]  # fmt: skip
    return World(
        a=a, a_dept=a_dept, b=b, b_dept=b_dept, b_invoice=invoice, b_anomaly=anomaly, b_budget=budget,
        b_route=route, b_event_ids=event_ids, a_key_token=a_token, a_users=users, secrets=secrets,
        b_numeric_ids=[invoice.pk, anomaly.pk, budget.pk, b.pk, b_dept.pk],
    )  # fmt: skip


def b_state(w: World) -> tuple:
    """Everything a cross-tenant write could change on B's side."""
    w.b_invoice.refresh_from_db()
    w.b_anomaly.refresh_from_db()
    w.b_budget.refresh_from_db()
    return (
        w.b_invoice.status,
        w.b_invoice.total,
        w.b_invoice.dispute_reason,
        w.b_anomaly.status,
        w.b_anomaly.acknowledged_by_id,
        w.b_budget.amount,
        UsageEvent.objects.filter(tenant=w.b).count(),
        sorted(UsageEvent.objects.filter(tenant=w.b).values_list("event_id", flat=True)),
        Feedback.objects.filter(tenant=w.b).count(),
        sorted(Alert.objects.filter(tenant=w.b).values_list("state", "occurrences")),
    )


# --- Cases ---------------------------------------------------------------------------------------------


@dataclass
class Req:
    method: str
    path: str
    expect: str
    data: Any = None
    content_type: str = "application/json"
    settings: dict = field(default_factory=dict)
    # What an API key of A must get when it differs (a key's tenant is fixed, so `?tenant=<B>`
    # is ignored and the answer is A's own data).
    key_expect: str | None = None


def _q(**params: Any) -> str:
    from urllib.parse import urlencode

    return "?" + urlencode(params)


def _report_queries(w: World, base: str) -> list[Req]:
    return [
        Req("GET", base, SCOPED),
        Req("GET", base + _q(tenant=w.b.slug), REFUSE, key_expect=SCOPED),
        Req("GET", base + _q(department=w.b_dept.code), SCOPED),
        Req("GET", base + _q(department=w.b_dept.code, start="2026-10-01", end="2026-11-01"), SCOPED),
    ]


def _invoice_action(name: str) -> Callable[[World], list[Req]]:
    def build(w: World) -> list[Req]:
        body = {"reason": "cross-tenant", "outcome": "upheld", "note": "x"}
        return [Req("POST", f"/api/v1/invoices/{w.b_invoice.pk}/{name}", REFUSE, data=body)]

    return build


def _ingest(w: World) -> list[Req]:
    event = {
        "event_id": w.b_event_ids[0],  # B's id: must be a new event for A, never "duplicate"
        "timestamp": "2026-10-05T12:00:00Z",
        "department": w.b_dept.code,  # B's department code: unknown in A
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    own = {**event, "department": w.a_dept.code}
    return [
        Req("POST", "/api/v1/usage-events", SCOPED, data=event),
        Req("POST", "/api/v1/usage-events", SCOPED, data=own),
        Req("GET", "/api/v1/usage-events", SCOPED),
    ]


def _otlp(w: World) -> list[Req]:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "llmobs.department", "value": {"stringValue": w.b_dept.code}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0" * 31 + "1",
                                "spanId": "0" * 15 + "1",
                                "name": "chat",
                                "startTimeUnixNano": "1791201600000000000",
                                "endTimeUnixNano": "1791201601000000000",
                                "attributes": [
                                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                                    {"key": "gen_ai.response.model", "value": {"stringValue": "gpt-4o"}},
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "3"}},
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    return [Req("POST", "/v1/traces", SCOPED, data=body)]


def _gateway(w: World) -> list[Req]:
    body = {"model": w.b_route.alias, "messages": [{"role": "user", "content": "hi"}]}
    return [Req("POST", "/v1/chat/completions", REFUSE, data=body)]


def _chat(w: World) -> list[Req]:
    body = {"route": w.b_route.alias, "messages": [{"role": "user", "content": "hi"}]}
    return [Req("POST", "/api/chat", REFUSE, data=body)]


def _metrics(w: World) -> list[Req]:
    # Labels carry tenant slugs and department codes: with a scrape token configured (required
    # in production, see docs/RELIABILITY.md), no tenant credential opens it.
    return [Req("GET", "/metrics", REFUSE, settings={"LLMOBS_METRICS_TOKEN": "scrape-secret-123"})]


CASES: dict[str, Callable[[World], list[Req]]] = {
    # Ingest and gateway: A's credentials, B's identifiers.
    "usage-events": _ingest,
    "otlp-traces": _otlp,
    "gateway-chat-completions": _gateway,
    "chat": _chat,
    "metrics": _metrics,
    # Reporting
    "api-spend": lambda w: _report_queries(w, "/api/v1/spend"),
    "api-latency": lambda w: _report_queries(w, "/api/v1/latency"),
    "api-budgets": lambda w: _report_queries(w, "/api/v1/budgets"),
    "api-anomalies": lambda w: _report_queries(w, "/api/v1/anomalies"),
    "api-anomaly-ack": lambda w: [Req("POST", f"/api/v1/anomalies/{w.b_anomaly.pk}/ack", REFUSE, data={})],
    # Invoicing
    "invoice-list": lambda w: [
        Req("GET", "/api/v1/invoices", SCOPED),
        Req("GET", "/api/v1/invoices" + _q(department=w.b_dept.code, period="2026-10"), SCOPED),
    ],
    "invoice-detail": lambda w: [Req("GET", f"/api/v1/invoices/{w.b_invoice.pk}", REFUSE)],
    "invoice-csv": lambda w: [Req("GET", f"/api/v1/invoices/{w.b_invoice.pk}/csv", REFUSE)],
    "invoice-pdf": lambda w: [Req("GET", f"/api/v1/invoices/{w.b_invoice.pk}/pdf", REFUSE)],
    "invoice-issue": _invoice_action("issue"),
    "invoice-approve": _invoice_action("approve"),
    "invoice-dispute": _invoice_action("dispute"),
    "invoice-resolve": _invoice_action("resolve"),
    "export-focus": lambda w: [
        Req("GET", "/api/v1/exports/focus" + _q(period="2026-10"), SCOPED),
        Req("GET", "/api/v1/exports/focus" + _q(period="2026-10", tenant=w.b.slug), REFUSE, key_expect=SCOPED),
    ],
    "export-gl": lambda w: [
        Req("GET", "/api/v1/exports/gl" + _q(period="2026-10"), SCOPED),
        Req("GET", "/api/v1/exports/gl" + _q(period="2026-10", tenant=w.b.slug), REFUSE, key_expect=SCOPED),
    ],
    # Pages
    "web:home": lambda w: [Req("GET", "/", SCOPED)],
    "web:switch-tenant": lambda w: [
        Req("POST", "/tenant/", REFUSE, data=f"tenant={w.b.pk}", content_type="application/x-www-form-urlencoded")
    ],
    "web:my-usage": lambda w: [Req("GET", "/me/usage/", SCOPED)],
    "web:budgets": lambda w: [
        Req("GET", "/budgets/", SCOPED),
        Req("GET", "/budgets/" + _q(department=w.b_dept.code), SCOPED),
    ],
    "web:budget-detail": lambda w: [Req("GET", f"/budgets/{w.b_budget.pk}/", REFUSE)],
    "web:chat": lambda w: [Req("GET", "/chat/", SCOPED)],
    "web:overview": lambda w: [
        Req("GET", "/overview/", SCOPED),
        Req("GET", "/overview/" + _q(department=w.b_dept.code), SCOPED),
    ],
    "web:departments": lambda w: [Req("GET", "/departments/", SCOPED)],
    "web:my-department": lambda w: [Req("GET", "/my-department/", SCOPED)],
    "web:department-detail": lambda w: [Req("GET", f"/departments/{w.b_dept.code}/", REFUSE)],
    "web:invoices": lambda w: [
        Req("GET", "/invoices/", SCOPED),
        Req("GET", "/invoices/" + _q(department=w.b_dept.code), SCOPED),
    ],
    "web:export-focus": lambda w: [Req("GET", "/invoices/exports/focus/" + _q(period="2026-10"), SCOPED)],
    "web:export-gl": lambda w: [Req("GET", "/invoices/exports/gl/" + _q(period="2026-10"), SCOPED)],
    "web:invoice-detail": lambda w: [Req("GET", f"/invoices/{w.b_invoice.pk}/", REFUSE)],
    "web:invoice-csv": lambda w: [Req("GET", f"/invoices/{w.b_invoice.pk}/csv/", REFUSE)],
    "web:invoice-pdf": lambda w: [Req("GET", f"/invoices/{w.b_invoice.pk}/pdf/", REFUSE)],
    **{
        f"web:invoice-{action}": (
            lambda w, action=action: [
                Req(
                    "POST",
                    f"/invoices/{w.b_invoice.pk}/{action}/",
                    REFUSE,
                    data="reason=cross-tenant&outcome=upheld&note=x",
                    content_type="application/x-www-form-urlencoded",
                )
            ]
        )
        for action in ("issue", "approve", "dispute", "resolve")
    },
    "web:anomalies": lambda w: [Req("GET", "/anomalies/", SCOPED)],
    "web:anomaly-ack": lambda w: [
        Req(
            "POST",
            f"/anomalies/{w.b_anomaly.pk}/ack/",
            REFUSE,
            data="",
            content_type="application/x-www-form-urlencoded",
        )
    ],
    "web:anomaly-resolve": lambda w: [
        Req(
            "POST",
            f"/anomalies/{w.b_anomaly.pk}/resolve/",
            REFUSE,
            data="",
            content_type="application/x-www-form-urlencoded",
        )
    ],
    "web:reports": lambda w: [Req("GET", "/reports/", SCOPED)],
    "web:report-detail": lambda w: [
        Req("GET", "/reports/week/2026-10-05/", SCOPED),
        Req("GET", "/reports/month/2026-10-01/" + _q(department=w.b_dept.code), REFUSE),
    ],
    "web:report-pdf": lambda w: [Req("GET", "/reports/month/2026-10-01/pdf/" + _q(department=w.b_dept.code), REFUSE)],
    "api-anomaly-resolve": lambda w: [Req("POST", f"/api/v1/anomalies/{w.b_anomaly.pk}/resolve", REFUSE, data={})],
    # Feedback on B's call: the event id is unknown in A, so a 404 exactly like a made-up one.
    # (Not b_event_ids[0]: the ingest case above legitimately stores an A event with that id.)
    "api-feedback": lambda w: [
        Req("POST", "/api/v1/feedback", REFUSE, data={"event_id": w.b_event_ids[2], "thumbs": "down"}),
        Req("POST", "/api/v1/feedback", REFUSE, data={"event_id": w.b_event_ids[1], "signals": ["regenerated"]}),
    ],
    "api-evals-summary": lambda w: _report_queries(w, "/api/v1/evals/summary"),
    "web:alerts": lambda w: [
        Req("GET", "/alerts/", SCOPED),
        Req("GET", "/alerts/" + _q(state="all"), SCOPED),
        Req("GET", "/alerts/" + _q(state="all", kind="budget_threshold", severity="critical"), SCOPED),
    ],
    "web:quality": lambda w: [
        Req("GET", "/quality/", SCOPED),
        Req("GET", "/quality/" + _q(department=w.b_dept.code, start="2026-10-01", end="2026-10-31"), SCOPED),
        Req("GET", "/quality/" + _q(start="2026-10-01", end="2026-10-31"), SCOPED),
    ],
}


# --- Callers --------------------------------------------------------------------------------------------

CALLERS = ["anonymous", Role.EMPLOYEE, Role.MANAGER, Role.FINANCE, Role.ADMIN, "api_key"]


def _client(w: World, caller: str) -> tuple[Client, dict]:
    client = Client(enforce_csrf_checks=False)
    headers: dict[str, str] = {}
    if caller == "api_key":
        headers["HTTP_AUTHORIZATION"] = f"Bearer {w.a_key_token}"
    elif caller != "anonymous":
        client.force_login(w.a_users[caller])
    return client, headers


def _send(client: Client, req: Req, headers: dict) -> Any:
    data = req.data
    if data is not None and req.content_type == "application/json":
        data = json.dumps(data)
    call = getattr(client, req.method.lower())
    if req.method == "GET":
        return call(req.path, **headers)
    return call(req.path, data=data if data is not None else "", content_type=req.content_type, **headers)


def _body_text(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def _error_message(text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return json.dumps(payload["error"])
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return ""


def check(w: World, caller: str, name: str, req: Req) -> list[str]:
    """Problems found for one request (empty = isolated)."""
    problems = []
    client, headers = _client(w, caller)
    before = b_state(w)
    with override_settings(**req.settings):
        response = _send(client, req, headers)
    text = _body_text(response)
    where = f"{name} {req.method} {req.path} as {caller}"
    status = response.status_code
    if status >= 500:
        problems.append(f"{where}: {status}")
    expect = req.key_expect if caller == "api_key" and req.key_expect else req.expect
    if expect == REFUSE:
        # Pages take sessions only: without one (anonymous, or an API key) they send you to login.
        refused = status in (401, 403, 404) or (
            caller in ("anonymous", "api_key") and status == 302 and "/login/" in response.get("Location", "")
        )
        if not refused:
            problems.append(f"{where}: expected a refusal (401/403/404), got {status}")
    sent = req.path + json.dumps(req.data or "")
    for secret in w.secrets:
        if secret in text and secret not in sent:
            problems.append(f"{where}: body contains tenant B's {secret!r}")
    message = _error_message(text)
    for number in w.b_numeric_ids:
        if number > 9 and re.search(rf"\b{number}\b", message):
            problems.append(f"{where}: error message echoes B's id {number}")
    if name == "usage-events" and req.method == "POST" and status < 300 and '"duplicates": 1' in text.replace(" ", ""):
        problems.append(f"{where}: B's event id reported as a duplicate for A")
    if b_state(w) != before:
        problems.append(f"{where}: tenant B's rows changed")
    return problems


# --- Tests ---------------------------------------------------------------------------------------------


def test_every_url_has_an_isolation_case():
    missing = [
        f"{name} ({route})" for name, route in iter_url_names() if not _allowlisted(name, route) and name not in CASES
    ]
    assert not missing, (
        "These URLs have no tenant-isolation case in tests/test_isolation_matrix.py CASES "
        "(add one, or allowlist it with a reason): " + ", ".join(missing)
    )


def test_cases_name_existing_urls():
    names = {name for name, _ in iter_url_names()}
    stale = sorted(set(CASES) - names)
    assert not stale, f"CASES for URL names that no longer exist: {stale}"


@pytest.mark.django_db
@pytest.mark.parametrize("caller", CALLERS)
def test_tenant_a_cannot_reach_tenant_b(caller, settings):
    settings.LLMOBS_METRICS_TOKEN = ""
    w = build_world()
    problems: list[str] = []
    for name, route in iter_url_names():
        if _allowlisted(name, route) or name not in CASES:
            continue
        for req in CASES[name](w):
            problems += check(w, caller, name, req)
    assert not problems, "\n".join(problems)


@pytest.mark.django_db
def test_matrix_catches_a_leak():
    """The checker itself: a request that does return B's data must be reported."""
    w = build_world()
    w.b_users_finance = None
    from django.contrib.auth import get_user_model

    b_finance = get_user_model().objects.get(username="b-finance")
    client = Client()
    client.force_login(b_finance)
    response = client.get(f"/api/v1/invoices/{w.b_invoice.pk}")
    assert response.status_code == 200 and w.b_invoice.number in response.content.decode()
    # Pretend A's finance user got that answer: check() must flag it.
    w.a_users[Role.FINANCE] = b_finance
    problems = check(w, Role.FINANCE, "invoice-detail", Req("GET", f"/api/v1/invoices/{w.b_invoice.pk}", REFUSE))
    assert any("expected a refusal" in p for p in problems)
    assert any("ZEBULON-2026-0042" in p for p in problems)
