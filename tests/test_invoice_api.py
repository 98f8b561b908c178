"""The invoice API through the test client: scoping by role and tenant, filters, transitions,
downloads and exports."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from rest_framework.test import APIClient

from chargeback import invoicing
from chargeback.models import ApiKey, AuditLog, Invoice, Role
from tests.factories import make_member, make_usage_event

# Invoice numbers carry the year of issue (today, in the tenant's zone), not the period's.
ISSUE_YEAR = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).year

MARCH = date(2026, 3, 1)


def key_client(tenant, department=None) -> APIClient:
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(
        tenant=tenant, name="erp", prefix=prefix, key_hash=ApiKey.hash_token(raw), department=department
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def session(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def invoices(acme, research_dept, sales_dept, other_tenant, other_dept):
    at = datetime(2026, 3, 5, tzinfo=UTC)
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at, cost=Decimal("1.25"))
    make_usage_event(tenant=acme, department=sales_dept, occurred_at=at, cost=Decimal("2.50"))
    make_usage_event(tenant=other_tenant, department=other_dept, occurred_at=at, cost=Decimal("9.00"))
    for tenant in (acme, other_tenant):
        invoicing.draft_invoices(tenant=tenant, period=MARCH, force=True)
    return {
        "research": Invoice.objects.get(department=research_dept),
        "sales": Invoice.objects.get(department=sales_dept),
        "globex": Invoice.objects.get(department=other_dept),
    }


def test_finance_lists_every_department_of_its_tenant_only(invoices, finance_user):
    response = session(finance_user).get("/api/v1/invoices")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [(r["department"], r["total"], r["status"], r["period"]) for r in body["results"]] == [
        ("research", "1.2500000000", "draft", "2026-03"),
        ("sales", "2.5000000000", "draft", "2026-03"),
    ]


def test_list_filters_and_pagination(invoices, finance_user, research_dept):
    client = session(finance_user)
    assert client.get("/api/v1/invoices?department=sales").json()["count"] == 1
    assert client.get("/api/v1/invoices?period=2026-04").json()["count"] == 0
    assert client.get("/api/v1/invoices?status=issued").json()["count"] == 0
    page = client.get("/api/v1/invoices?limit=1&offset=1").json()
    assert page["count"] == 2 and [r["department"] for r in page["results"]] == ["sales"] and page["previous"]
    bad = client.get("/api/v1/invoices?period=March")
    assert bad.status_code == 400 and bad.json()["error"]["errors"]["period"]
    bad = client.get("/api/v1/invoices?status=paid")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["message"]


def test_manager_sees_only_their_department_and_employees_see_none(invoices, manager_user, employee_user):
    client = session(manager_user)
    assert [r["department"] for r in client.get("/api/v1/invoices").json()["results"]] == ["research"]
    assert client.get(f"/api/v1/invoices/{invoices['sales'].pk}").status_code == 404
    assert client.get(f"/api/v1/invoices/{invoices['research'].pk}").status_code == 200
    assert session(employee_user).get("/api/v1/invoices").json()["count"] == 0


def test_another_tenants_invoice_is_a_404_for_every_kind_of_caller(invoices, finance_user, acme):
    globex = invoices["globex"].pk
    for client in (session(finance_user), key_client(acme)):
        for suffix in ("", "/csv", "/pdf"):
            response = client.get(f"/api/v1/invoices/{globex}{suffix}")
            assert response.status_code == 404
            assert response.json() == {"error": {"code": "not_found", "message": "No invoice with that id."}}
        assert client.post(f"/api/v1/invoices/{globex}/issue").status_code == 404
    assert Invoice.objects.get(pk=globex).status == "draft"


def test_api_keys_read_their_tenant_but_cannot_change_status(invoices, acme, research_dept):
    client = key_client(acme)
    assert client.get("/api/v1/invoices").json()["count"] == 2
    bound = key_client(acme, research_dept)
    assert [r["department"] for r in bound.get("/api/v1/invoices").json()["results"]] == ["research"]
    response = client.post(f"/api/v1/invoices/{invoices['research'].pk}/issue")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert Invoice.objects.get(pk=invoices["research"].pk).status == "draft"
    assert APIClient().get("/api/v1/invoices").status_code in (401, 403)


def test_detail_has_lines(invoices, finance_user):
    body = session(finance_user).get(f"/api/v1/invoices/{invoices['research'].pk}").json()
    assert [(line["kind"], line["amount"], line["rounding"]) for line in body["lines"]] == [
        ("usage", "1.2500000000", "0.0000000000")
    ]


def test_full_lifecycle_over_the_api_with_roles_and_audit(invoices, finance_user, manager_user, acme, sales_dept):
    research = invoices["research"].pk
    manager, finance = session(manager_user), session(finance_user)
    forbidden = manager.post(f"/api/v1/invoices/{research}/issue")
    assert forbidden.status_code == 403 and "finance" in forbidden.json()["error"]["message"]
    issued = finance.post(f"/api/v1/invoices/{research}/issue")
    assert issued.status_code == 200
    assert issued.json()["status"] == "issued" and issued.json()["number"] == f"ACME-{ISSUE_YEAR}-0001"
    assert issued.json()["changed"] is True
    again = finance.post(f"/api/v1/invoices/{research}/issue")
    assert again.status_code == 200 and again.json()["changed"] is False
    no_reason = manager.post(f"/api/v1/invoices/{research}/dispute", {"reason": ""}, format="json")
    assert no_reason.status_code == 400 and no_reason.json()["error"]["errors"] == {
        "reason": ["A dispute needs a reason."]
    }
    sales_manager = session(make_member(tenant=acme, username="sam", role=Role.MANAGER, department=sales_dept))
    assert sales_manager.post(f"/api/v1/invoices/{research}/dispute", {"reason": "x"}).status_code == 404
    disputed = manager.post(f"/api/v1/invoices/{research}/dispute", {"reason": "Not our batch job"}, format="json")
    assert disputed.status_code == 200 and disputed.json()["dispute_reason"] == "Not our batch job"
    conflict = finance.post(f"/api/v1/invoices/{research}/approve")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
    missing = finance.post(f"/api/v1/invoices/{research}/resolve", {}, format="json")
    assert missing.status_code == 400 and "outcome" in missing.json()["error"]["errors"]
    bad_amount = finance.post(
        f"/api/v1/invoices/{research}/resolve", {"outcome": "credit", "credit_amount": "abc"}, format="json"
    )
    assert bad_amount.status_code == 400 and "credit_amount" in bad_amount.json()["error"]["errors"]
    resolved = finance.post(
        f"/api/v1/invoices/{research}/resolve",
        {"outcome": "credit", "credit_amount": "0.25", "note": "Partly theirs"},
        format="json",
    )
    assert resolved.status_code == 200 and resolved.json()["resolution"] == "credit"
    assert list(
        AuditLog.objects.filter(object_id=str(research), action__startswith="invoice.")
        .order_by("id")
        .values_list("action", "actor_label")
    ) == [
        ("invoice.draft", "system"),
        ("invoice.issue", "fiona"),
        ("invoice.dispute", "morgan"),
        ("invoice.resolve", "fiona"),
    ]
    sales = invoices["sales"].pk
    finance.post(f"/api/v1/invoices/{sales}/issue")
    approved = finance.post(f"/api/v1/invoices/{sales}/approve")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"


def test_csv_and_pdf_downloads(invoices, manager_user):
    client = session(manager_user)
    research = invoices["research"].pk
    response = client.get(f"/api/v1/invoices/{research}/csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="draft-{research}.csv"' in response["Content-Disposition"]
    parsed = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert parsed[-1]["kind"] == "total" and parsed[-1]["amount"] == "1.25"
    pdf = client.get(f"/api/v1/invoices/{research}/pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_exports_need_finance_or_a_tenant_key_and_a_valid_period(
    invoices, finance_user, manager_user, acme, research_dept
):
    finance = session(finance_user)
    focus = finance.get("/api/v1/exports/focus?period=2026-03")
    assert focus.status_code == 200
    rows = list(csv.DictReader(io.StringIO(focus.content.decode())))
    assert sorted(r["SubAccountId"] for r in rows) == ["research", "sales"]
    assert key_client(acme).get("/api/v1/exports/gl?period=2026-03").status_code == 200
    assert key_client(acme, research_dept).get("/api/v1/exports/focus?period=2026-03").status_code == 403
    assert session(manager_user).get("/api/v1/exports/focus?period=2026-03").status_code == 403
    missing = finance.get("/api/v1/exports/gl")
    assert missing.status_code == 400 and missing.json()["error"]["errors"]["period"]
    assert finance.get("/api/v1/exports/focus?period=2026-00").status_code == 400
