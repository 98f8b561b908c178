"""Stakeholder reports: a weekly or monthly summary of a tenant (or one department) in plain
business language, built only from rollups, e-mailed once per period as HTML + PDF.

This module lives in `telemetry` because a report reads rollups, anomalies and (later) eval
scores, all owned here; it calls `chargeback` only for budgets, members and channels, which the
dependency direction allows (telemetry → chargeback, never the reverse).

Numbers: spend and counts come from `DailyRollup` (via `rollups.spend`), users and features from
`DimensionRollup`; nothing scans raw events. The written summary is generated from those numbers
by fixed rules (`summarise`), never free text. See docs/REPORTS.md.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from chargeback import money
from chargeback.budgets import FORECAST_MIN_ELAPSED
from chargeback.models import Budget, Department, Membership, NotificationChannel, PeriodBounds, Role, Tenant
from telemetry import anomalies, rollups
from telemetry.models import Anomaly, DailyRollup, ReportDelivery

log = logging.getLogger(__name__)

KINDS = (ReportDelivery.Kind.WEEK, ReportDelivery.Kind.MONTH)
TOP_N = 5
# A change smaller than this (in percent) is reported as "flat": cents of noise are not news.
FLAT_PERCENT = Decimal("0.5")
# A SENDING row older than this belongs to a worker that died mid-send: it may be claimed again.
STALE_SENDING = timedelta(minutes=15)
SEVERITY_ORDER = {Anomaly.Severity.HIGH: 0, Anomaly.Severity.MEDIUM: 1, Anomaly.Severity.LOW: 2}


class ReportError(ValueError):
    """A report request that cannot be answered; `field` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --- Periods -------------------------------------------------------------------------------------
def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class Period:
    """Local calendar days [start, end) of the tenant: a Monday-to-Sunday week or a month."""

    kind: str
    start: date
    end: date  # exclusive

    @classmethod
    def starting(cls, *, kind: str, start: date) -> Period:
        if kind == ReportDelivery.Kind.WEEK:
            if start.weekday() != 0:
                raise ReportError("start", f"{start} is not a Monday; weekly reports start on Mondays.")
            return cls(kind, start, start + timedelta(days=7))
        if kind == ReportDelivery.Kind.MONTH:
            if start.day != 1:
                raise ReportError("start", f"{start} is not the 1st; monthly reports start on the 1st.")
            return cls(kind, start, _add_months(start, 1))
        raise ReportError("period", f"{kind!r} is not a report period; use week or month.")

    @classmethod
    def last_complete(cls, *, kind: str, as_of: date) -> Period:
        """The latest period that ended on or before local midnight starting `as_of`."""
        if kind == ReportDelivery.Kind.WEEK:
            end = as_of - timedelta(days=as_of.weekday())
            return cls.starting(kind=kind, start=end - timedelta(days=7))
        if kind == ReportDelivery.Kind.MONTH:
            return cls.starting(kind=kind, start=_add_months(as_of.replace(day=1), -1))
        raise ReportError("period", f"{kind!r} is not a report period; use week or month.")

    def previous(self) -> Period:
        if self.kind == ReportDelivery.Kind.WEEK:
            return Period.starting(kind=self.kind, start=self.start - timedelta(days=7))
        return Period.starting(kind=self.kind, start=_add_months(self.start, -1))

    @property
    def label(self) -> str:
        if self.kind == ReportDelivery.Kind.MONTH:
            return f"{self.start:%B %Y}"
        last = self.end - timedelta(days=1)
        return f"week of {self.start:%-d %b} to {last:%-d %b %Y}"

    @property
    def noun(self) -> str:
        return "week" if self.kind == ReportDelivery.Kind.WEEK else "month"

    def bounds(self, tenant: Tenant) -> tuple[datetime, datetime]:
        tz = tenant.tz
        start = datetime(self.start.year, self.start.month, self.start.day, tzinfo=tz)
        end = datetime(self.end.year, self.end.month, self.end.day, tzinfo=tz)
        return start, end


def local_today(tenant: Tenant, now: datetime | None = None) -> date:
    return (now or timezone.now()).astimezone(tenant.tz).date()


