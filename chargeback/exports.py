"""What finance takes out of llmobs: one invoice as CSV or PDF, a tenant's month as a FOCUS 1.2
cost-and-usage CSV, and a balanced GL journal CSV that an accounting system can import.

Every CSV cell goes through `safe_cell`, which defuses spreadsheet formula injection (a
department or model name like `=HYPERLINK(...)` is shown as text, not executed).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from chargeback import invoicing, money
from chargeback.models import Invoice, InvoiceLine, Tenant

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?(E[+-]?\d+)?")
MILLION = Decimal(1_000_000)


def safe_cell(value: Any) -> str:
    """The text of one CSV cell, with a leading ' when a spreadsheet would read it as a formula.

    Plain numbers (including negative amounts such as credits) are left alone: they cannot be
    formulas, and an accounting import must read `-2.35` as a number."""
    if value is None:
        return ""
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    if text.startswith(FORMULA_PREFIXES) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _write(header: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return buffer.getvalue()


def _cents(amount: Decimal, currency: str) -> Decimal:
    # Rounded amounts are stored in a 10-place column; print them in the currency's minor unit.
    return money.quantize(amount, currency)


def issuer_name(tenant: Tenant) -> str:
    return settings.LLMOBS_INVOICE_ISSUER or f"{tenant.name} AI Platform"


def _doc_number(invoice: Invoice) -> str:
    return invoice.number or f"DRAFT-{invoice.pk}"


# --- One invoice -----------------------------------------------------------------------------------

INVOICE_CSV_HEADER = [
    "invoice_number",
    "status",
    "tenant",
    "department_code",
    "department_name",
    "cost_centre",
    "period",
    "line",
    "kind",
    "description",
    "provider",
    "model",
    "requests",
    "unpriced_requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "output_per_mtok",
    "average_per_mtok",
    "list_cost_unrounded",
    "list_cost",
    "amount_unrounded",
    "amount",
    "rounding",
    "currency",
    "basis",
    "adjusts_period",
    "note",
]


def invoice_csv(invoice: Invoice) -> str:
    """The invoice's lines, then a `total` row whose rounding is the invoice's rounding difference."""
    dept = invoice.department
    head = [
        _doc_number(invoice),
        invoice.status,
        invoice.tenant.slug,
        dept.code,
        dept.name,
        dept.gl_cost_centre,
        f"{invoice.period:%Y-%m}",
    ]
    rows = []
    for line in invoice.lines.all():
        rows.append(
            [
                *head,
                line.position,
                line.kind,
                line.description,
                line.provider,
                line.model,
                line.requests,
                line.unpriced_requests,
                line.input_tokens,
                line.cache_read_tokens,
                line.cache_write_tokens,
                line.output_tokens,
                line.reasoning_tokens,
                line.input_per_mtok,
                line.cache_read_per_mtok,
                line.cache_write_per_mtok,
                line.output_per_mtok,
                line.average_per_mtok,
                line.list_cost_unrounded,
                _cents(line.list_cost, line.currency),
                line.amount_unrounded,
                _cents(line.amount, line.currency),
                line.rounding,
                line.currency,
                line.basis,
                f"{line.adjusts_period:%Y-%m}" if line.adjusts_period else "",
                line.price_note,
            ]
        )
    total = [*head, "", "total", "Invoice total", "", "", "", invoice.unpriced_requests]
    total += [""] * 10 + [invoice.list_total_unrounded, ""]
    total += [
        invoice.total_unrounded,
        _cents(invoice.total, invoice.currency),
        invoice.rounding_difference,
        invoice.currency,
        "",
        "",
        "",
    ]
    rows.append(total)
    return _write(INVOICE_CSV_HEADER, rows)


# Characters the PDF's built-in Helvetica has no glyph for (they would print as a box), and
# what to print instead: the typographic minus used for negative amounts, dashes and arrows.
PDF_SUBSTITUTES = str.maketrans({"\u2212": "-", "\u2192": "->", "\u2190": "<-", "\u2011": "-"})


def html_to_pdf(html: str, *, what: str) -> bytes:
    """Render an HTML document to PDF bytes (xhtml2pdf), refusing to return a broken one."""
    from xhtml2pdf import pisa

    out = io.BytesIO()
    status = pisa.CreatePDF(html.translate(PDF_SUBSTITUTES), dest=out, encoding="utf-8")
    if status.err:
        raise RuntimeError(f"PDF rendering failed for {what}: {status.err} error(s)")
    return out.getvalue()


def invoice_pdf(invoice: Invoice) -> bytes:
    """The PDF a finance team sends: header, department, period, lines, allocations, totals, notes."""
    html = render_to_string("chargeback/invoice_pdf.html", invoice_context(invoice))
    return html_to_pdf(html, what=f"invoice {invoice.pk}")


def invoice_context(invoice: Invoice) -> dict[str, Any]:
    lines = list(invoice.lines.all())

    def fmt(amount: Decimal | None, currency: str) -> str:
        return "" if amount is None else f"{money.quantize(amount, currency):,}"

    def rate(value: Decimal | None) -> str:
        return "" if value is None else f"{value.normalize():f}"

    rows = [
        {
            "line": line,
            "amount": fmt(line.amount, line.currency),
            "list_cost": fmt(line.list_cost, line.currency),
            "rates": " / ".join(
                rate(v)
                for v in (
                    line.input_per_mtok,
                    line.cache_read_per_mtok,
                    line.cache_write_per_mtok,
                    line.output_per_mtok,
                )
            )
            if line.input_per_mtok is not None
            else "",
            "average": rate(line.average_per_mtok.quantize(Decimal("0.0001"))) if line.average_per_mtok else "",
        }
        for line in lines
    ]
    cur = invoice.currency
    budget = invoice.budget_amount
    return {
        "invoice": invoice,
        "issuer": issuer_name(invoice.tenant),
        "number": invoice.number or "DRAFT — not issued",
        "usage_rows": [r for r in rows if r["line"].kind == InvoiceLine.Kind.USAGE],
        "eval_rows": [r for r in rows if r["line"].kind == InvoiceLine.Kind.EVAL],
        "allocation_rows": [r for r in rows if r["line"].kind == InvoiceLine.Kind.ALLOCATION],
        "adjustment_rows": [
            r for r in rows if r["line"].kind in (InvoiceLine.Kind.ADJUSTMENT, InvoiceLine.Kind.CREDIT)
        ],
        "usage_total": fmt(invoice.usage_total, cur),
        "eval_total": fmt(invoice.eval_total, cur),
        "allocations_total": fmt(invoice.allocations_total, cur),
        "adjustments_total": fmt(invoice.adjustments_total, cur),
        "total": fmt(invoice.total, cur),
        "total_unrounded": f"{invoice.total_unrounded:f}",
        "rounding": f"{invoice.rounding_difference:f}",
        "budget": fmt(budget, cur) if budget is not None else "",
        "budget_used": f"{(invoice.total * 100 / budget).quantize(Decimal('0.1'))}%" if budget else "",
        "notes": [n for n in invoice.notes.splitlines() if n],
    }


# --- FOCUS 1.2 -----------------------------------------------------------------------------------------

FOCUS_COLUMNS = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "BillingCurrency",
    "BillingAccountId",
    "BillingAccountName",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ServiceCategory",
    "ServiceName",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "InvoiceId",
    "PricingQuantity",
    "PricingUnit",
    "ListUnitPrice",
    "ConsumedQuantity",
    "ConsumedUnit",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_InvoiceStatus",
    "x_LineKind",
    "x_Model",
    "x_Requests",
    "x_UnpricedRequests",
    "x_InputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_OutputTokens",
    "x_ReasoningTokens",
    "x_AllocationBasis",
]

_CATEGORY = {
    InvoiceLine.Kind.USAGE: ("Usage", ""),
    InvoiceLine.Kind.EVAL: ("Usage", ""),
    InvoiceLine.Kind.ALLOCATION: ("Usage", ""),
    InvoiceLine.Kind.ADJUSTMENT: ("Adjustment", "Correction"),
    InvoiceLine.Kind.CREDIT: ("Credit", "Correction"),
}


def _iso(value) -> str:
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def focus_csv(*, tenant: Tenant, period: date) -> str:
    """Every line of the tenant's invoices for `period` as FOCUS 1.2 rows.

    BilledCost is the line's rounded amount (rows sum to the invoices' totals); EffectiveCost is
    the unrounded charged amount after the tenant's discount/markup; ListCost the unrounded cost
    at the price book. Adjustment and credit rows are `ChargeClass=Correction` with the charge
    period of the month they correct."""
    invoices = (
        Invoice.objects.filter(tenant=tenant, period=period)
        .select_related("department")
        .prefetch_related("lines")
        .order_by("department__code")
    )
    issuer = issuer_name(tenant)
    rows = []
    for invoice in invoices:
        bill_start, bill_end = _iso(invoice.period_start), _iso(invoice.period_end)
        dept = invoice.department
        for line in invoice.lines.all():
            category, charge_class = _CATEGORY[line.kind]
            if line.adjusts_period:
                start, end = invoicing.month_bounds(tenant=tenant, period=line.adjusts_period)
                charge_start, charge_end = _iso(start), _iso(end)
            else:
                charge_start, charge_end = bill_start, bill_end
            tokens = line.input_tokens + line.cache_read_tokens + line.cache_write_tokens + line.output_tokens
            if line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL):
                service = "LLM evaluation" if line.kind == InvoiceLine.Kind.EVAL else f"{line.provider} {line.model}"
                provider = publisher = line.provider
                quantity, unit, unit_price = Decimal(tokens) / MILLION, "1M Tokens", line.average_per_mtok
            else:
                service = line.description
                provider = publisher = issuer
                quantity, unit, unit_price = Decimal(1), "Month", None
            rows.append(
                [
                    _cents(line.amount, line.currency),
                    line.amount_unrounded,
                    line.list_cost_unrounded,
                    line.amount_unrounded,
                    line.currency,
                    tenant.slug,
                    tenant.name,
                    bill_start,
                    bill_end,
                    charge_start,
                    charge_end,
                    category,
                    charge_class,
                    line.description,
                    "Recurring" if line.kind == InvoiceLine.Kind.ALLOCATION else "Usage-Based",
                    "AI and Machine Learning",
                    service,
                    provider,
                    publisher,
                    issuer,
                    _doc_number(invoice),
                    quantity,
                    unit,
                    unit_price,
                    tokens if line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL) else "",
                    "Tokens" if line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.EVAL) else "",
                    dept.code,
                    dept.name,
                    json.dumps(
                        {"department": dept.code, "cost_centre": dept.gl_cost_centre, "kind": line.kind},
                        sort_keys=True,
                    ),
                    invoice.status,
                    line.kind,
                    line.model,
                    line.requests,
                    line.unpriced_requests,
                    line.input_tokens,
                    line.cache_read_tokens,
                    line.cache_write_tokens,
                    line.output_tokens,
                    line.reasoning_tokens,
                    line.basis,
                ]
            )
    return _write(FOCUS_COLUMNS, rows)


# --- GL journal -------------------------------------------------------------------------------------------

GL_COLUMNS = [
    "journal_date",
    "period",
    "document_number",
    "line",
    "account",
    "cost_centre",
    "description",
    "debit",
    "credit",
    "currency",
]

POSTED_STATUSES = invoicing.CLOSED_STATUSES


def gl_csv(*, tenant: Tenant, period: date) -> str:
    """A balanced journal for the month's issued invoices: per invoice and currency, the
    department's cost centre is debited on the expense account and the platform's recharge
    account credited (a net credit swaps the sides). Drafts are not posted.

    Debits equal credits per document and currency, so an accounting import balances."""
    expense, recharge = settings.LLMOBS_GL_EXPENSE_ACCOUNT, settings.LLMOBS_GL_RECHARGE_ACCOUNT
    invoices = (
        Invoice.objects.filter(tenant=tenant, period=period, status__in=POSTED_STATUSES)
        .select_related("department")
        .prefetch_related("lines")
        .order_by("number")
    )
    journal_date = invoicing.add_months(period, 1).toordinal() - 1
    posting_day = date.fromordinal(journal_date).isoformat()
    rows = []
    for invoice in invoices:
        per_currency: dict[str, Decimal] = defaultdict(Decimal)
        for line in invoice.lines.all():
            per_currency[line.currency] += line.amount
        dept = invoice.department
        description = f"AI chargeback {period:%Y-%m} {dept.code}"
        n = 0
        for currency, amount in sorted(per_currency.items()):
            if amount == 0:
                continue
            value = _cents(abs(amount), currency)
            debit_account, credit_account = (expense, recharge) if amount > 0 else (recharge, expense)
            debit_centre, credit_centre = (dept.gl_cost_centre, "") if amount > 0 else ("", dept.gl_cost_centre)
            n += 1
            rows.append(
                [
                    posting_day,
                    f"{period:%Y-%m}",
                    invoice.number,
                    n,
                    debit_account,
                    debit_centre,
                    description,
                    value,
                    "",
                    currency,
                ]
            )
            n += 1
            rows.append(
                [
                    posting_day,
                    f"{period:%Y-%m}",
                    invoice.number,
                    n,
                    credit_account,
                    credit_centre,
                    description,
                    "",
                    value,
                    currency,
                ]
            )
    return _write(GL_COLUMNS, rows)
