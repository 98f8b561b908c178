"""Monthly chargeback invoices: drafting, shared-cost allocation, adjustments for closed months,
the lifecycle (draft → issued → approved, or issued → disputed → resolved) and reconciliation.

Usage is read only through `chargeback.usage_source`. Money is `Decimal`; each line is rounded
once (half-up, `money.quantize`) and the invoice keeps the unrounded total and the difference.
See docs/INVOICING.md for the rules finance relies on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from chargeback import audit, money, usage_source
from chargeback.models import (
    AuditLog,
    Budget,
    ChargebackPolicy,
    Department,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    Membership,
    PendingCredit,
    Role,
    SharedCostPool,
    Tenant,
)
from chargeback.pricing import get_price_book

ZERO = Decimal(0)
STORED_PRECISION = Decimal("1e-10")
MILLION = Decimal(1_000_000)
CLOSED_STATUSES = (Invoice.Status.ISSUED, Invoice.Status.APPROVED, Invoice.Status.DISPUTED, Invoice.Status.RESOLVED)
# Lines that carry raw event cost (what reconciliation compares with the raw events).
EVENT_KINDS = (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL, InvoiceLine.Kind.ADJUSTMENT)

Progress = Callable[[str], None]


class InvoicingError(Exception):
    """A refused request; `field` names the input at fault and `code` is the API error code."""

    code = "invalid"

    def __init__(self, message: str, *, field: str = "non_field_errors") -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class GraceWindowOpen(InvoicingError):
    code = "grace_window_open"


class TransitionRefused(InvoicingError):
    code = "conflict"


# --- Periods --------------------------------------------------------------------------------------


def parse_period(text: str) -> date:
    """'2026-03' → date(2026, 3, 1). Raises InvoicingError naming the `period` field."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", (text or "").strip())
    if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 2000:
        raise InvoicingError(f"{text!r} is not a month; use YYYY-MM, e.g. 2026-03.", field="period")
    return date(int(match[1]), int(match[2]), 1)


def add_months(period: date, months: int) -> date:
    index = period.year * 12 + period.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_bounds(*, tenant: Tenant, period: date) -> tuple[datetime, datetime]:
    """Local midnights of the 1st and of the next 1st in the tenant's zone (DST-safe: built as
    local wall-clock times, so a month may be an hour shorter or longer)."""
    tz = tenant.tz
    start = datetime(period.year, period.month, 1, tzinfo=tz)
    nxt = add_months(period, 1)
    return start, datetime(nxt.year, nxt.month, 1, tzinfo=tz)


def grace_days() -> int:
    return int(getattr(settings, "LLMOBS_INVOICE_GRACE_DAYS", 3))


def draftable_at(*, tenant: Tenant, period: date) -> datetime:
    return month_bounds(tenant=tenant, period=period)[1] + timedelta(days=grace_days())


def previous_period(*, tenant: Tenant, now: datetime) -> date:
    local = now.astimezone(tenant.tz).date()
    return add_months(local.replace(day=1), -1)


# --- Roles ---------------------------------------------------------------------------------------


def membership_of(user: Any, tenant: Tenant) -> Membership | None:
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return None
    return Membership.objects.filter(user=user, tenant=tenant).select_related("department").first()


def is_finance(user: Any, tenant: Tenant) -> bool:
    """Finance and admin members (and superusers, the platform operators) run invoicing."""
    if getattr(user, "is_superuser", False):
        return True
    member = membership_of(user, tenant)
    return member is not None and member.role in (Role.FINANCE, Role.ADMIN)


def manages(user: Any, department: Department) -> bool:
    member = membership_of(user, department.tenant)
    if member is not None and member.role == Role.MANAGER and member.department_id == department.pk:
        return True
    return department.manager_id is not None and department.manager_id == getattr(user, "pk", None)


# --- Drafting --------------------------------------------------------------------------------------


@dataclass
class DraftSummary:
    period: date
    drafted: list[Invoice] = field(default_factory=list)
    skipped_closed: list[Invoice] = field(default_factory=list)

    @property
    def invoices(self) -> list[Invoice]:
        return self.drafted + self.skipped_closed


@dataclass
class _LinePlan:
    kind: str
    description: str
    currency: str
    list_cost_unrounded: Decimal
    amount_unrounded: Decimal
    values: dict[str, Any] = field(default_factory=dict)


