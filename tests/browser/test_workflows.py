"""Workflows in a real browser: filtering the overview (the URL keeps the filters and the page
shows the rollups' numbers), issuing and approving an invoice as finance, disputing it as the
department's manager, and acknowledging an anomaly. Buttons are real POST forms with CSRF."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from chargeback import invoicing
from chargeback.models import Invoice
from chargeback.money import format_money
from telemetry.models import Anomaly
from tests.factories import make_usage_event, roll_up_everything

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_filtering_the_overview_keeps_the_filters_in_the_url(page, login_as, acme, research_dept, sales_dept):
    now = timezone.now()
    today = timezone.localdate(now, timezone=acme.tz)
    for dept, cost in ((research_dept, "4.25"), (research_dept, "1.50"), (sales_dept, "9.00")):
        make_usage_event(tenant=acme, department=dept, occurred_at=now - timedelta(hours=1), cost=Decimal(cost))
    make_usage_event(tenant=acme, department=research_dept, occurred_at=now - timedelta(days=40), cost=Decimal("100"))
    roll_up_everything()
    login_as("finance")
    page.goto("/")
    assert page.url.endswith("/overview/")
    page.wait_for_selector("canvas[data-rendered=true]")
    assert page.get_by_test_id("range-spent").inner_text() == "14.75 USD"

    start = today - timedelta(days=6)
    page.get_by_label("From", exact=True).fill(start.isoformat())
    page.get_by_label("To", exact=True).fill(today.isoformat())
    page.get_by_label("Department", exact=True).select_option("research")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**/overview/?*")
    params = parse_qs(urlparse(page.url).query)
    assert params == {"start": [start.isoformat()], "end": [today.isoformat()], "department": ["research"]}
    assert page.get_by_role("heading", level=1).inner_text() == "Overview · Research"
    assert page.get_by_test_id("range-spent").inner_text() == "5.75 USD"
    assert page.get_by_test_id("range-calls").inner_text() == "2"
    # Reloading the URL gives the same page: the filters live in the URL, not in a session.
    page.reload()
    assert page.get_by_label("Department", exact=True).input_value() == "research"
    assert page.get_by_label("From", exact=True).input_value() == start.isoformat()
    assert page.get_by_test_id("range-spent").inner_text() == "5.75 USD"

    assert page.js_errors == []
    page.get_by_label("From", exact=True).fill((today + timedelta(days=3)).isoformat())
    page.get_by_label("To", exact=True).fill(today.isoformat())
    with page.expect_response(lambda r: "/overview/" in r.url) as response:
        page.get_by_role("button", name="Apply").click()
    assert response.value.status == 400
    assert "is before the start" in page.get_by_role("alert").inner_text()
    # The only console message is Chromium noting the 400 itself.
    assert [e for e in page.js_errors if "status of 400" not in e] == []


@pytest.fixture
def march_invoice(acme, research_dept):
    """Last month's draft invoice for Research (drafted early: the grace window is forced)."""
    today = timezone.localdate(timezone.now(), timezone=acme.tz)
    period = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    at = datetime(period.year, period.month, 15, 12, tzinfo=acme.tz)
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at, cost=Decimal("12.345"))
    roll_up_everything()
    invoicing.draft_invoices(tenant=acme, period=period, force=True, actor="test")
    return Invoice.objects.get(tenant=acme, department=research_dept, period=period)


def test_finance_issues_and_approves_an_invoice(page, login_as, march_invoice):
    login_as("finance")
    page.goto("/invoices/")
    page.get_by_role("link", name="Draft").click()
    assert page.get_by_test_id("invoice-status").inner_text() == "Draft"
    assert page.get_by_test_id("invoice-total").inner_text() == format_money(march_invoice.total)
    page.get_by_role("button", name="Issue invoice").click()
    page.wait_for_load_state()
    march_invoice.refresh_from_db()
    assert march_invoice.status == Invoice.Status.ISSUED
    assert page.get_by_role("status").inner_text() == f"Invoice {march_invoice.number} issued."
    assert page.get_by_test_id("invoice-status").inner_text() == "Issued"
    page.get_by_role("button", name="Approve").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("invoice-status").inner_text() == "Approved"
    march_invoice.refresh_from_db()
    assert march_invoice.status == Invoice.Status.APPROVED
    assert "invoice.approve" in page.get_by_test_id("audit").inner_text()
    assert page.js_errors == []


def test_manager_disputes_an_issued_invoice(page, login_as, march_invoice, finance_user):
    invoicing.issue_invoice(invoice=march_invoice, by=finance_user)
    login_as("manager")
    page.goto("/invoices/")
    page.get_by_role("link", name=march_invoice.number).click()
    assert page.get_by_role("button", name="Approve").count() == 0  # finance's button, not theirs
    page.get_by_role("button", name="Dispute").click()  # the browser refuses an empty reason
    assert page.get_by_test_id("invoice-status").inner_text() == "Issued"
    page.get_by_label("Dispute: what is wrong with this invoice?").fill("The batch job belongs to Sales.")
    page.get_by_role("button", name="Dispute").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("invoice-status").inner_text() == "Disputed"
    assert page.get_by_test_id("dispute-reason").inner_text() == "The batch job belongs to Sales."
    march_invoice.refresh_from_db()
    assert march_invoice.status == Invoice.Status.DISPUTED
    assert page.js_errors == []


def test_manager_acknowledges_an_anomaly(page, login_as, acme, research_dept, sales_dept):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    ours = Anomaly.objects.create(
        tenant=acme, department=research_dept, metric=Anomaly.Metric.COST, hour=hour, observed=Decimal("9.5"),
        expected=Decimal("1.25"), score=11.2, severity=Anomaly.Severity.HIGH,
        explanation="Cost for research was 7.6× the usual; model claude-sonnet moved most.",
    )  # fmt: skip
    Anomaly.objects.create(
        tenant=acme, department=sales_dept, metric=Anomaly.Metric.REQUESTS, hour=hour, observed=Decimal("400"),
        expected=Decimal("100"), score=9.0, severity=Anomaly.Severity.MEDIUM, explanation="Sales calls quadrupled.",
    )  # fmt: skip
    login_as("manager")
    page.goto("/anomalies/")
    items = page.locator("li.anomaly")
    assert items.count() == 1  # Sales' anomaly is not theirs
    item = items.first
    assert "7.6× the usual" in item.inner_text()
    assert "Observed 9.50 USD, expected 1.25 USD" in item.inner_text()
    item.get_by_role("button", name="Acknowledge").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Cost anomaly in Research acknowledged."
    item = page.locator("li.anomaly").first
    assert "Acknowledged" in item.inner_text() and "Acknowledged by morgan" in item.inner_text()
    assert item.get_by_role("button", name="Acknowledge").count() == 0
    ours.refresh_from_db()
    assert ours.status == Anomaly.Status.ACKNOWLEDGED
    assert page.js_errors == []
