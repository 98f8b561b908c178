"""Alert severity and routing: routes by severity and kind (no routes = every channel), one
grouped message per channel per run, at most one per window, resolve messages with runbook
links, every source firing with its severity and resolving, and tenants kept apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from chargeback import alerting, budgets
from chargeback.models import Alert, AlertKind, AlertRoute, Delivery, NotificationChannel, Severity
from telemetry import alert_checks, anomalies, evals, rollups
from telemetry.models import Anomaly, EvalConfig, EvalScore, UsageEvent
from tests.factories import make_budget, make_channel, make_route, make_usage_event

NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def channels(acme) -> dict[str, NotificationChannel]:
    return {
        "pager": make_channel(tenant=acme, name="pager", kind="webhook", target="https://pager.example/hook"),
        "email": make_channel(tenant=acme, name="oncall mail", kind="email", target="oncall@acme.example"),
        "slack": make_channel(tenant=acme, name="slack", kind="slack", target="https://hooks.slack.example/x"),
    }


@pytest.fixture
def routed(acme, channels) -> dict[str, NotificationChannel]:
    """The issue's example: critical to the pager and e-mail, warnings to Slack, info nowhere."""
    AlertRoute.objects.create(tenant=acme, name="page", severities=["critical"], channel=channels["pager"])
    AlertRoute.objects.create(tenant=acme, name="mail", severities=["critical"], channel=channels["email"])
    AlertRoute.objects.create(tenant=acme, name="chat", severities=["warning"], channel=channels["slack"])
    AlertRoute.objects.create(tenant=acme, name="dashboard", severities=["info"], channel=None)
    return channels


def fire(tenant, *, kind=AlertKind.ERROR_RATE, key="error_rate:research", severity=None, title="Errors", now=NOW):
    return alerting.fire(tenant=tenant, kind=kind, key=key, severity=severity, title=title, text="text", now=now)


def sent_to(deliveries) -> set[str]:
    return {d.channel.name for d in deliveries}


# --- routing --------------------------------------------------------------------------------------


def test_critical_goes_to_pager_and_email_warning_to_slack_info_nowhere(acme, routed):
    fire(acme, key="a", severity=Severity.CRITICAL)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"pager", "oncall mail"}
    fire(acme, key="b", severity=Severity.WARNING)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"slack"}
    info = fire(acme, key="c", severity=Severity.INFO)
    assert alerting.send_pending(tenant=acme, now=NOW) == []
    info.refresh_from_db()
    # Dashboard only: nothing sent, but it counts as notified (the window applies the same).
    assert (info.state, info.pending_notice, info.last_notified_at) == ("firing", "", NOW)
    assert Delivery.objects.count() == 3


def test_routes_match_kinds_and_an_empty_list_means_all(acme, channels):
    AlertRoute.objects.create(tenant=acme, name="finance", kinds=["budget_threshold"], channel=channels["email"])
    AlertRoute.objects.create(tenant=acme, name="ops", kinds=["error_rate", "latency_slo"], channel=channels["pager"])
    AlertRoute.objects.create(tenant=acme, name="everything", channel=channels["slack"])
    fire(acme, kind=AlertKind.LATENCY_SLO, key="latency:research", severity=Severity.WARNING)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"pager", "slack"}
    fire(acme, kind=AlertKind.BUDGET_THRESHOLD, key="budget:1:20250301:80", severity=Severity.WARNING)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"oncall mail", "slack"}
    # Kind and severity must both match.
    AlertRoute.objects.filter(name="everything").update(severities=["critical"])
    fire(acme, kind=AlertKind.UNPRICED_EVENTS, key="unpriced", severity=Severity.WARNING)
    assert alerting.send_pending(tenant=acme, now=NOW) == []


def test_without_routes_every_enabled_channel_hears_everything(acme, channels):
    channels["slack"].enabled = False
    channels["slack"].save()
    fire(acme, severity=Severity.INFO)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"pager", "oncall mail"}
    # Disabled routes do not count as routing: still the fallback.
    AlertRoute.objects.create(tenant=acme, name="off", channel=channels["pager"], enabled=False)
    fire(acme, key="other", severity=Severity.INFO)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"pager", "oncall mail"}


