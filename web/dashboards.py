"""The numbers of the Overview and Department pages, all from rollups (telemetry.rollups query
functions and chargeback.budgets): month to date against last month and the budget, spend over
time by department or model, top users and features, latency percentiles from the histograms,
open anomalies, and the quality card's hook. Only `page_department_events` reads raw rows, one
indexed page at a time.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from chargeback.models import Budget, Department, Tenant
from telemetry import rollups
from telemetry.models import Anomaly, UsageEvent
from web.filters import DateRange

ZERO = Decimal(0)
SERIES_GROUPS = 6  # stacked series shown by name; the rest are folded into "Other"


def _query(*, tenant: Tenant, start: datetime, end: datetime, department: Department | None) -> rollups.ReportQuery:
    ids = frozenset({department.pk}) if department is not None else None
    return rollups.ReportQuery(tenant=tenant, start=start, end=end, department_ids=ids)


def _local_midnight(day: date, tenant: Tenant) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tenant.tz)


def _total(rows: list[dict[str, Any]], currency: str) -> Decimal:
    return sum((r["cost"] for r in rows if r["currency"] == currency), ZERO)


# --- Month to date --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthToDate:
    month_start: date
    today: date
    currency: str
    spent: Decimal  # this month, 1st to today (today so far)
    requests: int
    last_start: date
    last_end: date  # inclusive: the same day of last month (or its last day)
    last_spent: Decimal
    budget: Decimal | None  # active monthly budgets of the scope, in the tenant currency
    projected: Decimal | None  # month-end spend at this month's average rate so far
    projection_early: bool  # less than a fifth of the month has passed: read with care

    @property
    def change_percent(self) -> Decimal | None:
        if not self.last_spent:
            return None
        return ((self.spent - self.last_spent) * 100 / self.last_spent).quantize(Decimal("0.1"))

    @property
    def budget_percent(self) -> Decimal | None:
        if not self.budget:
            return None
        return (self.spent * 100 / self.budget).quantize(Decimal("0.1"))

    @property
    def projected_percent(self) -> Decimal | None:
        if not self.budget or self.projected is None:
            return None
        return (self.projected * 100 / self.budget).quantize(Decimal("0.1"))


def monthly_budget_amount(*, tenant: Tenant, department: Department | None) -> Decimal | None:
    """The limit a month's spend is compared with: the tenant-wide monthly budgets, or the
    department's monthly budgets when one department is shown (active, tenant currency)."""
    budgets = Budget.objects.filter(tenant=tenant, active=True, period=Budget.Period.MONTH, currency=tenant.currency)
    if department is None:
        budgets = budgets.filter(scope=Budget.Scope.TENANT)
    else:
        budgets = budgets.filter(scope=Budget.Scope.DEPARTMENT, department=department)
    amounts = list(budgets.values_list("amount", flat=True))
    return sum(amounts, ZERO) if amounts else None


def get_month_to_date(*, tenant: Tenant, department: Department | None, now: datetime) -> MonthToDate:
    """This month so far against last month up to the same day of the month (the 31st compares
    with the 30th of a 30-day month), the monthly budget and a straight-line projection."""
    tz = tenant.tz
    local_now = now.astimezone(tz)
    today = local_now.date()
    month_start = today.replace(day=1)
    last_start = (month_start - timedelta(days=1)).replace(day=1)
    last_end = last_start.replace(day=min(today.day, calendar.monthrange(last_start.year, last_start.month)[1]))
    this_rows = rollups.spend(
        query=_query(
            tenant=tenant,
            start=_local_midnight(month_start, tenant),
            end=_local_midnight(today + timedelta(days=1), tenant),
            department=department,
        )
    )
    last_rows = rollups.spend(
        query=_query(
            tenant=tenant,
            start=_local_midnight(last_start, tenant),
            end=_local_midnight(last_end + timedelta(days=1), tenant),
            department=department,
        )
    )
    spent = _total(this_rows, tenant.currency)
    month_begin = _local_midnight(month_start, tenant)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    # In UTC: subtracting two datetimes that share a ZoneInfo is wall-clock arithmetic and
    # would miss the DST hour.
    length = (_local_midnight(next_month, tenant).astimezone(UTC) - month_begin.astimezone(UTC)).total_seconds()
    elapsed = (now - month_begin).total_seconds()
    projected = spent * Decimal(length) / Decimal(elapsed) if elapsed > 0 else None
    return MonthToDate(
        month_start=month_start,
        today=today,
        currency=tenant.currency,
        spent=spent,
        requests=sum(r["requests"] for r in this_rows),
        last_start=last_start,
        last_end=last_end,
        last_spent=_total(last_rows, tenant.currency),
        budget=monthly_budget_amount(tenant=tenant, department=department),
        projected=projected,
        projection_early=elapsed < length * 0.2,
    )


