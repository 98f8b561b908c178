"""The chat page: who may open it, which routes it offers, the budgets it shows."""

from decimal import Decimal

import pytest

from chargeback.models import Budget, Route
from tests.factories import make_budget

pytestmark = pytest.mark.django_db


@pytest.fixture
def routes(acme, other_tenant):
    Route.objects.create(tenant=acme, alias="demo", provider=Route.Provider.DEMO, upstream_model="demo-echo")
    Route.objects.create(tenant=acme, alias="gpt-4o", provider="openai", upstream_model="gpt-4o")
    Route.objects.create(
        tenant=acme, alias="batch-only", provider="openai", upstream_model="gpt-4o", chat_enabled=False
    )
    Route.objects.create(tenant=other_tenant, alias="globex-secret", provider="openai", upstream_model="gpt-4o")


def test_every_role_can_open_the_chat(client, employee_user, manager_user, finance_user, admin_user_acme, routes):
    for user in (employee_user, manager_user, finance_user, admin_user_acme):
        client.force_login(user)
        assert client.get("/chat/").status_code == 200


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get("/chat/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_only_this_tenants_chat_enabled_routes_are_offered(client, employee_user, routes):
    client.force_login(employee_user)
    page = client.get("/chat/").content.decode()
    assert 'value="demo"' in page and 'value="gpt-4o"' in page
    assert "batch-only" not in page
    assert "globex-secret" not in page


def test_the_budgets_a_chat_counts_against_are_shown(client, acme, research_dept, sales_dept, employee_user, routes):
    make_budget(tenant=acme, department=research_dept, name="Research monthly", amount=Decimal("100"))
    make_budget(tenant=acme, department=sales_dept, name="Sales monthly", amount=Decimal("100"))
    Budget.objects.create(tenant=acme, name="Company", scope=Budget.Scope.TENANT, amount=Decimal("500"))
    client.force_login(employee_user)
    page = client.get("/chat/").content.decode()
    assert "Research monthly" in page and "Company" in page
    assert "Sales monthly" not in page
    assert "100.00 USD left of 100.00 USD" in page


def test_without_routes_the_page_says_what_to_do(client, employee_user):
    client.force_login(employee_user)
    page = client.get("/chat/").content.decode()
    assert "No chat models yet" in page
