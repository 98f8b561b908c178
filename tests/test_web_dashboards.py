"""Overview and Department pages: who may open them, filters that stay in the URL and are
validated, and the exact numbers they show against the rollups and the raw events. No
dashboard number reads raw events (only the department's paginated recent calls do)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chargeback.models import Department, Role
from chargeback.money import format_money
from telemetry import rollups
from telemetry.models import Anomaly, UsageEvent
from tests.factories import make_budget, make_member, make_usage_event, roll_up_everything
from web import dashboards
from web.filters import DateRange

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # 13:00 in Paris


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def frozen_now(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


@pytest.fixture
def people(finance_user, admin_user_acme, manager_user, employee_user):
    return {Role.FINANCE: finance_user, Role.ADMIN: admin_user_acme, Role.MANAGER: manager_user, Role.EMPLOYEE: employee_user}


@pytest.fixture
def usage(acme, research_dept, sales_dept, other_tenant, other_dept):
    """March (this month) and February usage at Acme, and a Globex event that must never show."""
    rows = [
        # dept, user, model, feature, cost, currency, status, latency, at
        (research_dept, "emil", "gpt-4o", "chat", "10.25", "USD", "ok", 100, datetime(2026, 3, 10, 9, tzinfo=UTC)),
        (research_dept, "morgan", "gpt-4o-mini", "search", "4.50", "USD", "error", 300, datetime(2026, 3, 12, 9, tzinfo=UTC)),
        (sales_dept, "sid", "gpt-4o", "chat", "3.00", "USD", "ok", 1000, datetime(2026, 3, 11, 9, tzinfo=UTC)),
        (sales_dept, "sid", "mistral-small", "chat", "2.00", "EUR", "ok", 800, datetime(2026, 3, 11, 10, tzinfo=UTC)),
        (research_dept, "emil", "ft:custom", "chat", None, "USD", "ok", 200, datetime(2026, 3, 13, 9, tzinfo=UTC)),
        # February: up to the 15th counts for "versus last month", the 20th does not.
        (research_dept, "emil", "gpt-4o", "chat", "6.00", "USD", "ok", 100, datetime(2026, 2, 10, 9, tzinfo=UTC)),
        (sales_dept, "sid", "gpt-4o", "chat", "2.00", "USD", "ok", 100, datetime(2026, 2, 14, 9, tzinfo=UTC)),
        (research_dept, "emil", "gpt-4o", "chat", "50.00", "USD", "ok", 100, datetime(2026, 2, 20, 9, tzinfo=UTC)),
    ]
    for dept, user, model, feature, cost, currency, status, latency, at in rows:
        make_usage_event(
            tenant=acme, department=dept, user_ref=user, model=model, feature=feature,
            cost=Decimal(cost) if cost else None, currency=currency, status=status, latency_ms=latency,
            occurred_at=at,
            cost_provenance=UsageEvent.Provenance.COMPUTED if cost else UsageEvent.Provenance.UNPRICED,
        )  # fmt: skip
    make_usage_event(tenant=other_tenant, department=other_dept, user_ref="emil", occurred_at=datetime(2026, 3, 10, tzinfo=UTC), cost=Decimal("99"))
    make_budget(tenant=acme, name="Acme monthly", amount=Decimal("100"))
    make_budget(tenant=acme, department=research_dept, name="Research monthly", amount=Decimal("20"))
    roll_up_everything()


def get_as(client, user, url):
    client.force_login(user)
    return client.get(url)


# --- Who may open what ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "url", "status"),
    [
        (Role.FINANCE, "/overview/", 200),
        (Role.ADMIN, "/overview/", 200),
        (Role.MANAGER, "/overview/", 403),
        (Role.EMPLOYEE, "/overview/", 403),
        (Role.FINANCE, "/departments/", 200),
        (Role.ADMIN, "/departments/", 200),
        (Role.MANAGER, "/departments/", 403),
        (Role.EMPLOYEE, "/departments/", 403),
        (Role.FINANCE, "/departments/sales/", 200),
        (Role.ADMIN, "/departments/research/", 200),
        (Role.MANAGER, "/departments/research/", 200),
        (Role.MANAGER, "/departments/sales/", 403),
        (Role.EMPLOYEE, "/departments/research/", 403),
        # Globex's department codes do not exist for Acme people: 404, not 403.
        (Role.FINANCE, "/departments/globex-only/", 404),
        (Role.MANAGER, "/departments/globex-only/", 404),
        (Role.FINANCE, "/departments/nope/", 404),
        (Role.MANAGER, "/my-department/", 200),
        (Role.FINANCE, "/my-department/", 403),
        (Role.EMPLOYEE, "/my-department/", 403),
    ],
)
def test_each_role_opens_only_its_dashboards(client, people, sales_dept, other_tenant, role, url, status):
    Department.objects.create(tenant=other_tenant, code="globex-only", name="Globex only")
    response = get_as(client, people[role], url)
    assert response.status_code == status


def test_anonymous_visitors_are_sent_to_sign_in(client):
    for url in ("/overview/", "/departments/", "/departments/research/", "/my-department/"):
        assert client.get(url)["Location"] == f"/login/?next={url}"


def test_home_sends_finance_to_the_overview_and_the_menu_has_it(client, people):
    response = get_as(client, people[Role.FINANCE], "/")
    assert response["Location"] == "/overview/"
    response = client.get("/overview/")
    assert [i.label for i in response.context["menu"] if i.current] == ["Overview"]


def test_my_department_is_the_managers_department_page(client, people, usage):
    response = get_as(client, people[Role.MANAGER], "/my-department/")
    assert response.context["department"].code == "research"
    assert [i.label for i in response.context["menu"] if i.current] == ["My department"]
    assert "My department" in [i.label for i in response.context["menu"]]


# --- Overview numbers ---------------------------------------------------------------------------------


def test_overview_month_to_date_against_last_month_budget_and_projection(client, people, acme, usage):
    html = get_as(client, people[Role.FINANCE], "/overview/").content.decode()
    raw_march = sum(
        e.cost for e in UsageEvent.objects.filter(tenant=acme, currency="USD", occurred_at__gte=datetime(2026, 2, 28, 23, tzinfo=UTC)).exclude(cost=None)
    )
    assert raw_march == Decimal("17.75")
    assert f'data-testid="month-spent">{format_money(raw_march)}<' in html
    # 1–15 February (Paris days): 6.00 + 2.00; the 20th is after the same day of the month.
    assert 'data-testid="last-month-spent">8.00 USD by 15 Feb<' in html
    assert 'data-testid="month-change">+121.9%<' in html  # (17.75 - 8) / 8
    assert 'data-testid="month-budget-percent">17.8%<' in html  # of the 100 USD tenant budget
    # Straight line: March in Paris is 743 hours (DST on the 29th); 349 hours have passed.
    projected = raw_march * Decimal(743 * 3600) / Decimal(349 * 3600)
    assert f'data-testid="month-projected">{format_money(projected)}<' in html
    assert 'data-testid="range-calls">5<' in html
    assert "1 not priced yet" in html
    assert "+ 2.00 EUR" in html
    assert "99.00" not in html  # Globex's spend


def test_overview_numbers_equal_the_rollup_query_functions(client, people, acme, usage):
    response = get_as(client, people[Role.FINANCE], "/overview/?start=2026-03-01&end=2026-03-15")
    span = DateRange(start=datetime(2026, 3, 1).date(), end=datetime(2026, 3, 15).date(), tz=acme.tz)
    query = rollups.ReportQuery(tenant=acme, start=span.start_at, end=span.end_at)
    users = {r["group"]: r for r in rollups.spend(query=query, group_by="user") if r["currency"] == "USD"}
    top = response.context["top_users"]
    assert [(u["name"], u["cost"]) for u in top] == [
        ("emil", users["emil"]["cost"]),
        ("morgan", users["morgan"]["cost"]),
        ("sid", users["sid"]["cost"]),
    ]
    assert [u["cost"] for u in top] == [Decimal("10.25"), Decimal("4.50"), Decimal("3.00")]
    assert [(f["name"], f["cost"]) for f in response.context["top_features"]] == [
        ("chat", Decimal("13.25")),
        ("search", Decimal("4.50")),
    ]
    latency = rollups.latency_percentiles(query=query)[0]
    assert response.context["latency"] == latency
    html = response.content.decode()
    assert 'data-testid="error-rate">20.0%<' in html  # 1 error in 5 calls
    assert f'data-testid="latency-p95">{latency["latency_p95_ms"]:,.0f} ms<' in html
    chart = response.context["by_department"]
    assert chart["series"] == ["research", "sales"]
    assert chart["totals"] == [Decimal("14.75"), Decimal("3.00")]
    day_10 = chart["table"][9]
    assert day_10["label"] == "10 Mar" and day_10["values"] == [Decimal("10.25"), Decimal("0")]
    assert response.context["by_model"]["spec"]["stacked"] is True


def test_overview_department_filter_keeps_to_that_department(client, people, usage):
    response = get_as(client, people[Role.FINANCE], "/overview/?start=2026-03-01&end=2026-03-15&department=research")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="range-spent">14.75 USD<' in html
    assert 'data-testid="month-budget-percent">73.8%<' in html  # 14.75 of the 20 USD Research budget
    assert [u["name"] for u in response.context["top_users"]] == ["emil", "morgan"]
    # The form shows the filters it applied, so the URL and the page agree.
    assert 'value="2026-03-01"' in html and 'value="2026-03-15"' in html
    assert '<option value="research" selected>' in html


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("start=yesterday", "start", "&#x27;yesterday&#x27; is not a date; use YYYY-MM-DD"),
        ("start=2026-03-10&end=2026-03-01", "end", "The end (01 Mar 2026) is before the start (10 Mar 2026)."),
        ("start=2024-01-01&end=2026-03-01", "end", "A range covers at most 366 days"),
        ("start=2026-04-01&end=2026-04-02", "start", "is in the future"),
        ("department=nope", "department", "There is no department with the code &#x27;nope&#x27; in Acme."),
    ],
)
def test_bad_filters_are_a_400_that_names_the_field(client, people, usage, query, field, message):
    response = get_as(client, people[Role.FINANCE], f"/overview/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert f'id="f-{field}-error"' in html
    assert 'data-testid="month-spent"' not in html  # no numbers for a range nobody asked for


def test_overview_reads_rollups_never_raw_events(client, people, usage):
    client.force_login(people[Role.FINANCE])
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/overview/?department=research").status_code == 200
    sql = " ".join(q["sql"] for q in queries)
    assert "telemetry_dailyrollup" in sql and "telemetry_dimensionrollup" in sql
    assert "telemetry_usageevent" not in sql


def test_quality_card_shows_the_empty_state_without_evals(client, people, acme, usage):
    span = DateRange(start=datetime(2026, 3, 1).date(), end=datetime(2026, 3, 15).date(), tz=acme.tz)
    assert dashboards.get_quality_summary(tenant=acme, span=span, department=None) is None
    html = get_as(client, people[Role.FINANCE], "/overview/").content.decode()
    assert "No evaluations yet — configure an EvalConfig." in html
    assert 'data-testid="quality-pass-rate"' not in html


def test_overview_lists_open_anomalies_with_their_explanation(client, people, acme, research_dept, usage):
    for n, status in enumerate([Anomaly.Status.OPEN] * 6 + [Anomaly.Status.RESOLVED]):
        Anomaly.objects.create(
            tenant=acme, department=research_dept, metric=Anomaly.Metric.COST, hour=NOW - timedelta(hours=n + 1),
            observed=Decimal("12"), expected=Decimal("2"), score=9.0, severity=Anomaly.Severity.HIGH,
            explanation=f"Spend jumped, hour {n}", status=status,
        )  # fmt: skip
    response = get_as(client, people[Role.FINANCE], "/overview/")
    html = response.content.decode()
    assert 'data-testid="open-anomalies">6<' in html
    assert [a.explanation for a in response.context["anomalies"].latest] == [f"Spend jumped, hour {n}" for n in range(5)]
    assert "Spend jumped, hour 5" not in html
    assert "Observed <strong>12.00 USD</strong>, expected 2.00 USD" in html


# --- Department pages ----------------------------------------------------------------------------------


def test_departments_list_shows_month_spend_budget_and_anomalies(client, people, usage):
    response = get_as(client, people[Role.FINANCE], "/departments/")
    rows = {r["department"].code: r for r in response.context["rows"]}
    assert rows["research"]["spent"] == Decimal("14.75")
    assert rows["sales"]["spent"] == Decimal("3.00")
    assert rows["research"]["requests"] == 3
    [research_budget] = rows["research"]["budgets"]
    assert research_budget.spent == Decimal("14.75") and research_budget.percent == Decimal("73.8")
    html = response.content.decode()
    assert 'aria-valuenow="73.8"' in html
    assert "globex" not in html.lower()


def test_department_page_numbers_and_forecast(client, people, acme, research_dept, usage):
    response = get_as(client, people[Role.MANAGER], "/departments/research/?start=2026-03-01&end=2026-03-15")
    assert response.status_code == 200
    [status] = response.context["budgets"]
    assert status.spent == Decimal("14.75")
    # chargeback.budgets' forecast: spend × period length / elapsed, with the same numbers.
    assert status.forecast == Decimal("14.75") + Decimal("14.75") / Decimal(349 * 3600) * Decimal((743 - 349) * 3600)
    assert status.forecast_reliable
    html = response.content.decode()
    assert f"Forecast {format_money(status.forecast)} by period end" in html
    assert 'data-testid="range-spent">14.75 USD<' in html
    assert [(m["name"], m["cost"], m["unpriced"]) for m in response.context["by_model"]] == [
        ("gpt-4o", Decimal("10.25"), 0),
        ("gpt-4o-mini", Decimal("4.50"), 0),
        ("ft:custom", Decimal("0"), 1),
    ]
    assert [u["name"] for u in response.context["top_users"]] == ["emil", "morgan"]
    assert response.context["latency"]["errors"] == 1
    assert "No evaluations yet — configure an EvalConfig." in html
    # Recent calls: raw rows of this department only, newest first.
    events = response.context["events"].object_list
    assert [e.model for e in events] == ["ft:custom", "gpt-4o-mini", "gpt-4o"]


def test_department_recent_calls_are_paginated_by_fifty(client, people, acme, research_dept):
    for n in range(60):
        make_usage_event(tenant=acme, department=research_dept, occurred_at=NOW - timedelta(minutes=n + 1))
    client.force_login(people[Role.FINANCE])
    first = client.get("/departments/research/")
    assert len(first.context["events"].object_list) == 50 and first.context["events"].has_next
    html = first.content.decode()
    assert "start=2026-03-01&amp;end=2026-03-15&amp;department=research&page=2" in html  # filters kept
    second = client.get("/departments/research/?page=2")
    assert len(second.context["events"].object_list) == 10 and not second.context["events"].has_next
    assert client.get("/departments/research/?page=zzz").status_code == 200


def test_department_page_reads_raw_events_only_for_the_recent_calls(client, people, usage):
    client.force_login(people[Role.FINANCE])
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/departments/research/").status_code == 200
    raw = [q["sql"] for q in queries if "telemetry_usageevent" in q["sql"]]
    assert len(raw) == 1
    assert "ORDER BY" in raw[0] and "LIMIT 51" in raw[0]


def test_department_page_bad_range_is_a_400(client, people, usage):
    response = get_as(client, people[Role.MANAGER], "/my-department/?start=2026-03-10&end=2026-03-01")
    assert response.status_code == 400
    assert b"is before the start" in response.content


def test_manager_of_another_tenant_with_the_same_code_sees_only_their_own(client, other_tenant, other_dept, usage):
    globex_manager = make_member(tenant=other_tenant, username="gina", role=Role.MANAGER, department=other_dept)
    response = get_as(client, globex_manager, "/departments/research/")
    assert response.status_code == 200
    assert response.context["department"] == other_dept
    assert response.context["totals"].cost == Decimal("99")
