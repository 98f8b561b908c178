"""Anomaly scoring: each tenant × department × metric's last full hour against a seasonal,
robust baseline read from the hourly rollups, with the driver (model, user, feature) named.

Baseline, best first: the same hour of the week over the last 4 weeks (≥ 3 weeks of history);
else the same hour of the day over the last 7 days (≥ 3 days); else the last 24 hours (≥ 6).
Expected = median × recent trend (last 7 days over the 7 before, clamped to [0.67, 1.5]);
spread = 1.4826 × MAD, floored so a flat history does not turn noise into alerts. The score is a
robust z-score; an anomaly also needs a material relative change and enough volume.
`score_point` is the pure function the task and `bench/anomalies` both call.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from chargeback import money
from chargeback.models import Delivery, Department, Tenant
from llmobs import units
from telemetry import rollups
from telemetry.models import Anomaly, DimensionRollup, HourlyRollup

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)
HISTORY = timedelta(days=35)
Z_THRESHOLD = 4.0


@dataclass(frozen=True)
class MetricRule:
    directions: tuple[str, ...]  # "up", "down"
    min_relative: float  # |observed - expected| / expected must reach this
    abs_floor: float  # the spread is never below this
    rel_floor: float  # … nor below this share of the expected value


RULES: dict[str, MetricRule] = {
    Anomaly.Metric.COST: MetricRule(("up", "down"), 0.5, 0.0001, 0.08),
    Anomaly.Metric.TOKENS: MetricRule(("up", "down"), 0.5, 50, 0.08),
    Anomaly.Metric.REQUESTS: MetricRule(("up", "down"), 0.5, 2, 0.08),
    Anomaly.Metric.ERROR_RATE: MetricRule(("up",), 1.0, 0.02, 0.1),
    Anomaly.Metric.P95_LATENCY: MetricRule(("up",), 0.5, 50, 0.1),
}
MIN_REQUESTS = 20  # error rate and p95 need this many requests in the hour to mean anything


@dataclass(frozen=True)
class Score:
    observed: float
    expected: float
    spread: float
    z: float
    baseline: str  # which baseline was used
    severity: str | None  # None = normal


def _baseline(
    history: Mapping[datetime, float], hour: datetime, first_seen: datetime, zero_fill: bool
) -> tuple[list[float], str]:
    def take(step: timedelta, count: int) -> list[float]:
        points = [hour - step * k for k in range(1, count + 1)]
        if zero_fill:  # an hour with no rollup row had no traffic
            return [history.get(p, 0.0) for p in points if p >= first_seen]
        return [history[p] for p in points if p in history]  # rates: a quiet hour has no value

    weekly = take(WEEK, 4)
    if len(weekly) >= 3:
        return weekly, "same hour of week, last 4 weeks"
    daily = take(timedelta(days=1), 7)
    if len(daily) >= 3:
        return daily, "same hour of day, last 7 days"
    return take(HOUR, 24), "last 24 hours"


def _trend(history: Mapping[datetime, float], hour: datetime, first_seen: datetime) -> float:
    if hour - 2 * WEEK < first_seen:
        return 1.0
    recent = sum(history.get(hour - HOUR * k, 0.0) for k in range(1, 169))
    before = sum(history.get(hour - WEEK - HOUR * k, 0.0) for k in range(1, 169))
    if recent <= 0 or before <= 0:
        return 1.0
    return min(1.5, max(0.67, recent / before))


# The log-ratio of an hour to the median of 4 earlier ones varies ≈ 0.83× as much as the
# ratio of two single hours a week apart (√(1 + 0.39) / √2 for a median of 4 normals).
LOG_SPREAD_FACTOR = 0.83
MIN_NOISE = 0.05


def _weekly_log_noise(history: Mapping[datetime, float], hour: datetime, first_seen: datetime) -> float | None:
    """1.4826 × MAD of ln(x[t] / x[t - 1 week]) over the past week's hours (None if < 24 pairs)."""
    ratios = []
    for k in range(1, 169):
        at = hour - HOUR * k
        if at - WEEK < first_seen:
            break
        now, before = history.get(at, 0.0), history.get(at - WEEK, 0.0)
        if now > 0 and before > 0:
            ratios.append(math.log(now / before))
    if len(ratios) < 24:
        return None
    center = statistics.median(ratios)
    return max(1.4826 * statistics.median(abs(r - center) for r in ratios), MIN_NOISE)