def test_a_disabled_channel_on_a_matching_route_gets_nothing(acme, routed):
    routed["pager"].enabled = False
    routed["pager"].save()
    fire(acme, severity=Severity.CRITICAL)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"oncall mail"}


# --- grouping, window, escalation, resolve -----------------------------------------------------------


def test_alerts_of_one_run_go_out_as_one_message_per_channel(acme, channels):
    fire(acme, kind=AlertKind.ERROR_RATE, key="error_rate:research", title="Error rate 40% in research")
    fire(acme, kind=AlertKind.LATENCY_SLO, key="latency:research", title="p95 latency 41,000 ms in research")
    fire(acme, kind=AlertKind.UNPRICED_EVENTS, key="unpriced", title="3 unpriced events in Acme")
    deliveries = alerting.send_pending(tenant=acme, now=NOW)
    assert len(deliveries) == 3 and sent_to(deliveries) == {"pager", "oncall mail", "slack"}
    message = next(d for d in deliveries if d.channel.name == "pager")
    assert message.subject == "3 alerts in Acme"
    # Most severe first (error rate defaults to critical), each with its runbook section.
    assert message.text.startswith("[critical] Error rate 40% in research")
    assert "docs/RUNBOOK.md#error-rate-spike" in message.text
    assert "docs/RUNBOOK.md#latency-slo-breach" in message.text
    assert "docs/RUNBOOK.md#unpriced-events" in message.text
    assert [a["kind"] for a in message.payload["alerts"]] == ["error_rate", "latency_slo", "unpriced_events"]
    assert alerting.send_pending(tenant=acme, now=NOW) == []  # nothing owed any more


def test_a_firing_alert_is_sent_at_most_once_per_window(acme, channels, settings):
    settings.LLMOBS_ALERT_RENOTIFY_MINUTES = 60
    email = channels["email"]
    AlertRoute.objects.create(tenant=acme, name="mail", channel=email)
    fire(acme, now=NOW)
    assert len(alerting.send_pending(tenant=acme, now=NOW)) == 1
    fire(acme, now=NOW + timedelta(minutes=5))
    fire(acme, now=NOW + timedelta(minutes=59))
    assert alerting.send_pending(tenant=acme, now=NOW + timedelta(minutes=59)) == []
    alert = fire(acme, now=NOW + timedelta(minutes=60))
    assert alert.occurrences == 4 and alert.first_fired_at == NOW
    (again,) = alerting.send_pending(tenant=acme, now=NOW + timedelta(minutes=60))
    assert "seen 4 times" in again.text
    assert Alert.objects.count() == 1


def test_a_rise_in_severity_is_sent_at_once(acme, routed):
    fire(acme, severity=Severity.WARNING)
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"slack"}
    fire(acme, severity=Severity.CRITICAL, now=NOW + timedelta(minutes=5))
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW + timedelta(minutes=5))) == {"pager", "oncall mail"}
    fire(acme, severity=Severity.WARNING, now=NOW + timedelta(minutes=10))  # falling back is not news
    assert alerting.send_pending(tenant=acme, now=NOW + timedelta(minutes=10)) == []


def test_resolving_sends_a_resolved_message_with_the_runbook_link(acme, routed):
    fire(acme, severity=Severity.CRITICAL, title="Error rate 40% in research")
    alerting.send_pending(tenant=acme, now=NOW)
    alert = alerting.resolve(
        tenant=acme, kind=AlertKind.ERROR_RATE, key="error_rate:research", text="1 of 50 calls failed.", now=NOW
    )
    assert (alert.state, alert.resolved_at) == ("resolved", NOW)
    deliveries = alerting.send_pending(tenant=acme, now=NOW)
    assert sent_to(deliveries) == {"pager", "oncall mail"}  # the routes of its kind and severity
    message = deliveries[0]
    assert message.subject == "Resolved: Error rate 40% in research"
    assert "1 of 50 calls failed." in message.text and "docs/RUNBOOK.md#error-rate-spike" in message.text
    assert message.payload["alerts"][0]["state"] == "resolved"
    # Resolving again, or something that never fired, is a no-op.
    assert alerting.resolve(tenant=acme, kind=AlertKind.ERROR_RATE, key="error_rate:research", text="", now=NOW) is None
    # It fires again later: a new episode, a new message.
    fire(acme, severity=Severity.CRITICAL, now=NOW + timedelta(minutes=10))
    assert len(alerting.send_pending(tenant=acme, now=NOW + timedelta(minutes=10))) == 2
    assert Alert.objects.count() == 2


