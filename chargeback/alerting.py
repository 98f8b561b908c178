"""Alerts of every kind: severity, routing to channels, grouping, the re-notify window and the
resolve message (docs/ALERTS.md).

Sources (budgets, anomalies, the quality SLO, the 5-minute checks) call `fire` while a problem
holds and `resolve` when they see it recover, inside their own transaction; then once per
evaluation `send_pending`, which turns every owed notice of the tenant into ONE delivery per
channel listing them. What is owed is stored on the alert row (`pending_notice`), so a crash
between firing and sending only delays the message to the next evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chargeback.models import Alert, AlertKind, AlertRoute, Delivery, NotificationChannel, Severity, Tenant

# The default severity of each kind; a source may pass another (a budget at 100 % is critical).
DEFAULT_SEVERITY: dict[str, str] = {
    AlertKind.BUDGET_THRESHOLD: Severity.WARNING,
    AlertKind.BUDGET_FORECAST: Severity.WARNING,
    AlertKind.ANOMALY: Severity.WARNING,
    AlertKind.ERROR_RATE: Severity.CRITICAL,
    AlertKind.LATENCY_SLO: Severity.WARNING,
    AlertKind.QUALITY_DROP: Severity.WARNING,
    AlertKind.UNPRICED_EVENTS: Severity.WARNING,
}

# The section of docs/RUNBOOK.md each kind links to (GitHub-style heading anchors).
RUNBOOK: dict[str, str] = {
    AlertKind.BUDGET_THRESHOLD: "budget-threshold",
    AlertKind.BUDGET_FORECAST: "budget-forecast-overspend",
    AlertKind.ANOMALY: "anomaly",
    AlertKind.ERROR_RATE: "error-rate-spike",
    AlertKind.LATENCY_SLO: "latency-slo-breach",
    AlertKind.QUALITY_DROP: "quality-drop",
    AlertKind.UNPRICED_EVENTS: "unpriced-events",
}

# Budget keys carry their period (budget:12:20250301:80): one message per threshold per period,
# however often spend dips under and back over it. Every other kind re-sends a still-firing
# alert once per re-notify window.
NOTIFY_ONCE_KINDS = frozenset({AlertKind.BUDGET_THRESHOLD, AlertKind.BUDGET_FORECAST})

PLURALS = {
    AlertKind.BUDGET_THRESHOLD: "budget alerts",
    AlertKind.BUDGET_FORECAST: "budget forecasts",
    AlertKind.ANOMALY: "anomalies",
    AlertKind.ERROR_RATE: "error-rate alerts",
    AlertKind.LATENCY_SLO: "latency alerts",
    AlertKind.QUALITY_DROP: "quality alerts",
    AlertKind.UNPRICED_EVENTS: "unpriced-event alerts",
}

RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}


def renotify_window() -> timedelta:
    return timedelta(minutes=settings.LLMOBS_ALERT_RENOTIFY_MINUTES)


def runbook_url(kind: str) -> str:
    return f"{settings.LLMOBS_ALERT_RUNBOOK_URL}#{RUNBOOK[kind]}"


def budget_severity(threshold: int) -> str:
    """100 % and over pages someone; 80 % is a warning; lower thresholds are for information."""
    if threshold >= 100:
        return Severity.CRITICAL
    if threshold >= 80:
        return Severity.WARNING
    return Severity.INFO


def _firing(tenant: Tenant, kind: str, key: str) -> Alert | None:
    return Alert.objects.select_for_update().filter(tenant=tenant, kind=kind, key=key, state=Alert.State.FIRING).first()


def fire(
    *,
    tenant: Tenant,
    kind: str,
    key: str,
    title: str,
    text: str,
    severity: str | None = None,
    payload: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Alert:
    """Record that the problem `key` of this kind holds now. A new alert is owed a message; a
    still-firing one counts an occurrence and is owed one again only after the re-notify window,
    or at once when its severity rose above what was last sent."""
    now = now or timezone.now()
    severity = severity or DEFAULT_SEVERITY[kind]
    fields = {"title": title[:255], "text": text, "severity": severity, "payload": payload or {}, "last_fired_at": now}
    with transaction.atomic():
        alert = _firing(tenant, kind, key)
        if alert is None and kind in NOTIFY_ONCE_KINDS:
            alert = (
                Alert.objects.select_for_update()
                .filter(tenant=tenant, kind=kind, key=key)
                .order_by("-first_fired_at", "-pk")
                .first()
            )
        if alert is None:
            try:
                with transaction.atomic():
                    return Alert.objects.create(
                        tenant=tenant, kind=kind, key=key, runbook=RUNBOOK[kind], first_fired_at=now,
                        pending_notice=Alert.Notice.FIRING, **fields,
                    )  # fmt: skip
            except IntegrityError:
                # A concurrent evaluation fired it first (alert_one_firing_per_key).
                alert = _firing(tenant, kind, key)
                if alert is None:
                    raise
        for name, value in fields.items():
            setattr(alert, name, value)
        alert.occurrences += 1
        if alert.state == Alert.State.RESOLVED:  # a notify-once kind back over in the same period
            alert.state, alert.resolved_at, alert.resolve_text = Alert.State.FIRING, None, ""
            if alert.pending_notice == Alert.Notice.RESOLVED:
                alert.pending_notice = Alert.Notice.NONE  # the resolution was never sent: nothing to take back
        escalated = bool(alert.notified_severity) and RANK[severity] < RANK[alert.notified_severity]
        if kind in NOTIFY_ONCE_KINDS:
            due = alert.last_notified_at is None
        else:
            due = alert.last_notified_at is None or now - alert.last_notified_at >= renotify_window()
        if due or escalated:
            alert.pending_notice = Alert.Notice.FIRING
        alert.save()
    return alert


def resolve(
    *,
    tenant: Tenant,
    kind: str,
    key: str,
    text: str,
    payload: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Alert | None:
    """The source saw the metric recover: close the firing alert and owe a "Resolved" message
    to the channels that heard of it (none if it was never sent). None if nothing was firing."""
    now = now or timezone.now()
    with transaction.atomic():
        alert = _firing(tenant, kind, key)
        if alert is None:
            return None
        alert.state, alert.resolved_at, alert.resolve_text = Alert.State.RESOLVED, now, text
        if payload is not None:
            alert.payload = {**alert.payload, **payload}
        alert.pending_notice = Alert.Notice.RESOLVED if alert.last_notified_at else Alert.Notice.NONE
        alert.save()
    return alert


def resolve_all_but(*, tenant: Tenant, kind: str, keep: set[str], text: str, now: datetime | None = None) -> int:
    """Resolve every firing alert of `kind` whose key is not in `keep` (the keys the source still
    sees, or at least saw this run), with the same text. Returns how many were resolved."""
    firing = Alert.objects.filter(tenant=tenant, kind=kind, state=Alert.State.FIRING)
    gone = set(firing.values_list("key", flat=True)) - keep
    for key in gone:
        resolve(tenant=tenant, kind=kind, key=key, text=text, now=now)
    return len(gone)


# --- routing and sending ---------------------------------------------------------------------------


def channels_for(
    *, tenant: Tenant, kind: str, severity: str, routes: Iterable[AlertRoute] | None = None
) -> list[NotificationChannel]:
    """The enabled channels of the enabled routes matching kind and severity. With no enabled
    route at all, every enabled channel: tenants that never configured routing keep hearing of
    everything, as before routing existed."""
    routes = list(routes) if routes is not None else _routes(tenant)
    if not routes:
        return list(NotificationChannel.objects.filter(tenant=tenant, enabled=True).order_by("pk"))
    found: dict[int, NotificationChannel] = {}
    for route in routes:
        channel = route.channel
        if channel is None or not channel.enabled or channel.tenant_id != tenant.pk:
            continue  # dashboard only, switched off, or (never through the admin) another tenant's
        if route.matches(kind=kind, severity=severity):
            found[channel.pk] = channel
    return [found[pk] for pk in sorted(found)]


def _routes(tenant: Tenant) -> list[AlertRoute]:
    return list(AlertRoute.objects.filter(tenant=tenant, enabled=True).select_related("channel"))


def send_pending(*, tenant: Tenant, now: datetime | None = None) -> list[Delivery]:
    """Every notice the tenant's alerts owe, as one Delivery per channel listing them, sent after
    commit. Rows are claimed under a lock, so two evaluations never send the same notice."""
    from chargeback.tasks import deliver

    now = now or timezone.now()
    with transaction.atomic():
        alerts = list(
            Alert.objects.select_for_update(skip_locked=True)
            .filter(tenant=tenant)
            .exclude(pending_notice=Alert.Notice.NONE)
            .order_by("pk")
        )
        if not alerts:
            return []
        routes = _routes(tenant)
        groups: dict[int, tuple[NotificationChannel, list[Alert]]] = {}
        for alert in alerts:
            for channel in channels_for(tenant=tenant, kind=alert.kind, severity=alert.severity, routes=routes):
                groups.setdefault(channel.pk, (channel, []))[1].append(alert)
        deliveries = []
        for channel, group in groups.values():
            subject, text, payload = compose(tenant=tenant, alerts=group)
            reference = f"alert:{group[0].pk}" if len(group) == 1 else f"alerts:{tenant.pk}:{now:%Y%m%dT%H%M%S}"
            delivery = Delivery.objects.create(
                tenant=tenant, channel=channel, subject=subject[:255], text=text, payload=payload, reference=reference
            )
            deliveries.append(delivery)
        for alert in alerts:
            # Dashboard-only alerts count as notified too: the window applies to them the same.
            if alert.pending_notice == Alert.Notice.FIRING:
                alert.last_notified_at, alert.notified_severity = now, alert.severity
            alert.pending_notice = Alert.Notice.NONE
            alert.save(update_fields=["pending_notice", "last_notified_at", "notified_severity"])
        for delivery in deliveries:
            transaction.on_commit(lambda pk=delivery.pk: deliver.delay(pk))
    return deliveries


def compose(*, tenant: Tenant, alerts: list[Alert]) -> tuple[str, str, dict[str, Any]]:
    """Subject, text and JSON payload of one grouped message: firing alerts first (most severe
    first), then the resolved ones, each with its runbook link."""
    firing = sorted(
        (a for a in alerts if a.pending_notice == Alert.Notice.FIRING), key=lambda a: (RANK[a.severity], a.pk)
    )
    resolved = [a for a in alerts if a.pending_notice == Alert.Notice.RESOLVED]
    ordered = [*firing, *resolved]
    if len(ordered) == 1:
        subject = ordered[0].title if firing else f"Resolved: {ordered[0].title}"
    else:
        kinds = {a.kind for a in ordered}
        noun = PLURALS[next(iter(kinds))] if len(kinds) == 1 else "alerts"
        subject = f"{len(ordered)} {noun} in {tenant.name}"
        if not firing:
            subject = f"Resolved: {subject}"
    blocks = []
    for a in firing:
        since = (
            f" Firing since {a.first_fired_at:%Y-%m-%d %H:%M} UTC, seen {a.occurrences} times."
            if a.occurrences > 1
            else ""
        )
        blocks.append(f"[{a.severity}] {a.title}\n{a.text}{since}\nRunbook: {runbook_url(a.kind)}")
    for a in resolved:
        blocks.append(f"[resolved] {a.title}\n{a.resolve_text or 'Back to normal.'}\nRunbook: {runbook_url(a.kind)}")
    items = [
        {
            "id": a.pk, "kind": a.kind, "severity": a.severity, "key": a.key,
            "state": "firing" if a.pending_notice == Alert.Notice.FIRING else "resolved",
            "title": a.title, "text": a.text, "resolve_text": a.resolve_text, "occurrences": a.occurrences,
            "first_fired_at": a.first_fired_at.isoformat(),
            "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
            "runbook_url": runbook_url(a.kind), "details": a.payload,
        }
        for a in ordered
    ]  # fmt: skip
    payload: dict[str, Any] = {"type": "alerts", "tenant": tenant.slug, "alerts": items}
    if len(ordered) == 1:
        # Receivers written for the single-alert messages of before routing find their fields
        # (type, threshold_percent, …) where they were.
        payload = {**payload, **ordered[0].payload}
    return subject, "\n\n".join(blocks), payload