def score_point(
    *,
    metric: str,
    observed: float,
    history: Mapping[datetime, float],
    hour: datetime,
    first_seen: datetime,
    volume: int | None = None,
    expected_volume: float | None = None,
) -> Score | None:
    """Score one hour's value against its history (hour → value; a missing hour counts as 0).
    `volume` is the hour's request count and `expected_volume` its baseline (see
    `baseline_volume`): sums over few requests are noisy, and the spread accounts for it.
    None when there is not enough history to say anything."""
    rule = RULES[metric]
    zero_fill = metric in ("cost", "tokens", "requests")
    values, label = _baseline(history, hour, first_seen, zero_fill)
    if len(values) < (6 if label == "last 24 hours" else 3):
        return None
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    trend = _trend(history, hour, first_seen) if zero_fill else 1.0
    expected = median * trend
    spread = max(1.4826 * mad * trend, rule.abs_floor, rule.rel_floor * abs(expected))
    if metric == "requests":
        spread = max(spread, expected**0.5)  # counts are at least Poisson-noisy
    if metric in ("cost", "tokens") and expected_volume is not None:
        # A sum over n calls varies by at least ~1/√n of itself even when nothing changed.
        spread = max(spread, abs(expected) / max(expected_volume, 1.0) ** 0.5)
    if metric == "error_rate" and volume:
        rate = min(max(expected, 0.02), 0.98)
        spread = max(spread, (rate * (1 - rate) / volume) ** 0.5)  # binomial noise of a small hour
    z = (observed - expected) / spread
    if zero_fill and expected > 0:
        # Usage noise is multiplicative: also score the log-ratio against how much this series
        # moves week over week, and keep the more cautious of the two scores. Four weekly
        # points alone under-estimate the spread and would turn ordinary +50 % hours into alerts.
        # The linear score then keeps only its counting-noise floors (Poisson, 1/√n): a MAD of
        # four points is the weakest estimate in play.
        noise = _weekly_log_noise(history, hour, first_seen)
        if noise is not None:
            z_log = math.log(max(observed, expected * 0.01) / expected) / (noise * LOG_SPREAD_FACTOR)
            floors = [rule.abs_floor, rule.rel_floor * abs(expected)]
            if metric == "requests":
                floors.append(expected**0.5)
            elif expected_volume is not None:
                floors.append(abs(expected) / max(expected_volume, 1.0) ** 0.5)
            z_count = (observed - expected) / max(floors)
            z = math.copysign(min(abs(z_count), abs(z_log)), z)
    relative = abs(observed - expected) / max(abs(expected), rule.abs_floor)
    direction = "up" if z > 0 else "down"
    severity = None
    if abs(z) >= Z_THRESHOLD and relative >= rule.min_relative and direction in rule.directions:
        if abs(z) >= 8 and (relative >= 2 or (direction == "down" and relative >= 0.9)):
            severity = Anomaly.Severity.HIGH
        elif abs(z) >= 6 or relative >= 1:
            severity = Anomaly.Severity.MEDIUM
        else:
            severity = Anomaly.Severity.LOW
    return Score(observed=observed, expected=expected, spread=spread, z=z, baseline=label, severity=severity)


def baseline_volume(*, requests: Mapping[datetime, float], hour: datetime, first_seen: datetime) -> float | None:
    """The typical request count of this hour (median of the same baseline the scorer uses)."""
    values, _ = _baseline(requests, hour, first_seen, True)
    return statistics.median(values) if values else None


def _metric_values(point: dict[str, Any] | None) -> dict[str, float | None]:
    if point is None:
        return {"cost": 0.0, "tokens": 0.0, "requests": 0.0, "error_rate": None, "p95_latency": None}
    requests = point["requests"]
    p95 = rollups.percentile_from_histogram(point["latency"], 0.95) if sum(point["latency"]) >= MIN_REQUESTS else None
    return {
        "cost": float(point["cost"]),
        "tokens": float(point["tokens"]),
        "requests": float(requests),
        "error_rate": point["errors"] / requests if requests >= MIN_REQUESTS else None,
        "p95_latency": p95,
    }