def test_an_alert_resolved_before_it_was_sent_sends_nothing(acme, routed):
    fire(acme, severity=Severity.CRITICAL)
    alerting.resolve(tenant=acme, kind=AlertKind.ERROR_RATE, key="error_rate:research", text="ok", now=NOW)
    assert alerting.send_pending(tenant=acme, now=NOW) == []


def test_only_one_alert_per_key_can_be_firing(acme):
    fire(acme)
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            tenant=acme, kind=AlertKind.ERROR_RATE, key="error_rate:research", severity="critical", title="t",
            text="t", runbook="x", first_fired_at=NOW, last_fired_at=NOW,
        )  # fmt: skip


def test_messages_reach_webhook_slack_and_email_end_to_end(
    acme, routed, monkeypatch, django_capture_on_commit_callbacks
):
    posted: list[tuple[str, dict]] = []

    def fake_post(url, json, **kwargs):
        posted.append((url, json))
        return httpx.Response(200, text="ok")

    monkeypatch.setattr("chargeback.notify.httpx.post", fake_post)
    with django_capture_on_commit_callbacks(execute=True):
        fire(acme, key="a", severity=Severity.CRITICAL, title="Error rate 40% in research")
        fire(acme, key="b", severity=Severity.WARNING, title="Error rate 15% in sales")
        alerting.send_pending(tenant=acme, now=NOW)
    assert Delivery.objects.filter(status="sent").count() == 3
    hook = next(body for url, body in posted if "pager" in url)
    assert hook["type"] == "alerts" and hook["alerts"][0]["runbook_url"] == "docs/RUNBOOK.md#error-rate-spike"
    slack = next(body for url, body in posted if "slack" in url)
    assert slack["text"].startswith("*Error rate 15% in sales*\n[warning] Error rate 15% in sales")
    (email,) = mail.outbox
    assert email.subject == "Error rate 40% in research" and email.to == ["oncall@acme.example"]


# --- tenant isolation ------------------------------------------------------------------------------


def test_one_tenants_routes_never_receive_another_tenants_alerts(acme, routed, other_tenant):
    globex_mail = make_channel(tenant=other_tenant, name="globex mail", target="ops@globex.example")
    # A route written around the admin's validation, pointing at acme's pager, is ignored.
    AlertRoute.objects.create(tenant=other_tenant, name="stray", channel=routed["pager"])
    AlertRoute.objects.create(tenant=other_tenant, name="all", channel=globex_mail)
    fire(other_tenant, severity=Severity.CRITICAL)
    fire(acme, key="acme-only", severity=Severity.CRITICAL)
    assert sent_to(alerting.send_pending(tenant=other_tenant, now=NOW)) == {"globex mail"}
    assert not Delivery.objects.filter(tenant=other_tenant, channel__tenant=acme).exists()
    assert sent_to(alerting.send_pending(tenant=acme, now=NOW)) == {"pager", "oncall mail"}
    assert not Delivery.objects.filter(tenant=acme, channel__tenant=other_tenant).exists()


def test_a_route_validates_its_kinds_severities_and_channel_tenant(acme, other_tenant):
    foreign = make_channel(tenant=other_tenant, name="globex mail", target="ops@globex.example")
    route = AlertRoute(tenant=acme, name="bad", kinds=["budget", "anomaly"], severities=["urgent"], channel=foreign)
    with pytest.raises(ValidationError) as error:
        route.full_clean()
    assert set(error.value.message_dict) == {"kinds", "severities", "channel"}
    assert "Unknown kinds: budget" in error.value.message_dict["kinds"][0]


# --- admin -----------------------------------------------------------------------------------------


