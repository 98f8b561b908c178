"""The 5-minute alert checks on recent raw events (docs/ALERTS.md): error-rate spikes and
latency SLO breaches per department over the last 15 minutes, and unpriced events over the
last hour. Each fires while the condition holds and resolves when it is gone.

Rollups are hourly, too coarse for a 15-minute window, so these read raw events: one
aggregate per tenant over `usage_tenant_time` (tenant, occurred_at), a few minutes of rows.
The latency check needs no percentile over the rows: p95 is above T exactly when more than
5 % of the calls took longer than T, which is a count.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from chargeback import alerting
from chargeback.models import Alert, AlertKind, Severity, Tenant
from telemetry.models import UsageEvent

WINDOW = timedelta(minutes=15)
UNPRICED_WINDOW = timedelta(hours=1)
# Failures of the provider or the gateway. A cancelled stream is the caller's choice and a
# blocked call is budget policy (it has its own alert), so neither counts as an error here.
ERROR_STATUSES = (UsageEvent.Status.ERROR, UsageEvent.Status.TIMEOUT, UsageEvent.Status.RATE_LIMITED)


def latency_threshold_ms(tenant: Tenant) -> int:
    return tenant.alert_latency_p95_ms or settings.LLMOBS_ALERT_LATENCY_P95_MS


def check_tenant(*, tenant: Tenant, now: datetime | None = None) -> list[Alert]:
    """Run the three checks for one tenant and send what they owe (grouped). Returns the alerts
    firing after the run."""
    now = now or timezone.now()
    with transaction.atomic():
        _check_errors_and_latency(tenant=tenant, now=now)
        _check_unpriced(tenant=tenant, now=now)
        alerting.send_pending(tenant=tenant, now=now)
    return list(
        Alert.objects.filter(
            tenant=tenant,
            state=Alert.State.FIRING,
            kind__in=(AlertKind.ERROR_RATE, AlertKind.LATENCY_SLO, AlertKind.UNPRICED_EVENTS),
        ).order_by("kind", "key")
    )


def check_all_tenants(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    return sum(len(check_tenant(tenant=tenant, now=now)) for tenant in Tenant.objects.order_by("pk"))


def _department_label(code: str) -> str:
    return code or "(unattributed)"


def _check_errors_and_latency(*, tenant: Tenant, now: datetime) -> None:
    threshold_ms = latency_threshold_ms(tenant)
    min_calls = settings.LLMOBS_ALERT_MIN_CALLS
    max_rate = settings.LLMOBS_ALERT_ERROR_RATE
    recent = UsageEvent.objects.filter(tenant=tenant, occurred_at__gte=now - WINDOW, occurred_at__lt=now)
    rows = (
        recent.values("department_code")
        .annotate(
            calls=Count("pk"),
            errors=Count("pk", filter=Q(status__in=ERROR_STATUSES)),
            timed=Count("latency_ms"),
            slow=Count("pk", filter=Q(latency_ms__gt=threshold_ms)),
        )
        .order_by("department_code")
    )
    seen: dict[str, dict[str, Any]] = {row["department_code"]: row for row in rows}
    minutes = int(WINDOW.total_seconds() // 60)

    # Error rate: fires above the threshold with enough calls to mean it; resolves at or under it
    # with enough calls, or when nothing was called at all. A trickle of calls decides nothing.
    for code, row in seen.items():
        key = f"error_rate:{code or '-'}"
        calls, errors = row["calls"], row["errors"]
        rate = errors / calls
        if calls >= min_calls and rate > max_rate:
            severity = Severity.CRITICAL if rate >= settings.LLMOBS_ALERT_ERROR_RATE_CRITICAL else Severity.WARNING
            alerting.fire(
                tenant=tenant, kind=AlertKind.ERROR_RATE, key=key, severity=severity, now=now,
                title=f"Error rate {rate:.0%} in {_department_label(code)}",
                text=(
                    f"{errors} of {calls} calls from {_department_label(code)} failed in the last {minutes} minutes "
                    f"({rate:.1%}; alert above {max_rate:.0%} with at least {min_calls} calls)."
                ),
                payload={"department": code, "calls": calls, "errors": errors, "error_rate": round(rate, 6)},
            )  # fmt: skip
        elif calls >= min_calls:
            alerting.resolve(
                tenant=tenant, kind=AlertKind.ERROR_RATE, key=key, now=now,
                text=f"{errors} of {calls} calls from {_department_label(code)} failed in the last {minutes} minutes ({rate:.1%}).",
            )  # fmt: skip
    alerting.resolve_all_but(
        tenant=tenant, kind=AlertKind.ERROR_RATE, keep={f"error_rate:{code or '-'}" for code in seen}, now=now,
        text=f"No calls in the last {minutes} minutes: nothing is failing.",
    )  # fmt: skip

    # Latency: p95 > T  ⇔  more than 5 % of the timed calls took longer than T.
    for code, row in seen.items():
        key = f"latency:{code or '-'}"
        timed, slow = row["timed"], row["slow"]
        if timed < min_calls:
            continue
        if slow * 20 > timed:
            p95 = _p95(recent.filter(department_code=code), timed)
            alerting.fire(
                tenant=tenant, kind=AlertKind.LATENCY_SLO, key=key, now=now,
                title=f"p95 latency {p95:,} ms in {_department_label(code)} (SLO {threshold_ms:,} ms)",
                text=(
                    f"{slow} of {timed} calls from {_department_label(code)} took longer than {threshold_ms:,} ms in "
                    f"the last {minutes} minutes; p95 is {p95:,} ms."
                ),
                payload={"department": code, "calls": timed, "slow_calls": slow, "p95_ms": p95, "slo_ms": threshold_ms},
            )  # fmt: skip
        else:
            alerting.resolve(
                tenant=tenant, kind=AlertKind.LATENCY_SLO, key=key, now=now,
                text=f"{slow} of {timed} calls from {_department_label(code)} took longer than {threshold_ms:,} ms; p95 is within the SLO.",
            )  # fmt: skip
    alerting.resolve_all_but(
        tenant=tenant, kind=AlertKind.LATENCY_SLO, keep={f"latency:{code or '-'}" for code in seen}, now=now,
        text=f"No calls in the last {minutes} minutes.",
    )  # fmt: skip


def _p95(queryset, timed: int) -> int:
    """Nearest-rank p95 of `timed` latencies, read as one row of a descending sort (only for a
    department already breaching, so rarely)."""
    from_top = timed - math.ceil(0.95 * timed)
    return (
        queryset.filter(latency_ms__isnull=False)
        .order_by("-latency_ms")
        .values_list("latency_ms", flat=True)[from_top : from_top + 1]
        .get()
    )


def _check_unpriced(*, tenant: Tenant, now: datetime) -> None:
    rows = list(
        UsageEvent.objects.filter(
            tenant=tenant,
            occurred_at__gte=now - UNPRICED_WINDOW,
            occurred_at__lt=now,
            cost_provenance=UsageEvent.Provenance.UNPRICED,
        )
        .values("provider", "model")
        .annotate(events=Count("pk"))
        .order_by("-events", "provider", "model")
    )
    if not rows:
        alerting.resolve(
            tenant=tenant, kind=AlertKind.UNPRICED_EVENTS, key="unpriced", now=now,
            text="No unpriced events in the last hour.",
        )  # fmt: skip
        return
    total = sum(r["events"] for r in rows)
    models = ", ".join(f"{r['provider']}/{r['model']} ({r['events']})" for r in rows[:10])
    alerting.fire(
        tenant=tenant, kind=AlertKind.UNPRICED_EVENTS, key="unpriced", now=now,
        title=f"{total} unpriced event{'s' if total != 1 else ''} in {tenant.name}",
        text=(
            f"{total} events in the last hour matched no price and are recorded as unpriced (not $0): {models}. "
            "Add or correct a ModelPrice, then re-price the period."
        ),
        payload={"events": total, "models": [{"provider": r["provider"], "model": r["model"], "events": r["events"]} for r in rows]},
    )  # fmt: skip