def score_tenant(*, tenant: Tenant, hour: datetime) -> list[Anomaly]:
    """Score [hour, hour + 1h) for every department of the tenant; store anomalies (one row per
    department × metric × hour, updated on re-runs) and resolve the ones that stopped."""
    hour = hour.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    series = rollups.hourly_series(tenant_id=tenant.pk, start=hour - HISTORY, end=hour + HOUR, currency=tenant.currency)
    first_seen: dict[int, datetime] = {}
    for dept_id, at in series:
        first_seen[dept_id] = min(at, first_seen.get(dept_id, at))
    found: list[Anomaly] = []
    for dept_id, since in sorted(first_seen.items()):
        if since >= hour:
            continue  # a department seen for the first time has no baseline
        points = {at: _metric_values(p) for (d, at), p in series.items() if d == dept_id}
        current = points.get(hour) or _metric_values(None)
        typical = baseline_volume(
            requests={at: v["requests"] for at, v in points.items() if at < hour}, hour=hour, first_seen=since
        )
        for metric in RULES:
            observed = current[metric]
            if observed is None:
                continue
            history = {at: v[metric] for at, v in points.items() if at < hour and v[metric] is not None}
            score = score_point(
                metric=metric, observed=observed, history=history, hour=hour, first_seen=since,
                volume=int(current["requests"] or 0), expected_volume=typical,
            )  # fmt: skip
            department_id = dept_id or None
            if score is None or score.severity is None:
                Anomaly.objects.filter(
                    tenant=tenant, department_id=department_id, metric=metric, status=Anomaly.Status.OPEN, hour__lt=hour
                ).update(status=Anomaly.Status.RESOLVED)
                continue
            text, details = explain(tenant=tenant, department_id=dept_id, metric=metric, hour=hour, score=score)
            anomaly, _ = Anomaly.objects.update_or_create(
                tenant=tenant, department_id=department_id, metric=metric, hour=hour,
                defaults={
                    "observed": Decimal(str(round(score.observed, 6))), "expected": Decimal(str(round(score.expected, 6))),
                    "score": round(score.z, 3), "severity": score.severity, "explanation": text, "details": details,
                },
            )  # fmt: skip
            found.append(anomaly)
    return found


def _moves(rows: dict[str, float], baseline: dict[str, list[float]]) -> list[dict[str, Any]]:
    moves = []
    for key in set(rows) | set(baseline):
        before = statistics.median(baseline.get(key) or [0.0])
        moves.append(
            {
                "value": key,
                "observed": round(rows.get(key, 0.0), 6),
                "typical": round(before, 6),
                "delta": round(rows.get(key, 0.0) - before, 6),
            }
        )
    moves.sort(key=lambda m: -abs(m["delta"]))
    return moves[:3]


def _field_for(metric: str) -> str | None:
    return {"cost": "cost", "requests": "requests", "tokens": "output_tokens", "error_rate": "errors"}.get(metric)


def format_value(metric: str, value: float | Decimal | None, currency: str) -> str:
    """An anomaly metric's value in its unit, as pages, e-mailed reports and explanations show it."""
    if value is None:
        return units.NONE
    if metric == Anomaly.Metric.COST:
        amount = Decimal(str(value))
        # Below a cent, cents would round a model's share of an hour to "0.00": show four places.
        if amount and abs(amount) < Decimal("0.01"):
            return f"{amount.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)} {currency}"
        return money.format_money(amount, currency)
    if metric == Anomaly.Metric.ERROR_RATE:
        return units.format_rate(value)
    if metric == Anomaly.Metric.P95_LATENCY:
        return units.format_ms(value)
    return units.format_count(value)