def draft_invoices(
    *,
    tenant: Tenant,
    period: date,
    now: datetime | None = None,
    force: bool = False,
    actor: audit.Actor = None,
    progress: Progress | None = None,
) -> DraftSummary:
    """Draft (or re-draft) one invoice per department for `period`.

    Idempotent: the (tenant, department, month) unique key means a second run rewrites the
    drafts in place and leaves issued invoices untouched; late events for a month already issued
    become adjustment lines on the next open invoice instead. Refuses a month whose grace
    window for late events is still open unless `force`.
    """
    now = now or timezone.now()
    say = progress or (lambda _msg: None)
    ready_at = draftable_at(tenant=tenant, period=period)
    if not force and now < ready_at:
        raise GraceWindowOpen(
            f"{period:%Y-%m} of {tenant.slug} can be drafted from {ready_at.isoformat()} "
            f"(month end + {grace_days()} grace days for late events); pass force to draft it now.",
            field="period",
        )
    start, end = month_bounds(tenant=tenant, period=period)
    say(f"{tenant.slug} {period:%Y-%m}: reading usage {start.isoformat()} – {end.isoformat()}")
    usage = usage_source.monthly_usage(tenant=tenant, start=start, end=end)
    usage_by_dept: dict[int, list[usage_source.UsageLine]] = defaultdict(list)
    for line in usage:
        if line.department_id is not None:
            usage_by_dept[line.department_id].append(line)

    pools = [p for p in tenant.shared_cost_pools.prefetch_related("splits") if p.applies_to(period)]
    departments = {d.pk: d for d in Department.objects.filter(tenant=tenant)}
    split_ids = {s.department_id for p in pools for s in p.splits.all()}
    targets = sorted(
        (d for d in departments.values() if d.active or d.pk in usage_by_dept or d.pk in split_ids),
        key=lambda d: d.code,
    )
    target_ids = [d.pk for d in targets]
    unknown = sorted(set(usage_by_dept) - set(departments))
    if unknown:
        # Events carry department ids without a DB constraint (hot table); one pointing nowhere
        # must not vanish from the invoices silently.
        raise InvoicingError(f"Usage references departments that do not exist: {unknown}.", field="department")

    factor = _policy(tenant).factor
    allocations = _allocate_pools(tenant=tenant, pools=pools, usage_by_dept=usage_by_dept, target_ids=target_ids)
    say(f"{tenant.slug} {period:%Y-%m}: computing adjustments for closed months")
    adjustments = _closed_month_deltas(tenant=tenant, period=period)
    budgets = _monthly_budgets(tenant=tenant, department_ids=target_ids)
    prices = _PriceNotes(tenant=tenant, start=start, end=end)
    policy_note = _policy(tenant).notes

    plans_by_dept: dict[int, list[_LinePlan]] = {}
    for department in targets:
        plans = _usage_plans(usage_by_dept.get(department.pk, []), factor=factor, prices=prices)
        plans += allocations.get(department.pk, [])
        plans += [
            _LinePlan(
                kind=InvoiceLine.Kind.ADJUSTMENT,
                description=f"Adjustment for {adjusts:%Y-%m}: late events or re-pricing after that invoice",
                currency=currency,
                list_cost_unrounded=delta,
                amount_unrounded=delta * factor,
                values={"adjusts_period": adjusts},
            )
            for adjusts, currency, delta in adjustments.get(department.pk, [])
        ]
        plans_by_dept[department.pk] = plans
    summary = _write_drafts(
        tenant=tenant,
        period=period,
        bounds=(start, end),
        targets=targets,
        plans_by_dept=plans_by_dept,
        budgets=budgets,
        notes=_notes(policy_note, factor),
        actor=actor,
    )
    say(f"{tenant.slug} {period:%Y-%m}: {len(targets)}/{len(targets)} departments")
    return summary


def _policy(tenant: Tenant) -> ChargebackPolicy:
    try:
        return tenant.chargeback_policy
    except ChargebackPolicy.DoesNotExist:
        return ChargebackPolicy(tenant=tenant)


def _notes(policy_note: str, factor: Decimal) -> str:
    notes = []
    if factor != 1:
        notes.append(f"Charged amounts are list cost × {factor.normalize()} (tenant discount/markup policy).")
    if policy_note:
        notes.append(policy_note)
    return "\n".join(notes)