def list_periods(*, tenant: Tenant, kind: str, count: int, now: datetime | None = None) -> list[Period]:
    """The `count` latest complete periods, newest first."""
    period = Period.last_complete(kind=kind, as_of=local_today(tenant, now))
    periods = []
    for _ in range(count):
        periods.append(period)
        period = period.previous()
    return periods


# --- The report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranked:
    label: str
    cost: Decimal
    requests: int
    share: Decimal | None  # percent of the period's spend, 1 decimal
    change: Decimal | None  # cost minus the previous period's (None: not shown)


@dataclass(frozen=True)
class BudgetOutlook:
    name: str
    limit: Decimal
    month_start: date
    spent_to_date: Decimal  # month start → end of the report's period
    projected: Decimal | None  # at the month's average rate so far; None = too early to tell
    month_complete: bool

    @property
    def projected_percent(self) -> Decimal | None:
        if self.projected is None or self.limit <= 0:
            return None
        return (self.projected * 100 / self.limit).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class Quality:
    """Satisfaction and quality for a period, once evals and feedback exist."""

    satisfaction_percent: Decimal | None
    feedback_count: int
    eval_pass_rate_percent: Decimal | None
    eval_count: int


@dataclass(frozen=True)
class AnomalyItem:
    when: datetime
    department: str
    metric: str
    severity: str
    explanation: str
    observed: str = ""  # in the metric's unit, for the written summary
    expected: str = ""


@dataclass
class Report:
    tenant: Tenant
    department: Department | None
    period: Period
    previous: Period
    currency: str
    spend: Decimal
    previous_spend: Decimal
    requests: int
    previous_requests: int
    errors: int
    unpriced: int
    input_tokens: int
    output_tokens: int
    active_users: int
    previous_active_users: int
    other_currencies: list[tuple[str, Decimal]]
    top_departments: list[Ranked]
    top_models: list[Ranked]
    top_features: list[Ranked]
    top_users: list[Ranked]
    budgets: list[BudgetOutlook]
    quality: Quality | None
    anomalies: list[AnomalyItem]
    anomaly_count: int
    anomaly_high: int
    driver: tuple[str, str, Decimal] | None  # (department label, model, cost change) behind the change
    summary: list[str] = field(default_factory=list)

    @property
    def scope_label(self) -> str:
        return self.department.name if self.department else self.tenant.name

    @property
    def change_percent(self) -> Decimal | None:
        if self.previous_spend == 0:
            return None
        return ((self.spend - self.previous_spend) * 100 / self.previous_spend).quantize(Decimal("0.1"))

    @property
    def cost_per_active_user(self) -> Decimal | None:
        return self.spend / self.active_users if self.active_users else None

    @property
    def previous_cost_per_active_user(self) -> Decimal | None:
        return self.previous_spend / self.previous_active_users if self.previous_active_users else None

    @property
    def error_rate_percent(self) -> Decimal | None:
        return (Decimal(self.errors) * 100 / self.requests).quantize(Decimal("0.1")) if self.requests else None

    def money(self, amount: Decimal | None) -> str:
        return money.format_money(amount, self.currency)

    # Display values for the templates (rounded once, here, for display only).
    @property
    def requests_text(self) -> str:
        return f"{self.requests:,}"

    @property
    def previous_requests_text(self) -> str:
        return f"{self.previous_requests:,}"

    @property
    def money_spend(self) -> str:
        return self.money(self.spend)

    @property
    def money_previous_spend(self) -> str:
        return self.money(self.previous_spend)

    @property
    def money_per_user(self) -> str:
        return self.money(self.cost_per_active_user)

    @property
    def budget_rows(self) -> list[dict[str, str]]:
        return [
            {
                "name": b.name,
                "spent": self.money(b.spent_to_date),
                "projected": self.money(b.projected) if b.projected is not None else "too early to tell",
                "limit": self.money(b.limit),
                "percent": f"{b.projected_percent}%" if b.projected_percent is not None else "—",
            }
            for b in self.budgets
        ]

    @property
    def sections(self) -> list[dict[str, Any]]:
        def rows(items: list[Ranked]) -> list[dict[str, str]]:
            return [
                {
                    "label": i.label,
                    "cost": self.money(i.cost),
                    "share": f"{i.share}%" if i.share is not None else "—",
                    "requests": f"{i.requests:,}",
                    "change": _signed(self, i.change) if i.change is not None else "",
                }
                for i in items
            ]

        out = []
        if self.department is None:
            out.append(
                {
                    "title": "Top departments",
                    "column": "Department",
                    "rows": rows(self.top_departments),
                    "with_change": True,
                }
            )
        out += [
            {"title": "Top models", "column": "Model", "rows": rows(self.top_models), "with_change": True},
            {"title": "Top features", "column": "Feature", "rows": rows(self.top_features), "with_change": False},
            {"title": "Top users", "column": "User", "rows": rows(self.top_users), "with_change": False},
        ]
        return out

    @property
    def title(self) -> str:
        kind = "Weekly" if self.period.kind == ReportDelivery.Kind.WEEK else "Monthly"
        return f"{kind} AI spend report · {self.scope_label} · {self.period.label}"


