"""Invoice and Anomaly pages: scope per role and tenant, filters, the lifecycle buttons going
through the domain functions (role checks, messages, CSRF), downloads and exports, and
acknowledging / resolving anomalies."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.test import Client

from chargeback import invoicing
from chargeback.models import AuditLog, Invoice, Role
from telemetry.models import Anomaly
from tests.factories import make_budget, make_member, make_usage_event, roll_up_everything

pytestmark = pytest.mark.django_db

MARCH = date(2026, 3, 1)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people(finance_user, admin_user_acme, manager_user, employee_user):
    return {Role.FINANCE: finance_user, Role.ADMIN: admin_user_acme, Role.MANAGER: manager_user, Role.EMPLOYEE: employee_user}


@pytest.fixture
def invoices(acme, research_dept, sales_dept, other_tenant, other_dept):
    """March invoices for Research and Sales at Acme (drafts) and Research at Globex."""
    at = datetime(2026, 3, 10, 9, tzinfo=UTC)
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at, cost=Decimal("12.345"), model="gpt-4o")
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at, cost=Decimal("0.5"), model="gpt-4o-mini")
    make_usage_event(tenant=acme, department=sales_dept, occurred_at=at, cost=Decimal("3"))
    make_usage_event(tenant=other_tenant, department=other_dept, occurred_at=at, cost=Decimal("7"))
    make_budget(tenant=acme, department=research_dept, amount=Decimal("20"))
    roll_up_everything()
    invoicing.draft_invoices(tenant=acme, period=MARCH, force=True, actor="test")
    invoicing.draft_invoices(tenant=other_tenant, period=MARCH, force=True, actor="test")
    return {
        "research": Invoice.objects.get(tenant=acme, department=research_dept),
        "sales": Invoice.objects.get(tenant=acme, department=sales_dept),
        "globex": Invoice.objects.get(tenant=other_tenant),
    }


def as_user(client, user) -> Client:
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    """The messages an action queued, as the page it redirects to shows them (and consumes
    them, so the next action starts clean)."""
    assert response.status_code == 302, response.status_code
    page = response.client.get(response["Location"])
    return [str(m) for m in page.context["messages"]]


# --- Invoice list and detail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status", "visible"),
    [
        (Role.FINANCE, 200, ["research", "sales"]),
        (Role.ADMIN, 200, ["research", "sales"]),
        (Role.MANAGER, 200, ["research"]),
        (Role.EMPLOYEE, 403, None),
    ],
)
def test_invoice_list_is_scoped_by_role_and_tenant(client, people, invoices, role, status, visible):
    response = as_user(client, people[role]).get("/invoices/")
    assert response.status_code == status
    if visible is not None:
        assert [i.department.code for i in response.context["page"]] == visible


@pytest.mark.parametrize(
    ("role", "invoice", "status"),
    [
        (Role.FINANCE, "sales", 200),
        (Role.MANAGER, "research", 200),
        (Role.MANAGER, "sales", 404),
        (Role.EMPLOYEE, "research", 403),
        (Role.FINANCE, "globex", 404),
        (Role.ADMIN, "globex", 404),
    ],
)
def test_invoice_detail_is_scoped(client, people, invoices, role, invoice, status):
    assert as_user(client, people[role]).get(f"/invoices/{invoices[invoice].pk}/").status_code == status


def test_invoice_list_filters_by_period_status_and_department(client, people, invoices):
    c = as_user(client, people[Role.FINANCE])
    assert [i.department.code for i in c.get("/invoices/?period=2026-03&department=sales").context["page"]] == ["sales"]
    assert list(c.get("/invoices/?period=2026-02").context["page"]) == []
    invoicing.issue_invoice(invoice=invoices["sales"], by=people[Role.FINANCE])
    assert [i.department.code for i in c.get("/invoices/?status=issued").context["page"]] == ["sales"]
    for query, text in [
        ("period=2026-13", "Period: &#x27;2026-13&#x27; is not a month; use YYYY-MM"),
        ("status=paid", "Status: &#x27;paid&#x27; is not a status"),
        ("department=nope", "Department: There is no department with the code &#x27;nope&#x27;"),
    ]:
        response = c.get(f"/invoices/?{query}")
        assert response.status_code == 400
        assert text in response.content.decode()


def test_invoice_detail_shows_lines_budget_and_audit_trail(client, people, invoices):
    invoice = invoices["research"]
    html = as_user(client, people[Role.FINANCE]).get(f"/invoices/{invoice.pk}/").content.decode()
    assert invoice.total == Decimal("12.85")  # 12.345 → 12.35 (half-up) + 0.50
    assert 'data-testid="invoice-total">12.85 USD<' in html
    assert 'data-testid="invoice-budget-percent">64.3%<' in html  # of the 20 USD budget
    assert "openai / gpt-4o" in html and "openai / gpt-4o-mini" in html
    assert "invoice.draft" in html and "by test" in html
    assert "1 Mar – 31 Mar 2026" in html
    assert "Issue invoice" in html and "Approve" not in html


def test_finance_issues_then_approves_through_the_domain_functions(client, people, invoices):
    invoice = invoices["research"]
    c = as_user(client, people[Role.FINANCE])
    response = c.post(f"/invoices/{invoice.pk}/issue/")
    assert response.status_code == 302 and response["Location"] == f"/invoices/{invoice.pk}/"
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.ISSUED
    assert invoice.number == f"ACME-{invoice.issued_at.astimezone(invoice.tenant.tz).year}-0001"
    assert messages_of(response) == [f"Invoice {invoice.number} issued."]
    again = c.post(f"/invoices/{invoice.pk}/issue/")
    assert messages_of(again) == [f"Invoice {invoice.number} was already issued."]
    response = c.post(f"/invoices/{invoice.pk}/approve/")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.APPROVED and invoice.approved_by == people[Role.FINANCE]
    actions = list(AuditLog.objects.filter(object_id=str(invoice.pk), object_type="chargeback.Invoice").values_list("action", flat=True))
    assert sorted(actions) == ["invoice.approve", "invoice.draft", "invoice.issue"]
    html = c.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "invoice.approve" in html and "(issued → approved)" in html


def test_manager_cannot_issue_but_can_dispute_with_a_reason(client, people, invoices):
    invoice = invoices["research"]
    c = as_user(client, people[Role.MANAGER])
    response = c.post(f"/invoices/{invoice.pk}/issue/")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.DRAFT
    assert messages_of(response) == ["Only finance or admin members of acme can issue invoices."]
    invoicing.issue_invoice(invoice=invoice, by=people[Role.FINANCE])
    html = c.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "Dispute" in html and "Approve" not in html
    empty = c.post(f"/invoices/{invoice.pk}/dispute/", {"reason": "  "})
    assert messages_of(empty) == ["Reason: A dispute needs a reason."]
    response = c.post(f"/invoices/{invoice.pk}/dispute/", {"reason": "Sonnet batch job was Sales'"})
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.DISPUTED and invoice.disputed_by == people[Role.MANAGER]
    assert invoice.dispute_reason == "Sonnet batch job was Sales'"
    assert messages_of(response) == [f"Invoice {invoice.number} disputed."]


def test_manager_cannot_act_on_another_departments_invoice(client, people, invoices):
    sales = invoices["sales"]
    invoicing.issue_invoice(invoice=sales, by=people[Role.FINANCE])
    response = as_user(client, people[Role.MANAGER]).post(f"/invoices/{sales.pk}/dispute/", {"reason": "no"})
    assert response.status_code == 404
    sales.refresh_from_db()
    assert sales.status == Invoice.Status.ISSUED


def test_employee_and_other_tenant_cannot_post_actions(client, people, invoices, other_tenant):
    invoice = invoices["research"]
    assert as_user(client, people[Role.EMPLOYEE]).post(f"/invoices/{invoice.pk}/issue/").status_code == 403
    globex_finance = make_member(tenant=other_tenant, username="gus", role=Role.FINANCE)
    assert as_user(client, globex_finance).post(f"/invoices/{invoice.pk}/issue/").status_code == 404
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.DRAFT


def test_actions_need_post_and_a_csrf_token(people, invoices):
    invoice = invoices["research"]
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(people[Role.FINANCE])
    assert strict.get(f"/invoices/{invoice.pk}/issue/").status_code == 405
    assert strict.post(f"/invoices/{invoice.pk}/issue/").status_code == 403  # no token
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.DRAFT
    page = strict.get(f"/invoices/{invoice.pk}/")
    token = page.context["csrf_token"]
    assert strict.post(f"/invoices/{invoice.pk}/issue/", {"csrfmiddlewaretoken": str(token)}).status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.ISSUED


def test_finance_resolves_a_dispute_with_a_credit_and_bad_amounts_are_messages(client, people, invoices):
    invoice = invoices["research"]
    invoicing.issue_invoice(invoice=invoice, by=people[Role.FINANCE])
    invoicing.dispute_invoice(invoice=invoice, by=people[Role.MANAGER], reason="too high")
    c = as_user(client, people[Role.FINANCE])
    for amount, text in [
        ("abc", "Credit amount: 'abc' is not an amount; write it like 12.50."),
        ("NaN", "Credit amount: 'NaN' is not an amount; write it like 12.50."),
        ("99", "Credit amount: The credit exceeds the invoice total (12.85 USD)."),
        ("1.234", "Credit amount: Give the credit in whole USD minor units."),
    ]:
        response = c.post(f"/invoices/{invoice.pk}/resolve/", {"outcome": "credit", "credit_amount": amount})
        assert messages_of(response) == [text]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.DISPUTED
    response = c.post(f"/invoices/{invoice.pk}/resolve/", {"outcome": "credit", "credit_amount": "2.50", "note": "agreed"})
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.RESOLVED and invoice.resolution == "credit"
    assert invoice.credit.amount == Decimal("2.50")
    assert messages_of(response) == [f"Invoice {invoice.number} resolved."]


def test_downloads_and_exports(client, people, invoices):
    invoice = invoices["research"]
    c = as_user(client, people[Role.MANAGER])
    csv = c.get(f"/invoices/{invoice.pk}/csv/")
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert csv["Content-Disposition"] == f'attachment; filename="draft-{invoice.pk}.csv"'
    assert "12.85" in csv.content.decode()
    pdf = c.get(f"/invoices/{invoice.pk}/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert c.get(f"/invoices/{invoices['sales'].pk}/csv/").status_code == 404
    assert c.get("/invoices/exports/focus/?period=2026-03").status_code == 403  # finance/admin only
    f = as_user(client, people[Role.FINANCE])
    focus = f.get("/invoices/exports/focus/?period=2026-03")
    assert focus.status_code == 200
    assert focus["Content-Disposition"] == 'attachment; filename="focus-acme-2026-03.csv"'
    body = focus.content.decode()
    assert "BilledCost" in body and "research" in body and "Globex" not in body
    assert f.get("/invoices/exports/gl/?period=2026-03").status_code == 200
    bad = f.get("/invoices/exports/gl/?period=March")
    assert bad.status_code == 400 and "Period: &#x27;March&#x27; is not a month" in bad.content.decode()
    html = f.get("/invoices/").content.decode()
    assert "/invoices/exports/focus/?period=2026-03" in html and "/invoices/exports/gl/?period=2026-03" in html


# --- Anomalies -------------------------------------------------------------------------------------------


@pytest.fixture
def anomalies(acme, research_dept, sales_dept, other_tenant, other_dept):
    def make(tenant, dept, metric, hour, severity=Anomaly.Severity.HIGH):
        return Anomaly.objects.create(
            tenant=tenant, department=dept, metric=metric, hour=datetime(2026, 3, 10, hour, tzinfo=UTC),
            observed=Decimal("0.25"), expected=Decimal("0.05"), score=8.5, severity=severity,
            explanation=f"{metric} of {dept.code} at {hour}:00 was 5× the usual; driver gpt-4o.",
        )  # fmt: skip

    return {
        "research": make(acme, research_dept, Anomaly.Metric.ERROR_RATE, 9),
        "sales": make(acme, sales_dept, Anomaly.Metric.COST, 10, Anomaly.Severity.MEDIUM),
        "globex": make(other_tenant, other_dept, Anomaly.Metric.COST, 11),
    }


@pytest.mark.parametrize(
    ("role", "status", "visible"),
    [
        (Role.FINANCE, 200, ["sales", "research"]),
        (Role.ADMIN, 200, ["sales", "research"]),
        (Role.MANAGER, 200, ["research"]),
        (Role.EMPLOYEE, 403, None),
    ],
)
def test_anomaly_list_is_scoped(client, people, anomalies, role, status, visible):
    response = as_user(client, people[role]).get("/anomalies/")
    assert response.status_code == status
    if visible is not None:
        assert [a.department.code for a in response.context["page"]] == visible


def test_anomaly_list_shows_values_in_their_units_and_filters(client, people, anomalies):
    c = as_user(client, people[Role.FINANCE])
    html = c.get("/anomalies/").content.decode()
    assert "Observed <strong>25.0%</strong>, expected 5.0%" in html  # error rate
    assert "Observed <strong>0.25 USD</strong>, expected 0.05 USD" in html  # cost
    assert "error_rate of research at 9:00 was 5× the usual; driver gpt-4o." in html
    assert [a.department.code for a in c.get("/anomalies/?severity=medium").context["page"]] == ["sales"]
    assert [a.department.code for a in c.get("/anomalies/?department=research").context["page"]] == ["research"]
    bad = c.get("/anomalies/?severity=urgent")
    assert bad.status_code == 400 and "Severity: &#x27;urgent&#x27; is not a severity" in bad.content.decode()


def test_manager_acknowledges_and_resolves_own_department_anomaly(client, people, anomalies):
    research = anomalies["research"]
    c = as_user(client, people[Role.MANAGER])
    response = c.post(f"/anomalies/{research.pk}/ack/", {"next": "/my-department/"})
    assert response["Location"] == "/my-department/"
    research.refresh_from_db()
    assert research.status == Anomaly.Status.ACKNOWLEDGED and research.acknowledged_by == people[Role.MANAGER]
    assert messages_of(response) == ["Error rate anomaly in Research acknowledged."]
    response = c.post(f"/anomalies/{research.pk}/resolve/", {"next": "https://evil.example/"})
    assert response["Location"] == "/anomalies/"  # never redirected off-site
    research.refresh_from_db()
    assert research.status == Anomaly.Status.RESOLVED
    entry = AuditLog.objects.get(action="anomaly.resolve")
    assert entry.actor == people[Role.MANAGER] and entry.changes["status"] == {"before": "acknowledged", "after": "resolved"}
    assert list(c.get("/anomalies/").context["page"]) == []  # resolved ones are under "All"
    assert [a.pk for a in c.get("/anomalies/?status=all").context["page"]] == [research.pk]


def test_anomaly_actions_are_scoped(client, people, anomalies):
    assert as_user(client, people[Role.MANAGER]).post(f"/anomalies/{anomalies['sales'].pk}/ack/").status_code == 404
    assert as_user(client, people[Role.FINANCE]).post(f"/anomalies/{anomalies['globex'].pk}/resolve/").status_code == 404
    assert as_user(client, people[Role.EMPLOYEE]).post(f"/anomalies/{anomalies['research'].pk}/ack/").status_code == 403
    for a in anomalies.values():
        a.refresh_from_db()
        assert a.status == Anomaly.Status.OPEN


def test_api_resolve_uses_the_same_function(client, people, anomalies):
    c = as_user(client, people[Role.FINANCE])
    response = c.post(f"/api/v1/anomalies/{anomalies['sales'].pk}/resolve")
    assert response.status_code == 200 and response.json()["status"] == "resolved"
    assert AuditLog.objects.filter(action="anomaly.resolve", object_id=str(anomalies["sales"].pk)).count() == 1
    assert c.post(f"/api/v1/anomalies/{anomalies['globex'].pk}/resolve").status_code == 404
    employee = as_user(Client(), people[Role.EMPLOYEE])
    assert employee.post(f"/api/v1/anomalies/{anomalies['research'].pk}/resolve").status_code == 403