class _PriceNotes:
    """Unit prices to print beside a line: the price book's rates for the model when one price
    version covered the whole month; when prices changed mid-month only the average is given."""

    def __init__(self, *, tenant: Tenant, start: datetime, end: datetime) -> None:
        self.book = get_price_book(tenant.pk)
        self.start, self.end = start, end

    def for_model(self, provider: str, model: str) -> tuple[dict[str, Decimal | None], str]:
        versions = [
            p
            for p in self.book.candidates(provider, model)
            if p.effective_from < self.end and (p.effective_to is None or p.effective_to > self.start)
        ]
        # The candidates are ranked; the first covering each instant wins, so only the versions
        # that win somewhere in the month matter. Simplify: one distinct winning rate set or not.
        winners = {self.book.find(provider, model, max(self.start, v.effective_from)) for v in versions}
        winners.discard(None)
        if len(winners) == 1:
            price = next(iter(winners))
            read = price.cache_read_per_mtok if price.cache_read_per_mtok is not None else price.input_per_mtok
            write = price.cache_write_per_mtok if price.cache_write_per_mtok is not None else price.input_per_mtok
            rates = {
                "input_per_mtok": price.input_per_mtok,
                "cache_read_per_mtok": read,
                "cache_write_per_mtok": write,
                "output_per_mtok": price.output_per_mtok,
            }
            # Charges that are not per token: without them a compute-priced model would show
            # token rates of 0 beside a non-zero amount.
            extras = []
            if price.per_gpu_second is not None:
                extras.append(f"{price.per_gpu_second.normalize():f} {price.currency} per GPU-second of compute")
            if price.per_request_fee:
                extras.append(f"{price.per_request_fee.normalize():f} {price.currency} per request")
            if not extras:
                return rates, ""
            return rates, ("plus " if any(rates.values()) else "priced by ") + "; ".join(extras)
        if len(winners) > 1:
            return {}, f"{len(winners)} price versions this month: average rate shown"
        return {}, "no price in the price book: caller-reported cost"


def _usage_plans(lines: list[usage_source.UsageLine], *, factor: Decimal, prices: _PriceNotes) -> list[_LinePlan]:
    plans = []
    for u in sorted(lines, key=lambda u: (u.is_eval, u.provider, u.model, u.currency)):
        rates, note = prices.for_model(u.provider, u.model)
        if u.unpriced:
            note = "; ".join(filter(None, [note, f"{u.unpriced} unpriced request(s) not charged"]))
        tokens = u.total_tokens
        label = f"{u.provider} / {u.model}"
        plans.append(
            _LinePlan(
                kind=InvoiceLine.Kind.EVAL if u.is_eval else InvoiceLine.Kind.USAGE,
                description=f"Quality assurance (eval): {label}" if u.is_eval else label,
                currency=u.currency,
                list_cost_unrounded=u.cost,
                amount_unrounded=u.cost * factor,
                values={
                    "provider": u.provider,
                    "model": u.model,
                    "requests": u.requests,
                    "unpriced_requests": u.unpriced,
                    "input_tokens": u.uncached_input_tokens,
                    "cache_read_tokens": u.cache_read_tokens,
                    "cache_write_tokens": u.cache_write_tokens,
                    "output_tokens": u.output_tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                    "average_per_mtok": _stored(u.cost * MILLION / tokens) if tokens else None,
                    "price_note": note[:255],
                    **rates,
                },
            )
        )
    return plans


def split_largest_remainder(total: Decimal, weights: dict[Any, Fraction | int | Decimal], currency: str) -> dict:
    """Split `total` (already in whole minor units) in proportion to `weights` so that the
    parts are whole minor units summing *exactly* to `total`: floor every share, then give the
    leftover units one each to the largest remainders (ties broken by key, deterministic)."""
    quantum = money.quantum(currency)
    units = int(total / quantum)
    if Decimal(units) * quantum != total:
        raise InvoicingError(f"{total} {currency} is not a whole number of minor units.", field="amount")
    fractions = {key: Fraction(w) for key, w in weights.items() if Fraction(w) > 0}
    whole = sum(fractions.values(), Fraction(0))
    if not fractions:
        return {}
    exact = {key: units * w / whole for key, w in fractions.items()}
    floors = {key: int(share) for key, share in exact.items()}  # shares are >= 0: int() floors
    leftover = units - sum(floors.values())
    order = sorted(exact, key=lambda k: (-(exact[k] - floors[k]), str(k)))
    for key in order[:leftover]:
        floors[key] += 1
    return {key: Decimal(n) * quantum for key, n in floors.items()}