def explain(
    *, tenant: Tenant, department_id: int, metric: str, hour: datetime, score: Score
) -> tuple[str, dict[str, Any]]:
    """Name what moved: per model in that hour against the same baseline hours, and per user
    and feature that local day against their median over the previous 7 days."""
    dept = (
        Department.objects.filter(pk=department_id, tenant=tenant).values_list("code", flat=True).first()
        or "(unattributed)"
    )
    label = dict(Anomaly.Metric.choices)[metric]
    direction = "above" if score.observed > score.expected else "below"
    ratio = score.observed / score.expected if score.expected else None

    def fmt(value: float) -> str:
        return format_value(metric, value, tenant.currency)

    observed, expected = fmt(score.observed), fmt(score.expected)
    # Past ±99 the exact z says nothing more (a near-flat history makes it huge).
    z = f"{score.z:.1f}" if abs(score.z) < 100 else f"{'>' if score.z > 0 else '< −'}99"
    head = (
        f"{label} for {dept} at {hour:%Y-%m-%d %H:00} UTC was {observed}, {direction} the expected {expected}"
        + (f" ({ratio:.1f}×)" if ratio else "")
        + f"; robust z = {z} ({score.baseline})."
    )
    details: dict[str, Any] = {
        "baseline": score.baseline,
        "z": round(score.z, 3),
        "spread": round(score.spread, 6),
        "drivers": {},
    }
    sentences = []
    field = _field_for(metric)
    if field:
        hours = [hour - WEEK * k for k in range(1, 5)]
        qs = HourlyRollup.objects.filter(tenant=tenant, department_id=department_id, hour__in=[hour, *hours])
        if field == "cost":
            qs = qs.filter(currency=tenant.currency)
        now_rows: dict[str, float] = {}
        base: dict[str, dict[datetime, float]] = {}
        for row in qs.values("model", "hour").annotate(v=Sum(field)).order_by():
            if row["hour"] == hour:
                now_rows[row["model"]] = float(row["v"])
            else:
                base.setdefault(row["model"], {})[row["hour"]] = float(row["v"])
        moves = _moves(now_rows, {m: [v.get(h, 0.0) for h in hours] for m, v in base.items()})
        details["drivers"]["model"] = moves
        if moves and moves[0]["delta"]:
            top = moves[0]
            sentences.append(f"Model {top['value']}: {fmt(top['observed'])} vs typically {fmt(top['typical'])}.")
        if metric in ("cost", "requests", "tokens"):
            day = hour.astimezone(tenant.tz).date()
            days = [day - timedelta(days=k) for k in range(0, 8)]
            dim_field = "cost" if metric == "cost" else ("requests" if metric == "requests" else "output_tokens")
            for dimension in ("user", "feature"):
                dq = DimensionRollup.objects.filter(
                    tenant=tenant, department_id=department_id, dimension=dimension, day__in=days
                )
                if metric == "cost":
                    dq = dq.filter(currency=tenant.currency)
                today: dict[str, float] = {}
                before: dict[str, list[float]] = {}
                for row in dq.values("value", "day").annotate(v=Sum(dim_field)).order_by():
                    if row["day"] == day:
                        today[row["value"]] = float(row["v"])
                    else:
                        before.setdefault(row["value"], []).append(float(row["v"]))
                for values in before.values():
                    values.extend([0.0] * (7 - len(values)))
                moves = _moves(today, before)
                details["drivers"][dimension] = moves
                if moves and moves[0]["delta"] > 0 and direction == "above":
                    top = moves[0]
                    sentences.append(
                        f"Top {dimension} today: {top['value'] or '(none)'} at {fmt(top['observed'])} vs a typical day's {fmt(top['typical'])}."
                    )
    return " ".join([head, *sentences]), details


# An anomaly's severity as an alert severity (docs/ALERTS.md): a high anomaly pages.
ALERT_SEVERITY = {
    Anomaly.Severity.HIGH: "critical",
    Anomaly.Severity.MEDIUM: "warning",
    Anomaly.Severity.LOW: "info",
}


def alert_key(*, department_code: str, metric: str) -> str:
    return f"anomaly:{department_code or '-'}:{metric}"


