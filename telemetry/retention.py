"""Retention of raw usage events: rows older than LLMOBS_RAW_RETENTION_DAYS are deleted in
batches. Rollups (hourly, daily, per-dimension) and invoices are never touched, so reports,
budgets and invoices keep the whole history; only drill-down to single events, `reprice` and
rollup rebuilds need the raw rows, and those stop at the horizon (docs/OPERATIONS.md).

Two horizons keep a purged day from ever being re-rolled from partial raw rows: the purge
deletes events before UTC midnight `retention` days ago, while ingest refuses events older
than `retention - INGEST_MARGIN` days and rollup rebuilds start no earlier than that either.
A late event therefore always lands in a local day (±14 h time zones) whose raw rows are whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from chargeback.models import Tenant
from telemetry import partitions
from telemetry.models import UsageEvent

log = logging.getLogger(__name__)

INGEST_MARGIN = timedelta(days=2)
MIN_RETENTION_DAYS = 7
DEFAULT_BATCH = 5000


class RetentionError(ValueError):
    pass


def retention_days(*, strict: bool = True) -> int:
    """The setting; a value below the minimum makes the purge refuse to run (strict) and is
    read as the minimum by ingest and rebuilds, which must not fail on it."""
    days = settings.LLMOBS_RAW_RETENTION_DAYS
    if 0 < days < MIN_RETENTION_DAYS:
        if strict:
            raise RetentionError(
                f"LLMOBS_RAW_RETENTION_DAYS={days}: must be 0 (keep forever) or at least {MIN_RETENTION_DAYS}."
            )
        return MIN_RETENTION_DAYS
    return days


def purge_horizon(*, now: datetime | None = None, days: int | None = None) -> datetime | None:
    """Raw events that occurred before this instant are purged (UTC midnight); None = keep all."""
    days = retention_days() if days is None else days
    if days <= 0:
        return None
    cutoff = (now or timezone.now()).astimezone(UTC) - timedelta(days=days)
    return cutoff.replace(hour=0, minute=0, second=0, microsecond=0)


def earliest_raw_write(*, now: datetime | None = None) -> datetime | None:
    """The oldest occurrence time ingest accepts and a rollup rebuild reads; None = no limit."""
    horizon = purge_horizon(now=now, days=retention_days(strict=False))
    return None if horizon is None else horizon + timedelta(days=1) + INGEST_MARGIN


@dataclass
class PurgeResult:
    horizon: datetime | None
    deleted: int = 0
    batches: int = 0
    partitions_dropped: list[str] = field(default_factory=list)


# PostgreSQL: delete one batch of a tenant's expired rows and their ledger keys together.
_DELETE_BATCH = (
    # The outer occurred_at bound lets PostgreSQL skip the months after the horizon.
    f'WITH gone AS (DELETE FROM "{partitions.TABLE}" WHERE occurred_at < %s AND id IN ('  # noqa: S608
    f'SELECT id FROM "{partitions.TABLE}" WHERE tenant_id = %s AND occurred_at < %s LIMIT %s) '
    "RETURNING tenant_id, event_id), "
    f'keys AS (DELETE FROM "{partitions.KEY_TABLE}" k USING gone g '
    "WHERE k.tenant_id = g.tenant_id AND k.event_id = g.event_id) "
    "SELECT count(*) FROM gone"
)


def purge_usage_events(
    *,
    now: datetime | None = None,
    days: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PurgeResult:
    """Delete raw events older than the horizon. On PostgreSQL whole months before the horizon
    are dropped as partitions (telemetry/partitions.py) with their ledger keys; what is left
    (the month the horizon cuts through, rows in the DEFAULT partition, and everything on
    SQLite) is deleted tenant by tenant (the (tenant, occurred_at) index serves each batch), one
    short transaction per batch so a long purge never holds locks for long and a killed run
    just leaves fewer rows to delete next time."""
    horizon = purge_horizon(now=now, days=days)
    result = PurgeResult(horizon=horizon)
    if horizon is None:
        return result
    dropped = partitions.drop_months_before(horizon, dry_run=dry_run)
    result.partitions_dropped = dropped.dropped
    if not dry_run:  # a dry run counts those rows below, with the rest
        result.deleted += dropped.rows
    if progress and dropped.dropped:
        progress(f"dropped {len(dropped.dropped)} monthly partitions ({dropped.rows:,} events)")
    postgresql = partitions.is_postgresql()
    for tenant_id in Tenant.objects.order_by("pk").values_list("pk", flat=True):
        old = UsageEvent.objects.filter(tenant_id=tenant_id, occurred_at__lt=horizon)
        if dry_run:
            result.deleted += old.count()
            continue
        while True:
            with transaction.atomic():
                if postgresql:
                    with connection.cursor() as cursor:
                        cursor.execute(_DELETE_BATCH, [horizon, tenant_id, horizon, batch_size])
                        (deleted,) = cursor.fetchone()
                else:
                    ids = list(old.values_list("pk", flat=True)[:batch_size])
                    deleted = UsageEvent.objects.filter(pk__in=ids).delete()[0] if ids else 0
            if not deleted:
                break
            result.deleted += deleted
            result.batches += 1
            if progress:
                progress(f"tenant {tenant_id}: {result.deleted} events deleted so far")
    log.info(
        "purge_usage: %d raw events before %s deleted (%d partitions dropped, %d batches)",
        result.deleted,
        horizon,
        len(result.partitions_dropped),
        result.batches,
    )
    return result