def _allocate_pools(
    *, tenant: Tenant, pools: list[SharedCostPool], usage_by_dept: dict, target_ids: list[int]
) -> dict[int, list[_LinePlan]]:
    out: dict[int, list[_LinePlan]] = defaultdict(list)
    headcount: dict[int, int] | None = None
    for pool in pools:
        weights: dict[int, Any]
        key = pool.allocation_key
        if key == SharedCostPool.AllocationKey.FIXED_PERCENT:
            splits = list(pool.splits.all())
            total_percent = sum((s.percent for s in splits), ZERO)
            if total_percent != 100:
                raise InvoicingError(
                    f"Shared-cost pool {pool.name!r}: splits sum to {total_percent}%, not 100%.", field="splits"
                )
            weights = {s.department_id: s.percent for s in splits}
            basis = {s.department_id: f"fixed split {s.percent.normalize()}%" for s in splits}
        else:
            if key == SharedCostPool.AllocationKey.USAGE_SHARE:
                weights = {
                    dept_id: sum((u.cost for u in lines if u.currency == pool.currency), ZERO)
                    for dept_id, lines in usage_by_dept.items()
                }
                unit = f" {pool.currency} usage"
            else:
                if headcount is None:
                    headcount = dict(
                        Membership.objects.filter(tenant=tenant, department_id__in=target_ids)
                        .values_list("department_id")
                        .annotate(n=Count("id"))
                    )
                weights = {dept_id: headcount.get(dept_id, 0) for dept_id in target_ids}
                unit = " members"
            whole = sum(weights.values())
            if whole > 0:
                basis = {
                    d: f"{_allocation_key_label(key)}: {_fmt_weight(w)} of {_fmt_weight(whole)}{unit} "
                    f"({(Decimal(w) * 100 / Decimal(whole)).quantize(Decimal('0.01'))}%)"
                    for d, w in weights.items()
                }
            else:
                # Nothing to weigh by this month: share equally rather than drop the cost.
                weights = dict.fromkeys(target_ids, 1)
                basis = dict.fromkeys(
                    target_ids, f"{_allocation_key_label(key)}: none this month, split equally over {len(target_ids)}"
                )
        for dept_id, amount in split_largest_remainder(pool.amount, weights, pool.currency).items():
            out[dept_id].append(
                _LinePlan(
                    kind=InvoiceLine.Kind.ALLOCATION,
                    description=f"Shared cost: {pool.name} ({pool.get_kind_display()})",
                    currency=pool.currency,
                    list_cost_unrounded=amount,
                    amount_unrounded=amount,
                    values={
                        "pool": pool,
                        "basis": f"{basis[dept_id]} of {money.quantize(pool.amount, pool.currency)} {pool.currency}"[
                            :500
                        ],
                    },
                )
            )
    return out


def _allocation_key_label(key: str) -> str:
    return {"usage_share": "usage share", "headcount": "headcount", "fixed_percent": "fixed split"}[key]


