"""What the pages show: My usage totals, per day in the tenant's zone and per model; budget
spend per scope, period and currency; gauges; the formatting filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from chargeback.models import Budget
from telemetry.models import UsageEvent
from tests.factories import make_budget, make_usage_event, roll_up_everything
from web import data
from web.templatetags import llmobs as filters

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Formatting --------------------------------------------------------------------------------------


def test_money_rounds_half_up_once_and_names_the_currency():
    assert filters.money(Decimal("1234.565"), "USD") == "1,234.57 USD"
    assert filters.money(Decimal("1234.5"), "JPY") == "1,235 JPY"
    assert filters.money(None, "EUR") == "—"
    assert filters.money("0.0000123", "USD") == "0.00 USD"
    assert filters.call_cost(Decimal("0.00423456"), "USD") == "0.0042 USD"
    assert filters.call_cost(None, "USD") == "—"


def test_tokens_and_percent_filters():
    assert filters.tokens(12345678) == "12,345,678"
    assert filters.tokens(None) == "—"
    assert filters.percent(Decimal("83.46"), 1) == "83.5%"
    assert filters.percent(None) == "—"
    assert filters.gauge_width(Decimal("250")) == "100.0"
    assert filters.gauge_width(Decimal("-3")) == "0.0"


# --- My usage ---------------------------------------------------------------------------------------


@pytest.fixture
def emil_events(acme, research_dept, other_tenant):
    """Emil's calls at Acme, someone else's, and an `emil` at another tenant."""
    at = NOW - timedelta(days=2)
    mine = [
        make_usage_event(
            tenant=acme,
            department=research_dept,
            user_ref="emil",
            occurred_at=at,
            cost=Decimal("1.2345"),
            input_tokens=1000,
            output_tokens=200,
        ),
        make_usage_event(
            tenant=acme,
            department=research_dept,
            user_ref="emil",
            occurred_at=at + timedelta(hours=1),
            model="gpt-4o",
            cost=Decimal("0.5000"),
            input_tokens=500,
            output_tokens=50,
        ),
        # Unpriced: counted as a call and tokens, never as zero money.
        make_usage_event(
            tenant=acme,
            department=research_dept,
            user_ref="emil",
            occurred_at=at,
            model="ft:custom",
            cost=None,
            cost_provenance=UsageEvent.Provenance.UNPRICED,
            input_tokens=10,
            output_tokens=5,
        ),
        # A EUR-priced call: shown apart, not added to USD.
        make_usage_event(
            tenant=acme,
            department=research_dept,
            user_ref="emil",
            occurred_at=at,
            model="mistral-small",
            provider="mistral",
            cost=Decimal("0.3000"),
            currency="EUR",
            input_tokens=100,
            output_tokens=10,
        ),
    ]
    make_usage_event(tenant=acme, department=research_dept, user_ref="morgan", occurred_at=at, cost=Decimal("9"))
    make_usage_event(tenant=other_tenant, user_ref="emil", occurred_at=at, cost=Decimal("7"))
    # Older than 30 days: outside the window.
    make_usage_event(
        tenant=acme, department=research_dept, user_ref="emil", occurred_at=NOW - timedelta(days=40), cost=Decimal("5")
    )
    roll_up_everything()
    return mine


def test_user_usage_counts_only_the_user_at_this_tenant_in_the_window(acme, emil_events):
    usage = data.get_user_usage(tenant=acme, user_ref="emil", now=NOW, days=30)
    assert usage.calls == 4
    assert usage.tokens == 1200 + 550 + 15 + 110
    assert usage.cost == Decimal("1.7345")
    assert usage.other_currencies == {"EUR": Decimal("0.3")}
    assert usage.unpriced_calls == 1
    assert len(usage.days) == 30
    assert usage.days[-1].day == NOW.astimezone(acme.tz).date()
    day = next(d for d in usage.days if d.calls)
    assert (day.day, day.calls, day.cost) == (
        (NOW - timedelta(days=2)).astimezone(acme.tz).date(),
        4,
        Decimal("1.7345"),
    )


def test_user_usage_reads_the_per_user_rollup_not_raw_events(acme, emil_events):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        data.get_user_usage(tenant=acme, user_ref="emil", now=NOW, days=30)
    sql = " ".join(q["sql"] for q in queries)
    assert "telemetry_dimensionrollup" in sql
    assert "telemetry_usageevent" not in sql


def test_days_are_cut_at_the_tenant_midnight(acme, research_dept):
    # 23:30 UTC on 10 March is 00:30 on 11 March in Paris.
    make_usage_event(
        tenant=acme,
        department=research_dept,
        user_ref="emil",
        occurred_at=datetime(2026, 3, 10, 23, 30, tzinfo=UTC),
        cost=Decimal("1"),
    )
    roll_up_everything()
    usage = data.get_user_usage(tenant=acme, user_ref="emil", now=NOW, days=30)
    assert [(d.day.isoformat(), d.calls) for d in usage.days if d.calls] == [("2026-03-11", 1)]
    assert usage.start == datetime(2026, 2, 14, tzinfo=acme.tz)


def test_my_usage_page_shows_the_totals(client, acme, employee_user, emil_events, monkeypatch):
    monkeypatch.setattr("web.views.timezone.now", lambda: NOW)
    client.force_login(employee_user)
    response = client.get(reverse("web:my-usage"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="total-cost">1.73 USD<' in html
    assert "+ 0.30 EUR" in html
    assert 'data-testid="total-tokens">1,875<' in html
    assert 'data-testid="total-calls">4<' in html
    assert "1 not priced yet" in html
    assert "ft:custom" in html  # in the recent calls (raw page), not a per-model total
    assert 'id="usage-chart"' in html
    assert "vendor/chartjs/chart.umd.js" in html


def test_my_usage_without_calls_says_how_calls_get_there(client, employee_user):
    client.force_login(employee_user)
    html = client.get(reverse("web:my-usage")).content.decode()
    assert "No calls in the last 30 days" in html
    assert "X-LLMObs-User: emil" in html
    assert "usage-chart" not in html


def test_recent_calls_are_paginated(client, acme, research_dept, employee_user, monkeypatch):
    monkeypatch.setattr("web.views.timezone.now", lambda: NOW)
    for n in range(30):
        make_usage_event(
            tenant=acme, department=research_dept, user_ref="emil", occurred_at=NOW - timedelta(minutes=n + 1)
        )
    client.force_login(employee_user)
    first = client.get(reverse("web:my-usage"))
    assert len(first.context["calls"].object_list) == 25
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("web:my-usage") + "?page=2")
    assert len(second.context["calls"].object_list) == 5
    assert client.get(reverse("web:my-usage") + "?page=zzz").status_code == 200


# --- Budgets --------------------------------------------------------------------------------------


@pytest.fixture
def march_events(acme, research_dept, sales_dept):
    inside = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    rows = [
        (research_dept, "emil", "gpt-4o", {"project": "atlas"}, Decimal("10.25"), "USD", inside),
        (research_dept, "morgan", "gpt-4o-mini", {}, Decimal("4.50"), "USD", inside),
        (sales_dept, "sid", "gpt-4o", {"project": "atlas"}, Decimal("3.00"), "USD", inside),
        (sales_dept, "sid", "gpt-4o", {}, Decimal("2.00"), "EUR", inside),
        (research_dept, "emil", "gpt-4o", {}, None, "USD", inside),
        # 28 Feb 23:30 UTC = 1 March 00:30 in Paris: inside the March period.
        (research_dept, "emil", "gpt-4o", {}, Decimal("1.00"), "USD", datetime(2026, 2, 28, 23, 30, tzinfo=UTC)),
        # 31 March 22:30 UTC = 1 April 00:30 in Paris (summer time): outside.
        (research_dept, "emil", "gpt-4o", {}, Decimal("100"), "USD", datetime(2026, 3, 31, 22, 30, tzinfo=UTC)),
    ]
    for dept, user, model, tags, cost, currency, at in rows:
        make_usage_event(
            tenant=acme,
            department=dept,
            user_ref=user,
            model=model,
            tags=tags,
            cost=cost,
            currency=currency,
            occurred_at=at,
            cost_provenance=UsageEvent.Provenance.UNPRICED if cost is None else UsageEvent.Provenance.COMPUTED,
        )
    roll_up_everything()


@pytest.mark.parametrize(
    ("fields", "spent"),
    [
        ({"scope": Budget.Scope.TENANT}, "18.75"),
        ({"scope": Budget.Scope.DEPARTMENT, "department": "research"}, "15.75"),
        ({"scope": Budget.Scope.USER, "user_ref": "emil"}, "11.25"),
        ({"scope": Budget.Scope.MODEL, "model": "gpt-4o"}, "14.25"),
        ({"scope": Budget.Scope.TAG, "tag_key": "project", "tag_value": "atlas"}, "13.25"),
        ({"scope": Budget.Scope.DEPARTMENT, "department": "sales", "currency": "EUR"}, "2.00"),
    ],
)
def test_budget_spent_counts_scope_period_and_currency(acme, research_dept, sales_dept, march_events, fields, spent):
    fields = dict(fields)
    if "department" in fields:
        fields["department"] = {"research": research_dept, "sales": sales_dept}[fields["department"]]
    budget = Budget.objects.create(tenant=acme, name="b", period=Budget.Period.MONTH, amount=Decimal("100"), **fields)
    bounds = budget.period_bounds(datetime(2026, 3, 20, tzinfo=UTC))
    assert data.budget_spent(budget=budget, bounds=bounds) == Decimal(spent)


def test_budget_status_reports_percent_and_crossed_thresholds(acme, research_dept, march_events):
    budget = make_budget(tenant=acme, department=research_dept, amount=Decimal("20"), thresholds=[50, 80, 100])
    status = data.get_budget_status(budget=budget, at=datetime(2026, 3, 20, tzinfo=UTC))
    assert status.spent == Decimal("15.75")
    assert status.percent == Decimal("78.8")
    assert status.crossed == [50]
    assert status.state == "warning"
    assert status.remaining == Decimal("4.25")
    daily = data.budget_daily_spend(budget=budget, bounds=status.bounds)
    assert len(daily) == 31
    assert daily[0] == (datetime(2026, 3, 1).date(), Decimal("1.00"))
    assert daily[9] == (datetime(2026, 3, 10).date(), Decimal("14.75"))
    assert sum((s for _d, s in daily), Decimal(0)) == status.spent


def test_budgets_page_shows_spend_limit_and_gauge(client, acme, research_dept, finance_user, march_events, monkeypatch):
    monkeypatch.setattr("web.views.timezone.now", lambda: datetime(2026, 3, 20, tzinfo=UTC))
    over = make_budget(tenant=acme, department=research_dept, name="Research tight", amount=Decimal("10"))
    make_budget(tenant=acme, name="Acme roomy", amount=Decimal("1000"))
    client.force_login(finance_user)
    html = client.get(reverse("web:budgets")).content.decode()
    assert "15.75 USD" in html and "10.00 USD" in html
    assert "157.5%" in html and "over the limit" in html
    assert "1.9%" in html and "on track" in html
    assert html.count('role="meter"') == 2
    assert "1 Mar – 31 Mar 2026" in html
    assert "Edit in admin" not in html  # finance reads; admins edit
    detail = client.get(reverse("web:budget-detail", args=[over.pk])).content.decode()
    assert 'data-testid="budget-spent">15.75 USD<' in detail
    assert 'id="budget-chart"' in detail


def test_admin_staff_get_edit_links(client, acme, research_dept, admin_user_acme):
    admin_user_acme.is_staff = True
    admin_user_acme.save()
    budget = make_budget(tenant=acme, department=research_dept)
    client.force_login(admin_user_acme)
    html = client.get(reverse("web:budgets")).content.decode()
    assert reverse("admin:chargeback_budget_change", args=[budget.pk]) in html


def test_empty_budgets_page_says_what_to_do(client, admin_user_acme, manager_user):
    admin_user_acme.is_staff = True
    admin_user_acme.save()
    client.force_login(admin_user_acme)
    html = client.get(reverse("web:budgets")).content.decode()
    assert "No budgets yet" in html and reverse("admin:chargeback_budget_add") in html
    client.force_login(manager_user)
    html = client.get(reverse("web:budgets")).content.decode()
    assert "No budgets for Research yet" in html and "Ask them to add one" in html


def test_the_rollup_user_filter_refuses_what_the_rollups_cannot_answer(acme):
    from telemetry import rollups

    start = datetime(2026, 3, 1, tzinfo=acme.tz)
    query = rollups.ReportQuery(tenant=acme, start=start, end=datetime(2026, 3, 2, tzinfo=acme.tz), user="emil")
    for call in (
        lambda: rollups.spend(query=query, group_by="feature"),
        lambda: rollups.spend(query=query, group_by="model"),
        lambda: rollups.latency_percentiles(query=query),
    ):
        with pytest.raises(rollups.ReportError) as refused:
            call()
        assert refused.value.field == "user"
    both = rollups.ReportQuery(tenant=acme, start=start, end=start + timedelta(days=1), user="emil", feature="chat")
    with pytest.raises(rollups.ReportError, match="user and feature together"):
        rollups.spend(query=both)


def test_the_feature_filter_with_a_model_grouping_is_a_clear_error(acme):
    from telemetry import rollups

    start = datetime(2026, 3, 1, tzinfo=acme.tz)
    query = rollups.ReportQuery(tenant=acme, start=start, end=start + timedelta(days=1), feature="chat")
    with pytest.raises(rollups.ReportError) as refused:
        rollups.spend(query=query, group_by="model")
    assert refused.value.field == "feature"