# --- Spend over time and top lists ------------------------------------------------------------------


@dataclass(frozen=True)
class RangeTotals:
    currency: str
    cost: Decimal
    requests: int
    errors: int
    unpriced: int
    tokens: int
    other_currencies: dict[str, Decimal]


def get_range_totals(*, tenant: Tenant, span: DateRange, department: Department | None) -> RangeTotals:
    rows = rollups.spend(query=_query(tenant=tenant, start=span.start_at, end=span.end_at, department=department))
    others: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for r in rows:
        if r["currency"] != tenant.currency and r["cost"]:
            others[r["currency"]] += r["cost"]
    return RangeTotals(
        currency=tenant.currency,
        cost=_total(rows, tenant.currency),
        requests=sum(r["requests"] for r in rows),
        errors=sum(r["errors"] for r in rows),
        unpriced=sum(r["unpriced"] for r in rows),
        tokens=sum(r["input_tokens"] + r["output_tokens"] for r in rows),
        other_currencies=dict(others),
    )


def spend_chart(*, tenant: Tenant, span: DateRange, department: Department | None, group_by: str) -> dict[str, Any]:
    """A stacked bar chart (`spec` for static/llmobs/charts.js, `table` for the page) of spend per day (per month beyond 92
    days) by department or model; the biggest SERIES_GROUPS groups by name, the rest "Other"."""
    interval = "day" if span.days <= 92 else "month"
    rows = [
        r
        for r in rollups.spend(
            query=_query(tenant=tenant, start=span.start_at, end=span.end_at, department=department),
            group_by=group_by,
            interval=interval,
        )
        if r["currency"] == tenant.currency
    ]
    totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for r in rows:
        totals[r["group"] or "(unattributed)"] += r["cost"]
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    named = ranked[:SERIES_GROUPS] if len(ranked) > SERIES_GROUPS + 1 else ranked
    if interval == "day":
        periods = [(span.start + timedelta(days=n)).isoformat() for n in range(span.days)]
        labels = [(span.start + timedelta(days=n)).strftime("%d %b") for n in range(span.days)]
    else:
        periods, cursor = [], span.start.replace(day=1)
        while cursor <= span.end:
            periods.append(f"{cursor:%Y-%m}")
            cursor = (cursor + timedelta(days=32)).replace(day=1)
        labels = [date.fromisoformat(p + "-01").strftime("%b %Y") for p in periods]
    cells: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
    for r in rows:
        group = r["group"] or "(unattributed)"
        cells[(group if group in named else "Other", r["period"])] += r["cost"]
    series = [*named, *(["Other"] if len(named) < len(ranked) else [])]
    return {
        "spec": {
            "type": "bar",
            "stacked": True,
            "labels": labels,
            "money": tenant.currency,
            "datasets": [{"label": g, "data": [str(cells.get((g, p), ZERO)) for p in periods]} for g in series],
        },
        # The same numbers for the table under the chart (screen readers, copy-paste).
        "table": [
            {"label": label, "values": [cells.get((g, p), ZERO) for g in series]}
            for label, p in zip(labels, periods, strict=True)
        ],
        "series": series,
        "totals": [totals[g] for g in named]
        + ([sum((totals[g] for g in ranked[len(named) :]), ZERO)] if len(named) < len(ranked) else []),
        "interval": interval,
        "empty": not rows,
    }


