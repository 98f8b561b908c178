"""The Alerts page: finance/admin only, firing first and most severe first, filters with 400s
naming the field, runbook links, resolved alerts with their resolve text, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from chargeback import alerting
from chargeback.models import Alert, AlertKind, Severity

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def _alert(tenant, kind, severity, key, title, *, state=Alert.State.FIRING, minutes_ago=0):
    at = NOW - timedelta(minutes=minutes_ago)
    return Alert.objects.create(
        tenant=tenant, kind=kind, severity=severity, key=key, title=title, text=f"{title} text", state=state,
        runbook=alerting.RUNBOOK[kind], first_fired_at=at, last_fired_at=at,
        resolved_at=at if state == Alert.State.RESOLVED else None,
        resolve_text="Back under 80 %." if state == Alert.State.RESOLVED else "",
    )  # fmt: skip


@pytest.fixture
def alerts(acme, other_tenant):
    return [
        _alert(acme, AlertKind.UNPRICED_EVENTS, Severity.WARNING, "unpriced", "6 unpriced calls", minutes_ago=5),
        _alert(
            acme, AlertKind.BUDGET_THRESHOLD, Severity.CRITICAL, "budget:1:100", "Research at 100 %", minutes_ago=50
        ),
        _alert(acme, AlertKind.ERROR_RATE, Severity.INFO, "errors:research", "Error rate 4 %", minutes_ago=1),
        _alert(
            acme,
            AlertKind.BUDGET_THRESHOLD,
            Severity.WARNING,
            "budget:1:80",
            "Research at 80 %",
            state=Alert.State.RESOLVED,
            minutes_ago=300,
        ),
        _alert(other_tenant, AlertKind.ANOMALY, Severity.CRITICAL, "anomaly:x", "Globex secret spike"),
    ]


def titles(response) -> list[str]:
    return [a.title for a in response.context["page"]]


def test_firing_alerts_most_severe_first_with_counts_and_runbook(client, finance_user, alerts):
    client.force_login(finance_user)
    response = client.get(reverse("web:alerts"))
    assert response.status_code == 200
    assert titles(response) == ["Research at 100 %", "6 unpriced calls", "Error rate 4 %"]
    assert response.context["firing_counts"] == {"critical": 1, "warning": 1, "info": 1}
    html = response.content.decode()
    assert "docs/RUNBOOK.md#budget-threshold" in html
    assert "Globex" not in html


def test_filters_and_resolved_alerts(client, admin_user_acme, alerts):
    client.force_login(admin_user_acme)
    resolved = client.get(reverse("web:alerts"), {"state": "resolved"})
    assert titles(resolved) == ["Research at 80 %"]
    assert "Back under 80 %." in resolved.content.decode()
    budget = client.get(reverse("web:alerts"), {"state": "all", "kind": "budget_threshold"})
    assert titles(budget) == ["Research at 100 %", "Research at 80 %"]
    critical = client.get(reverse("web:alerts"), {"state": "all", "severity": "critical"})
    assert titles(critical) == ["Research at 100 %"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "burning"}, "State: &#x27;burning&#x27; is not a state"),
        ({"severity": "loud"}, "Severity: &#x27;loud&#x27; is not a severity"),
        ({"kind": "weather"}, "Kind: &#x27;weather&#x27; is not an alert kind"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(client, finance_user, alerts, params, message):
    client.force_login(finance_user)
    response = client.get(reverse("web:alerts"), params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_http_runbook_base_becomes_a_link(client, finance_user, alerts, settings):
    settings.LLMOBS_ALERT_RUNBOOK_URL = "https://wiki.example/llmobs/RUNBOOK.md"
    client.force_login(finance_user)
    html = client.get(reverse("web:alerts")).content.decode()
    assert '<a href="https://wiki.example/llmobs/RUNBOOK.md#budget-threshold">' in html


def test_empty_state(client, finance_user, acme):
    client.force_login(finance_user)
    response = client.get(reverse("web:alerts"))
    assert (
        'data-testid="alerts-empty"' in response.content.decode() and "Nothing is firing" in response.content.decode()
    )


@pytest.mark.parametrize("who", ["employee_user", "manager_user"])
def test_employees_and_managers_are_refused(client, request, who, alerts):
    client.force_login(request.getfixturevalue(who))
    assert client.get(reverse("web:alerts")).status_code == 403