def test_admin_edits_routes_with_tick_boxes_and_names_the_bad_field(admin_client, acme, other_tenant, channels):
    foreign = make_channel(tenant=other_tenant, name="globex mail", target="ops@globex.example")
    add = reverse("admin:chargeback_alertroute_add")
    assert admin_client.get(add).status_code == 200
    form = {"tenant": acme.pk, "name": "page", "kinds": ["error_rate"], "severities": ["critical"], "enabled": "on"}
    response = admin_client.post(add, {**form, "channel": foreign.pk})
    assert response.status_code == 200 and "channel" in response.context["adminform"].form.errors
    assert not AlertRoute.objects.exists()
    response = admin_client.post(add, {**form, "channel": channels["pager"].pk})
    assert response.status_code == 302
    route = AlertRoute.objects.get()
    assert (route.kinds, route.severities, route.channel) == (["error_rate"], ["critical"], channels["pager"])
    assert admin_client.get(reverse("admin:chargeback_alertroute_changelist")).status_code == 200


def test_admin_lists_alerts_with_kind_severity_and_state_filters(admin_client, acme):
    fire(acme, severity=Severity.CRITICAL)
    fire(acme, kind=AlertKind.UNPRICED_EVENTS, key="unpriced", severity=Severity.WARNING)
    changelist = reverse("admin:chargeback_alert_changelist")
    response = admin_client.get(changelist + "?kind__exact=error_rate&severity__exact=critical&state__exact=firing")
    assert response.status_code == 200 and response.context["cl"].result_count == 1
    alert = Alert.objects.get(kind="unpriced_events")
    page = admin_client.get(reverse("admin:chargeback_alert_change", args=[alert.pk]))
    assert page.status_code == 200 and b"docs/RUNBOOK.md#unpriced-events" in page.content
    assert admin_client.get(reverse("admin:chargeback_alert_add")).status_code == 403


# --- sources ---------------------------------------------------------------------------------------


def test_budget_thresholds_fire_with_rising_severity_and_resolve_at_period_end(acme, research_dept, routed):
    make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[50, 80, 100])
    make_usage_event(tenant=acme, department=research_dept, occurred_at=NOW - timedelta(days=1), cost=Decimal("11"))
    rollups.roll_up_pending()
    budgets.evaluate_budgets(tenant_id=acme.pk, at=NOW)
    alerts = {a.payload["threshold_percent"]: a.severity for a in Alert.objects.filter(kind="budget_threshold")}
    assert alerts == {50: "info", 80: "warning", 100: "critical"}
    # One run: the 100 % alert pages (pager + e-mail), 80 % reaches Slack, 50 % only the dashboard.
    assert sorted(Delivery.objects.values_list("channel__name", flat=True)) == ["oncall mail", "pager", "slack"]
    assert "#budget-threshold" in Delivery.objects.get(channel__name="pager").text
    april = datetime(2025, 4, 2, tzinfo=UTC)
    budgets.evaluate_budgets(tenant_id=acme.pk, at=april)
    assert set(Alert.objects.values_list("state", flat=True)) == {"resolved"}
    resolved = Delivery.objects.filter(subject__startswith="Resolved").order_by("channel__name")
    assert [d.channel.name for d in resolved] == ["oncall mail", "pager", "slack"]
    assert "a new one started at 2025-04-01" in resolved[0].text


def test_a_forecast_overspend_fires_a_warning_and_resolves_when_it_falls_back(acme, research_dept, routed):
    budget = make_budget(tenant=acme, department=research_dept, amount=Decimal("30"), thresholds=[100])
    make_usage_event(
        tenant=acme,
        department=research_dept,
        occurred_at=datetime(2025, 3, 5, tzinfo=UTC),
        cost=Decimal("10"),
        event_id="e1",
    )
    rollups.roll_up_pending()
    at = datetime(2025, 3, 8, 23, tzinfo=UTC)
    budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    alert = Alert.objects.get(kind="budget_forecast")
    assert (alert.severity, alert.state) == ("warning", "firing") and alert.key.startswith(f"forecast:{budget.pk}:")
    UsageEvent.objects.filter(event_id="e1").update(cost=Decimal("2"))
    rollups.rebuild(start=datetime(2025, 3, 4, tzinfo=UTC), end=at)
    budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    alert.refresh_from_db()
    assert alert.state == "resolved"
    assert Delivery.objects.filter(subject__startswith="Resolved: Forecast", channel__name="slack").count() == 1