def _query(tenant: Tenant, department: Department | None, period: Period) -> rollups.ReportQuery:
    start, end = period.bounds(tenant)
    return rollups.ReportQuery(
        tenant=tenant, start=start, end=end, department_ids=frozenset({department.pk}) if department else None
    )


def _in_currency(rows: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["currency"] == currency]


def _ranked(rows: list[dict[str, Any]], total: Decimal, previous: dict[Any, Decimal] | None, label) -> list[Ranked]:
    out = []
    for row in rows[:TOP_N]:
        share = (row["cost"] * 100 / total).quantize(Decimal("0.1")) if total else None
        change = row["cost"] - previous.get(row["group"], Decimal(0)) if previous is not None else None
        out.append(Ranked(label(row["group"]), row["cost"], row["requests"], share, change))
    return out


def _driver(
    *, tenant: Tenant, department: Department | None, period: Period, previous: Period, currency: str, rising: bool
):
    """The department × model whose spend moved most in the direction of the total's change."""

    def costs(p: Period) -> dict[tuple[int, str], Decimal]:
        qs = DailyRollup.objects.filter(tenant_id=tenant.pk, day__gte=p.start, day__lt=p.end, currency=currency)
        if department is not None:
            qs = qs.filter(department_id=department.pk)
        return {
            (r["department_id"], r["model"]): Decimal(r["_cost"] or 0)
            for r in rollups.sum_rows(qs, ("department_id", "model"), ("cost",))
        }

    now, before = costs(period), costs(previous)
    deltas = {k: now.get(k, Decimal(0)) - before.get(k, Decimal(0)) for k in now.keys() | before.keys()}
    if not deltas:
        return None
    key = max(deltas, key=lambda k: (deltas[k] if rising else -deltas[k], str(k)))
    if (deltas[key] > 0) != rising or deltas[key] == 0:
        return None
    names = dict(Department.objects.filter(tenant=tenant).values_list("pk", "name"))
    return names.get(key[0], "Unattributed"), key[1], deltas[key]


def quality_summary(*, tenant: Tenant, department: Department | None, start: datetime, end: datetime) -> Quality | None:
    """Satisfaction (feedback) and quality (eval pass rate) for the period, or None when there is
    no eval or feedback data (the report then says "not measured yet" instead of a number)."""
    from telemetry import evals

    ids = [department.pk] if department is not None else None
    summary = evals.quality_summary(tenant=tenant, start=start, end=end, department_ids=ids)
    if summary is None:
        return None
    total = summary["total"]

    def percent(ratio: float | None) -> Decimal | None:
        return None if ratio is None else (Decimal(str(ratio)) * 100).quantize(Decimal("0.1"))

    return Quality(
        satisfaction_percent=percent(total["satisfaction"]),
        feedback_count=total["feedback"],
        eval_pass_rate_percent=percent(total["pass_rate"]),
        eval_count=total["judged"],
    )


