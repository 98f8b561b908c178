"""Invoice CSV and PDF, FOCUS 1.2 and GL journal exports, parsed back and checked column by column."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from chargeback import exports, invoicing
from chargeback.models import Department, Invoice, SharedCostPool
from tests.factories import make_usage_event

# Invoice numbers carry the year of issue (today, in the tenant's zone), not the period's.
ISSUE_YEAR = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).year

MARCH = date(2026, 3, 1)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def issued(acme, research_dept, sales_dept, finance_user, manager_user):
    research_dept.name = '=HYPERLINK("http://evil")'
    research_dept.save()
    at = datetime(2026, 3, 5, tzinfo=UTC)
    make_usage_event(
        tenant=acme,
        department=research_dept,
        occurred_at=at,
        model="gpt-4o",
        input_tokens=1_200_000,
        cache_read_input_tokens=200_000,
        output_tokens=300_000,
        reasoning_tokens=1000,
        cost=Decimal("5.5000000049"),
    )
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=at, model="+cmd", feature="eval", cost=Decimal("0.25")
    )
    make_usage_event(tenant=acme, department=sales_dept, occurred_at=at, cost=Decimal("1.005"))
    SharedCostPool.objects.create(tenant=acme, name="@Platform", amount=Decimal("10.00"), ends_on=MARCH)
    invoicing.draft_invoices(tenant=acme, period=MARCH, force=True)
    research = Invoice.objects.get(department=research_dept, period=MARCH)
    sales = Invoice.objects.get(department=sales_dept, period=MARCH)
    invoicing.issue_invoice(invoice=research, by=finance_user)
    invoicing.issue_invoice(invoice=sales, by=finance_user)
    # April: a credit on research, so the journal has a negative side too.
    invoicing.dispute_invoice(invoice=research, by=manager_user, reason="duplicate job")
    invoicing.resolve_dispute(invoice=research, by=finance_user, outcome="credit", credit_amount=Decimal("5.00"))
    invoicing.draft_invoices(tenant=acme, period=date(2026, 4, 1), force=True)
    return research, sales


def test_safe_cell_neutralises_formulas_but_keeps_numbers():
    assert exports.safe_cell("=1+2") == "'=1+2"
    assert exports.safe_cell("+cmd") == "'+cmd"
    assert exports.safe_cell("-x") == "'-x"
    assert exports.safe_cell("@SUM(A1)") == "'@SUM(A1)"
    assert exports.safe_cell("\tx") == "'\tx"
    assert exports.safe_cell("\rx") == "'\rx"
    assert exports.safe_cell(Decimal("-2.35")) == "-2.35"
    assert exports.safe_cell("-2.35") == "-2.35"
    assert exports.safe_cell("research") == "research"
    assert exports.safe_cell(None) == ""


def test_invoice_csv_lists_lines_and_a_total_row(issued):
    research, _ = issued
    parsed = rows(exports.invoice_csv(research))
    assert [r["kind"] for r in parsed] == ["usage", "eval", "allocation", "total"]
    usage, evaluation, allocation, total = parsed
    assert usage["invoice_number"] == f"ACME-{ISSUE_YEAR}-0001"
    assert usage["department_name"] == '\'=HYPERLINK("http://evil")'
    assert usage["cost_centre"] == "CC-100" and usage["period"] == "2026-03"
    assert (usage["input_tokens"], usage["cache_read_tokens"], usage["output_tokens"]) == (
        "1000000",
        "200000",
        "300000",
    )
    assert usage["list_cost_unrounded"] == "5.5000000049" and usage["amount"] == "5.50"
    assert Decimal(usage["rounding"]) == Decimal("-0.0000000049")
    assert evaluation["model"] == "'+cmd"
    assert allocation["description"] == "Shared cost: @Platform (Platform)"  # '@' is not at the start
    assert allocation["amount"] == "8.51" and allocation["basis"].startswith("usage share: 5.75 of 6.76 USD")
    assert total["amount"] == "14.26" and Decimal(total["rounding"]) == Decimal("-0.0000000049")
    assert sum(Decimal(r["amount"]) for r in parsed[:-1]) == Decimal(total["amount"])


def test_invoice_pdf_renders_the_finance_document(issued):
    research, _ = issued
    pdf = exports.invoice_pdf(research)
    assert pdf.startswith(b"%PDF")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    text = " ".join(text.split())
    for expected in (
        "Chargeback invoice",
        "Acme AI Platform",
        f"ACME-{ISSUE_YEAR}-0001",
        "March 2026",
        'Bill to =HYPERLINK("http://evil") (research)',
        "Cost centre: CC-100",
        "Usage from 2026-03-01 00:00 to 2026-04-01 00:00 (exclusive), time zone Europe/Paris",
        "Production usage",
        "openai / gpt-4o",
        "Quality assurance (eval)",
        "Shared cost: @Platform (Platform)",
        "8.51 USD",
        "Total due 14.26 USD",
        "rounding difference -0.0000000049",
    ):
        assert expected in text, expected


def test_focus_export_columns(issued):
    research, sales = issued
    parsed = rows(exports.focus_csv(tenant=research.tenant, period=MARCH))
    assert list(parsed[0].keys()) == exports.FOCUS_COLUMNS
    by_kind = {(r["SubAccountId"], r["x_LineKind"]): r for r in parsed}
    usage = by_kind[("research", "usage")]
    assert usage["BilledCost"] == "5.50"
    assert usage["EffectiveCost"] == "5.5000000049" and usage["ListCost"] == "5.5000000049"
    assert usage["BillingCurrency"] == "USD"
    assert usage["BillingPeriodStart"] == "2026-02-28T23:00:00Z" and usage["BillingPeriodEnd"] == "2026-03-31T22:00:00Z"
    assert usage["ChargePeriodStart"] == usage["BillingPeriodStart"]
    assert (usage["ChargeCategory"], usage["ChargeClass"]) == ("Usage", "")
    assert usage["ServiceCategory"] == "AI and Machine Learning"
    assert usage["ServiceName"] == "openai gpt-4o"
    assert usage["ProviderName"] == usage["PublisherName"] == "openai"
    assert usage["InvoiceIssuerName"] == "Acme AI Platform"
    assert usage["InvoiceId"] == f"ACME-{ISSUE_YEAR}-0001"
    assert usage["PricingUnit"] == "1M Tokens" and Decimal(usage["PricingQuantity"]) == Decimal("1.5")
    assert usage["ConsumedQuantity"] == "1500000" and usage["ConsumedUnit"] == "Tokens"
    assert usage["SubAccountName"].startswith("'=HYPERLINK")
    assert json.loads(usage["Tags"]) == {"cost_centre": "CC-100", "department": "research", "kind": "usage"}
    assert (usage["x_InputTokens"], usage["x_CacheReadTokens"], usage["x_OutputTokens"]) == (
        "1000000",
        "200000",
        "300000",
    )
    assert usage["x_ReasoningTokens"] == "1000" and usage["x_Requests"] == "1"
    assert by_kind[("research", "eval")]["ServiceName"] == "LLM evaluation"
    allocation = by_kind[("sales", "allocation")]
    assert allocation["ChargeFrequency"] == "Recurring" and allocation["PricingUnit"] == "Month"
    assert allocation["BilledCost"] == "1.49" and allocation["x_AllocationBasis"].startswith("usage share")
    assert sum(Decimal(r["BilledCost"]) for r in parsed) == research.total + sales.total
    # April carries the credit as a correction of March.
    (credit,) = [
        r
        for r in rows(exports.focus_csv(tenant=research.tenant, period=date(2026, 4, 1)))
        if r["x_LineKind"] == "credit"
    ]
    assert (credit["ChargeCategory"], credit["ChargeClass"], credit["BilledCost"]) == ("Credit", "Correction", "-5.00")
    assert credit["ChargePeriodStart"] == "2026-02-28T23:00:00Z"


def test_gl_journal_is_balanced_and_posts_issued_invoices_only(issued, acme):
    research, _sales = issued
    Department.objects.create(tenant=acme, code="legal", name="Legal", gl_cost_centre="CC-900")  # no invoice
    parsed = rows(exports.gl_csv(tenant=acme, period=MARCH))
    assert list(parsed[0].keys()) == exports.GL_COLUMNS
    assert [(r["document_number"], r["account"], r["cost_centre"], r["debit"], r["credit"]) for r in parsed] == [
        (f"ACME-{ISSUE_YEAR}-0001", "6450", "CC-100", "14.26", ""),
        (f"ACME-{ISSUE_YEAR}-0001", "7950", "", "", "14.26"),
        (f"ACME-{ISSUE_YEAR}-0002", "6450", "CC-200", "2.50", ""),
        (f"ACME-{ISSUE_YEAR}-0002", "7950", "", "", "2.50"),
    ]
    assert {r["journal_date"] for r in parsed} == {"2026-03-31"} and {r["period"] for r in parsed} == {"2026-03"}
    assert sum(Decimal(r["debit"] or 0) for r in parsed) == sum(Decimal(r["credit"] or 0) for r in parsed)
    # April's drafts are not posted; once issued, the credit note swaps the sides.
    assert rows(exports.gl_csv(tenant=acme, period=date(2026, 4, 1))) == []
    april = Invoice.objects.get(department=research.department, period=date(2026, 4, 1))
    invoicing.issue_invoice(invoice=april, by="test")
    (debit, credit) = rows(exports.gl_csv(tenant=acme, period=date(2026, 4, 1)))
    assert (debit["account"], debit["cost_centre"], debit["debit"]) == ("7950", "", "5.00")
    assert (credit["account"], credit["cost_centre"], credit["credit"]) == ("6450", "CC-100", "5.00")


def test_pdf_prints_minus_signs_and_arrows_helvetica_can_draw():
    """The typographic minus (U+2212) of negative amounts has no glyph in the PDF's Helvetica and
    printed as a box; html_to_pdf substitutes what the font can draw."""
    import io

    from pypdf import PdfReader

    from chargeback.exports import html_to_pdf

    pdf = html_to_pdf("<html><body><p>Credit \u22120.07 USD, A \u2192 B</p></body></html>", what="test")
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "Credit -0.07 USD, A -> B" in text
