"""Invoice lifecycle: permissions, audit entries, numbering, immutability, credits; and the
commands and task that drive invoicing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command

from chargeback import invoicing
from chargeback.invoicing import TransitionRefused, approve_invoice, dispute_invoice, issue_invoice, resolve_dispute
from chargeback.models import AuditLog, Department, Invoice, InvoiceImmutable, InvoiceLine, ModelPrice, Role
from chargeback.tasks_invoicing import generate_invoices
from telemetry.models import UsageEvent
from tests.factories import make_member, make_usage_event

# Invoice numbers carry the year of issue (today, in the tenant's zone), not the period's.
ISSUE_YEAR = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).year

MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)


@pytest.fixture
def march_invoice(acme, research_dept):
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2026, 3, 5, tzinfo=UTC), cost=Decimal("12.345")
    )
    invoicing.draft_invoices(tenant=acme, period=MARCH, force=True)
    return Invoice.objects.get(department=research_dept, period=MARCH)


def actions_on(invoice) -> list[tuple[str, str]]:
    return list(
        AuditLog.objects.filter(object_type="chargeback.Invoice", object_id=str(invoice.pk))
        .order_by("id")
        .values_list("action", "actor_label")
    )


def test_issue_and_approve_by_finance_with_numbers_and_audit(acme, march_invoice, finance_user, admin_user_acme):
    assert issue_invoice(invoice=march_invoice, by=finance_user) is True
    assert march_invoice.status == "issued" and march_invoice.number == f"ACME-{ISSUE_YEAR}-0001"
    assert march_invoice.issued_by == finance_user and march_invoice.issued_at is not None
    # Idempotent: a second issue changes nothing and takes no number.
    assert issue_invoice(invoice=march_invoice, by=finance_user) is False
    assert march_invoice.number == f"ACME-{ISSUE_YEAR}-0001"
    assert approve_invoice(invoice=march_invoice, by=admin_user_acme) is True
    assert approve_invoice(invoice=march_invoice, by=admin_user_acme) is False
    assert march_invoice.status == "approved" and march_invoice.approved_by == admin_user_acme
    assert actions_on(march_invoice) == [
        ("invoice.draft", "system"),
        ("invoice.issue", "fiona"),
        ("invoice.approve", "ada"),
    ]
    entry = AuditLog.objects.get(action="invoice.issue")
    assert entry.changes["status"] == {"before": "draft", "after": "issued"}
    assert entry.changes["number"] == f"ACME-{ISSUE_YEAR}-0001"


def test_numbers_are_sequential_per_tenant_without_gaps(acme, research_dept, sales_dept, finance_user, other_tenant):
    legal = Department.objects.create(tenant=acme, code="legal", name="Legal")
    invoicing.draft_invoices(tenant=acme, period=MARCH, force=True)
    invoicing.draft_invoices(tenant=other_tenant, period=MARCH, force=True)  # no departments: nothing
    invoices = list(Invoice.objects.filter(tenant=acme).order_by("department__code"))
    assert [i.department for i in invoices] == [legal, research_dept, sales_dept]
    # A refused issue (a manager) must not burn a number.
    manager = make_member(tenant=acme, username="mgr", role=Role.MANAGER, department=research_dept)
    with pytest.raises(PermissionDenied):
        issue_invoice(invoice=invoices[0], by=manager)
    for invoice in invoices:
        issue_invoice(invoice=invoice, by=finance_user)
    assert [i.number for i in invoices] == [
        f"ACME-{ISSUE_YEAR}-0001",
        f"ACME-{ISSUE_YEAR}-0002",
        f"ACME-{ISSUE_YEAR}-0003",
    ]


@pytest.mark.parametrize("role", [Role.MANAGER, Role.EMPLOYEE])
def test_only_finance_and_admin_issue_and_approve(acme, research_dept, march_invoice, finance_user, role):
    person = make_member(tenant=acme, username=f"p-{role}", role=role, department=research_dept)
    with pytest.raises(PermissionDenied):
        issue_invoice(invoice=march_invoice, by=person)
    issue_invoice(invoice=march_invoice, by=finance_user)
    with pytest.raises(PermissionDenied):
        approve_invoice(invoice=march_invoice, by=person)
    march_invoice.refresh_from_db()
    assert march_invoice.status == "issued"


def test_finance_of_another_tenant_cannot_issue(acme, other_tenant, march_invoice):
    outsider = make_member(tenant=other_tenant, username="globex-fin", role=Role.FINANCE)
    with pytest.raises(PermissionDenied):
        issue_invoice(invoice=march_invoice, by=outsider)


def test_dispute_by_the_department_manager_and_resolution_with_credit(
    acme, research_dept, sales_dept, march_invoice, finance_user, manager_user
):
    sales_manager = make_member(tenant=acme, username="sam", role=Role.MANAGER, department=sales_dept)
    with pytest.raises(TransitionRefused):
        dispute_invoice(invoice=march_invoice, by=manager_user, reason="too early")  # still a draft
    issue_invoice(invoice=march_invoice, by=finance_user)
    with pytest.raises(PermissionDenied):
        dispute_invoice(invoice=march_invoice, by=sales_manager, reason="not mine")
    with pytest.raises(invoicing.InvoicingError) as err:
        dispute_invoice(invoice=march_invoice, by=manager_user, reason="  ")
    assert err.value.field == "reason"
    assert dispute_invoice(invoice=march_invoice, by=manager_user, reason="The batch job was Sales'.") is True
    assert march_invoice.status == "disputed" and march_invoice.dispute_reason == "The batch job was Sales'."
    with pytest.raises(TransitionRefused):
        approve_invoice(invoice=march_invoice, by=finance_user)
    with pytest.raises(PermissionDenied):
        resolve_dispute(invoice=march_invoice, by=manager_user, outcome="no_change")
    with pytest.raises(invoicing.InvoicingError) as err:
        resolve_dispute(invoice=march_invoice, by=finance_user, outcome="credit", credit_amount=Decimal("99.00"))
    assert err.value.field == "credit_amount"
    assert resolve_dispute(
        invoice=march_invoice, by=finance_user, outcome="credit", credit_amount=Decimal("2.35"), note="Half the job."
    )
    assert march_invoice.status == "resolved" and march_invoice.resolution == "credit"
    assert [a for a, _ in actions_on(march_invoice)] == [
        "invoice.draft",
        "invoice.issue",
        "invoice.dispute",
        "invoice.resolve",
    ]
    assert AuditLog.objects.get(action="invoice.dispute").actor_label == "morgan"
    # The credit lands on April's invoice, once, even if April is drafted twice.
    invoicing.draft_invoices(tenant=acme, period=APRIL, force=True)
    invoicing.draft_invoices(tenant=acme, period=APRIL, force=True)
    april = Invoice.objects.get(department=research_dept, period=APRIL)
    credit = april.lines.get(kind="credit")
    assert credit.amount == Decimal("-2.35") and f"ACME-{ISSUE_YEAR}-0001" in credit.description
    assert april.total == Decimal("-2.35") and april.adjustments_total == Decimal("-2.35")
    # Crediting does not disturb reconciliation of March (a credit is not event cost).
    assert invoicing.reconcile_period(tenant=acme, period=MARCH).ok


def test_resolution_with_no_change(acme, march_invoice, finance_user, manager_user):
    issue_invoice(invoice=march_invoice, by=finance_user)
    dispute_invoice(invoice=march_invoice, by=manager_user, reason="why so high?")
    assert resolve_dispute(invoice=march_invoice, by=finance_user, outcome="no_change", note="Usage is correct.")
    assert march_invoice.resolution == "no_change" and march_invoice.resolution_note == "Usage is correct."
    invoicing.draft_invoices(tenant=acme, period=APRIL, force=True)
    assert not InvoiceLine.objects.filter(kind="credit").exists()


def test_issued_invoices_are_immutable(march_invoice, finance_user):
    issue_invoice(invoice=march_invoice, by=finance_user)
    line = march_invoice.lines.get()
    line.amount = Decimal("0.01")
    with pytest.raises(InvoiceImmutable):
        line.save()
    with pytest.raises(InvoiceImmutable):
        line.delete()
    with pytest.raises(InvoiceImmutable):
        InvoiceLine.objects.filter(invoice=march_invoice).update(amount=0)
    with pytest.raises(InvoiceImmutable):
        InvoiceLine.objects.create(invoice=march_invoice, kind="usage", description="sneaky", currency="USD")
    march_invoice.total = Decimal("1.00")
    with pytest.raises(InvoiceImmutable):
        march_invoice.save()
    with pytest.raises(InvoiceImmutable):
        march_invoice.delete()
    march_invoice.refresh_from_db()
    assert march_invoice.total == Decimal("12.35") and march_invoice.lines.get().amount == Decimal("12.35")


# --- Commands and the task ---------------------------------------------------------------------


def test_issue_invoices_command_drafts_issues_and_prints_progress(acme, research_dept, sales_dept):
    make_usage_event(tenant=acme, department=sales_dept, occurred_at=datetime(2026, 3, 5, tzinfo=UTC))
    out = StringIO()
    call_command("issue_invoices", "--period", "2026-03", "--tenant", "acme", "--issue", "--force", stdout=out)
    text = out.getvalue()
    assert "acme 2026-03: 2/2 departments" in text and "2 drafted, 0 already issued" in text
    assert f"ACME-{ISSUE_YEAR}-0001" in text and f"ACME-{ISSUE_YEAR}-0002" in text
    assert set(Invoice.objects.values_list("status", flat=True)) == {"issued"}
    assert AuditLog.objects.filter(action="invoice.issue", actor_label="manage.py issue_invoices").count() == 2
    out = StringIO()
    call_command("issue_invoices", "--period", "2026-03", "--tenant", "acme", "--force", stdout=out)
    assert "0 drafted, 2 already issued" in out.getvalue()
    assert Invoice.objects.count() == 2


def test_issue_invoices_command_rejects_bad_input(acme):
    with pytest.raises(CommandError, match="--period"):
        call_command("issue_invoices", "--period", "2026-3")
    with pytest.raises(CommandError, match="Unknown tenant"):
        call_command("issue_invoices", "--period", "2026-03", "--tenant", "nope")
    with pytest.raises(CommandError, match="grace"):
        call_command("issue_invoices", "--period", "2999-01", "--tenant", "acme")


def test_reconcile_command_passes_then_fails_on_a_planted_discrepancy(acme, research_dept, march_invoice):
    out = StringIO()
    call_command("reconcile", "--period", "2026-03", "--tenant", "acme", stdout=out)
    assert "difference 0.0000000000" in out.getvalue() and "Reconciled" in out.getvalue()
    make_usage_event(
        tenant=acme,
        department=research_dept,
        occurred_at=datetime(2026, 3, 9, tzinfo=UTC),
        cost=Decimal("0.0000001234"),
    )
    out = StringIO()
    with pytest.raises(CommandError, match="Reconciliation failed for acme"):
        call_command("reconcile", "--period", "2026-03", "--tenant", "acme", stdout=out)
    assert "MISMATCH research USD" in out.getvalue() and "difference 0.0000001234" in out.getvalue()


def test_reprice_command_recomputes_costs_audits_totals_and_adjusts_the_next_invoice(acme, research_dept, finance_user):
    price = ModelPrice.objects.create(
        provider="openai", model_pattern="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60")
    )
    for day in (3, 4):
        make_usage_event(
            tenant=acme,
            department=research_dept,
            occurred_at=datetime(2026, 3, day, tzinfo=UTC),
            input_tokens=1_000_000,
            output_tokens=0,
            cost=Decimal("0.15"),
            price_id=price.pk,
        )
    invoicing.draft_invoices(tenant=acme, period=MARCH, force=True)
    issue_invoice(invoice=Invoice.objects.get(period=MARCH), by=finance_user)
    ModelPrice.objects.filter(pk=price.pk).update(input_per_mtok=Decimal("0.10"))  # the correction
    out = StringIO()
    call_command("reprice", "--start", "2026-03-01", "--end", "2026-04-01", "--tenant", "acme", stdout=out)
    assert "2 events, 2 re-priced; USD 0.3000000000 → 0.2000000000" in out.getvalue()
    assert sorted(UsageEvent.objects.values_list("cost", flat=True)) == [Decimal("0.1"), Decimal("0.1")]
    entry = AuditLog.objects.get(action="reprice")
    assert entry.changes["total_before"] == {"USD": "0.3000000000"}
    assert entry.changes["total_after"] == {"USD": "0.2000000000"}
    march = Invoice.objects.get(period=MARCH)
    assert march.total == Decimal("0.30")  # the issued invoice is not edited
    invoicing.draft_invoices(tenant=acme, period=APRIL, force=True)
    adjustment = Invoice.objects.get(period=APRIL).lines.get(kind="adjustment")
    assert adjustment.amount == Decimal("-0.10") and adjustment.adjusts_period == MARCH
    assert invoicing.reconcile_period(tenant=acme, period=MARCH).ok


def test_reprice_command_rejects_bad_dates(acme):
    with pytest.raises(CommandError, match="not a date"):
        call_command("reprice", "--start", "March", "--end", "2026-04-01")
    with pytest.raises(CommandError, match="after --start"):
        call_command("reprice", "--start", "2026-04-01", "--end", "2026-03-01")


def test_task_drafts_last_month_only_after_the_grace_window(acme, research_dept, monkeypatch):
    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 4, 2, 12, tzinfo=UTC))
    generate_invoices()
    assert not Invoice.objects.exists()
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 4, 4, 6, tzinfo=UTC))
    generate_invoices()
    generate_invoices()
    assert list(Invoice.objects.values_list("period", "status")) == [(MARCH, "draft")]
    generate_invoices(period="2026-04", force=True)
    assert Invoice.objects.count() == 2


def test_beat_schedule_runs_the_task_after_the_grace_days(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["chargeback.generate_invoices"]
    assert entry["task"] == "chargeback.generate_invoices"
    assert entry["schedule"].day_of_month == {4, 5}