def _budget_outlooks(
    *, tenant: Tenant, department: Department | None, period: Period, currency: str
) -> list[BudgetOutlook]:
    """Monthly budgets in the report's scope: spend from the 1st to the end of the report's
    period, and the month-end figure at the month's average rate so far (the same rule as the
    budget alerts, so the report and the alert never disagree)."""
    budgets = Budget.objects.filter(tenant=tenant, active=True, period=Budget.Period.MONTH, currency=currency)
    if department is None:
        budgets = budgets.filter(scope=Budget.Scope.TENANT)
    else:
        budgets = budgets.filter(scope=Budget.Scope.DEPARTMENT, department=department)
    last_day = period.end - timedelta(days=1)
    month_start = last_day.replace(day=1)
    month = Period.starting(kind=ReportDelivery.Kind.MONTH, start=month_start)
    m_start, m_end = month.bounds(tenant)
    upto = Period(month.kind, month_start, min(period.end, month.end)).bounds(tenant)[1]
    elapsed = Decimal((upto.astimezone(UTC) - m_start.astimezone(UTC)).total_seconds())
    length = Decimal((m_end.astimezone(UTC) - m_start.astimezone(UTC)).total_seconds())
    out = []
    for budget in budgets.select_related("tenant").order_by("name", "pk"):
        spent = rollups.period_spend(budget=budget, bounds=PeriodBounds(start=m_start, end=upto))
        complete = upto >= m_end
        if complete:
            projected = spent
        elif elapsed >= length * FORECAST_MIN_ELAPSED:
            projected = spent * length / elapsed
        else:
            projected = None
        out.append(BudgetOutlook(budget.name, budget.amount, month_start, spent, projected, complete))
    return out


def _anomalies(*, tenant: Tenant, department: Department | None, start: datetime, end: datetime):
    qs = Anomaly.objects.filter(tenant=tenant, hour__gte=start, hour__lt=end).select_related("department")
    if department is not None:
        qs = qs.filter(department=department)
    rows = sorted(qs, key=lambda a: (SEVERITY_ORDER.get(a.severity, 3), -a.score, a.hour))
    items = [
        AnomalyItem(
            a.hour,
            a.department.name if a.department else "Whole tenant",
            a.get_metric_display(),
            a.severity,
            a.explanation,
            observed=anomalies.format_value(a.metric, a.observed, tenant.currency),
            expected=anomalies.format_value(a.metric, a.expected, tenant.currency),
        )
        for a in rows[:TOP_N]
    ]
    return items, len(rows), sum(1 for a in rows if a.severity == Anomaly.Severity.HIGH)