def _fmt_weight(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"{money.quantize(value):,}"
    return str(value)


def _closed_month_deltas(*, tenant: Tenant, period: date) -> dict[int, list[tuple[date, str, Decimal]]]:
    """For each earlier month whose invoice is already issued: the current raw cost minus what
    was charged for it so far (its own usage lines plus adjustments already put on other
    invoices). Non-zero deltas become adjustment lines on this month's draft."""
    lookback = add_months(period, -int(getattr(settings, "LLMOBS_INVOICE_ADJUSTMENT_MONTHS", 12)))
    closed = (
        Invoice.objects.filter(tenant=tenant, status__in=CLOSED_STATUSES, period__lt=period, period__gte=lookback)
        .values_list("period", flat=True)
        .distinct()
        .order_by("period")
    )
    deltas: dict[int, list[tuple[date, str, Decimal]]] = defaultdict(list)
    for month in closed:
        start, end = month_bounds(tenant=tenant, period=month)
        closed_depts = set(
            Invoice.objects.filter(tenant=tenant, period=month, status__in=CLOSED_STATUSES).values_list(
                "department_id", flat=True
            )
        )
        raw: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
        for total in usage_source.raw_cost_total(tenant=tenant, start=start, end=end):
            if total.department_id in closed_depts:
                raw[(total.department_id, total.currency)] += total.cost
        charged: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
        # A few lines per invoice: summed in Python so SQLite stays exact too.
        invoiced = (
            InvoiceLine.objects.filter(invoice__tenant=tenant, invoice__department_id__in=closed_depts)
            .filter(
                Q(invoice__period=month, kind__in=(InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL))
                | Q(kind=InvoiceLine.Kind.ADJUSTMENT, adjusts_period=month)
            )
            # This month's own draft is being rewritten: what it carried does not count.
            .exclude(invoice__period=period)
            .values_list("invoice__department_id", "currency", "list_cost_unrounded")
        )
        for dept_id, currency, cost in invoiced:
            charged[(dept_id, currency)] += cost
        for dept_id, currency in sorted(set(raw) | set(charged)):
            delta = raw[(dept_id, currency)] - charged[(dept_id, currency)]
            if delta != 0:
                deltas[dept_id].append((month, currency, delta))
    return deltas


def _monthly_budgets(*, tenant: Tenant, department_ids: list[int]) -> dict[int, Decimal]:
    budgets: dict[int, Decimal] = defaultdict(Decimal)
    for dept_id, amount in Budget.objects.filter(
        tenant=tenant,
        department_id__in=department_ids,
        scope=Budget.Scope.DEPARTMENT,
        period=Budget.Period.MONTH,
        active=True,
        currency=tenant.currency,
    ).values_list("department_id", "amount"):
        budgets[dept_id] += amount
    return budgets


def _write_drafts(
    *,
    tenant: Tenant,
    period: date,
    bounds: tuple[datetime, datetime],
    targets: list[Department],
    plans_by_dept: dict[int, list[_LinePlan]],
    budgets: dict[int, Decimal],
    notes: str,
    actor: audit.Actor,
) -> DraftSummary:
    """Create or rewrite the month's drafts in one transaction (all or nothing), in a handful of
    set-based queries whatever the number of departments."""
    summary = DraftSummary(period=period)
    by_id = {d.pk: d for d in targets}
    with transaction.atomic():
        existing = set(
            Invoice.objects.filter(tenant=tenant, period=period, department_id__in=by_id).values_list(
                "department_id", flat=True
            )
        )
        # A concurrent drafter may insert the same rows: the unique key keeps one, we take it.
        Invoice.objects.bulk_create(
            [
                Invoice(
                    tenant=tenant,
                    department=d,
                    period=period,
                    period_start=bounds[0],
                    period_end=bounds[1],
                    currency=tenant.currency,
                )
                for d in targets
                if d.pk not in existing
            ],
            ignore_conflicts=True,
        )
        # Lock the month's rows (in id order, so concurrent drafts and issues serialise without
        # deadlocks), then touch drafts only: issued invoices are never rewritten.
        invoices = list(
            Invoice.objects.select_for_update(of=("self",))
            .filter(tenant=tenant, period=period, department_id__in=by_id)
            .order_by("id")
        )
        for invoice in invoices:
            invoice.department = by_id[invoice.department_id]
            invoice.tenant = tenant
        drafts = [i for i in invoices if i.status == Invoice.Status.DRAFT]
        summary.skipped_closed = sorted(
            (i for i in invoices if i.status != Invoice.Status.DRAFT), key=lambda i: i.department.code
        )
        draft_ids = [i.pk for i in drafts]
        InvoiceLine.objects.filter(invoice_id__in=draft_ids).delete()
        credits = list(
            PendingCredit.objects.select_for_update(of=("self",))
            .select_related("source_invoice")
            .filter(tenant=tenant, department_id__in=by_id, source_invoice__period__lt=period)
            .filter(Q(applied_to__isnull=True) | Q(applied_to_id__in=draft_ids))
            .order_by("id")
        )
        all_lines: list[InvoiceLine] = []
        taken: dict[int, list[int]] = defaultdict(list)
        now = timezone.now()
        for invoice in drafts:
            plans = list(plans_by_dept.get(invoice.department_id, []))
            for credit in credits:
                if credit.department_id != invoice.department_id:
                    continue
                taken[invoice.pk].append(credit.pk)
                plans.append(
                    _LinePlan(
                        kind=InvoiceLine.Kind.CREDIT,
                        description=f"Credit: dispute of {credit.source_invoice.number} resolved — {credit.reason}",
                        currency=credit.currency,
                        list_cost_unrounded=ZERO,
                        amount_unrounded=-credit.amount,
                        values={"adjusts_period": credit.source_invoice.period},
                    )
                )
            lines = [
                InvoiceLine(
                    invoice=invoice,
                    position=position,
                    kind=plan.kind,
                    description=plan.description[:500],
                    currency=plan.currency,
                    list_cost_unrounded=plan.list_cost_unrounded,
                    list_cost=money.quantize(plan.list_cost_unrounded, plan.currency),
                    amount_unrounded=_stored(plan.amount_unrounded),
                    amount=money.quantize(plan.amount_unrounded, plan.currency),
                    **plan.values,
                )
                for position, plan in enumerate(plans, start=1)
            ]
            all_lines += lines
            _fill_totals(invoice, lines, budget=budgets.get(invoice.department_id), notes=notes)
            invoice.period_start, invoice.period_end = bounds
            invoice.generated_at = now
        InvoiceLine.objects.bulk_create(all_lines, batch_size=1000)
        PendingCredit.objects.filter(applied_to_id__in=draft_ids).update(applied_to=None)
        for invoice_id, credit_ids in taken.items():
            PendingCredit.objects.filter(pk__in=credit_ids).update(applied_to_id=invoice_id)
        Invoice.objects.bulk_update(drafts, DRAFT_FIELDS, batch_size=500)
        label, user = audit.actor_label(actor), actor if not isinstance(actor, str) else None
        AuditLog.objects.bulk_create(
            [
                AuditLog(
                    tenant=tenant,
                    actor=user,
                    actor_label=label[:255],
                    action="invoice.redraft" if invoice.department_id in existing else "invoice.draft",
                    object_type=Invoice._meta.label,
                    object_id=str(invoice.pk),
                    object_repr=str(invoice)[:255],
                    changes={"total": str(invoice.total), "currency": invoice.currency, "lines": len(invoice_lines)},
                )
                for invoice, invoice_lines in ((i, [ln for ln in all_lines if ln.invoice_id == i.pk]) for i in drafts)
            ],
            batch_size=500,
        )
    summary.drafted = sorted(drafts, key=lambda i: i.department.code)
    return summary


DRAFT_FIELDS = [
    "period_start",
    "period_end",
    "generated_at",
    "list_total_unrounded",
    "total_unrounded",
    "usage_total",
    "eval_total",
    "allocations_total",
    "adjustments_total",
    "total",
    "rounding_difference",
    "unpriced_requests",
    "budget_amount",
    "notes",
]


def _stored(amount: Decimal) -> Decimal:
    # A discount or markup factor can add decimals beyond the column's 10 places; fix them here
    # (half-up, 1e-10) so the totals computed in memory equal the sums of the stored lines.
    # List costs are sums of stored event costs and never need this.
    return amount.quantize(STORED_PRECISION, rounding=ROUND_HALF_UP)


def _fill_totals(invoice: Invoice, lines: list[InvoiceLine], *, budget: Decimal | None, notes: str) -> None:
    mine = [line for line in lines if line.currency == invoice.currency]

    def total(kinds: tuple, attr: str = "amount") -> Decimal:
        return sum((getattr(line, attr) for line in mine if line.kind in kinds), ZERO)

    invoice.usage_total = total((InvoiceLine.Kind.USAGE,))
    invoice.eval_total = total((InvoiceLine.Kind.EVAL,))
    invoice.allocations_total = total((InvoiceLine.Kind.ALLOCATION,))
    invoice.adjustments_total = total((InvoiceLine.Kind.ADJUSTMENT, InvoiceLine.Kind.CREDIT))
    invoice.total = sum((line.amount for line in mine), ZERO)
    invoice.total_unrounded = sum((line.amount_unrounded for line in mine), ZERO)
    invoice.list_total_unrounded = sum((line.list_cost_unrounded for line in mine), ZERO)
    invoice.rounding_difference = invoice.total - invoice.total_unrounded
    invoice.unpriced_requests = sum(line.unpriced_requests for line in lines)
    invoice.budget_amount = budget
    other: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        if line.currency != invoice.currency:
            other[line.currency] += line.amount
    extra = [
        f"Also charged in {cur}: {amount} {cur} (listed per line, not converted)." for cur, amount in other.items()
    ]
    if invoice.unpriced_requests:
        extra.append(
            f"{invoice.unpriced_requests} request(s) had no price and are not charged; "
            "they will be adjusted on a later invoice once priced."
        )
    invoice.notes = "\n".join(filter(None, [notes, *extra]))


# --- Lifecycle -------------------------------------------------------------------------------------


def _transition(
    *, invoice: Invoice, by: Any, source: tuple[str, ...], target: str, values: dict[str, Any], action: str
) -> bool:
    """Claim `source → target` in one UPDATE (safe under concurrency). True if this call made the
    change; False if the invoice was already in `target` (idempotent repeat). Refused otherwise."""
    updated = Invoice.objects.filter(pk=invoice.pk, status__in=source).update(status=target, **values)
    if updated == 1:
        before = invoice.status
        invoice.refresh_from_db()
        audit.record(
            tenant=invoice.tenant,
            actor=by,
            action=action,
            obj=invoice,
            changes={
                "status": {"before": before, "after": target},
                **{k: _audit_value(v) for k, v in values.items() if not k.endswith("_by")},
            },
        )
        return True
    invoice.refresh_from_db()
    if invoice.status == target:
        return False
    raise TransitionRefused(f"Invoice {invoice} is {invoice.status}; it cannot become {target}.", field="status")


def _audit_value(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _user(by: Any) -> Any:
    """The user to store in an `*_by` column: None for a process label (a management command)."""
    return None if isinstance(by, str) else by


def _require_finance(by: Any, invoice: Invoice, verb: str) -> None:
    # A string actor is a trusted process (a management command run by an operator with shell
    # access); the API and the admin always pass the signed-in user, whose role is checked.
    if isinstance(by, str):
        return
    if not is_finance(by, invoice.tenant):
        raise PermissionDenied(f"Only finance or admin members of {invoice.tenant.slug} can {verb} invoices.")


def issue_invoice(*, invoice: Invoice, by: Any) -> bool:
    """draft → issued, taking the tenant's next invoice number (gap-free: the counter row is
    locked and incremented in the same transaction as the status change)."""
    _require_finance(by, invoice, "issue")
    now = timezone.now()
    with transaction.atomic():
        counter = _lock_counter(tenant=invoice.tenant, year=now.astimezone(invoice.tenant.tz).year)
        number = f"{invoice.tenant.slug.upper()}-{counter.year}-{counter.last_number + 1:04d}"
        changed = _transition(
            invoice=invoice,
            by=by,
            source=(Invoice.Status.DRAFT,),
            target=Invoice.Status.ISSUED,
            values={"number": number, "issued_at": now, "issued_by": _user(by)},
            action="invoice.issue",
        )
        if changed:
            InvoiceCounter.objects.filter(pk=counter.pk).update(last_number=counter.last_number + 1)
    return changed


def _lock_counter(*, tenant: Tenant, year: int) -> InvoiceCounter:
    try:
        with transaction.atomic():
            InvoiceCounter.objects.get_or_create(tenant=tenant, year=year)
    except IntegrityError:
        pass  # created concurrently; the locked read below sees it
    return InvoiceCounter.objects.select_for_update().get(tenant=tenant, year=year)


def approve_invoice(*, invoice: Invoice, by: Any) -> bool:
    _require_finance(by, invoice, "approve")
    with transaction.atomic():
        return _transition(
            invoice=invoice,
            by=by,
            source=(Invoice.Status.ISSUED,),
            target=Invoice.Status.APPROVED,
            values={"approved_at": timezone.now(), "approved_by": _user(by)},
            action="invoice.approve",
        )


def dispute_invoice(*, invoice: Invoice, by: Any, reason: str) -> bool:
    """issued → disputed, by the department's manager (or finance/admin), with a reason."""
    if not isinstance(by, str) and not (manages(by, invoice.department) or is_finance(by, invoice.tenant)):
        raise PermissionDenied(f"Only the manager of {invoice.department.code} or finance can dispute this invoice.")
    reason = (reason or "").strip()
    if not reason:
        raise InvoicingError("A dispute needs a reason.", field="reason")
    with transaction.atomic():
        return _transition(
            invoice=invoice,
            by=by,
            source=(Invoice.Status.ISSUED,),
            target=Invoice.Status.DISPUTED,
            values={"disputed_at": timezone.now(), "disputed_by": _user(by), "dispute_reason": reason[:5000]},
            action="invoice.dispute",
        )


def resolve_dispute(
    *, invoice: Invoice, by: Any, outcome: str, credit_amount: Decimal | None = None, note: str = ""
) -> bool:
    """disputed → resolved. `credit` books a credit on the department's next invoice;
    `no_change` records that the invoice stands."""
    _require_finance(by, invoice, "resolve disputes on")
    if outcome not in Invoice.Resolution.values:
        raise InvoicingError(f"{outcome!r} is not an outcome; use credit or no_change.", field="outcome")
    if outcome == Invoice.Resolution.CREDIT:
        if credit_amount is None or credit_amount <= 0:
            raise InvoicingError("A credit needs a positive amount.", field="credit_amount")
        if money.quantize(credit_amount, invoice.currency) != credit_amount:
            raise InvoicingError(f"Give the credit in whole {invoice.currency} minor units.", field="credit_amount")
        if credit_amount > invoice.total:
            raise InvoicingError(
                f"The credit exceeds the invoice total ({money.format_money(invoice.total, invoice.currency)}).",
                field="credit_amount",
            )
    elif credit_amount is not None:
        raise InvoicingError("Only a credit outcome takes an amount.", field="credit_amount")
    with transaction.atomic():
        changed = _transition(
            invoice=invoice,
            by=by,
            source=(Invoice.Status.DISPUTED,),
            target=Invoice.Status.RESOLVED,
            values={
                "resolved_at": timezone.now(),
                "resolved_by": _user(by),
                "resolution": outcome,
                "resolution_note": (note or "")[:5000],
            },
            action="invoice.resolve",
        )
        if changed and outcome == Invoice.Resolution.CREDIT:
            PendingCredit.objects.create(
                tenant=invoice.tenant,
                department=invoice.department,
                source_invoice=invoice,
                amount=credit_amount,
                currency=invoice.currency,
                reason=(note or invoice.dispute_reason)[:500],
            )
    return changed


# --- Reconciliation ---------------------------------------------------------------------------------


@dataclass
class ReconciliationRow:
    department: str
    currency: str
    raw: Decimal = ZERO
    invoiced: Decimal = ZERO
    adjusted_later: Decimal = ZERO

    @property
    def difference(self) -> Decimal:
        return self.raw - self.invoiced - self.adjusted_later


@dataclass
class Reconciliation:
    period: date
    rows: list[ReconciliationRow]
    rounding_difference: Decimal

    @property
    def mismatches(self) -> list[ReconciliationRow]:
        return [r for r in self.rows if r.difference != 0]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def totals(self) -> dict[str, ReconciliationRow]:
        out: dict[str, ReconciliationRow] = {}
        for row in self.rows:
            t = out.setdefault(row.currency, ReconciliationRow("(all)", row.currency))
            t.raw += row.raw
            t.invoiced += row.invoiced
            t.adjusted_later += row.adjusted_later
        return out


UNATTRIBUTED = "(no department)"


def reconcile_period(*, tenant: Tenant, period: date) -> Reconciliation:
    """Prove that the month's invoice lines (usage + eval, unrounded list cost) plus adjustments
    for the month booked on later invoices equal the raw events' cost, per department and
    currency, exactly. Events with no department are not invoiced to anyone: they are listed as
    their own row and always count as a mismatch (charge them through an `untagged` pool and
    fix their attribution)."""
    start, end = month_bounds(tenant=tenant, period=period)
    codes = dict(Department.objects.filter(tenant=tenant).values_list("pk", "code"))
    rows: dict[tuple[str, str], ReconciliationRow] = {}

    def row(dept_id: int | None, currency: str) -> ReconciliationRow:
        name = UNATTRIBUTED if dept_id is None else codes.get(dept_id, f"#{dept_id}")
        return rows.setdefault((name, currency), ReconciliationRow(name, currency))

    for total in usage_source.raw_cost_total(tenant=tenant, start=start, end=end):
        row(total.department_id, total.currency).raw += total.cost
    lines = InvoiceLine.objects.filter(invoice__tenant=tenant).filter(
        Q(invoice__period=period, kind__in=(InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL))
        | Q(kind=InvoiceLine.Kind.ADJUSTMENT, adjusts_period=period)
    )
    for dept_id, currency, kind, cost in lines.values_list(
        "invoice__department_id", "currency", "kind", "list_cost_unrounded"
    ).order_by():
        target = row(dept_id, currency)
        if kind == InvoiceLine.Kind.ADJUSTMENT:
            target.adjusted_later += cost
        else:
            target.invoiced += cost
    rounding = sum(
        Invoice.objects.filter(tenant=tenant, period=period).values_list("rounding_difference", flat=True), ZERO
    )
    return Reconciliation(
        period=period,
        rows=sorted(rows.values(), key=lambda r: (r.department, r.currency)),
        rounding_difference=rounding,
    )
