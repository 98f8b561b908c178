"""Budget thresholds fire once per period per channel (tenant time zone, DST included), resolve
when spend falls back, and reach webhooks, Slack and e-mail with retries and recorded failures."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from chargeback import budgets, notify
from chargeback.models import Budget, BudgetAlert, Delivery, NotificationChannel
from telemetry import rollups
from telemetry.models import UsageEvent
from tests.factories import make_budget, make_channel, make_usage_event

PORT_BASE = 8510


class Receiver:
    """A local HTTP endpoint that records JSON bodies and answers with scripted status codes."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    for port in range(PORT_BASE, PORT_BASE + 20):
        try:
            r = Receiver(port)
            break
        except OSError:
            continue
    yield r
    r.close()


@pytest.fixture
def eager_celery():
    """Run tasks in-process even when REDIS_URL configures a real broker (no worker here)."""
    from llmobs.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def webhook(acme, receiver) -> NotificationChannel:
    return make_channel(tenant=acme, name="hook", kind=NotificationChannel.Kind.WEBHOOK, target=receiver.url)


def spend(tenant, department, amount: str, at: datetime) -> None:
    make_usage_event(tenant=tenant, department=department, occurred_at=at, cost=Decimal(amount))
    rollups.roll_up_pending()


def test_each_threshold_fires_once_per_period_and_reaches_every_channel(
    acme, research_dept, webhook, receiver, eager_celery
):
    # One BudgetAlert per threshold (no longer one per channel: alert routes pick the channels).
    email = make_channel(tenant=acme)
    budget = make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[50, 80, 100])
    at = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
    spend(acme, research_dept, "6", at - timedelta(days=1))
    fired = budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    assert [(a.threshold, a.kind, a.channel_id) for a in fired] == [(50, "threshold", None)]
    assert sorted(Delivery.objects.values_list("channel_id", flat=True)) == sorted([email.pk, webhook.pk])
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=at) == []  # evaluated again: nothing new
    spend(acme, research_dept, "4.5", at - timedelta(hours=2))
    fired = budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    assert sorted({(a.threshold, a.kind) for a in fired}) == [(80, "threshold"), (100, "threshold")]
    assert BudgetAlert.objects.filter(budget=budget).count() == 3
    # 80 % and 100 % crossed in one evaluation: one grouped message per channel, not two.
    assert Delivery.objects.count() == 4
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=at + timedelta(hours=1)) == []
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=at + timedelta(days=2)) == []
    assert Delivery.objects.count() == 4  # a budget threshold is sent once per period, not per window


def test_alerts_are_delivered_to_a_webhook_and_by_email(
    acme, research_dept, webhook, receiver, django_capture_on_commit_callbacks, eager_celery
):
    make_channel(tenant=acme)
    make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[50])
    at = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
    spend(acme, research_dept, "5", at - timedelta(days=1))
    with django_capture_on_commit_callbacks(execute=True):
        budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    assert Delivery.objects.filter(status=Delivery.Status.SENT).count() == 2
    (body,) = receiver.bodies
    assert body["type"] == "budget_alert" and body["threshold_percent"] == 50
    assert body["spent"] == "5.0000000000" and body["currency"] == "USD"
    assert body["period"]["start"] == "2025-03-01T00:00:00+01:00"
    (message,) = mail.outbox
    assert message.subject == "Budget research monthly reached 50%"
    assert "spent 5.00 USD of 10.00 USD (50.00%) for 2025-03-01 to 2025-04-01" in message.body


def test_a_slack_channel_gets_a_text_message(
    acme, research_dept, receiver, django_capture_on_commit_callbacks, eager_celery
):
    make_channel(tenant=acme, name="slack", kind=NotificationChannel.Kind.SLACK, target=receiver.url)
    make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[100])
    spend(acme, research_dept, "11", datetime(2025, 3, 19, tzinfo=UTC))
    with django_capture_on_commit_callbacks(execute=True):
        budgets.evaluate_budgets(tenant_id=acme.pk, at=datetime(2025, 3, 20, tzinfo=UTC))
    (body,) = receiver.bodies
    assert set(body) == {"text"} and body["text"].startswith("*Budget research monthly reached 100%*")


def test_delivery_retries_transient_failures_then_succeeds(acme, webhook, receiver):
    receiver.statuses = [503, 500]
    (delivery,) = notify.queue_notification(tenant=acme, subject="s", text="t", payload={"a": 1}, reference="test:1")
    for _ in range(2):
        with pytest.raises(notify.DeliveryError, match="HTTP 50"):
            notify.attempt_delivery(delivery_id=delivery.pk, final=False)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error[:8]) == ("pending", 2, "HTTP 500")
    notify.attempt_delivery(delivery_id=delivery.pk, final=False)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 3, "")
    assert len(receiver.bodies) == 3 and receiver.bodies[-1]["a"] == 1
    # A duplicate task run does not send twice.
    notify.attempt_delivery(delivery_id=delivery.pk, final=False)
    assert len(receiver.bodies) == 3


def test_the_deliver_task_gives_up_after_its_retries_and_records_the_failure(acme, webhook, receiver, eager_celery):
    from chargeback.tasks import deliver

    receiver.statuses = [503] * notify.MAX_ATTEMPTS
    (delivery,) = notify.queue_notification(tenant=acme, subject="s", text="t", payload={}, reference="test:2")
    deliver.apply(args=[delivery.pk])  # eager: the retries run back to back
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", notify.MAX_ATTEMPTS)
    assert "HTTP 503" in delivery.last_error