def test_an_anomaly_fires_by_its_severity_and_resolves_when_closed(acme, research_dept, routed):
    from tests.test_anomalies import HOUR, build_history

    build_history(acme, research_dept, spike=Decimal(40))
    found = anomalies.score_tenant(tenant=acme, hour=HOUR)
    anomalies.notify_anomalies(tenant=acme, anomalies=found, now=HOUR + timedelta(hours=1))
    cost = Alert.objects.get(kind="anomaly", key="anomaly:research:cost")
    assert cost.severity == "critical" and cost.state == "firing"  # a high anomaly pages
    assert Delivery.objects.filter(channel__name="pager").count() == 1
    # The scorer (or a person) resolves the anomalies: the next run resolves the alerts.
    Anomaly.objects.update(status=Anomaly.Status.RESOLVED)
    anomalies.notify_anomalies(tenant=acme, anomalies=[], now=HOUR + timedelta(hours=2))
    cost.refresh_from_db()
    assert cost.state == "resolved"
    assert Delivery.objects.filter(channel__name="pager", subject__startswith="Resolved").count() == 1


@pytest.fixture
def quality_config(acme):
    route = make_route(tenant=acme, alias="judge")
    return EvalConfig.objects.create(
        tenant=acme, name="helpfulness", judge_route=route, criteria="Correct.", score_min=1, score_max=5,
        pass_threshold=Decimal("4"), sample_rate=Decimal("1"), slo_min_pass_rate=Decimal("0.8"), min_samples=10,
    )  # fmt: skip


def _verdicts(config, passed: int, failed: int, tag: str) -> None:
    at = timezone.now() - timedelta(minutes=30)
    for i in range(passed + failed):
        EvalScore.objects.create(
            tenant_id=config.tenant_id, config=config, event_id=f"{tag}-{i}", event_at=at, kind="rubric",
            status="ok", score=5 if i < passed else 1, normalized=1.0 if i < passed else 0.0, passed=i < passed,
        )  # fmt: skip


def test_a_quality_drop_fires_a_warning_and_resolves_when_the_pass_rate_recovers(acme, quality_config, routed):
    _verdicts(quality_config, passed=6, failed=4, tag="bad")
    assert [a.reason for a in evals.check_slo(config=quality_config)] == ["slo"]
    alert = Alert.objects.get(kind="quality_drop")
    assert (alert.severity, alert.key) == ("warning", f"quality:config:{quality_config.pk}:slo")
    assert Delivery.objects.get().channel.name == "slack"
    _verdicts(quality_config, passed=40, failed=0, tag="good")  # 46 of 50 = 92 %
    assert evals.check_slo(config=quality_config) == []
    alert.refresh_from_db()
    assert alert.state == "resolved"
    assert Delivery.objects.get(subject__startswith="Resolved").channel.name == "slack"


def calls(tenant, dept, n: int, *, at: datetime, status: str = "ok", latency_ms: int = 800, **extra) -> None:
    for _ in range(n):
        make_usage_event(tenant=tenant, department=dept, occurred_at=at, status=status, latency_ms=latency_ms, **extra)


def test_an_error_rate_spike_fires_and_resolves(acme, research_dept, sales_dept, routed):
    at = NOW - timedelta(minutes=5)
    calls(acme, research_dept, 20, at=at)
    calls(acme, research_dept, 10, at=at, status="error")  # 33 % of 30
    # Sales: 5 timeouts in 60 calls (8 %); the 55 cancelled streams were the callers' choice.
    calls(acme, sales_dept, 5, at=at, status="timeout")
    calls(acme, sales_dept, 55, at=at, status="cancelled")
    firing = alert_checks.check_tenant(tenant=acme, now=NOW)
    assert [(a.key, a.severity) for a in firing] == [("error_rate:research", "warning")]
    assert "10 of 30 calls from research failed" in firing[0].text
    assert Delivery.objects.get().channel.name == "slack"
    # Ten minutes later most of the window is healthy traffic.
    calls(acme, research_dept, 200, at=NOW + timedelta(minutes=5))
    assert alert_checks.check_tenant(tenant=acme, now=NOW + timedelta(minutes=10)) == []
    assert Delivery.objects.get(subject__startswith="Resolved").channel.name == "slack"


