"""Budget status and alerts: period spend (from rollups), forecast, run-out date, and the
threshold and forecast alerts that fire once per budget × period × threshold (routed to
channels by `chargeback.alerting`).

Evaluated after each rollup; every comparison happens in the tenant's time zone and calendar
period (`Budget.period_bounds`). The unique key on BudgetAlert is what makes re-evaluation
harmless; the alert key carries the period, so a threshold is sent once per period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from chargeback import alerting, money
from chargeback.models import AlertKind, Budget, BudgetAlert, PeriodBounds, Severity, Tenant

# A forecast extrapolates the period's average rate; before a fifth of the period has passed
# (e.g. the first six days of a month) one busy morning would predict an overspend.
FORECAST_MIN_ELAPSED = Decimal("0.2")
FORECAST_THRESHOLD = 100


class State:
    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    bounds: PeriodBounds
    spent: Decimal
    percent: Decimal  # of the amount, 2 decimal places
    forecast: Decimal | None  # spend at period end at the period's average rate so far
    run_out_at: datetime | None  # when spend reaches the amount at that rate (None: not before the period ends)
    state: str
    forecast_reliable: bool  # enough of the period has passed to extrapolate

    @property
    def limit(self) -> Decimal:
        return self.budget.amount


def budget_status(*, budget: Budget, at: datetime | None = None) -> BudgetStatus:
    from telemetry.rollups import period_spend  # telemetry owns the rollups; import at call time

    at = at or timezone.now()
    bounds = budget.period_bounds(at)
    spent = period_spend(budget=budget, bounds=bounds)
    amount = budget.amount
    percent = (spent * 100 / amount).quantize(Decimal("0.01")) if amount > 0 else Decimal(0)
    elapsed = Decimal((min(at, bounds.end) - bounds.start).total_seconds())
    length = Decimal(bounds.length.total_seconds())
    forecast = run_out_at = None
    if elapsed > 0:
        rate = spent / elapsed  # per second
        forecast = spent + rate * (length - elapsed)
        if rate > 0 and spent < amount:
            seconds = (amount - spent) / rate
            if seconds < length - elapsed:
                run_out_at = at + timedelta(seconds=float(seconds))
    reliable = elapsed >= length * FORECAST_MIN_ELAPSED
    forecast_over = amount > 0 and forecast is not None and forecast >= amount and reliable
    if amount > 0 and spent >= amount:
        state = State.EXCEEDED
    elif forecast_over or any(percent >= t for t in budget.thresholds if t < 100):
        state = State.WARNING
    else:
        state = State.OK
    return BudgetStatus(
        budget=budget, bounds=bounds, spent=spent, percent=percent, forecast=forecast, run_out_at=run_out_at,
        state=state, forecast_reliable=reliable,
    )  # fmt: skip


def list_budget_statuses(
    *, tenant: Tenant, department_ids: frozenset[int] | None = None, at: datetime | None = None
) -> list[BudgetStatus]:
    budgets = Budget.objects.filter(tenant=tenant, active=True).select_related("tenant", "department")
    if department_ids is not None:
        budgets = budgets.filter(department_id__in=department_ids)
    return [budget_status(budget=b, at=at) for b in budgets.order_by("name", "pk")]


def _wanted_alerts(status: BudgetStatus) -> set[tuple[int, str]]:
    """(threshold, kind) pairs that should be firing now."""
    budget = status.budget
    wanted = {(t, BudgetAlert.Kind.THRESHOLD) for t in budget.thresholds if status.percent >= t}
    if (
        budget.amount > 0
        and status.spent < budget.amount
        and status.forecast is not None
        and status.forecast >= budget.amount
        and status.forecast_reliable
    ):
        wanted.add((FORECAST_THRESHOLD, BudgetAlert.Kind.FORECAST))
    return wanted


def _message(status: BudgetStatus, threshold: int, kind: str, resolved: bool = False) -> tuple[str, str]:
    b = status.budget
    spent = money.format_money(money.quantize(status.spent, b.currency), b.currency)
    limit = money.format_money(money.quantize(b.amount, b.currency), b.currency)
    period = f"{status.bounds.start.astimezone(b.tenant.tz):%Y-%m-%d} to {status.bounds.end.astimezone(b.tenant.tz):%Y-%m-%d}"
    if resolved:
        return (
            f"Resolved: budget {b.name} back under {threshold}%",
            f"{b.name} has spent {spent} of {limit} ({status.percent}%) for {period}.",
        )
    if kind == BudgetAlert.Kind.FORECAST:
        forecast = money.format_money(money.quantize(status.forecast or Decimal(0), b.currency), b.currency)
        when = (
            f", running out around {status.run_out_at.astimezone(b.tenant.tz):%Y-%m-%d %H:%M}"
            if status.run_out_at
            else ""
        )
        return (
            f"Forecast: budget {b.name} will exceed its limit",
            f"{b.name} has spent {spent} of {limit} ({status.percent}%) for {period}; at the current rate it reaches {forecast}{when}.",
        )
    return (
        f"Budget {b.name} reached {threshold}%",
        f"{b.name} has spent {spent} of {limit} ({status.percent}%) for {period} ({b.get_mode_display()}).",
    )


def alert_key(budget: Budget, period_start: datetime, threshold: int, kind: str) -> str:
    """budget:12:20250301:80 (thresholds) or forecast:12:20250301: the period is part of the key,
    so each threshold notifies once per period (chargeback.alerting.NOTIFY_ONCE_KINDS)."""
    day = f"{period_start.astimezone(budget.tenant.tz):%Y%m%d}"
    if kind == BudgetAlert.Kind.FORECAST:
        return f"forecast:{budget.pk}:{day}"
    return f"budget:{budget.pk}:{day}:{threshold}"


def _alert_kind(kind: str) -> str:
    return AlertKind.BUDGET_FORECAST if kind == BudgetAlert.Kind.FORECAST else AlertKind.BUDGET_THRESHOLD


def evaluate_budgets(*, tenant_id: int, at: datetime | None = None) -> list[BudgetAlert]:
    """Fire new alerts, resolve alerts that no longer hold, close alerts of past periods, and send
    what that owes the channels (grouped, routed: chargeback.alerting). Returns the BudgetAlerts
    created now. Idempotent: a second call with the same spend fires nothing."""
    at = at or timezone.now()
    tenant = Tenant.objects.get(pk=tenant_id)
    fired: list[BudgetAlert] = []
    for budget in Budget.objects.filter(tenant=tenant, active=True).select_related("tenant"):
        status = budget_status(budget=budget, at=at)
        with transaction.atomic():
            # A new period: whatever fired in an earlier one is over.
            for old in BudgetAlert.objects.filter(
                budget=budget, state=BudgetAlert.State.FIRING, period_start__lt=status.bounds.start
            ):
                BudgetAlert.objects.filter(pk=old.pk).update(state=BudgetAlert.State.RESOLVED, resolved_at=at)
                alerting.resolve(
                    tenant=tenant, kind=_alert_kind(old.kind), key=alert_key(budget, old.period_start, old.threshold, old.kind),
                    text=f"The period of {budget.name} ended; a new one started at {status.bounds.start.astimezone(tenant.tz):%Y-%m-%d}.",
                    payload={"state": "resolved"}, now=at,
                )  # fmt: skip
            wanted = _wanted_alerts(status)
            existing = {
                (a.threshold, a.kind): a
                for a in BudgetAlert.objects.filter(budget=budget, period_start=status.bounds.start)
            }
            for threshold, kind in sorted(wanted):
                alert = existing.get((threshold, kind))
                subject, text = _message(status, threshold, kind)
                if alert is None:
                    try:
                        with transaction.atomic():
                            alert = BudgetAlert.objects.create(
                                tenant=tenant, budget=budget, period_start=status.bounds.start,
                                period_end=status.bounds.end, threshold=threshold, kind=kind, spent=status.spent,
                                forecast=status.forecast, message=text, fired_at=at,
                            )  # fmt: skip
                    except IntegrityError:
                        continue  # a concurrent evaluation fired it first
                    fired.append(alert)
                elif alert.state == BudgetAlert.State.RESOLVED:
                    # Back over after a resolution: firing again (alerting does not notify a
                    # threshold twice in one period).
                    BudgetAlert.objects.filter(pk=alert.pk).update(state=BudgetAlert.State.FIRING, resolved_at=None)
                severity = (
                    Severity.WARNING if kind == BudgetAlert.Kind.FORECAST else alerting.budget_severity(threshold)
                )
                alerting.fire(
                    tenant=tenant, kind=_alert_kind(kind), key=alert_key(budget, status.bounds.start, threshold, kind),
                    severity=severity, title=subject, text=text, payload=_payload(status, threshold, kind), now=at,
                )  # fmt: skip
            for (threshold, kind), alert in existing.items():
                if alert.state == BudgetAlert.State.FIRING and (threshold, kind) not in wanted:
                    # Back under (e.g. after a re-price), or the forecast fell back: resolve.
                    BudgetAlert.objects.filter(pk=alert.pk, state=BudgetAlert.State.FIRING).update(
                        state=BudgetAlert.State.RESOLVED, resolved_at=at
                    )
                    _subject, text = _message(status, threshold, kind, resolved=True)
                    alerting.resolve(
                        tenant=tenant, kind=_alert_kind(kind), key=alert_key(budget, status.bounds.start, threshold, kind),
                        text=text, payload=_payload(status, threshold, kind, resolved=True), now=at,
                    )  # fmt: skip
    alerting.send_pending(tenant=tenant, now=at)
    return fired


def _payload(status: BudgetStatus, threshold: int, kind: str, resolved: bool = False) -> dict[str, Any]:
    b = status.budget
    return {
        "type": "budget_alert",
        "state": "resolved" if resolved else "firing",
        "budget": {"id": b.pk, "name": b.name, "scope": b.scope, "mode": b.mode},
        "kind": kind,
        "threshold_percent": threshold,
        "period": {"start": status.bounds.start.isoformat(), "end": status.bounds.end.isoformat()},
        "spent": str(status.spent),
        "limit": str(b.amount),
        "currency": b.currency,
        "percent": str(status.percent),
        "forecast": str(status.forecast) if status.forecast is not None else None,
        "run_out_at": status.run_out_at.isoformat() if status.run_out_at else None,
    }