def test_an_unreachable_receiver_and_a_4xx_fail_cleanly(acme):
    dead = make_channel(tenant=acme, name="dead", kind="webhook", target="http://127.0.0.1:8549/nothing-listens")
    delivery = Delivery.objects.create(tenant=acme, channel=dead, subject="s", text="t")
    with pytest.raises(notify.DeliveryError, match="ConnectError"):
        notify.attempt_delivery(delivery_id=delivery.pk, final=False)
    notify.attempt_delivery(delivery_id=delivery.pk, final=True)
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 2


def test_a_rejected_message_is_not_retried(acme, webhook, receiver):
    receiver.statuses = [404]
    (delivery,) = notify.queue_notification(tenant=acme, subject="s", text="t", payload={}, reference="test:3")
    notify.attempt_delivery(delivery_id=delivery.pk, final=False)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 1) and "HTTP 404" in delivery.last_error


def test_alerts_resolve_when_spend_falls_back_and_at_period_change(acme, research_dept, webhook):
    make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[50])
    at = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=at - timedelta(days=1), cost=Decimal("6"), event_id="big"
    )
    rollups.roll_up_pending()
    budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    # A re-price brings the event down: rebuild the day, evaluate again → resolved, with a notice.
    UsageEvent.objects.filter(event_id="big").update(cost=Decimal("1"))
    rollups.rebuild(start=at - timedelta(days=2), end=at)
    budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    alert = BudgetAlert.objects.get()
    assert alert.state == "resolved" and alert.resolved_at == at
    assert Delivery.objects.filter(subject__startswith="Resolved").count() == 1
    # Back over in the same period: firing again, but not notified twice.
    UsageEvent.objects.filter(event_id="big").update(cost=Decimal("7"))
    rollups.rebuild(start=at - timedelta(days=2), end=at)
    assert [a for a in budgets.evaluate_budgets(tenant_id=acme.pk, at=at) if a.kind == "threshold"] == []
    assert BudgetAlert.objects.get(kind="threshold").state == "firing"
    # April: March's alert closes; nothing spent yet in April, nothing fires.
    april = datetime(2025, 4, 2, tzinfo=UTC)
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=april) == []
    assert set(BudgetAlert.objects.values_list("state", flat=True)) == {"resolved"}


def test_daily_budgets_follow_local_days_across_a_dst_change(acme, research_dept, webhook):
    # Europe/Paris springs forward on 2025-03-30: that local day is 23 hours long.
    budget = make_budget(
        tenant=acme, department=research_dept, amount=Decimal("10"), period=Budget.Period.DAY, thresholds=[100]
    )
    bounds = budget.period_bounds(datetime(2025, 3, 30, 12, tzinfo=UTC))
    assert bounds.start == datetime(2025, 3, 29, 23, tzinfo=UTC) and bounds.length == timedelta(hours=23)
    # 22:30 UTC on the 29th is 23:30 in Paris (the 29th); 23:30 UTC is 01:30 on the 30th.
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2025, 3, 29, 22, 30, tzinfo=UTC), cost=Decimal("9")
    )
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2025, 3, 29, 23, 30, tzinfo=UTC), cost=Decimal("6")
    )
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2025, 3, 30, 21, 30, tzinfo=UTC), cost=Decimal("5")
    )
    rollups.roll_up_pending()
    assert budgets.budget_status(budget=budget, at=datetime(2025, 3, 29, 22, 45, tzinfo=UTC)).spent == Decimal("9")
    on_30th = budgets.budget_status(budget=budget, at=datetime(2025, 3, 30, 21, 45, tzinfo=UTC))
    assert on_30th.spent == Decimal("11") and on_30th.state == "exceeded"
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=datetime(2025, 3, 29, 22, 45, tzinfo=UTC)) == []
    (fired,) = budgets.evaluate_budgets(tenant_id=acme.pk, at=datetime(2025, 3, 30, 21, 45, tzinfo=UTC))
    assert fired.period_start == datetime(2025, 3, 29, 23, tzinfo=UTC)
    assert budgets.evaluate_budgets(tenant_id=acme.pk, at=datetime(2025, 3, 30, 21, 59, tzinfo=UTC)) == []
    # 22:00 UTC on the 30th is already the 31st in Paris (CEST): a new period, nothing spent.
    assert budgets.budget_status(budget=budget, at=datetime(2025, 3, 30, 22, 0, tzinfo=UTC)).spent == Decimal(0)


def test_forecast_warns_ahead_of_an_overspend(acme, research_dept, webhook):
    budget = make_budget(tenant=acme, department=research_dept, amount=Decimal("30"), thresholds=[100])
    # 8 days into a 31-day March, 10 spent: heading for ~38.75, reaching 30 after 24 days.
    spend(acme, research_dept, "10", datetime(2025, 3, 5, tzinfo=UTC))
    at = datetime(2025, 3, 8, 23, 0, tzinfo=UTC)
    status = budgets.budget_status(budget=budget, at=at)
    assert status.state == "warning" and status.forecast > Decimal("30")
    assert (
        status.run_out_at is not None
        and status.run_out_at.astimezone(acme.tz).isoformat() == "2025-03-25T00:00:00+01:00"
    )
    (fired,) = budgets.evaluate_budgets(tenant_id=acme.pk, at=at)
    assert (fired.kind, fired.threshold) == ("forecast", 100)
    assert "running out around 2025-03-25 00:00" in fired.message
    # Too early in the period to extrapolate: no forecast alert on day 2.
    other = make_budget(
        tenant=acme, department=research_dept, amount=Decimal("30"), thresholds=[100], name="early", period="week"
    )
    assert budgets.budget_status(budget=other, at=datetime(2025, 3, 3, 1, tzinfo=UTC)).forecast_reliable is False
