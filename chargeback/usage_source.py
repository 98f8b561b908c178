"""Where invoicing reads usage: the one module between chargeback invoicing and telemetry's events.

Invoicing needs two reads, both exact in `Decimal`:

- `monthly_usage` — a month's usage per department × provider × model × currency, with the
  `eval` feature kept apart (quality-assurance spend is its own invoice line);
- `raw_cost_total` — the raw events' cost per department × currency, which reconciliation and
  closed-month adjustments compare invoices against.

`monthly_usage` reads telemetry's daily rollups (DESIGN.md: chargeback reads usage only through
telemetry's rollup queries). `raw_cost_total` stays on the raw table on purpose: reconciliation
exists to prove invoices equal the raw events.

Exactness: on PostgreSQL the sums run in SQL on NUMERIC, which is exact. SQLite sums decimals
as floating point, so there the rows are fetched and summed in Python with `Decimal` (each
stored value reads back exactly; only SQLite's SUM is lossy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Q, Sum

from chargeback.models import Tenant
from telemetry.models import UsageEvent

ZERO = Decimal(0)
EVAL_FEATURE = "eval"


@dataclass(slots=True)
class UsageLine:
    """One month's usage of a department on one provider/model in one currency.

    Token buckets are canonical (DESIGN.md §4): `input_tokens` is total input *including*
    cache reads and writes; `output_tokens` includes `reasoning_tokens`. `cost` is the exact sum
    of priced events; `unpriced` counts events with no cost (never a silent zero)."""

    department_id: int | None
    provider: str
    model: str
    currency: str
    is_eval: bool
    requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default=ZERO)
    unpriced: int = 0

    @property
    def key(self) -> tuple:
        return (self.department_id, self.provider, self.model, self.currency, self.is_eval)

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class CostTotal:
    """Raw events' cost of one department (None = events with no department) in one currency."""

    department_id: int | None
    currency: str
    cost: Decimal = field(default=ZERO)
    events: int = 0
    unpriced: int = 0


def _events(tenant: Tenant | int, start: datetime, end: datetime):
    return UsageEvent.objects.for_tenant(tenant).between(start, end)


def _sums_in_sql() -> bool:
    # NUMERIC sums are exact on PostgreSQL; SQLite's SUM over decimals is a float sum.
    return connection.vendor == "postgresql"


def monthly_usage(*, tenant: Tenant | int, start: datetime, end: datetime) -> list[UsageLine]:
    """Usage in [start, end) per department × provider × model × currency × is_eval, sorted.

    Read from telemetry's daily rollups (exact NUMERIC sums), after rolling up whatever arrived
    since the last rollup run, so a draft never misses a late event the raw table already has.
    `start` and `end` must be local midnights of the tenant (month bounds are).
    """
    from telemetry import rollups

    tenant = tenant if isinstance(tenant, Tenant) else Tenant.objects.get(pk=tenant)
    tz = tenant.tz
    local_start, local_end = start.astimezone(tz), end.astimezone(tz)
    if any((t.hour, t.minute, t.second, t.microsecond) != (0, 0, 0, 0) for t in (local_start, local_end)):
        raise ValueError("monthly_usage reads daily rollups: start and end must be local midnights.")
    rollups.roll_up_pending()
    lines = [
        UsageLine(
            department_id=line.department_id or None,
            provider=line.provider,
            model=line.model,
            currency=line.currency,
            is_eval=line.is_eval,
            requests=line.requests,
            unpriced=line.unpriced,
            cost=line.cost,
            input_tokens=line.input_tokens,
            cache_read_tokens=line.cache_read_input_tokens,
            cache_write_tokens=line.cache_creation_input_tokens,
            output_tokens=line.output_tokens,
            reasoning_tokens=line.reasoning_tokens,
        )
        for line in rollups.invoice_lines(tenant=tenant, month_start=local_start.date(), month_end=local_end.date())
    ]
    lines.sort(key=lambda u: (u.department_id or 0, u.is_eval, u.provider, u.model, u.currency))
    return lines


def raw_cost_total(*, tenant: Tenant | int, start: datetime, end: datetime) -> list[CostTotal]:
    """The raw events' cost in [start, end) per department × currency (always from raw rows)."""
    events = _events(tenant, start, end)
    if _sums_in_sql():
        rows = (
            events.values("department_id", "currency")
            .annotate(cost_sum=Sum("cost"), events=Count("id"), unpriced=Count("id", filter=Q(cost__isnull=True)))
            .order_by()
        )
        totals = [
            CostTotal(r["department_id"], r["currency"], r["cost_sum"] or ZERO, r["events"], r["unpriced"])
            for r in rows
        ]
    else:
        acc: dict[tuple, CostTotal] = {}
        for department_id, currency, cost in events.values_list("department_id", "currency", "cost").order_by():
            total = acc.get((department_id, currency))
            if total is None:
                total = acc[(department_id, currency)] = CostTotal(department_id, currency)
            total.events += 1
            if cost is None:
                total.unpriced += 1
            else:
                total.cost += cost
        totals = list(acc.values())
    totals.sort(key=lambda t: (t.department_id or 0, t.currency))
    return totals