def build_report(*, tenant: Tenant, department: Department | None, period: Period) -> Report:
    """Every number of one report, read from rollups, and its written summary."""
    if department is not None and department.tenant_id != tenant.pk:
        raise ReportError("department", "The department belongs to another tenant.")
    currency = tenant.currency
    previous = period.previous()
    now_q, before_q = _query(tenant, department, period), _query(tenant, department, previous)

    totals = rollups.spend(query=now_q)
    before_totals = rollups.spend(query=before_q)
    main = next((r for r in totals if r["currency"] == currency), None)
    before = next((r for r in before_totals if r["currency"] == currency), None)
    total = main["cost"] if main else Decimal(0)

    def requests_of(rows: list[dict[str, Any]]) -> dict[str, int]:
        return {k: sum(r[k] for r in rows) for k in ("requests", "errors", "unpriced", "input_tokens", "output_tokens")}

    counts, before_counts = requests_of(totals), requests_of(before_totals)

    def grouped(group_by: str, query) -> list[dict[str, Any]]:
        return _in_currency(rollups.spend(query=query, group_by=group_by), currency)

    models, before_models = grouped("model", now_q), grouped("model", before_q)
    features = grouped("feature", now_q)
    users = rollups.spend(query=now_q, group_by="user")
    before_users = rollups.spend(query=before_q, group_by="user")
    department_rows = grouped("department", now_q) if department is None else []
    before_departments = grouped("department", before_q) if department is None else []
    codes = dict(Department.objects.filter(tenant=tenant).values_list("code", "name"))

    start, end = period.bounds(tenant)
    anomalies, anomaly_count, anomaly_high = _anomalies(tenant=tenant, department=department, start=start, end=end)
    before_total = before["cost"] if before else Decimal(0)
    report = Report(
        tenant=tenant,
        department=department,
        period=period,
        previous=previous,
        currency=currency,
        spend=total,
        previous_spend=before_total,
        requests=counts["requests"],
        previous_requests=before_counts["requests"],
        errors=counts["errors"],
        unpriced=counts["unpriced"],
        input_tokens=counts["input_tokens"],
        output_tokens=counts["output_tokens"],
        # Distinct named users with at least one call; calls without a user are not a person.
        active_users=len({r["group"] for r in users if r["group"] and r["requests"]}),
        previous_active_users=len({r["group"] for r in before_users if r["group"] and r["requests"]}),
        other_currencies=[(r["currency"], r["cost"]) for r in totals if r["currency"] != currency],
        top_departments=_ranked(
            department_rows, total, {r["group"]: r["cost"] for r in before_departments},
            lambda code: codes.get(code, "Unattributed") if code else "Unattributed",
        ),
        top_models=_ranked(models, total, {r["group"]: r["cost"] for r in before_models}, str),
        top_features=_ranked(features, total, None, lambda f: f or "(no feature)"),
        top_users=_ranked([r for r in _in_currency(users, currency) if r["group"]], total, None, str),
        budgets=_budget_outlooks(tenant=tenant, department=department, period=period, currency=currency),
        quality=quality_summary(tenant=tenant, department=department, start=start, end=end),
        anomalies=anomalies,
        anomaly_count=anomaly_count,
        anomaly_high=anomaly_high,
        driver=None,
    )  # fmt: skip
    if total != before_total:
        report.driver = _driver(
            tenant=tenant, department=department, period=period, previous=previous, currency=currency,
            rising=total > before_total,
        )  # fmt: skip
    report.summary = summarise(report)
    return report


# --- The written summary -----------------------------------------------------------------------------
def _percent(value: Decimal) -> str:
    value = abs(value)
    return f"{value.quantize(Decimal('1')):,}%" if value >= 10 else f"{value.normalize():f}%"


def _signed(report: Report, amount: Decimal) -> str:
    sign = "+" if amount >= 0 else "−"
    return f"{sign}{report.money(abs(amount))}"


