"""The invoicing back office: read-only invoices whose status changes only through actions
that call the domain functions, and pools whose fixed splits must sum to 100."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model

from chargeback import invoicing
from chargeback.models import AuditLog, Invoice, SharedCostPool
from tests.factories import make_usage_event

# Invoice numbers carry the year of issue (today, in the tenant's zone), not the period's.
ISSUE_YEAR = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).year


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser(username="root", password="pw-root-123")


@pytest.fixture
def march(acme, research_dept):
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2026, 3, 2, tzinfo=UTC), cost=Decimal("12.34")
    )
    invoicing.draft_invoices(tenant=acme, period=date(2026, 3, 1), force=True)
    return Invoice.objects.get()


def test_issue_and_approve_actions_call_the_domain_functions(client, staff, march):
    client.force_login(staff)
    assert client.get("/admin/chargeback/invoice/").status_code == 200
    page = client.get(f"/admin/chargeback/invoice/{march.pk}/change/")
    assert page.status_code == 200 and b"openai / gpt-4o-mini" in page.content
    for action in ("issue_selected", "approve_selected"):
        client.post("/admin/chargeback/invoice/", {"action": action, "_selected_action": [march.pk]})
    march.refresh_from_db()
    assert march.status == "approved" and march.number == f"ACME-{ISSUE_YEAR}-0001"
    assert AuditLog.objects.filter(action="invoice.issue", actor_label="root").count() == 1
    # Status is not an editable field: a POST to the change form cannot move it.
    client.post(f"/admin/chargeback/invoice/{march.pk}/change/", {"status": "draft", "total": "0"})
    march.refresh_from_db()
    assert march.status == "approved" and march.total == Decimal("12.34")


def test_fixed_split_pool_must_sum_to_100_in_the_admin(client, staff, acme, research_dept, sales_dept):
    client.force_login(staff)
    form = {
        "tenant": acme.pk,
        "name": "Commitment",
        "kind": "commitment",
        "amount": "100.00",
        "currency": "USD",
        "allocation_key": "fixed_percent",
        "active": "on",
        "splits-TOTAL_FORMS": "2",
        "splits-INITIAL_FORMS": "0",
        "splits-MIN_NUM_FORMS": "0",
        "splits-MAX_NUM_FORMS": "1000",
        "splits-0-department": research_dept.pk,
        "splits-0-percent": "60",
        "splits-1-department": sales_dept.pk,
        "splits-1-percent": "30",
    }
    response = client.post("/admin/chargeback/sharedcostpool/add/", form)
    assert response.status_code == 200 and b"sum to exactly 100%" in response.content
    assert not SharedCostPool.objects.exists()
    form["splits-1-percent"] = "40"
    assert client.post("/admin/chargeback/sharedcostpool/add/", form).status_code == 302
    assert SharedCostPool.objects.get().splits.count() == 2