def notify_anomalies(*, tenant: Tenant, anomalies: list[Anomaly], now: datetime | None = None) -> Delivery | None:
    """Fire one alert per department × metric with an open anomaly, resolve the ones whose
    anomalies are all resolved (the scorer resolves an anomaly when a later hour is normal),
    and send what is owed: one grouped message per channel, a still-open anomaly again only
    after the re-notify window (chargeback.alerting). Returns the first delivery, if any."""
    from chargeback import alerting
    from chargeback.models import AlertKind

    now = now or timezone.now()
    codes = dict(Department.objects.filter(tenant=tenant).values_list("pk", "code"))
    labels = dict(Anomaly.Metric.choices)
    order = {Anomaly.Severity.HIGH: 0, Anomaly.Severity.MEDIUM: 1, Anomaly.Severity.LOW: 2}
    fresh = sorted(
        (a for a in anomalies if a.status == Anomaly.Status.OPEN), key=lambda a: (order[a.severity], -abs(a.score))
    )
    with transaction.atomic():
        for a in fresh:
            code = codes.get(a.department_id, "")
            alerting.fire(
                tenant=tenant, kind=AlertKind.ANOMALY, key=alert_key(department_code=code, metric=a.metric),
                severity=ALERT_SEVERITY[a.severity], title=f"{labels[a.metric]} anomaly in {code or '(unattributed)'}",
                text=f"[{a.severity}] {a.explanation}",
                payload={
                    "type": "anomaly", "id": a.pk, "department": code, "metric": a.metric, "severity": a.severity,
                    "hour": a.hour.isoformat(), "score": a.score, "observed": str(a.observed),
                    "expected": str(a.expected), "explanation": a.explanation,
                },
                now=now,
            )  # fmt: skip
        Anomaly.objects.filter(pk__in=[a.pk for a in fresh], notified_at__isnull=True).update(notified_at=now)
        still_open = {
            alert_key(department_code=codes.get(dept_id, ""), metric=metric)
            for dept_id, metric in Anomaly.objects.filter(
                tenant=tenant, status__in=(Anomaly.Status.OPEN, Anomaly.Status.ACKNOWLEDGED)
            ).values_list("department_id", "metric")
        }
        alerting.resolve_all_but(
            tenant=tenant, kind=AlertKind.ANOMALY, keep=still_open, now=now,
            text="The last scored hour was back within its normal range (or the anomaly was closed by hand).",
        )  # fmt: skip
        deliveries = alerting.send_pending(tenant=tenant, now=now)
    return deliveries[0] if deliveries else None


def score_all_tenants(*, now: datetime | None = None) -> list[Anomaly]:
    """The hourly task: score the last full hour for every tenant and notify (and resolve)."""
    now = now or timezone.now()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    found: list[Anomaly] = []
    for tenant in Tenant.objects.all():
        anomalies = score_tenant(tenant=tenant, hour=hour)
        notify_anomalies(tenant=tenant, anomalies=anomalies, now=now)
        found.extend(anomalies)
    return found


def acknowledge(*, anomaly: Anomaly, user) -> Anomaly:
    """Mark an open anomaly acknowledged (idempotent: a second ack keeps the first)."""
    Anomaly.objects.filter(pk=anomaly.pk, status=Anomaly.Status.OPEN).update(
        status=Anomaly.Status.ACKNOWLEDGED, acknowledged_by=user, acknowledged_at=timezone.now()
    )
    anomaly.refresh_from_db()
    return anomaly


def resolve(*, anomaly: Anomaly, user) -> Anomaly:
    """Close an open or acknowledged anomaly by hand (the scorer also resolves the ones that
    stop). Idempotent; the person who closed it is in the audit log (the row has no column
    for it: acknowledgement is the only hand-made state the scorer needs to know about)."""
    from chargeback import audit  # chargeback owns the audit trail

    with transaction.atomic():
        before = Anomaly.objects.filter(pk=anomaly.pk).values_list("status", flat=True).first()
        changed = Anomaly.objects.filter(
            pk=anomaly.pk, status__in=(Anomaly.Status.OPEN, Anomaly.Status.ACKNOWLEDGED)
        ).update(status=Anomaly.Status.RESOLVED)
        anomaly.refresh_from_db()
        if changed:
            audit.record(
                tenant=anomaly.tenant,
                actor=user,
                action="anomaly.resolve",
                obj=anomaly,
                changes={"status": {"before": before, "after": Anomaly.Status.RESOLVED}},
            )
    return anomaly