def summarise(report: Report) -> list[str]:
    """Plain sentences generated from the report's numbers by fixed rules."""
    r, noun = report, report.period.noun
    lines: list[str] = []
    change = r.change_percent
    if r.spend == 0 and r.previous_spend == 0:
        lines.append(f"No LLM spend this {noun} or the {noun} before.")
    elif change is None:
        lines.append(f"Spend was {r.money(r.spend)} this {noun}, with no spend the {noun} before.")
    elif abs(change) < FLAT_PERCENT:
        lines.append(
            f"Spend was flat at {r.money(r.spend)} ({_signed(r, r.spend - r.previous_spend)} on the previous {noun})."
        )
    else:
        verb = "rose" if change > 0 else "fell"
        text = f"Spend {verb} {_percent(change)} to {r.money(r.spend)} (from {r.money(r.previous_spend)})"
        if r.driver is not None:
            dept, model, delta = r.driver
            lead = "driven by" if change > 0 else "mostly"
            where = (
                f"{dept} ({_signed(r, delta)} on {model})" if r.department is None else f"{model} ({_signed(r, delta)})"
            )
            text += f", {lead} {where}"
        lines.append(text + ".")
    if r.requests:
        per_user = r.cost_per_active_user
        users = f"{r.active_users:,} {'person' if r.active_users == 1 else 'people'}"
        sentence = f"{users} made {r.requests:,} LLM calls ({r.previous_requests:,} the {noun} before)"
        if per_user is not None:
            sentence += f"; cost per active user was {r.money(per_user)}"
            if r.previous_cost_per_active_user is not None:
                sentence += f" (was {r.money(r.previous_cost_per_active_user)})"
        lines.append(sentence + ".")
        if r.top_models:
            top = r.top_models[0]
            lines.append(
                f"The most used model by spend was {top.label} ({r.money(top.cost)}, {_percent(top.share or Decimal(0))} of spend)."
            )
    for b in r.budgets:
        if b.projected is None:
            lines.append(
                f"{b.name}: {r.money(b.spent_to_date)} spent so far this month of {r.money(b.limit)}; too early in the month to project."
            )
            continue
        pct = b.projected_percent
        verb = f"closed {b.month_start:%B} at" if b.month_complete else "is on course to end the month at"
        text = f"{b.name} {verb} {r.money(b.projected)}"
        text += (
            f", {_percent(pct)} of its {r.money(b.limit)} limit"
            if pct is not None
            else f" against a {r.money(b.limit)} limit"
        )
        if b.projected > b.limit:
            text += f" ({r.money(b.projected - b.limit)} over)"
        lines.append(text + ".")
    if r.anomaly_count:
        high = f", {r.anomaly_high} of them high severity" if r.anomaly_high else ""
        top = r.anomalies[0]
        metric = top.metric.split(" (")[0]
        metric = metric if metric.startswith("p95") else metric.lower()
        when = top.when.astimezone(r.tenant.tz)
        lines.append(
            f"{r.anomaly_count} unusual {'pattern was' if r.anomaly_count == 1 else 'patterns were'} detected{high}; "
            f"the largest: {metric} in {top.department} on {when:%a %-d %b} at {when:%H}:00 was {top.observed}, "
            f"against a usual {top.expected}."
        )
    else:
        lines.append(f"No unusual activity was detected this {noun}.")
    if r.quality is None:
        lines.append("Satisfaction and answer quality are not measured yet.")
    else:
        q, parts = r.quality, []
        if q.eval_pass_rate_percent is not None:
            parts.append(
                f"{_percent(q.eval_pass_rate_percent)} of the {q.eval_count:,} answers checked by the quality judge passed"
            )
        if q.satisfaction_percent is not None:
            rated = f"{q.feedback_count:,} {'rating' if q.feedback_count == 1 else 'ratings'}"
            parts.append(f"users were satisfied with {_percent(q.satisfaction_percent)} of answers ({rated})")
        if parts:
            text = "; ".join(parts)
            lines.append(text[0].upper() + text[1:] + ".")
    if r.unpriced:
        calls = "1 call had no price and is" if r.unpriced == 1 else f"{r.unpriced:,} calls had no price and are"
        lines.append(f"{calls} not included in spend.")
    for currency, amount in r.other_currencies:
        lines.append(f"A further {money.format_money(amount, currency)} was spent in {currency} (not converted).")
    return lines


# --- Rendering -----------------------------------------------------------------------------------------
def report_context(report: Report) -> dict[str, Any]:
    return {
        "report": report,
        "r": report,
        "issuer": settings.LLMOBS_INVOICE_ISSUER or f"{report.tenant.name} AI Platform",
    }


def render_html(report: Report) -> str:
    """The stand-alone HTML document: the e-mail body and the PDF source."""
    return render_to_string("telemetry/report_email.html", report_context(report))


def render_text(report: Report) -> str:
    r = report
    out = [r.title, "=" * len(r.title), ""]
    out += [f"- {line}" for line in r.summary]
    out += ["", f"Spend: {r.money(r.spend)} (previous {r.period.noun}: {r.money(r.previous_spend)})"]
    out.append(f"Calls: {r.requests:,} · errors: {r.errors:,} · active users: {r.active_users:,}")
    for title, rows in (
        ("Departments", r.top_departments),
        ("Models", r.top_models),
        ("Features", r.top_features),
        ("Users", r.top_users),
    ):
        if rows:
            out += ["", f"Top {title.lower()}:"]
            out += [f"  {row.label}: {r.money(row.cost)} ({row.requests:,} calls)" for row in rows]
    if r.quality is None:
        out += ["", "Satisfaction and quality: not measured yet"]
    return "\n".join(out) + "\n"


def render_pdf(report: Report) -> bytes:
    from chargeback.exports import html_to_pdf

    return html_to_pdf(render_html(report), what=report.title)


