"""The numbers behind the pages, each read through one function so it can be swapped.

Every total, chart and table reads the rollups (telemetry.rollups: daily, hourly and the daily
per-user/feature/tag rollup); the only raw `UsageEvent` reads are the paginated lists of
recent calls, one indexed page at a time (`page_user_calls`, `page_department_events`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.core.paginator import Page, Paginator
from django.db.models import Case, QuerySet, When

from chargeback import budgets as budget_rules
from chargeback.models import Budget, Department, PeriodBounds, Tenant
from telemetry import rollups
from telemetry.models import UsageEvent

ZERO = Decimal(0)


# --- Budgets --------------------------------------------------------------------------------------


def budget_spent(*, budget: Budget, bounds: PeriodBounds) -> Decimal:
    """Priced spend counted against `budget` within `bounds` (full precision, not rounded), in
    the budget's currency (other currencies are not converted, so not counted). Daily rollups;
    user and tag budgets from the per-dimension rollup."""
    return rollups.period_spend(budget=budget, bounds=bounds)


def budget_daily_spend(*, budget: Budget, bounds: PeriodBounds) -> list[tuple[date, Decimal]]:
    """Spend per local day (tenant time zone) of the period, every day present (zeros kept)."""
    tz = budget.tenant.tz
    by_day = rollups.period_daily_spend(budget=budget, bounds=bounds)
    first = bounds.start.astimezone(tz).date()
    last = (bounds.end - timedelta(microseconds=1)).astimezone(tz).date()
    return [
        (first + timedelta(days=n), by_day.get(first + timedelta(days=n), ZERO)) for n in range((last - first).days + 1)
    ]


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    bounds: PeriodBounds
    spent: Decimal
    percent: Decimal | None  # of the limit, one decimal; None for a zero limit
    crossed: list[int]  # thresholds (percent) reached this period
    forecast: Decimal | None = None  # spend at period end at the period's average rate so far
    run_out_at: datetime | None = None  # when that rate reaches the limit, if within the period
    forecast_reliable: bool = False  # enough of the period has passed to extrapolate (chargeback.budgets)

    @property
    def forecast_over(self) -> bool:
        return (
            self.forecast_reliable
            and self.forecast is not None
            and self.budget.amount > 0
            and self.forecast >= self.budget.amount
            and self.spent < self.budget.amount
        )

    @property
    def state(self) -> str:
        if self.percent is not None and self.percent >= 100:
            return "over"
        return "warning" if self.crossed or self.forecast_over else "ok"

    @property
    def period_last(self) -> datetime:
        """The last instant of the period (bounds are end-exclusive), for "1 – 30 Nov" labels."""
        return self.bounds.end - timedelta(microseconds=1)

    @property
    def remaining(self) -> Decimal:
        return max(self.budget.amount - self.spent, ZERO)


def get_budget_status(*, budget: Budget, at: datetime) -> BudgetStatus:
    """Spend, percent, crossed thresholds and the forecast of chargeback.budgets (the same rules
    the alerts use), from one rollup query."""
    core = budget_rules.budget_status(budget=budget, at=at)
    percent = None
    if budget.amount > 0:
        percent = (core.spent * 100 / budget.amount).quantize(Decimal("0.1"))
    thresholds = sorted(budget.thresholds or [])
    crossed = [t for t in thresholds if percent is not None and percent >= t]
    return BudgetStatus(
        budget=budget,
        bounds=core.bounds,
        spent=core.spent,
        percent=percent,
        crossed=crossed,
        forecast=core.forecast,
        run_out_at=core.run_out_at,
        forecast_reliable=core.forecast_reliable,
    )


SCOPE_ORDER = [Budget.Scope.TENANT, Budget.Scope.DEPARTMENT, Budget.Scope.USER, Budget.Scope.MODEL, Budget.Scope.TAG]


def list_budgets(*, tenant: Tenant, department: Department | None) -> QuerySet[Budget]:
    """Active budgets of the tenant, or only those attached to `department`."""
    budgets = Budget.objects.filter(tenant=tenant, active=True).select_related("tenant", "department")
    if department is not None:
        budgets = budgets.filter(department=department)
    # Tenant-wide first, then departments, people, models and tags: widest scope on top.
    rank = Case(*(When(scope=scope, then=n) for n, scope in enumerate(SCOPE_ORDER)), default=len(SCOPE_ORDER))
    return budgets.order_by(rank, "name", "pk")


# --- One person's usage ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DayUsage:
    day: date
    calls: int
    tokens: int
    cost: Decimal


@dataclass
class UserUsage:
    start: datetime
    end: datetime
    currency: str
    days: list[DayUsage]
    calls: int = 0
    tokens: int = 0
    cost: Decimal = ZERO  # in `currency`
    unpriced_calls: int = 0
    other_currencies: dict[str, Decimal] = field(default_factory=dict)


def usage_window(*, now: datetime, tz: ZoneInfo, days: int) -> tuple[datetime, datetime]:
    """The last `days` local days including today: from local midnight `days - 1` days ago."""
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=tz), now


def get_user_usage(*, tenant: Tenant, user_ref: str, now: datetime, days: int = 30) -> UserUsage:
    """One person's calls, tokens and spend over the last `days` local days, per day (tenant
    time zone), from the daily per-user rollup (refreshed every 10 minutes; see ROLLUPS.md).
    The rollup has no user × model split (cardinality decision), so neither has this page."""
    tz = tenant.tz
    start, end = usage_window(now=now, tz=tz, days=days)
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    query = rollups.ReportQuery(
        tenant=tenant, start=start, end=datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz), user=user_ref
    )
    rows = rollups.spend(query=query, interval="day")
    per_day: dict[date, DayUsage] = {}
    usage = UserUsage(start=start, end=end, currency=tenant.currency, days=[])
    for row in rows:
        day = date.fromisoformat(row["period"])
        tokens = row["input_tokens"] + row["output_tokens"]
        usage.calls += row["requests"]
        usage.tokens += tokens
        usage.unpriced_calls += row["unpriced"]
        in_currency = row["currency"] == tenant.currency
        if in_currency:
            usage.cost += row["cost"]
        elif row["cost"]:
            usage.other_currencies[row["currency"]] = usage.other_currencies.get(row["currency"], ZERO) + row["cost"]
        before = per_day.get(day) or DayUsage(day=day, calls=0, tokens=0, cost=ZERO)
        per_day[day] = DayUsage(
            day=day,
            calls=before.calls + row["requests"],
            tokens=before.tokens + tokens,
            cost=before.cost + (row["cost"] if in_currency else ZERO),
        )
    first = start.date()
    usage.days = [
        per_day.get(first + timedelta(days=n)) or DayUsage(day=first + timedelta(days=n), calls=0, tokens=0, cost=ZERO)
        for n in range(days)
    ]
    return usage


def page_user_calls(
    *, tenant: Tenant, user_ref: str, start: datetime, end: datetime, page: str | int | None, per_page: int = 25
) -> Page:
    """The person's calls in the window, newest first, one page at a time: raw rows, read
    along the (tenant, user_ref, occurred_at) index."""
    calls = (
        UsageEvent.objects.for_tenant(tenant)
        .between(start, end)
        .filter(user_ref=user_ref)
        .only(
            "occurred_at",
            "provider",
            "model",
            "feature",
            "status",
            "input_tokens",
            "output_tokens",
            "latency_ms",
            "cost",
            "currency",
            "cost_provenance",
        )
    )
    return Paginator(calls.order_by("-occurred_at", "-id"), per_page).get_page(page)