def top_spenders(
    *, tenant: Tenant, span: DateRange, department: Department | None, group_by: str, limit: int = 10
) -> list[dict[str, Any]]:
    """The `limit` biggest users, features or models of the range, in the tenant currency
    (users and features from the daily per-dimension rollup)."""
    rows = rollups.spend(
        query=_query(tenant=tenant, start=span.start_at, end=span.end_at, department=department),
        group_by=group_by,
    )
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = r["group"] or "(none)"
        into = merged.setdefault(
            name, {"name": name, "cost": ZERO, "requests": 0, "errors": 0, "tokens": 0, "unpriced": 0}
        )
        if r["currency"] == tenant.currency:
            into["cost"] += r["cost"]
        into["requests"] += r["requests"]
        into["errors"] += r["errors"]
        into["unpriced"] += r["unpriced"]
        into["tokens"] += r["input_tokens"] + r["output_tokens"]
    ranked = sorted(merged.values(), key=lambda m: (-m["cost"], -m["requests"], m["name"]))
    return ranked[:limit]


def get_latency(
    *, tenant: Tenant, span: DateRange, department: Department | None, group_by: str | None = None
) -> list[dict[str, Any]]:
    """p50/p95/p99 latency and TTFT and the error rate, from the rollups' histograms."""
    return rollups.latency_percentiles(
        query=_query(tenant=tenant, start=span.start_at, end=span.end_at, department=department),
        group_by=group_by,
    )


# --- Anomalies ------------------------------------------------------------------------------------------


def visible_anomalies(*, tenant: Tenant, department_ids: frozenset[int] | None) -> QuerySet[Anomaly]:
    anomalies = Anomaly.objects.filter(tenant=tenant).select_related("tenant", "department", "acknowledged_by")
    if department_ids is not None:
        anomalies = anomalies.filter(department_id__in=department_ids)
    return anomalies


@dataclass(frozen=True)
class OpenAnomalies:
    count: int
    latest: list[Anomaly]


def get_open_anomalies(*, tenant: Tenant, department: Department | None, limit: int = 5) -> OpenAnomalies:
    ids = frozenset({department.pk}) if department is not None else None
    open_ = visible_anomalies(tenant=tenant, department_ids=ids).filter(status=Anomaly.Status.OPEN)
    return OpenAnomalies(count=open_.count(), latest=list(open_.order_by("-hour", "-score", "-pk")[:limit]))


# --- Quality ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualitySummary:
    evaluated: int
    passed: int

    @property
    def pass_rate(self) -> Decimal | None:
        if not self.evaluated:
            return None
        return (Decimal(self.passed) * 100 / self.evaluated).quantize(Decimal("0.1"))


def get_quality_summary(*, tenant: Tenant, span: DateRange, department: Department | None) -> QualitySummary | None:
    """The eval pass rate for the range, or None when no call was evaluated (the page then shows
    the "configure an EvalConfig" empty state). Nothing is estimated here."""
    from telemetry import evals

    ids = frozenset({department.pk}) if department is not None else None
    evaluated, passed = evals.pass_rate(tenant=tenant, start=span.start_at, end=span.end_at, department_ids=ids)
    if not evaluated:
        return None
    return QualitySummary(evaluated=int(evaluated), passed=int(passed))


# --- Raw events, one page at a time -------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPage:
    """A page of newest-first events without a COUNT over the department's whole range (which
    is what costs on a large table): one extra row says whether an older page exists."""

    object_list: list[UsageEvent]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    def __iter__(self):
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)


EVENT_COLUMNS = (
    "occurred_at", "user_ref", "provider", "model", "feature", "status", "input_tokens",
    "output_tokens", "latency_ms", "cost", "currency", "cost_provenance",
)  # fmt: skip
MAX_EVENT_PAGES = 200  # 10,000 newest events; older ones are the back office's or the API's


def page_department_events(
    *, tenant: Tenant, department: Department, span: DateRange, page: str | int | None, per_page: int = 50
) -> EventPage:
    """The department's events in the range, newest first, along the (tenant, department,
    occurred_at) index."""
    try:
        number = max(1, min(int(page or 1), MAX_EVENT_PAGES))
    except (TypeError, ValueError):
        number = 1
    offset = (number - 1) * per_page
    events = (
        UsageEvent.objects.for_tenant(tenant)
        .filter(department=department)
        .between(span.start_at, span.end_at)
        .only(*EVENT_COLUMNS)
        .order_by("-occurred_at", "-id")
    )
    rows = list(events[offset : offset + per_page + 1])
    return EventPage(
        object_list=rows[:per_page], number=number, has_next=len(rows) > per_page and number < MAX_EVENT_PAGES
    )