def pdf_filename(report: Report) -> str:
    scope = report.department.code if report.department else "all"
    return f"llmobs-{report.tenant.slug}-{scope}-{report.period.kind}-{report.period.start:%Y-%m-%d}.pdf"


# --- Sending ---------------------------------------------------------------------------------------------
def recipients_for(*, tenant: Tenant, department: Department | None) -> list[str]:
    """Finance and admin members, the department's manager(s) for a department report, and the
    tenant's enabled e-mail channels; de-duplicated, sorted."""
    users = get_user_model().objects.filter(
        memberships__tenant=tenant, memberships__role__in=(Role.FINANCE, Role.ADMIN), is_active=True
    )
    addresses = {u.email.strip().lower() for u in users if u.email.strip()}
    if department is not None:
        managers = Membership.objects.filter(
            tenant=tenant, department=department, role=Role.MANAGER, user__is_active=True
        ).values_list("user__email", flat=True)
        addresses |= {e.strip().lower() for e in managers if e and e.strip()}
        if department.manager_id and department.manager.is_active and department.manager.email.strip():
            addresses.add(department.manager.email.strip().lower())
    for target in NotificationChannel.objects.filter(
        tenant=tenant, kind=NotificationChannel.Kind.EMAIL, enabled=True
    ).values_list("target", flat=True):
        addresses |= {a.strip().lower() for a in target.split(",") if a.strip()}
    return sorted(addresses)


@dataclass(frozen=True)
class SendResult:
    tenant: str
    scope: str
    period: Period
    outcome: str  # sent | already_sent | in_progress | no_recipients | failed | skipped_idle
    recipients: tuple[str, ...] = ()
    error: str = ""


def scope_key(department: Department | None) -> str:
    return f"department:{department.pk}" if department else "tenant"


def _claim(*, tenant: Tenant, department: Department | None, period: Period, now: datetime) -> ReportDelivery | None:
    """This run's ReportDelivery row in SENDING state, or None when another run sent it or is
    sending it. The unique key decides races; the conditional UPDATE decides who sends."""
    try:
        with transaction.atomic():
            row, _ = ReportDelivery.objects.get_or_create(
                tenant=tenant, scope_key=scope_key(department), kind=period.kind, period_start=period.start,
                defaults={"department": department, "period_end": period.end},
            )  # fmt: skip
    except IntegrityError:  # a concurrent run created it first
        row = ReportDelivery.objects.get(
            tenant=tenant, scope_key=scope_key(department), kind=period.kind, period_start=period.start
        )
    claimable = Q(status__in=(ReportDelivery.Status.PENDING, ReportDelivery.Status.FAILED)) | Q(
        status=ReportDelivery.Status.SENDING, updated_at__lt=now - STALE_SENDING
    )
    claimed = ReportDelivery.objects.filter(claimable, pk=row.pk).update(
        status=ReportDelivery.Status.SENDING, updated_at=now
    )
    if claimed != 1:
        return None
    row.refresh_from_db()
    return row


