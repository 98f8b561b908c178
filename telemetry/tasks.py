"""Celery tasks of the telemetry app: the every-minute rollup, the slower per-dimension rollup
and the hourly anomaly scorer. Each takes primitives and calls one domain function; each is
safe to run twice (buckets are recomputed whole; anomalies are unique per metric and hour),
plus the hourly purge of expired captured content and the daily purge of raw events past
their retention."""

from __future__ import annotations

from celery import shared_task
from django.db import transaction

from telemetry import anomalies, capture, evals, rollups


@shared_task(name="telemetry.roll_up", soft_time_limit=50, time_limit=60, ignore_result=True)
def roll_up() -> int:
    from chargeback.tasks import evaluate_budgets

    result = rollups.roll_up_pending()
    # Budgets read the rollups just written: evaluate them after this commit, one task per tenant.
    for tenant_id in sorted(result.tenants):
        transaction.on_commit(lambda t=tenant_id: evaluate_budgets.delay(t))
    return result.hours


@shared_task(name="telemetry.roll_up_dimensions", soft_time_limit=240, time_limit=300, ignore_result=True)
def roll_up_dimensions() -> int:
    return rollups.roll_up_dimensions_pending().days


@shared_task(name="telemetry.roll_up_range", soft_time_limit=3000, time_limit=3600, ignore_result=True)
def roll_up_range(start_iso: str, end_iso: str, tenant_id: int | None = None) -> int:
    from datetime import datetime

    return rollups.rebuild(
        start=datetime.fromisoformat(start_iso), end=datetime.fromisoformat(end_iso), tenant_id=tenant_id
    ).hours


@shared_task(name="telemetry.score_anomalies", soft_time_limit=240, time_limit=300, ignore_result=True)
def score_anomalies() -> int:
    return len(anomalies.score_all_tenants())


@shared_task(name="telemetry.purge_captures", soft_time_limit=240, time_limit=300, ignore_result=True)
def purge_captures() -> int:
    return capture.purge_expired_captures()


@shared_task(name="telemetry.ensure_partitions", soft_time_limit=1700, time_limit=1800, ignore_result=True)
def ensure_partitions() -> int:
    """Daily (PostgreSQL): the usage table's partitions for this month and the next three, and
    a partition of its own for any month that has rows in the DEFAULT partition."""
    from telemetry import partitions

    return len(partitions.ensure_partitions().created)


@shared_task(name="telemetry.purge_usage", soft_time_limit=3300, time_limit=3600, ignore_result=True)
def purge_usage() -> int:
    """Daily: delete raw events past LLMOBS_RAW_RETENTION_DAYS (rollups keep the history)."""
    from telemetry import retention

    return retention.purge_usage_events().deleted


@shared_task(
    bind=True, name="telemetry.send_reports", soft_time_limit=1700, time_limit=1800, max_retries=3, ignore_result=True
)
def send_reports(self, kind: str, as_of_iso: str | None = None, tenant_slug: str | None = None) -> int:
    """E-mail every tenant's reports for the last complete `kind` period. Sent reports are
    recorded (ReportDelivery), so a retry or a second beat run only sends what is missing."""
    from datetime import date

    from telemetry import reports

    results = reports.send_reports(
        kind=kind, as_of=date.fromisoformat(as_of_iso) if as_of_iso else None, tenant_slug=tenant_slug
    )
    failed = [r for r in results if r.outcome == "failed"]
    if failed and not self.request.is_eager:
        # SMTP trouble is transient more often than not; the sent ones are skipped on retry.
        raise self.retry(countdown=600)
    return sum(1 for r in results if r.outcome == "sent")


@shared_task(name="telemetry.export_warehouse", soft_time_limit=3300, time_limit=3600, ignore_result=True)
def export_warehouse(day_iso: str | None = None, days: int | None = None, tenant_slug: str | None = None) -> int:
    """The nightly export: by default the last LLMOBS_EXPORT_DAYS UTC days ending yesterday."""
    from datetime import date, timedelta

    from django.conf import settings
    from django.utils import timezone

    from telemetry import warehouse

    day = date.fromisoformat(day_iso) if day_iso else timezone.now().date() - timedelta(days=1)
    result = warehouse.export_warehouse(day=day, days=days or settings.LLMOBS_EXPORT_DAYS, tenant_slug=tenant_slug)
    return sum(result.rows.values())


@shared_task(name="telemetry.run_evals", soft_time_limit=780, time_limit=840, ignore_result=True)
def run_evals() -> int:
    """Judge sampled production calls for every enabled EvalConfig (idempotent: unique per
    config and event), refresh the quality gauges and fire SLO alerts (once per day)."""
    return sum(r.scored for r in evals.run_all().values())


@shared_task(name="telemetry.check_alerts", soft_time_limit=240, time_limit=290, ignore_result=True)
def check_alerts() -> int:
    """Every 5 minutes: error-rate, latency-SLO and unpriced-event checks for every tenant (fire,
    re-fire, resolve; chargeback.alerting keeps it to one message per window). Returns the
    number of those alerts firing."""
    from telemetry import alert_checks

    return alert_checks.check_all_tenants()