def test_half_the_calls_failing_is_critical(acme, research_dept, routed):
    calls(acme, research_dept, 25, at=NOW - timedelta(minutes=1), status="error")
    calls(acme, research_dept, 25, at=NOW - timedelta(minutes=1))
    (alert,) = alert_checks.check_tenant(tenant=acme, now=NOW)
    assert alert.severity == "critical" and sent_to(Delivery.objects.all()) == {"pager", "oncall mail"}
    # Traffic stops: nothing is failing any more.
    assert alert_checks.check_tenant(tenant=acme, now=NOW + timedelta(minutes=20)) == []


def test_a_latency_slo_breach_fires_and_resolves_with_the_tenants_threshold(acme, research_dept, routed, settings):
    settings.LLMOBS_ALERT_LATENCY_P95_MS = 30_000
    calls(acme, research_dept, 18, at=NOW - timedelta(minutes=3), latency_ms=1_000)
    calls(acme, research_dept, 2, at=NOW - timedelta(minutes=3), latency_ms=45_000)  # 10 % over 30 s
    (alert,) = alert_checks.check_tenant(tenant=acme, now=NOW)
    assert (alert.kind, alert.severity, alert.key) == ("latency_slo", "warning", "latency:research")
    assert alert.payload["p95_ms"] == 45_000 and "2 of 20 calls" in alert.text
    # One slow call in twenty is exactly 5 %: p95 is the fast one, within the SLO.
    acme.alert_latency_p95_ms = 60_000  # this tenant's own SLO
    acme.save()
    assert alert_checks.check_tenant(tenant=acme, now=NOW) == []
    alert.refresh_from_db()
    assert alert.state == "resolved"


def test_unpriced_events_warn_and_resolve_when_none_are_left(acme, research_dept, routed):
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=NOW - timedelta(minutes=30), model="mystery-1",
        cost=Decimal(0), cost_provenance=UsageEvent.Provenance.UNPRICED,
    )  # fmt: skip
    (alert,) = alert_checks.check_tenant(tenant=acme, now=NOW)
    assert (alert.kind, alert.severity, alert.title) == ("unpriced_events", "warning", "1 unpriced event in Acme")
    assert "openai/mystery-1 (1)" in alert.text
    assert alert_checks.check_tenant(tenant=acme, now=NOW + timedelta(hours=1)) == []
    assert Delivery.objects.filter(subject__startswith="Resolved: 1 unpriced event").count() == 1


def test_checks_stay_inside_each_tenant(acme, research_dept, other_tenant, other_dept, routed):
    calls(other_tenant, other_dept, 30, at=NOW - timedelta(minutes=1), status="error")
    assert alert_checks.check_tenant(tenant=acme, now=NOW) == []
    assert [a.tenant_id for a in alert_checks.check_tenant(tenant=other_tenant, now=NOW)] == [other_tenant.pk]
    assert not Delivery.objects.filter(channel__tenant=acme).exists()


def test_the_check_task_runs_every_five_minutes(acme, research_dept, settings):
    from telemetry.tasks import check_alerts

    assert settings.CELERY_BEAT_SCHEDULE["check-alerts"]["task"] == "telemetry.check_alerts"
    assert settings.CELERY_BEAT_SCHEDULE["check-alerts"]["schedule"] == 300.0
    calls(acme, research_dept, 30, at=timezone.now() - timedelta(minutes=1), status="error")
    assert check_alerts.apply().get() == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_one_budget_alert_per_threshold(acme, research_dept):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("chargeback", "0003_merge_20261123_1626")])
    old = executor.loader.project_state([("chargeback", "0003_merge_20261123_1626")]).apps
    BudgetAlert = old.get_model("chargeback", "BudgetAlert")
    Channel = old.get_model("chargeback", "NotificationChannel")
    budget = old.get_model("chargeback", "Budget").objects.create(
        tenant_id=acme.pk, name="b", department_id=research_dept.pk, amount=Decimal(10), thresholds=[50]
    )
    for name in ("mail", "hook"):
        channel = Channel.objects.create(tenant_id=acme.pk, name=name, kind="email", target="a@acme.example")
        BudgetAlert.objects.create(
            tenant_id=acme.pk, budget=budget, channel=channel, period_start=NOW, period_end=NOW, threshold=50,
            kind="threshold", spent=Decimal(6), message="m",
        )  # fmt: skip
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    from chargeback.models import BudgetAlert as Current

    assert Current.objects.filter(budget_id=budget.pk).count() == 1