def send_report(
    *, tenant: Tenant, department: Department | None, period: Period, now: datetime | None = None
) -> SendResult:
    """Build, render and e-mail one report once. A re-run finds the SENT row and sends nothing."""
    now = now or timezone.now()
    scope = department.code if department else "tenant"
    done = ReportDelivery.objects.filter(
        tenant=tenant, scope_key=scope_key(department), kind=period.kind, period_start=period.start,
        status__in=(ReportDelivery.Status.SENT, ReportDelivery.Status.NO_RECIPIENTS),
    ).first()  # fmt: skip
    if done is not None:  # cheap exit before building anything; _claim is what guarantees once
        return SendResult(tenant.slug, scope, period, "already_sent", tuple(done.recipients))
    report = build_report(tenant=tenant, department=department, period=period)
    if department is not None and report.requests == 0 and report.previous_requests == 0:
        return SendResult(tenant.slug, scope, period, "skipped_idle")
    row = _claim(tenant=tenant, department=department, period=period, now=now)
    if row is None:
        return SendResult(tenant.slug, scope, period, "in_progress")
    recipients = recipients_for(tenant=tenant, department=department)
    row.subject, row.recipients, row.attempts = report.title[:255], recipients, row.attempts + 1
    if not recipients:
        row.status = ReportDelivery.Status.NO_RECIPIENTS
        row.save(update_fields=["subject", "recipients", "attempts", "status", "updated_at"])
        log.warning("report %s has no recipients", row)
        return SendResult(tenant.slug, scope, period, "no_recipients")
    message = EmailMultiAlternatives(
        subject=report.title, body=render_text(report), from_email=settings.DEFAULT_FROM_EMAIL, to=recipients
    )
    message.attach_alternative(render_html(report), "text/html")
    message.attach(pdf_filename(report), render_pdf(report), "application/pdf")
    try:
        message.send()
    except (smtplib.SMTPException, OSError) as exc:
        row.status, row.last_error = ReportDelivery.Status.FAILED, f"SMTP: {exc}"[:2000]
        row.save(update_fields=["subject", "recipients", "attempts", "status", "last_error", "updated_at"])
        log.warning("report %s failed: %s", row, exc)
        return SendResult(tenant.slug, scope, period, "failed", tuple(recipients), str(exc))
    row.status, row.sent_at, row.last_error = ReportDelivery.Status.SENT, timezone.now(), ""
    row.save(update_fields=["subject", "recipients", "attempts", "status", "last_error", "sent_at", "updated_at"])
    return SendResult(tenant.slug, scope, period, "sent", tuple(recipients))


def report_scopes(tenant: Tenant) -> list[Department | None]:
    """The tenant-wide report, then one per active department."""
    departments = Department.objects.filter(tenant=tenant, active=True).select_related("manager").order_by("code")
    return [None, *departments]


def send_reports(
    *, kind: str, as_of: date | None = None, tenant_slug: str | None = None, now: datetime | None = None
) -> list[SendResult]:
    """Every tenant's (or one tenant's) reports for the last period complete at `as_of` (default:
    today in each tenant's time zone)."""
    if kind not in KINDS:
        raise ReportError("period", f"{kind!r} is not a report period; use week or month.")
    tenants = Tenant.objects.order_by("slug")
    if tenant_slug:
        tenants = tenants.filter(slug=tenant_slug)
        if not tenants.exists():
            raise ReportError("tenant", f"No tenant with slug {tenant_slug!r}.")
    results: list[SendResult] = []
    for tenant in tenants:
        period = Period.last_complete(kind=kind, as_of=as_of or local_today(tenant, now))
        for department in report_scopes(tenant):
            results.append(send_report(tenant=tenant, department=department, period=period, now=now))
    return results


def sent_reports(*, tenant: Tenant, kind: str) -> dict[tuple[str, date], ReportDelivery]:
    """(scope_key, period_start) → its delivery row, for the reports page."""
    return {(row.scope_key, row.period_start): row for row in ReportDelivery.objects.filter(tenant=tenant, kind=kind)}


@dataclass(frozen=True)
class Preview:
    report: Report
    text: str
    pdf_path: str


def preview_reports(
    *, kind: str, as_of: date | None = None, tenant_slug: str | None = None, out_dir: str, now: datetime | None = None
) -> list[Preview]:
    """What `send_reports` would send, without sending or recording anything: the text of each
    report, and its PDF written under `out_dir`."""
    import os

    if kind not in KINDS:
        raise ReportError("period", f"{kind!r} is not a report period; use week or month.")
    tenants = Tenant.objects.order_by("slug")
    if tenant_slug:
        tenants = tenants.filter(slug=tenant_slug)
        if not tenants.exists():
            raise ReportError("tenant", f"No tenant with slug {tenant_slug!r}.")
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for tenant in tenants:
        period = Period.last_complete(kind=kind, as_of=as_of or local_today(tenant, now))
        for department in report_scopes(tenant):
            report = build_report(tenant=tenant, department=department, period=period)
            if department is not None and report.requests == 0 and report.previous_requests == 0:
                continue
            path = os.path.join(out_dir, pdf_filename(report))
            with open(path, "wb") as f:
                f.write(render_pdf(report))
            out.append(Preview(report, render_text(report), path))
    return out
